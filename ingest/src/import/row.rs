//! One spreadsheet row → one `ChannelEventV1 { event_type: "import_row" }` on
//! the bus, or the reasons it was rejected (column by column). Identifiers are
//! validated here with `proto::normalize` but kept as read (repaired where
//! Excel damaged them); masked and virtual phones become attributes, never
//! identifiers. Reading files and publishing are not done here.

use std::collections::BTreeMap;

use chrono::FixedOffset;
use proto::inbound::{
    ChannelEventV1, InboundHeader, Interaction, Observation, Order, OrderLine, RawIdentifier, SubjectData,
};
use proto::{InboundEvent, normalize};

use super::repair::{self, Cell};
use super::template::{Field, Template};

/// Channel name of every imported row.
pub const CHANNEL: &str = "import";
/// `event_type` of every imported row.
pub const EVENT_TYPE: &str = "import_row";
/// Scope of 客户编号 identifiers: one namespace for all imports of the tenant.
pub const CUSTOMER_NO_SCOPE: &str = "import";

/// How the columns of one sheet are read.
#[derive(Debug, Clone)]
pub struct SheetPlan {
    /// Header of each column as written (made unique with ` (2)`, ...).
    pub headers: Vec<String>,
    /// Field of each column; `None`: unknown, kept in the interaction details by header.
    pub fields: Vec<Option<Field>>,
    /// Columns left out entirely (the error column of an error report, empty headers).
    pub skip: Vec<bool>,
}

impl SheetPlan {
    pub fn new(template: &Template, header_cells: &[Cell]) -> SheetPlan {
        let mut headers: Vec<String> = Vec::with_capacity(header_cells.len());
        let mut fields = Vec::with_capacity(header_cells.len());
        let mut skip = Vec::with_capacity(header_cells.len());
        for (i, cell) in header_cells.iter().enumerate() {
            let text = cell.text().trim().trim_start_matches('\u{feff}').to_string();
            let mut unique = if text.is_empty() {
                format!("column {}", i + 1)
            } else {
                text.clone()
            };
            let mut n = 2;
            while headers.contains(&unique) {
                unique = format!("{text} ({n})");
                n += 1;
            }
            skip.push(text.is_empty() || super::template::is_error_column(&text));
            fields.push(template.field_for(&text).cloned());
            headers.push(unique);
        }
        SheetPlan { headers, fields, skip }
    }

    /// How many columns map to a known field.
    pub fn known(&self) -> usize {
        self.fields.iter().filter(|f| f.is_some()).count()
    }
}

/// What is the same for every row of a sheet.
pub struct RowContext<'a> {
    pub template: &'a Template,
    pub plan: &'a SheetPlan,
    pub region: phonenumber::country::Id,
    pub offset: FixedOffset,
    /// The import source label (`channel_instance`, default scope of marketplace ids).
    pub source: &'a str,
    pub file_sha256: &'a str,
    pub file_name: &'a str,
    pub sheet: &'a str,
    pub recorded_at_us: i64,
}

/// A row that made an event.
#[derive(Debug, Clone)]
pub struct Built {
    pub event_id: uuid::Uuid,
    pub event: InboundEvent,
    /// Cells repaired (numbers back to phones, full-width text, ...).
    pub repaired: u32,
}

/// One reason a row was rejected.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CellError {
    /// Header of the column (empty when the row as a whole is wrong).
    pub column: String,
    pub reason: String,
}

/// The deterministic event id of a row: the same file, sheet and row always give the same id.
pub fn event_id(file_sha256: &str, sheet: &str, row: u32) -> uuid::Uuid {
    proto::derived_id_of(&["import/", file_sha256, "/", sheet, "/", &row.to_string()])
}

#[derive(Default)]
struct Reading {
    subject: SubjectData,
    details: BTreeMap<String, String>,
    present: Vec<Field>,
    errors: Vec<CellError>,
    occurred_at_us: Option<i64>,
    summary: String,
    source_channel: Option<String>,
    shop: Option<String>,
    scoped: Vec<(String, String)>,
    order: Option<Order>,
    line: Option<OrderLine>,
    repaired: u32,
}

impl Reading {
    fn error(&mut self, column: &str, reason: impl Into<String>) {
        self.errors.push(CellError {
            column: column.to_string(),
            reason: reason.into(),
        });
    }

    fn order(&mut self) -> &mut Order {
        self.order.get_or_insert_with(|| Order {
            currency: "CNY".into(),
            ..Default::default()
        })
    }

    fn line(&mut self) -> &mut OrderLine {
        self.line.get_or_insert_with(|| OrderLine {
            quantity: 1,
            ..Default::default()
        })
    }

    fn attribute(&mut self, key: &str, value: &str) {
        let entry = self.subject.attributes.entry(key.to_string()).or_default();
        if !entry.is_empty() {
            entry.push_str(", ");
        }
        entry.push_str(value);
    }
}

fn set_once(slot: &mut String, value: &str) {
    if slot.is_empty() {
        *slot = value.to_string();
    }
}

/// A phone-like value masked by the platform (`138****8000`, `139XXXX`).
fn is_masked(text: &str) -> bool {
    text.contains(['*', 'X', 'x', '×'])
}

/// A marketplace virtual number with an extension (`13800138000-1234`, `13800138000转1234`).
fn is_virtual(text: &str) -> bool {
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let parts: Vec<&str> = compact.split(['-', '转', '#']).collect();
    parts.len() == 2
        && parts[0].len() == 11
        && parts[0].bytes().all(|b| b.is_ascii_digit())
        && (1..=6).contains(&parts[1].len())
        && parts[1].bytes().all(|b| b.is_ascii_digit())
}

/// An id-like text cell: numbers without `.0`, Excel's `="..."` and leading `'` or tabs removed.
fn id_text(cell: &Cell, column: &str, reading: &mut Reading) -> Option<String> {
    match cell {
        Cell::Number(f) if f.abs() >= 9.007_199_254_740_992e15 => {
            reading.error(
                column,
                format!(
                    "{} is too long for an Excel number and lost its last digits; format the column as Text and \
                     export it again",
                    cell.text()
                ),
            );
            None
        }
        _ => {
            let text = repair::cleaned(cell);
            let t = text.trim_start_matches('=').trim_matches(['"', '\'', '\t', ' ']);
            (!t.is_empty()).then(|| t.to_string())
        }
    }
}

fn read_phones(cell: &Cell, column: &str, ctx: &RowContext<'_>, r: &mut Reading) {
    let text = match cell {
        Cell::Number(f) => {
            r.repaired += 1;
            repair::number_text(*f)
        }
        Cell::Text(t) => t.clone(),
        other => {
            r.error(column, format!("{} is not a phone number", other.text()));
            return;
        }
    };
    let (text, changed) = repair::clean(&text);
    if changed {
        r.repaired += 1;
    }
    for part in text.split(['/', ',', ';', '，', '；', '、']) {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        if part.contains('@') {
            read_email(part, column, r);
            continue;
        }
        if is_masked(part) {
            r.attribute("masked_phone", part);
            continue;
        }
        if is_virtual(part) {
            r.attribute("virtual_phone", part);
            continue;
        }
        let value = match repair::phone_from_number_text(part) {
            Err(lost) => {
                r.error(column, format!("{part}: {lost}"));
                continue;
            }
            Ok(Some(digits)) => {
                r.repaired += 1;
                digits
            }
            Ok(None) => part.to_string(),
        };
        // Fast for plain CN mobiles (no libphonenumber), remembered for the domain otherwise.
        let valid = normalize::phone(&value, ctx.region).map(|_| ());
        match valid {
            Ok(()) => {
                r.subject.identifiers.push(RawIdentifier {
                    kind: "phone".into(),
                    value,
                    scope: String::new(),
                });
                r.present.push(Field::Phone);
            }
            Err(e) => r.error(column, e.to_string()),
        }
    }
}

fn read_email(text: &str, column: &str, r: &mut Reading) {
    for part in text.split([';', ',', '，', '；', '、', ' ', '/']) {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        if part.contains('*') {
            r.attribute("masked_email", part);
            continue;
        }
        match normalize::email(part) {
            Ok(_) => {
                r.subject.identifiers.push(RawIdentifier {
                    kind: "email".into(),
                    value: part.to_string(),
                    scope: String::new(),
                });
                r.present.push(Field::Email);
            }
            Err(e) => r.error(column, e.to_string()),
        }
    }
}

fn read_cell(field: &Field, cell: &Cell, column: &str, ctx: &RowContext<'_>, r: &mut Reading) {
    let text = || repair::cleaned(cell);
    match field {
        Field::Phone => return read_phones(cell, column, ctx, r),
        Field::Email => {
            let t = text();
            return read_email(&t, column, r);
        }
        Field::Name => set_once(&mut r.subject.name, &text()),
        Field::Company => set_once(&mut r.subject.company, &text()),
        Field::Title => set_once(&mut r.subject.title, &text()),
        Field::Industry => set_once(&mut r.subject.industry, &text()),
        Field::CompanySize => set_once(&mut r.subject.company_size, &text()),
        Field::Region => set_once(&mut r.subject.region, &text()),
        Field::Address => set_once(&mut r.subject.address, &text()),
        Field::SourceChannel => r.source_channel = Some(text()),
        Field::OccurredAt => match repair::date_us(cell, ctx.offset) {
            Ok(Some(us)) => {
                if matches!(cell, Cell::Number(_)) {
                    r.repaired += 1;
                }
                r.occurred_at_us.get_or_insert(us);
            }
            Ok(None) => {}
            Err(reason) => return r.error(column, reason),
        },
        Field::Note => {
            r.details.insert("note".into(), text());
        }
        Field::CustomerNo => match id_text(cell, column, r) {
            Some(value) => r.subject.identifiers.push(RawIdentifier {
                kind: "customer_no".into(),
                value,
                scope: CUSTOMER_NO_SCOPE.into(),
            }),
            None => return,
        },
        Field::DecisionMaker => {
            let t = text();
            let (name, title) = t.split_once(['/', '／']).unwrap_or((t.as_str(), ""));
            set_once(&mut r.subject.name, name.trim());
            set_once(&mut r.subject.title, title.trim());
        }
        Field::ScopedId(kind) => match id_text(cell, column, r) {
            Some(value) if value.contains('*') => {
                r.attribute(&format!("masked_{kind}"), &value);
                return;
            }
            Some(value) => r.scoped.push((kind.clone(), value)),
            None => return,
        },
        Field::Shop => r.shop = Some(text()),
        Field::OrderId => match id_text(cell, column, r) {
            Some(id) => r.order().order_id = id,
            None => return,
        },
        Field::OrderStatus => r.order().status = text(),
        Field::OrderAmount => match repair::amount_cents(cell) {
            Ok(Some(cents)) => r.order().total_cents = cents,
            Ok(None) => return,
            Err(reason) => return r.error(column, reason),
        },
        Field::ItemTitle => r.line().title = text(),
        Field::Sku => match id_text(cell, column, r) {
            Some(sku) => r.line().sku = sku,
            None => return,
        },
        Field::Quantity => {
            let t = text();
            match t.parse::<f64>() {
                Ok(q) if q >= 0.0 && q.fract() == 0.0 && q < 1e9 => r.line().quantity = q as i64,
                _ => return r.error(column, format!("{t:?} is not a whole quantity")),
            }
        }
        Field::Summary => set_once(&mut r.summary, &text()),
        Field::Detail(key) => {
            r.details.insert(key.clone(), text());
        }
        Field::DetailDate(key) => match repair::date_text(cell) {
            Ok(Some(d)) => {
                r.details.insert(key.clone(), d);
            }
            Ok(None) => {}
            Err(reason) => return r.error(column, reason),
        },
        Field::Attribute(key) => {
            let t = text();
            r.attribute(key, &t);
        }
        Field::Ignore => return,
    }
    r.present.push(field.clone());
}

/// The row as JSON (header → cell text) in column order, for `InboundHeader.raw`.
fn raw_json(plan: &SheetPlan, cells: &[Cell]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.push(b'{');
    let mut first = true;
    for (i, header) in plan.headers.iter().enumerate() {
        if plan.skip.get(i).copied().unwrap_or(false) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        let value = cells.get(i).map(|c| c.text()).unwrap_or_default();
        // Writing a string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, header);
        out.push(b':');
        let _ = serde_json::to_writer(&mut out, value.as_ref());
    }
    out.push(b'}');
    out
}

/// Reads one row into an event, or says why it cannot be imported.
/// `event_id` is [`event_id`] of the row (computed once by the caller).
pub fn build(ctx: &RowContext<'_>, row: u32, event_id: uuid::Uuid, cells: &[Cell]) -> Result<Built, Vec<CellError>> {
    let mut r = Reading::default();
    for (i, cell) in cells.iter().enumerate() {
        if cell.is_blank() || ctx.plan.skip.get(i).copied().unwrap_or(true) {
            continue;
        }
        let column = ctx.plan.headers[i].as_str();
        match ctx.plan.fields.get(i).and_then(Option::as_ref) {
            Some(field) => read_cell(field, cell, column, ctx, &mut r),
            None => {
                r.details.insert(column.to_string(), repair::cleaned(cell));
            }
        }
    }
    let scope = r
        .shop
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| ctx.source.to_string());
    for (kind, value) in std::mem::take(&mut r.scoped) {
        r.present.push(Field::ScopedId(kind.clone()));
        r.subject.identifiers.push(RawIdentifier {
            kind,
            value,
            scope: scope.clone(),
        });
    }
    if r.errors.is_empty() {
        for req in &ctx.template.required {
            if !req.any_of.iter().any(|f| r.present.contains(f)) {
                r.errors.push(CellError {
                    column: String::new(),
                    reason: req.message.clone(),
                });
            }
        }
    }
    if !r.errors.is_empty() {
        return Err(r.errors);
    }
    if let Some(channel) = r
        .source_channel
        .take()
        .or_else(|| ctx.template.default_source_channel.clone())
    {
        r.details.insert("source_channel".into(), channel);
    }
    r.details.insert("template".into(), ctx.template.name.clone());
    r.details.insert("file".into(), ctx.file_name.to_string());
    r.details.insert("sheet".into(), ctx.sheet.to_string());
    r.details.insert("row".into(), row.to_string());
    if let Some(line) = r.line.take() {
        r.order().lines.push(line);
    }
    let header = InboundHeader {
        event_id: event_id.to_string(),
        occurred_at_us: r.occurred_at_us.unwrap_or(ctx.recorded_at_us),
        recorded_at_us: ctx.recorded_at_us,
        channel: CHANNEL.into(),
        channel_instance: ctx.source.to_string(),
        source_ref: [ctx.file_sha256, "/", ctx.sheet, "/", &row.to_string()].concat(),
        raw: raw_json(ctx.plan, cells),
        raw_content_type: "application/json".into(),
    };
    let event = InboundEvent::Channel(ChannelEventV1 {
        header: Some(header),
        event_type: EVENT_TYPE.into(),
        observation: Some(Observation {
            subject: Some(r.subject),
            attribution: None,
            consent: None,
            interaction: Some(Interaction {
                kind: ctx.template.interaction_kind.clone(),
                summary: r.summary,
                order: r.order,
                details: r.details,
            }),
        }),
    });
    Ok(Built {
        event_id,
        event,
        repaired: r.repaired,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::template::builtin;

    fn ctx_build(template: &str, headers: &[&str], row: &[Cell]) -> Result<Built, Vec<CellError>> {
        let t = builtin(template).unwrap();
        let header_cells: Vec<Cell> = headers.iter().map(|h| Cell::Text(h.to_string())).collect();
        let plan = SheetPlan::new(&t, &header_cells);
        let ctx = RowContext {
            template: &t,
            plan: &plan,
            region: phonenumber::country::Id::CN,
            offset: FixedOffset::east_opt(8 * 3600).unwrap(),
            source: "2026上海展会",
            file_sha256: "abc",
            file_name: "f.csv",
            sheet: "csv",
            recorded_at_us: 1,
        };
        build(&ctx, 2, event_id("abc", "csv", 2), row)
    }

    fn text(s: &str) -> Cell {
        Cell::Text(s.into())
    }

    #[test]
    fn trade_show_row_becomes_an_event_with_repaired_identifiers() {
        let built = ctx_build(
            "trade-show",
            &["客户名称", "联系人", "联系方式", "邮箱", "留资时间", "展位"],
            &[
                text("上海某某科技有限公司"),
                text("张伟"),
                Cell::Number(13800138000.0),
                text("ZW@Example.com"),
                Cell::Number(45432.0),
                text("A12"),
            ],
        )
        .unwrap();
        let obs = built.event.observation().unwrap();
        let subject = obs.subject.as_ref().unwrap();
        assert_eq!(subject.company, "上海某某科技有限公司");
        assert_eq!(subject.name, "张伟");
        let ids: Vec<_> = subject
            .identifiers
            .iter()
            .map(|i| (i.kind.as_str(), i.value.as_str()))
            .collect();
        assert_eq!(ids, [("phone", "13800138000"), ("email", "ZW@Example.com")]);
        let details = &obs.interaction.as_ref().unwrap().details;
        assert_eq!(details["展位"], "A12");
        assert_eq!(details["source_channel"], "展会");
        assert_eq!(built.repaired, 2);
        assert_eq!(built.event.event_id(), event_id("abc", "csv", 2).to_string());
        let raw = &built.event.header().unwrap().raw;
        assert!(
            std::str::from_utf8(raw)
                .unwrap()
                .starts_with(r#"{"客户名称":"上海某某科技有限公司","联系人":"张伟","联系方式":"13800138000""#)
        );
    }

    #[test]
    fn lost_digits_and_bad_emails_reject_the_row_with_columns() {
        let errors = ctx_build(
            "trade-show",
            &["客户名称", "联系方式", "邮箱"],
            &[text("A公司"), text("1.38E+10"), text("zw@example")],
        )
        .unwrap_err();
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0].column, "联系方式");
        assert!(
            errors[0].reason.contains("kept only 3 of its 11 digits"),
            "{}",
            errors[0].reason
        );
        assert_eq!(errors[1].column, "邮箱");
        let missing = ctx_build("trade-show", &["客户名称", "联系方式"], &[text("A公司"), Cell::Empty]).unwrap_err();
        assert!(missing[0].reason.contains("needs a phone or an email"));
    }

    #[test]
    fn marketplace_orders_keep_masked_phones_as_attributes_and_scope_buyer_ids() {
        let built = ctx_build(
            "taobao-orders",
            &[
                "订单编号",
                "买家会员名",
                "联系手机",
                "买家实际支付金额",
                "宝贝标题",
                "店铺名称",
            ],
            &[
                text("=\"2893749283749283749\""),
                text("tb_buyer_01"),
                text("138****8000"),
                text("¥1,299.00"),
                text("保温杯"),
                text("某某旗舰店"),
            ],
        )
        .unwrap();
        let obs = built.event.observation().unwrap();
        let subject = obs.subject.as_ref().unwrap();
        assert_eq!(subject.identifiers.len(), 1);
        assert_eq!(subject.identifiers[0].kind, "buyer_open_uid");
        assert_eq!(subject.identifiers[0].scope, "某某旗舰店");
        assert_eq!(subject.attributes["masked_phone"], "138****8000");
        let order = obs.interaction.as_ref().unwrap().order.as_ref().unwrap();
        assert_eq!(order.order_id, "2893749283749283749");
        assert_eq!(order.total_cents, 129_900);
        assert_eq!(order.lines[0].title, "保温杯");
    }
}
