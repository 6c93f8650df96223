//! Excel damage, repaired when nothing was lost and flagged when something was:
//! phones that became numbers (`13800138000.0`, `1.3800138E+10`), dates stored
//! as serial numbers (`45432`), full-width digits and spaces. Cell values as
//! read live here too ([`Cell`]); what a repaired value means for the customer
//! does not (see `row`).

use std::borrow::Cow;

use chrono::{FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, TimeZone};

/// A cell as read from the file.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Empty,
    Text(String),
    /// A number cell of a spreadsheet (never produced by CSV).
    Number(f64),
    /// A date cell of a spreadsheet: year, month, day, hour, minute, second.
    Date(u16, u8, u8, u8, u8, u8),
    Bool(bool),
    /// A formula error such as `#N/A`.
    Error(String),
}

impl Cell {
    /// The cell as text (what a person sees; numbers without a useless `.0`).
    pub fn text(&self) -> Cow<'_, str> {
        match self {
            Cell::Empty => Cow::Borrowed(""),
            Cell::Text(s) => Cow::Borrowed(s.as_str()),
            Cell::Number(f) => Cow::Owned(number_text(*f)),
            Cell::Date(y, mo, d, h, mi, s) => Cow::Owned(if (*h, *mi, *s) == (0, 0, 0) {
                format!("{y:04}-{mo:02}-{d:02}")
            } else {
                format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}")
            }),
            Cell::Bool(b) => Cow::Borrowed(if *b { "TRUE" } else { "FALSE" }),
            Cell::Error(e) => Cow::Borrowed(e.as_str()),
        }
    }

    pub fn is_blank(&self) -> bool {
        match self {
            Cell::Empty => true,
            Cell::Text(s) => s
                .trim_matches(|c: char| c.is_whitespace() || c == '\u{3000}')
                .is_empty(),
            _ => false,
        }
    }
}

/// A float as a person would write it: integers without `.0` (exact below 2^53).
pub fn number_text(f: f64) -> String {
    if f.is_finite() && f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 {
        format!("{f:.0}")
    } else {
        format!("{f}")
    }
}

/// Text cleaned for reading values: NFKC (full-width digits, letters and the
/// ideographic space become ASCII) and trimmed. Returns whether anything changed
/// beyond trimming, so repairs can be counted.
pub fn clean(text: &str) -> (Cow<'_, str>, bool) {
    let trimmed = text.trim();
    // Most cells (ASCII, plain Chinese) are already NFKC: a quick check spares the rewrite.
    if proto::normalize::is_nfkc(trimmed) {
        return (Cow::Borrowed(trimmed), false);
    }
    let normalized = proto::normalize::nfkc(trimmed);
    let changed = normalized != trimmed;
    (Cow::Owned(normalized), changed)
}

/// A cell's text, cleaned as by [`clean`].
pub fn cleaned(cell: &Cell) -> String {
    let text = cell.text();
    clean(&text).0.into_owned()
}

/// Why a number-like phone cannot be restored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostDigits {
    pub kept: usize,
    pub needed: usize,
}

impl std::fmt::Display for LostDigits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Excel turned this number into scientific notation and kept only {} of its {} digits; \
             format the column as Text in Excel, type the full number again and re-import this row",
            self.kept, self.needed
        )
    }
}

/// Restores a phone that Excel turned into a number, if no digit was lost.
///
/// `Ok(None)`: the text is not number-damaged (use it as it is). `Ok(Some(digits))`:
/// restored (`13800138000.0` → `13800138000`, `1.3800138000E+10` → `13800138000`).
/// `Err`: scientific notation that dropped digits (`1.38E+10`), which nobody can restore.
///
/// A mantissa keeps exactly the digits written: `1.38001380E+10` shows 9 of the 11
/// digits, so the last two are unknown (it could be 13800138000 or 13800138049) and the
/// row is flagged rather than guessed — a guessed phone would merge two people.
pub fn phone_from_number_text(text: &str) -> Result<Option<String>, LostDigits> {
    let t = text.trim();
    // 13800138000.0 / 13800138000.00
    if let Some((int, frac)) = t.split_once('.')
        && !int.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && !frac.is_empty()
        && frac.bytes().all(|b| b == b'0')
        && !frac.contains(['e', 'E'])
    {
        return Ok(Some(int.to_string()));
    }
    let Some((mantissa, exponent)) = t.split_once(['e', 'E']) else {
        return Ok(None);
    };
    let exponent = exponent.strip_prefix('+').unwrap_or(exponent);
    let Ok(exponent) = exponent.parse::<u32>() else {
        return Ok(None);
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.len() != 1
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || !(5..=17).contains(&exponent)
    {
        return Ok(None);
    }
    let needed = exponent as usize + 1;
    let kept = 1 + frac.len();
    if kept < needed {
        return Err(LostDigits { kept, needed });
    }
    let digits: String = int.chars().chain(frac.chars()).collect();
    // More written digits than the integer has: the extra ones must be zeros.
    if digits[needed..].bytes().any(|b| b != b'0') {
        return Ok(None);
    }
    Ok(Some(digits[..needed].to_string()))
}

/// When a date cell happened, in unix micros, reading text in `offset` (local time of the sheet).
///
/// Accepts date cells, Excel serials (`45432`, `45432.5` — days since 1899-12-30), `20260520`,
/// `2026-05-20`, `2026/5/20 14:30`, `2026.5.20`, `2026年5月20日 14时30分`, RFC 3339.
/// `Ok(None)` for an empty cell; `Err` says what was expected.
pub fn date_us(cell: &Cell, offset: FixedOffset) -> Result<Option<i64>, String> {
    let local = match cell {
        Cell::Empty => return Ok(None),
        Cell::Date(y, mo, d, h, mi, s) => NaiveDate::from_ymd_opt(i32::from(*y), u32::from(*mo), u32::from(*d))
            .and_then(|date| date.and_hms_opt(u32::from(*h), u32::from(*mi), u32::from(*s)))
            .ok_or_else(|| format!("{} is not a calendar date", cell.text()))?,
        Cell::Number(f) => from_serial(*f).ok_or_else(|| {
            format!(
                "{} is a number, not a date; write it as 2026-05-20 or 2026-05-20 14:30",
                cell.text()
            )
        })?,
        Cell::Text(t) => {
            let (text, _) = clean(t);
            if text.is_empty() {
                return Ok(None);
            }
            parse_date_text(&text).ok_or_else(|| {
                format!("{t:?} is not a date; write it as 2026-05-20 or 2026-05-20 14:30 (or use a date cell)")
            })?
        }
        Cell::Bool(_) | Cell::Error(_) => return Err(format!("{} is not a date", cell.text())),
    };
    let at = offset
        .from_local_datetime(&local)
        .single()
        .ok_or_else(|| format!("{local} does not exist in UTC{offset}"))?;
    Ok(Some(at.timestamp_micros()))
}

/// The same as [`date_us`] but as text `YYYY-MM-DD[ HH:MM:SS]` (for details such as 预计解决时间).
pub fn date_text(cell: &Cell) -> Result<Option<String>, String> {
    let offset = FixedOffset::east_opt(0).ok_or("no UTC offset")?;
    let Some(us) = date_us(cell, offset)? else {
        return Ok(None);
    };
    let Some(at) = chrono::DateTime::from_timestamp_micros(us) else {
        return Err(format!("{} is out of range", cell.text()));
    };
    let naive = at.naive_utc();
    Ok(Some(if naive.time() == NaiveTime::MIN {
        naive.format("%Y-%m-%d").to_string()
    } else {
        naive.format("%Y-%m-%d %H:%M:%S").to_string()
    }))
}

/// An Excel serial (1900 date system) to a date and time, for serials between 1954 and 2119.
pub fn from_serial(serial: f64) -> Option<NaiveDateTime> {
    if !(20_000.0..=80_000.0).contains(&serial) {
        return yyyymmdd(serial);
    }
    let base = NaiveDate::from_ymd_opt(1899, 12, 30)?.and_hms_opt(0, 0, 0)?;
    let days = serial.trunc() as i64;
    let seconds = ((serial - serial.trunc()) * 86_400.0).round() as i64;
    base.checked_add_signed(chrono::Duration::days(days))?
        .checked_add_signed(chrono::Duration::seconds(seconds))
}

fn yyyymmdd(value: f64) -> Option<NaiveDateTime> {
    if value.fract() != 0.0 || !(19_000_101.0..=29_991_231.0).contains(&value) {
        return None;
    }
    let v = value as u32;
    NaiveDate::from_ymd_opt((v / 10_000) as i32, v / 100 % 100, v % 100)?.and_hms_opt(0, 0, 0)
}

fn parse_date_text(text: &str) -> Option<NaiveDateTime> {
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some(at.naive_utc() + chrono::Duration::seconds(i64::from(at.offset().local_minus_utc())));
    }
    if text.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && let Ok(serial) = text.parse::<f64>()
    {
        return from_serial(serial);
    }
    let unified: String = text
        .replace(['年', '月', '/', '.'], "-")
        .replace(['日', '号'], " ")
        .replace(['时', '点'], ":")
        .replace('分', ":")
        .replace('秒', "")
        .replace('T', " ");
    let mut parts = unified.split_whitespace();
    let date_part = parts.next()?;
    let time_part = parts.next();
    if parts.next().is_some() {
        return None;
    }
    let mut ymd = date_part.trim_end_matches('-').split('-');
    let (y, m, d) = (ymd.next()?, ymd.next()?, ymd.next()?);
    if ymd.next().is_some() {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(y.parse().ok()?, m.parse().ok()?, d.parse().ok()?)?;
    let time = match time_part.map(|t| t.trim_end_matches(':')) {
        None | Some("") => NaiveTime::MIN,
        Some(t) => {
            let mut hms = t.split(':');
            let h = hms.next()?.parse().ok()?;
            let mi = hms.next().map(str::parse).transpose().ok()?.unwrap_or(0);
            let s: f64 = hms.next().map(str::parse).transpose().ok()?.unwrap_or(0.0);
            NaiveTime::from_hms_opt(h, mi, s as u32)?
        }
    };
    Some(date.and_time(time))
}

/// A money amount in cents: `¥1,299.00`, `1299.5`, `￥88` (full-width too).
pub fn amount_cents(cell: &Cell) -> Result<Option<i64>, String> {
    let value = match cell {
        Cell::Empty => return Ok(None),
        Cell::Number(f) => *f,
        other => {
            let text = cleaned(other);
            let t: String = text
                .chars()
                .filter(|c| !matches!(c, '¥' | '￥' | ',' | ' ' | '元'))
                .collect();
            let t = t.strip_prefix("RMB").or_else(|| t.strip_prefix("CNY")).unwrap_or(&t);
            if t.is_empty() {
                return Ok(None);
            }
            t.parse::<f64>()
                .map_err(|_| format!("{:?} is not an amount; write it like 1299.00", other.text()))?
        }
    };
    if !value.is_finite() || value.abs() > 1e13 {
        return Err(format!("{value} is not a plausible amount"));
    }
    Ok(Some((value * 100.0).round() as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_are_restored_only_when_no_digit_was_lost() {
        assert_eq!(phone_from_number_text("13800138000.0"), Ok(Some("13800138000".into())));
        assert_eq!(
            phone_from_number_text("1.3800138000E+10"),
            Ok(Some("13800138000".into()))
        );
        assert_eq!(
            phone_from_number_text("1.3800138E+10"),
            Err(LostDigits { kept: 8, needed: 11 })
        );
        assert_eq!(
            phone_from_number_text("1.38001380000E+10"),
            Ok(Some("13800138000".into()))
        );
        assert_eq!(
            phone_from_number_text("1.3900139000e10"),
            Ok(Some("13900139000".into()))
        );
        assert_eq!(phone_from_number_text("1.39001390001e10"), Ok(None));
        assert_eq!(
            phone_from_number_text("1.38E+10"),
            Err(LostDigits { kept: 3, needed: 11 })
        );
        assert_eq!(
            phone_from_number_text("1.38001380E+10"),
            Err(LostDigits { kept: 9, needed: 11 })
        );
        assert_eq!(phone_from_number_text("138 0013 8000"), Ok(None));
        assert_eq!(phone_from_number_text("+86 138"), Ok(None));
        assert_eq!(number_text(13800138000.0), "13800138000");
        assert_eq!(number_text(1.5), "1.5");
    }

    #[test]
    fn dates_from_serials_text_and_cells() {
        let cn = FixedOffset::east_opt(8 * 3600).unwrap();
        let want = chrono::DateTime::parse_from_rfc3339("2024-05-20T00:00:00+08:00")
            .unwrap()
            .timestamp_micros();
        for text in [
            "2024-05-20",
            "2024/5/20",
            "2024.05.20",
            "2024年5月20日",
            "45432",
            "20240520",
            "２０２４-０５-２０",
        ] {
            assert_eq!(date_us(&Cell::Text(text.into()), cn), Ok(Some(want)), "{text}");
        }
        assert_eq!(date_us(&Cell::Number(45432.0), cn), Ok(Some(want)));
        assert_eq!(date_us(&Cell::Date(2024, 5, 20, 0, 0, 0), cn), Ok(Some(want)));
        let noon = want + 12 * 3600 * 1_000_000;
        assert_eq!(date_us(&Cell::Number(45432.5), cn), Ok(Some(noon)));
        assert_eq!(date_us(&Cell::Text("2024-05-20 12:00".into()), cn), Ok(Some(noon)));
        assert_eq!(
            date_us(&Cell::Text("2024-05-20T12:00:00+08:00".into()), cn),
            Ok(Some(noon))
        );
        assert!(date_us(&Cell::Text("下周三".into()), cn).is_err());
        assert_eq!(date_us(&Cell::Text(" ".into()), cn), Ok(None));
        assert_eq!(date_text(&Cell::Number(45432.0)), Ok(Some("2024-05-20".into())));
    }

    #[test]
    fn amounts_in_cents() {
        assert_eq!(amount_cents(&Cell::Text("¥1,299.50".into())), Ok(Some(129_950)));
        assert_eq!(amount_cents(&Cell::Text("８８元".into())), Ok(Some(8_800)));
        assert_eq!(amount_cents(&Cell::Number(19.9)), Ok(Some(1_990)));
        assert!(amount_cents(&Cell::Text("免费".into())).is_err());
    }
}
