#!/usr/bin/env python3
"""Builds WeChat official-account callbacks with wechatpy, an independent implementation.

Prints one JSON document on stdout: the account settings and a list of cases, each an
HTTP request (method, query, body) as WeChat would send it plus what our channel must
make of it. Plain-mode requests are signed with wechatpy's WeChatSigner, safe-mode ones
are encrypted and signed by wechatpy.crypto.WeChatCrypto, and every inner message is
checked to parse as the intended type with wechatpy.parse_message before it is printed.

    python tests/peers/wechat_client.py            # fresh timestamps and nonces
    python tests/peers/wechat_client.py --fixed    # stable timestamps (committed fixtures)

Used by ingest/src/channels/wechat.rs (when CRM_PEERS_PYTHON is set) and to write
ingest/src/channels/testdata/wechat/fixtures.json.
"""
import json
import random
import string
import sys
import time

import wechatpy
from wechatpy import parse_message
from wechatpy.crypto import WeChatCrypto
from wechatpy.utils import WeChatSigner

TOKEN = "crm-peer-token"
# 43 characters, as in the WeChat console (the documented sample key).
ENCODING_AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
APP_ID = "wx5823bf96d3bd56c7"
OTHER_APP_ID = "wx0000000000000bad"
ACCOUNT = "gh_7f083739789a"
OPENID = "oia2TjjewbmiOUlr6X-1crbLOvLw"


def sign(*parts):
    signer = WeChatSigner()
    signer.add_data(*parts)
    return signer.signature


def nonce():
    return "".join(random.choice(string.digits) for _ in range(10))


def xml_message(fields):
    out = ["<xml>"]
    for key, value in fields:
        if isinstance(value, int):
            out.append("<{0}>{1}</{0}>".format(key, value))
        else:
            out.append("<{0}><![CDATA[{1}]]></{0}>".format(key, value))
    out.append("</xml>")
    return "".join(out)


def messages(create_time):
    """(name, xml fields, wechatpy type name, expectations) for every kind we handle."""
    base = [("ToUserName", ACCOUNT), ("FromUserName", OPENID), ("CreateTime", create_time)]
    return [
        ("subscribe", base + [("MsgType", "event"), ("Event", "subscribe")], "SubscribeEvent",
         {"event_type": "subscribe", "kind": "wechat_subscribe", "consent": "granted"}),
        ("subscribe_scene", base + [("MsgType", "event"), ("Event", "subscribe"),
                                    ("EventKey", "qrscene_expo2026"), ("Ticket", "TICKET-1")],
         "SubscribeScanEvent",
         {"event_type": "subscribe", "kind": "wechat_subscribe", "consent": "granted",
          "details": {"scene": "expo2026", "ticket": "TICKET-1"}}),
        ("unsubscribe", base + [("MsgType", "event"), ("Event", "unsubscribe")], "UnsubscribeEvent",
         {"event_type": "unsubscribe", "kind": "wechat_unsubscribe", "consent": "withdrawn"}),
        ("scan", base + [("MsgType", "event"), ("Event", "SCAN"), ("EventKey", "store-42"),
                         ("Ticket", "TICKET-2")], "ScanEvent",
         {"event_type": "SCAN", "kind": "wechat_scan", "details": {"scene": "store-42", "ticket": "TICKET-2"}}),
        ("click", base + [("MsgType", "event"), ("Event", "CLICK"), ("EventKey", "MENU_PRICES")], "ClickEvent",
         {"event_type": "CLICK", "kind": "wechat_menu_click", "details": {"menu_key": "MENU_PRICES"}}),
        ("view", base + [("MsgType", "event"), ("Event", "VIEW"), ("EventKey", "https://example.com/shop"),
                         ("MenuId", "208379533")], "ViewEvent",
         {"event_type": "VIEW", "kind": "wechat_menu_view",
          "details": {"url": "https://example.com/shop", "menu_id": "208379533"}}),
        ("location", base + [("MsgType", "event"), ("Event", "LOCATION"), ("Latitude", "23.137466"),
                             ("Longitude", "113.352425"), ("Precision", "119.385040")], "LocationEvent",
         {"event_type": "LOCATION", "kind": "wechat_location",
          "details": {"latitude": "23.137466", "longitude": "113.352425", "precision": "119.385040"}}),
        ("text", base + [("MsgType", "text"), ("Content", "想了解一下价格 & 交期 <急>"),
                         ("MsgId", "1234567890123456")], "TextMessage",
         {"event_type": "text", "kind": "wechat_message", "summary": "想了解一下价格 & 交期 <急>",
          "source_ref": "1234567890123456"}),
        ("image", base + [("MsgType", "image"), ("PicUrl", "https://example.com/a.jpg"),
                          ("MediaId", "media-image-1"), ("MsgId", "1234567890123457")], "ImageMessage",
         {"event_type": "image", "kind": "wechat_message",
          "details": {"pic_url": "https://example.com/a.jpg", "media_id": "media-image-1"},
          "source_ref": "1234567890123457"}),
        ("voice", base + [("MsgType", "voice"), ("MediaId", "media-voice-1"), ("Format", "amr"),
                          ("Recognition", "你好"), ("MsgId", "1234567890123458")], "VoiceMessage",
         {"event_type": "voice", "kind": "wechat_message", "summary": "你好",
          "details": {"media_id": "media-voice-1", "format": "amr"}, "source_ref": "1234567890123458"}),
    ]


def main():
    fixed = "--fixed" in sys.argv
    if fixed:
        random.seed(20261125)
    now = 1764057600 if fixed else int(time.time())
    crypto = WeChatCrypto(TOKEN, ENCODING_AES_KEY, APP_ID)
    stranger = WeChatCrypto(TOKEN, ENCODING_AES_KEY, OTHER_APP_ID)
    cases = []

    ts, nc = str(now), nonce()
    cases.append({
        "name": "verify_url", "method": "GET",
        "query": {"signature": sign(TOKEN, ts, nc), "timestamp": ts, "nonce": nc, "echostr": "5837397520983021"},
        "body": "", "expect": {"outcome": "accepted", "reply": "5837397520983021", "events": 0},
    })

    for i, (name, fields, peer_type, expect) in enumerate(messages(now - 10 + 0)):
        xml = xml_message(fields)
        parsed = parse_message(xml)
        assert type(parsed).__name__ == peer_type, (name, type(parsed).__name__)
        expect = dict(expect, outcome="accepted", openid=OPENID, reply="success", events=1,
                      create_time=now - 10)
        ts, nc = str(now + i), nonce()
        cases.append({
            "name": name + "_plain", "method": "POST",
            "query": {"signature": sign(TOKEN, ts, nc), "timestamp": ts, "nonce": nc, "openid": OPENID},
            "body": xml, "expect": expect,
        })
        ts, nc = str(now + 100 + i), nonce()
        envelope = crypto.encrypt_message(xml, nc, ts)
        # Prove the envelope round-trips in the peer before we rely on it.
        msg_signature = json_field(envelope, "MsgSignature")
        assert crypto.decrypt_message(envelope, msg_signature, ts, nc) == xml
        cases.append({
            "name": name + "_aes", "method": "POST",
            "query": {"signature": sign(TOKEN, ts, nc), "timestamp": ts, "nonce": nc, "openid": OPENID,
                      "encrypt_type": "aes", "msg_signature": msg_signature},
            "body": envelope, "expect": expect,
        })

    text = xml_message([("ToUserName", ACCOUNT), ("FromUserName", OPENID), ("CreateTime", now),
                        ("MsgType", "text"), ("Content", "hi"), ("MsgId", "99")])
    ts, nc = str(now), nonce()
    cases.append({
        "name": "forged_plain", "method": "POST",
        "query": {"signature": sign("not-the-token", ts, nc), "timestamp": ts, "nonce": nc},
        "body": text, "expect": {"outcome": "rejected", "reason": "bad_signature", "status": 401},
    })
    envelope = crypto.encrypt_message(text, nc, ts)
    cases.append({
        "name": "forged_aes", "method": "POST",
        "query": {"signature": sign(TOKEN, ts, nc), "timestamp": ts, "nonce": nc, "encrypt_type": "aes",
                  "msg_signature": sign("not-the-token", ts, nc, json_field(envelope, "Encrypt"))},
        "body": envelope, "expect": {"outcome": "rejected", "reason": "bad_signature", "status": 401},
    })
    envelope = stranger.encrypt_message(text, nc, ts)
    cases.append({
        "name": "wrong_appid_aes", "method": "POST",
        "query": {"signature": sign(TOKEN, ts, nc), "timestamp": ts, "nonce": nc, "encrypt_type": "aes",
                  "msg_signature": json_field(envelope, "MsgSignature")},
        "body": envelope, "expect": {"outcome": "rejected", "reason": "wrong_recipient", "status": 403},
    })

    doc = {
        "generator": "wechatpy " + wechatpy.__version__,
        "token": TOKEN, "encoding_aes_key": ENCODING_AES_KEY, "app_id": APP_ID,
        "cases": cases,
    }
    json.dump(doc, sys.stdout, ensure_ascii=False, indent=1, sort_keys=True)
    sys.stdout.write("\n")


def json_field(envelope_xml, name):
    import xmltodict
    return xmltodict.parse(envelope_xml)["xml"][name]


if __name__ == "__main__":
    main()
