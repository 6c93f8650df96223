#!/usr/bin/env python3
"""Writes the import test fixtures with independent tools: real .xlsx files from
openpyxl (what Excel users' files look like), GB18030/GBK CSV encoded by Python's
codecs, an Excel-damaged phone column and a file with 5% bad rows.

    python tests/peers/make_import_fixtures.py [OUT_DIR]   (default ingest/tests/fixtures)

The committed fixtures were made by this script; the Rust test `it::import`
regenerates them into a temporary directory when CRM_PEERS_PYTHON names a
Python with openpyxl (tests/peers/requirements.txt) and runs the same checks.
"""

import csv
import datetime
import io
import os
import sys

import openpyxl

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "..", "ingest", "tests", "fixtures")
os.makedirs(OUT, exist_ok=True)

LEAD_HEADERS = ["客户名称", "联系人", "联系方式", "邮箱", "来源渠道", "留资时间", "所属行业", "规模", "地区", "备注"]


def write_csv(name, rows, encoding="utf-8", bom=False, delimiter=",", newline="\r\n"):
    buf = io.StringIO()
    w = csv.writer(buf, delimiter=delimiter, lineterminator=newline)
    for r in rows:
        w.writerow(r)
    data = buf.getvalue().encode(encoding)
    if bom:
        data = b"\xef\xbb\xbf" + data
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)


def trade_show_xlsx():
    """A workbook as a trade-show team hands it over: an instructions sheet, a title row
    above the headers, phones typed as numbers, date cells and a date serial."""
    wb = openpyxl.Workbook()
    notes = wb.active
    notes.title = "说明"
    notes["A1"] = "请在第二个工作表填写展会客户信息"
    notes["A2"] = "手机号请填写11位"
    ws = wb.create_sheet("2026上海展会")
    ws["A1"] = "2026上海展会客户登记表"
    ws.merge_cells("A1:J1")
    ws.append(LEAD_HEADERS)
    ws.append(["上海华信科技有限公司", "张伟", 13800138000, "zhangwei@huaxin.cn", "展会",
               datetime.datetime(2026, 3, 1, 10, 30), "制造业", "50-199人", "上海", "对A产品感兴趣"])
    # A phone stored as a float shown in scientific notation: the value itself is exact.
    ws.append(["北京宏达贸易有限公司", "王芳", 13900139000.0, "", "展会",
               datetime.date(2026, 3, 1), "零售", "1-49人", "北京", ""])
    ws.cell(row=ws.max_row, column=3).number_format = "0.00E+00"
    # Full-width digits and an ideographic space, a date left as a serial number.
    ws.append(["深圳瑞丰实业有限公司", "李　娜", "１３７ ００１３ ７０００", "LINA@RUIFENG.COM", "门店",
               45717, "IT服务", "200-499人", "深圳", ""])
    ws.append(["Acme Trading Ltd", "James Smith", "+1 415 555 2671", "james.smith@acme.com", "展会",
               "2026/3/2 14:05", "物流", "500-999人", "Shanghai", "booth A12"])
    ws.append(["杭州中科信息技术有限公司", "陈杰", "", "chenjie@zhongke", "展会",
               "2026-03-02", "金融", "50-199人", "杭州", "邮箱少了.com"])
    ws.append(["苏州金桥制造有限公司", "", "13600136000", "", "合作伙伴转介绍",
               "2026-03-03", "制造业", "1000人以上", "苏州", ""])
    wb.save(os.path.join(OUT, "trade_show.xlsx"))


def gb18030_csv():
    """GB18030 text from Chinese Excel, with characters outside GBK (four-byte sequences),
    CRLF line ends and a quoted field holding a line break."""
    rows = [LEAD_HEADERS,
            ["上海华信科技有限公司", "王𠀾", "13800138000", "wang@huaxin.cn", "展会", "2026-03-01 09:00", "制造业", "50-199人", "上海", "第一天\n下午回访"],
            ["北京宏达贸易有限公司", "李䶮", "139-0013-9000", "", "展会", "2026-03-01", "零售", "1-49人", "北京", ""],
            ["成都天成咨询有限公司", "赵敏", "+86 137 0013 7000", "zhaomin@tiancheng.cn", "官网", "2026年3月2日", "教育", "1-49人", "成都", "需要报价"],
            ["武汉安泰物流有限公司", "周涛", "", "zhoutao@antai.cn", "展会", "45718", "物流", "200-499人", "武汉", ""]]
    write_csv("gb18030.csv", rows, encoding="gb18030")


def damaged_phones_csv():
    """A phone column that went through Excel: floats, scientific notation (some lossless,
    some not), full-width digits. Semicolon-delimited, as European Excel writes CSV."""
    rows = [LEAD_HEADERS,
            ["A公司", "甲", "13800138000.0", "", "展会", "2026-03-01", "", "", "", "restored: .0"],
            ["B公司", "乙", "1.3800138001E+10", "", "展会", "2026-03-01", "", "", "", "restored: all digits kept"],
            ["C公司", "丙", "1.38E+10", "", "展会", "2026-03-01", "", "", "", "lost digits"],
            ["D公司", "丁", "1.38001380E+10", "", "展会", "2026-03-01", "", "", "", "lost the last two digits"],
            ["E公司", "戊", "１３９００１３９０００", "", "展会", "2026-03-01", "", "", "", "full-width"],
            ["F公司", "己", "139 0013 9001", "", "展会", "45717", "", "", "", "date serial"],
            ["G公司", "庚", "138****8000", "geng@g.cn", "展会", "2026-03-01", "", "", "", "masked phone, email ok"]]
    write_csv("damaged_phones.csv", rows, bom=True, delimiter=";")


def bad_rows_csv():
    """200 rows, every 20th one bad (5%): each kind of mistake twice."""
    mistakes = [
        ("邮箱", "not-an-email"),
        ("联系方式", "12345"),
        ("联系方式", ""),          # and no email either: no contact
        ("留资时间", "下周三"),
        ("联系方式", "1.39E+10"),
    ]
    rows = [LEAD_HEADERS]
    for i in range(200):
        phone = "13%d%08d" % (5 + i % 5, 10000 + i)
        email = "user%d@example.com" % i
        row = ["公司%03d" % i, "客户%03d" % i, phone, email, "展会", "2026-03-%02d 10:00" % (1 + i % 28),
               "制造业", "1-49人", "上海", ""]
        if i % 20 == 19:
            column, value = mistakes[(i // 20) % len(mistakes)]
            row[LEAD_HEADERS.index(column)] = value
            if column == "联系方式" and value == "":
                row[LEAD_HEADERS.index("邮箱")] = ""
        rows.append(row)
    write_csv("bad_rows_5pct.csv", rows)


def taobao_csv():
    """A Taobao seller-center order export: GBK, ="..." order ids, masked phones."""
    headers = ["订单编号", "买家会员名", "买家支付宝账号", "买家应付货款", "买家实际支付金额", "订单状态",
               "收货人姓名", "收货地址", "联系手机", "订单创建时间", "宝贝标题", "宝贝总数量", "店铺名称"]
    rows = [headers,
            ['="2893749283749283749"', "tb_buyer_01", "138****8000", "129.00", "￥129.00", "交易成功",
             "张伟", "上海市浦东新区XX路1号", "138****8000", "2026-03-01 10:00:00", "保温杯 500ml", "1", "某某旗舰店"],
            ['="2893749283749283750"', "tb_buyer_02", "", "59.90", "59.90", "卖家已发货",
             "王芳", "北京市朝阳区XX路2号", "13900139000-1234", "2026-03-01 11:00:00", "帆布袋", "2", "某某旗舰店"],
            ['="2893749283749283751"', "", "", "10.00", "10.00", "交易关闭",
             "李娜", "深圳市南山区XX路3号", "137****7000", "2026-03-02 09:00:00", "贴纸", "1", "某某旗舰店"]]
    write_csv("taobao_orders.csv", rows, encoding="gbk")


if __name__ == "__main__":
    trade_show_xlsx()
    gb18030_csv()
    damaged_phones_csv()
    bad_rows_csv()
    taobao_csv()
    print("wrote fixtures to", os.path.abspath(OUT))
