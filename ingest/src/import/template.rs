//! Templates: which column of a sheet means what. Built-in templates for the
//! seed spreadsheets (trade show, store, customer profile, needs, interaction
//! log) and marketplace order exports (Taobao, JD), plus user mapping files
//! (TOML, column header → field). Matching headers to fields and writing an
//! empty template to fill in live here; turning a row into an event does not
//! (see `row`).

use std::collections::BTreeMap;
use std::path::Path;

use unicode_normalization::UnicodeNormalization;

use super::ImportError;

/// What a column means.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Field {
    /// A person's name (联系人, 收货人姓名).
    Name,
    /// A company or organisation (客户名称 in B2B sheets).
    Company,
    Title,
    /// One or more phone numbers; an email here is taken as an email, a masked
    /// or virtual number is kept as an attribute.
    Phone,
    Email,
    Industry,
    CompanySize,
    Region,
    Address,
    /// 来源渠道: where the lead came from (展会, 门店, 官网, ...).
    SourceChannel,
    /// When it happened (留资时间, 互动日期, 订单创建时间): the event's `occurred_at`.
    OccurredAt,
    Note,
    /// The company's own customer number (客户编号): an identifier shared by all imports.
    CustomerNo,
    /// "姓名/职位" in one cell (决策人(姓名/职位)): split into name and title.
    DecisionMaker,
    /// A platform id scoped to the shop (buyer_open_uid, ouid): identifier of that kind.
    ScopedId(String),
    /// Shop name: the scope of marketplace ids (defaults to the import source).
    Shop,
    OrderId,
    OrderStatus,
    /// Amount paid, in yuan ("¥1,299.00").
    OrderAmount,
    ItemTitle,
    Sku,
    Quantity,
    /// The interaction's summary line (互动主题, 需求描述).
    Summary,
    /// Kept in the interaction details under this key.
    Detail(String),
    /// A date kept in the interaction details under this key (Excel serials repaired).
    DetailDate(String),
    /// Kept in the subject attributes under this key (not an identifier).
    Attribute(String),
    /// Read but not used (still in the raw row).
    Ignore,
}

impl Field {
    /// Parses a field name as written in a mapping file.
    pub fn parse(text: &str) -> Option<Field> {
        let t = text.trim();
        if let Some((prefix, key)) = t.split_once(':') {
            let key = key.trim().to_string();
            if key.is_empty() {
                return None;
            }
            return match prefix.trim() {
                "detail" => Some(Field::Detail(key)),
                "date" => Some(Field::DetailDate(key)),
                "attribute" => Some(Field::Attribute(key)),
                "id" => Some(Field::ScopedId(key)),
                _ => None,
            };
        }
        Some(match t {
            "name" => Field::Name,
            "company" => Field::Company,
            "title" => Field::Title,
            "phone" => Field::Phone,
            "email" => Field::Email,
            "industry" => Field::Industry,
            "company_size" => Field::CompanySize,
            "region" => Field::Region,
            "address" => Field::Address,
            "source_channel" => Field::SourceChannel,
            "occurred_at" => Field::OccurredAt,
            "note" => Field::Note,
            "customer_no" => Field::CustomerNo,
            "decision_maker" => Field::DecisionMaker,
            "buyer_open_uid" => Field::ScopedId("buyer_open_uid".into()),
            "ouid" => Field::ScopedId("ouid".into()),
            "shop" => Field::Shop,
            "order_id" => Field::OrderId,
            "order_status" => Field::OrderStatus,
            "order_amount" => Field::OrderAmount,
            "item_title" => Field::ItemTitle,
            "sku" => Field::Sku,
            "quantity" => Field::Quantity,
            "summary" => Field::Summary,
            "ignore" => Field::Ignore,
            _ => return None,
        })
    }

    /// Names accepted by [`Field::parse`], for error messages and docs.
    pub const NAMES: &'static str = "name, company, title, phone, email, industry, company_size, region, address, \
        source_channel, occurred_at, note, customer_no, decision_maker, buyer_open_uid, ouid, shop, order_id, \
        order_status, order_amount, item_title, sku, quantity, summary, ignore, detail:KEY, date:KEY, \
        attribute:KEY, id:KIND";
}

/// One column of a template: its field and the headers it is known by (the first is printed).
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub field: Field,
    pub headers: Vec<String>,
}

/// A row must have at least one of these fields, or it is rejected with `message`.
#[derive(Debug, Clone, PartialEq)]
pub struct Requirement {
    pub any_of: Vec<Field>,
    pub message: String,
}

/// A sheet layout: its columns, what a row must have, and what kind of interaction a row is.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pub name: String,
    pub description: String,
    pub columns: Vec<Column>,
    pub required: Vec<Requirement>,
    /// `Interaction.kind` of each row ("import_row", "order_created", ...).
    pub interaction_kind: String,
    /// 来源渠道 when the sheet has none (展会 for trade shows).
    pub default_source_channel: Option<String>,
}

/// Header text as compared: NFKC, lower-case, without spaces, `_`, `-` and a trailing
/// parenthesised hint (`需求类型(如产品/服务/售后)` → `需求类型`).
pub fn header_key(header: &str) -> String {
    let text: String = header
        .nfkc()
        .collect::<String>()
        .trim()
        .trim_start_matches('\u{feff}')
        .to_lowercase();
    let text = match text.find('(') {
        Some(i) if i > 0 => &text[..i],
        _ => text.as_str(),
    };
    text.chars()
        .filter(|c| !c.is_whitespace() && !matches!(c, '_' | '-' | '*' | ':'))
        .collect()
}

/// Header of the error column of an error report; ignored on import.
pub const ERROR_COLUMN: &str = "导入错误 (import error)";

/// Whether a header is the error column of an error report.
pub fn is_error_column(header: &str) -> bool {
    let key = header_key(header);
    key == header_key(ERROR_COLUMN) || key == "importerror"
}

impl Template {
    /// The field of a header, if this template knows it.
    pub fn field_for(&self, header: &str) -> Option<&Field> {
        let key = header_key(header);
        if key.is_empty() {
            return None;
        }
        self.columns
            .iter()
            .find(|c| c.headers.iter().any(|h| header_key(h) == key))
            .map(|c| &c.field)
    }

    /// How many of `headers` this template knows (to find the header row and pick a template).
    pub fn score(&self, headers: &[String]) -> usize {
        headers.iter().filter(|h| self.field_for(h).is_some()).count()
    }

    /// Headers of an empty sheet of this template (the first name of each column).
    pub fn printed_headers(&self) -> Vec<String> {
        self.columns.iter().filter_map(|c| c.headers.first().cloned()).collect()
    }

    /// Reads a mapping file: `[columns]` header = "field", optionally `extends = "template"`,
    /// `interaction_kind`, `source_channel`, `required = [["phone", "email"], ...]`.
    pub fn from_mapping_file(path: &Path) -> Result<Template, ImportError> {
        let text = std::fs::read_to_string(path).map_err(|reason| ImportError::Open {
            path: path.to_path_buf(),
            reason,
        })?;
        Self::from_mapping_toml(&text, &path.display().to_string())
    }

    /// Parses mapping-file text; `origin` names it in errors.
    pub fn from_mapping_toml(text: &str, origin: &str) -> Result<Template, ImportError> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct MappingFile {
            extends: Option<String>,
            interaction_kind: Option<String>,
            source_channel: Option<String>,
            required: Option<Vec<Vec<String>>>,
            #[serde(default)]
            columns: BTreeMap<String, String>,
        }
        let err = |message: String| ImportError::Mapping {
            path: origin.to_string(),
            message,
        };
        let file: MappingFile = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        let mut template = match &file.extends {
            Some(name) => builtin(name).ok_or_else(|| {
                err(format!(
                    "extends = {name:?} is not a built-in template; use one of {}",
                    builtin_names().join(", ")
                ))
            })?,
            None => Template {
                name: String::new(),
                description: String::new(),
                columns: Vec::new(),
                required: vec![Requirement {
                    any_of: vec![
                        Field::Phone,
                        Field::Email,
                        Field::CustomerNo,
                        Field::ScopedId("buyer_open_uid".into()),
                        Field::ScopedId("ouid".into()),
                    ],
                    message: "the row has no phone, email, customer number or buyer id to identify anyone".into(),
                }],
                interaction_kind: "import_row".into(),
                default_source_channel: None,
            },
        };
        template.name = format!("mapping:{origin}");
        template.description = format!("mapping file {origin}");
        // The file's own columns come first, so they win over an extended template's.
        let mut own = Vec::new();
        for (header, field_name) in &file.columns {
            let field = Field::parse(field_name).ok_or_else(|| {
                err(format!(
                    "column {header:?} maps to unknown field {field_name:?}; fields are: {}",
                    Field::NAMES
                ))
            })?;
            own.push(Column {
                field,
                headers: vec![header.clone()],
            });
        }
        own.append(&mut template.columns);
        template.columns = own;
        if let Some(kind) = file.interaction_kind {
            template.interaction_kind = kind;
        }
        if let Some(channel) = file.source_channel {
            template.default_source_channel = Some(channel);
        }
        if let Some(required) = file.required {
            let mut out = Vec::new();
            for group in required {
                let mut any_of = Vec::new();
                for name in &group {
                    any_of.push(Field::parse(name).ok_or_else(|| {
                        err(format!(
                            "required field {name:?} is unknown; fields are: {}",
                            Field::NAMES
                        ))
                    })?);
                }
                out.push(Requirement {
                    message: format!("the row needs one of: {}", group.join(", ")),
                    any_of,
                });
            }
            template.required = out;
        }
        if template.columns.is_empty() {
            return Err(err(
                "no [columns] given: map at least one column header to a field".into()
            ));
        }
        Ok(template)
    }
}

fn col(field: Field, headers: &[&str]) -> Column {
    Column {
        field,
        headers: headers.iter().map(|h| h.to_string()).collect(),
    }
}

fn detail(key: &str) -> Field {
    Field::Detail(key.into())
}

fn requirement(any_of: &[Field], message: &str) -> Requirement {
    Requirement {
        any_of: any_of.to_vec(),
        message: message.into(),
    }
}

/// Names of the built-in templates.
pub fn builtin_names() -> Vec<&'static str> {
    vec![
        "trade-show",
        "store",
        "customer-profile",
        "needs",
        "interaction-log",
        "taobao-orders",
        "jd-orders",
    ]
}

/// Every built-in template.
pub fn builtins() -> Vec<Template> {
    builtin_names().into_iter().filter_map(builtin).collect()
}

/// The columns of the seed lead sheets (000: 客户名称、联系方式、来源渠道、留资时间; 001: 所属行业、规模 ...).
fn lead_columns(customer_name_is_person: bool) -> Vec<Column> {
    let (customer, company) = if customer_name_is_person {
        (Field::Name, Field::Company)
    } else {
        (Field::Company, Field::Name)
    };
    vec![
        col(customer, &["客户名称", "客户", "customer name", "customer"]),
        col(
            company,
            if customer_name_is_person {
                &["公司名称", "公司", "单位", "company", "organization"]
            } else {
                &["联系人", "姓名", "contact", "contact name", "name"]
            },
        ),
        col(Field::Title, &["职位", "职务", "title", "job title", "position"]),
        col(
            Field::Phone,
            &[
                "联系方式",
                "手机",
                "手机号",
                "手机号码",
                "电话",
                "联系电话",
                "phone",
                "mobile",
                "tel",
                "telephone",
            ],
        ),
        col(
            Field::Email,
            &["邮箱", "电子邮箱", "电子邮件", "email", "e-mail", "mail"],
        ),
        col(
            Field::SourceChannel,
            &["来源渠道", "渠道", "来源", "source channel", "source", "channel"],
        ),
        col(
            Field::OccurredAt,
            &["留资时间", "登记时间", "时间", "日期", "captured at", "date", "time"],
        ),
        col(Field::Industry, &["所属行业", "行业", "industry"]),
        col(
            Field::CompanySize,
            &["规模", "企业规模", "公司规模", "人数", "company size", "size"],
        ),
        col(
            Field::Region,
            &["地区", "区域", "城市", "省份", "region", "city", "province"],
        ),
        col(Field::Address, &["地址", "详细地址", "address"]),
        col(
            Field::Note,
            &["备注", "留言", "note", "notes", "remark", "remarks", "comment"],
        ),
    ]
}

/// A built-in template by name.
pub fn builtin(name: &str) -> Option<Template> {
    let contact_required = requirement(
        &[Field::Phone, Field::Email],
        "联系方式/邮箱 is empty: a lead needs a phone or an email",
    );
    let t = match name {
        "trade-show" => Template {
            name: name.into(),
            description: "展会留资 trade-show leads: 客户名称, 联系人, 联系方式, 邮箱, 来源渠道, 留资时间, ...".into(),
            columns: lead_columns(false),
            required: vec![
                contact_required,
                requirement(&[Field::Company, Field::Name], "客户名称 and 联系人 are both empty"),
            ],
            interaction_kind: "import_row".into(),
            default_source_channel: Some("展会".into()),
        },
        "store" => Template {
            name: name.into(),
            description: "门店客户 store customers: 客户名称 (a person), 联系方式, 邮箱, 来源渠道, 留资时间, ..."
                .into(),
            columns: lead_columns(true),
            required: vec![
                contact_required,
                requirement(&[Field::Name, Field::Company], "客户名称 is empty"),
            ],
            interaction_kind: "import_row".into(),
            default_source_channel: Some("门店".into()),
        },
        "customer-profile" => Template {
            name: name.into(),
            description: "客户信息基础档案表 (seed 003, template 1)".into(),
            columns: vec![
                col(
                    Field::CustomerNo,
                    &["客户编号", "customer no", "customer number", "customer id"],
                ),
                col(Field::Company, &["客户名称", "company", "customer name"]),
                col(Field::Industry, &["所属行业", "行业", "industry"]),
                col(Field::DecisionMaker, &["决策人(姓名/职位)", "决策人", "decision maker"]),
                col(Field::Phone, &["联系方式", "联系电话", "手机", "phone"]),
                col(Field::Email, &["邮箱", "email"]),
                col(
                    detail("cooperation_length"),
                    &["历史合作时长", "合作时长", "cooperation length"],
                ),
                col(detail("total_amount"), &["累计合作金额", "合作金额", "total amount"]),
                col(detail("need_tags"), &["核心需求标签", "需求标签", "need tags", "tags"]),
                col(detail("tier"), &["客户分层", "客户等级", "tier", "segment"]),
                col(
                    Field::DetailDate("last_cooperation".into()),
                    &["最近合作时间", "last cooperation"],
                ),
            ],
            required: vec![requirement(
                &[Field::CustomerNo, Field::Company],
                "客户编号 and 客户名称 are both empty",
            )],
            interaction_kind: "profile_imported".into(),
            default_source_channel: None,
        },
        "needs" => Template {
            name: name.into(),
            description: "客户需求深度分析表 (seed 003, template 2)".into(),
            columns: vec![
                col(
                    Field::CustomerNo,
                    &["客户编号", "customer no", "customer number", "customer id"],
                ),
                col(
                    detail("need_type"),
                    &["需求类型(如产品/服务/售后)", "需求类型", "need type"],
                ),
                col(Field::Summary, &["需求描述", "description", "need"]),
                col(detail("priority"), &["优先级(高/中/低)", "优先级", "priority"]),
                col(detail("product"), &["关联产品/服务", "关联产品", "product"]),
                col(detail("proposal"), &["解决方案建议", "解决方案", "proposal"]),
                col(detail("owner"), &["负责人", "owner"]),
                col(Field::DetailDate("due_date".into()), &["预计解决时间", "due date"]),
                col(detail("feedback"), &["客户反馈(已确认/待跟进)", "客户反馈", "feedback"]),
            ],
            required: vec![requirement(
                &[Field::CustomerNo],
                "客户编号 is empty: a need belongs to a customer",
            )],
            interaction_kind: "need_recorded".into(),
            default_source_channel: None,
        },
        "interaction-log" => Template {
            name: name.into(),
            description: "客户互动全记录表 (seed 003, template 3)".into(),
            columns: vec![
                col(Field::OccurredAt, &["互动日期", "日期", "date"]),
                col(
                    Field::CustomerNo,
                    &["客户编号", "customer no", "customer number", "customer id"],
                ),
                col(detail("method"), &["互动方式(电话/拜访/线上)", "互动方式", "method"]),
                col(Field::Summary, &["互动主题", "主题", "subject", "topic"]),
                col(detail("participants"), &["参与人员", "participants"]),
                col(detail("feedback"), &["客户反馈", "feedback"]),
                col(detail("next_action"), &["后续行动", "next action"]),
                col(detail("owner"), &["负责人", "owner"]),
                col(
                    detail("status"),
                    &["完成状态(已完成/进行中/待处理)", "完成状态", "status"],
                ),
            ],
            required: vec![requirement(
                &[Field::CustomerNo],
                "客户编号 is empty: an interaction belongs to a customer",
            )],
            interaction_kind: "interaction_logged".into(),
            default_source_channel: None,
        },
        "taobao-orders" => Template {
            name: name.into(),
            description: "淘宝/天猫 卖家中心 order export (订单报表)".into(),
            columns: vec![
                col(Field::OrderId, &["订单编号", "订单号", "order id", "tid"]),
                col(
                    Field::ScopedId("buyer_open_uid".into()),
                    &[
                        "买家会员名",
                        "buyer_open_uid",
                        "买家open_uid",
                        "买家openuid",
                        "buyer nick",
                    ],
                ),
                col(Field::Attribute("alipay_account".into()), &["买家支付宝账号"]),
                col(detail("goods_amount"), &["买家应付货款"]),
                col(detail("postage"), &["买家应付邮费"]),
                col(detail("total_amount"), &["总金额"]),
                col(
                    Field::OrderAmount,
                    &["买家实际支付金额", "实付金额", "实际支付金额", "paid amount"],
                ),
                col(Field::OrderStatus, &["订单状态", "order status"]),
                col(Field::Note, &["买家留言"]),
                col(Field::Name, &["收货人姓名", "收货人", "receiver name"]),
                col(Field::Address, &["收货地址", "receiver address"]),
                col(detail("shipping_method"), &["运送方式"]),
                col(
                    Field::Phone,
                    &["联系手机", "联系电话", "receiver mobile", "receiver phone"],
                ),
                col(Field::OccurredAt, &["订单创建时间", "创建时间", "created"]),
                col(
                    Field::DetailDate("paid_at".into()),
                    &["订单付款时间", "付款时间", "pay time"],
                ),
                col(Field::ItemTitle, &["宝贝标题", "商品标题", "title"]),
                col(Field::Quantity, &["宝贝总数量", "宝贝数量", "购买数量", "num"]),
                col(Field::Sku, &["商家编码", "外部系统编号", "outer iid"]),
                col(detail("logistics_no"), &["物流单号"]),
                col(detail("logistics_company"), &["物流公司"]),
                col(detail("seller_note"), &["订单备注", "卖家备注"]),
                col(Field::Shop, &["店铺名称", "店铺", "shop"]),
            ],
            required: vec![
                requirement(&[Field::OrderId], "订单编号 is empty"),
                requirement(
                    &[Field::ScopedId("buyer_open_uid".into()), Field::Phone],
                    "买家会员名/buyer_open_uid is empty: the order cannot be tied to a buyer",
                ),
            ],
            interaction_kind: "order_created".into(),
            default_source_channel: Some("淘宝".into()),
        },
        "jd-orders" => Template {
            name: name.into(),
            description: "京东 商家后台 order export (订单导出)".into(),
            columns: vec![
                col(Field::OrderId, &["订单号", "订单编号", "order id"]),
                col(
                    Field::ScopedId("ouid".into()),
                    &["客户账号", "ouid", "用户账号", "下单帐号", "下单账号"],
                ),
                col(Field::Name, &["客户姓名", "收货人", "收货人姓名"]),
                col(Field::Phone, &["联系电话", "手机", "收货人手机"]),
                col(Field::Address, &["客户地址", "收货地址"]),
                col(Field::Sku, &["商品ID", "商品编号", "sku"]),
                col(Field::ItemTitle, &["商品名称", "商品标题"]),
                col(Field::Quantity, &["订购数量", "商品数量", "数量"]),
                col(Field::OrderAmount, &["应付金额", "订单金额", "实付金额"]),
                col(Field::OrderStatus, &["订单状态"]),
                col(Field::OccurredAt, &["下单时间", "订单创建时间"]),
                col(Field::DetailDate("paid_at".into()), &["付款确认时间", "付款时间"]),
                col(Field::Note, &["订单备注", "客户备注"]),
                col(detail("seller_note"), &["商家备注"]),
                col(Field::Shop, &["店铺名称", "店铺"]),
            ],
            required: vec![
                requirement(&[Field::OrderId], "订单号 is empty"),
                requirement(
                    &[Field::ScopedId("ouid".into()), Field::Phone],
                    "客户账号/ouid is empty: the order cannot be tied to a buyer",
                ),
            ],
            interaction_kind: "order_created".into(),
            default_source_channel: Some("京东".into()),
        },
        _ => return None,
    };
    Some(t)
}

/// Picks the built-in template that knows most of `headers` (at least two), for sheets
/// imported without `--template`.
pub fn detect(headers: &[String]) -> Option<Template> {
    let mut best: Option<(usize, Template)> = None;
    for t in builtins() {
        let score = t.score(headers);
        if score >= 2 && best.as_ref().is_none_or(|(s, _)| score > *s) {
            best = Some((score, t));
        }
    }
    best.map(|(_, t)| t)
}

/// Writes an empty template (headers only): `.xlsx` by its extension, CSV (UTF-8 with BOM,
/// so Excel shows Chinese) otherwise; `-` writes CSV to stdout.
pub fn write_empty(template: &Template, out: &Path) -> Result<(), ImportError> {
    let headers = template.printed_headers();
    let report_err = |message: String| ImportError::Report {
        path: out.to_path_buf(),
        message,
    };
    if out == Path::new("-") {
        let mut w = csv::Writer::from_writer(std::io::stdout());
        w.write_record(&headers).map_err(|e| report_err(e.to_string()))?;
        return w.flush().map_err(|e| report_err(e.to_string()));
    }
    if super::report::is_xlsx_path(out) {
        let mut book = rust_xlsxwriter::Workbook::new();
        let sheet = book.add_worksheet();
        sheet.set_name(&template.name).map_err(|e| report_err(e.to_string()))?;
        let text = rust_xlsxwriter::Format::new().set_num_format("@");
        for (i, h) in headers.iter().enumerate() {
            let c = u16::try_from(i).map_err(|e| report_err(e.to_string()))?;
            sheet.write_string(0, c, h).map_err(|e| report_err(e.to_string()))?;
            // Text format so phones typed in later stay text instead of turning into 1.38E+10.
            sheet
                .set_column_format(c, &text)
                .and_then(|s| s.set_column_width(c, 16))
                .map_err(|e| report_err(e.to_string()))?;
        }
        return book.save(out).map_err(|e| report_err(e.to_string()));
    }
    let mut file = std::fs::File::create(out).map_err(|e| report_err(e.to_string()))?;
    std::io::Write::write_all(&mut file, b"\xEF\xBB\xBF").map_err(|e| report_err(e.to_string()))?;
    let mut w = csv::Writer::from_writer(file);
    w.write_record(&headers).map_err(|e| report_err(e.to_string()))?;
    w.flush().map_err(|e| report_err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_match_with_hints_case_and_spaces() {
        let t = builtin("needs").unwrap();
        assert_eq!(
            t.field_for("需求类型(如产品/服务/售后)"),
            Some(&Field::Detail("need_type".into()))
        );
        assert_eq!(t.field_for(" 需求类型 "), Some(&Field::Detail("need_type".into())));
        assert_eq!(t.field_for("Customer_No"), Some(&Field::CustomerNo));
        let t = builtin("trade-show").unwrap();
        assert_eq!(t.field_for("E-Mail"), Some(&Field::Email));
        assert_eq!(t.field_for("客户名称"), Some(&Field::Company));
        assert!(is_error_column("导入错误 (import error)"));
        assert!(is_error_column("导入错误"));
    }

    #[test]
    fn detects_the_template_from_headers() {
        let h = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            detect(&h(&["订单编号", "买家会员名", "联系手机"])).unwrap().name,
            "taobao-orders"
        );
        assert_eq!(
            detect(&h(&["订单号", "客户账号", "下单时间"])).unwrap().name,
            "jd-orders"
        );
        assert_eq!(
            detect(&h(&["客户名称", "联系人", "联系方式", "留资时间"]))
                .unwrap()
                .name,
            "trade-show"
        );
        assert!(detect(&h(&["foo", "bar"])).is_none());
    }

    #[test]
    fn mapping_files_extend_and_reject_unknown_fields() {
        let t = Template::from_mapping_toml(
            "extends = \"trade-show\"\n[columns]\n\"手机号码\" = \"phone\"\n\"微信\" = \"attribute:wechat\"\n",
            "m.toml",
        )
        .unwrap();
        assert_eq!(t.field_for("微信"), Some(&Field::Attribute("wechat".into())));
        assert_eq!(t.field_for("邮箱"), Some(&Field::Email));
        let err = Template::from_mapping_toml("[columns]\n\"x\" = \"nope\"\n", "m.toml").unwrap_err();
        assert!(err.to_string().contains("unknown field \"nope\""), "{err}");
    }
}
