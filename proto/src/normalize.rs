//! Normalisation for matching: the one definition shared by ingest (validation)
//! and the domain (identity). Raw values are always kept in the events; these
//! functions only produce the keys that are compared.

use unicode_normalization::UnicodeNormalization;

/// Why a value cannot be used as an identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NormalizeError {
    #[error("invalid phone {value:?}: {reason}")]
    Phone { value: String, reason: String },
    #[error("malformed email {value:?}: {reason}")]
    Email { value: String, reason: String },
    #[error("masked value {0:?} cannot identify anyone")]
    Masked(String),
    #[error("empty value")]
    Empty,
}

/// Whether `value` is NFKC already by the quick check (ASCII always is; most Chinese is):
/// a fraction of a rewrite's cost. `false` can also mean "maybe": rewrite then.
pub fn is_nfkc(value: &str) -> bool {
    value.is_ascii()
        || value.chars().all(|c| c.is_ascii() || CJK_UNIFIED.contains(&c))
        || unicode_normalization::is_nfkc_quick(value.chars()) == unicode_normalization::IsNormalized::Yes
}

/// CJK Unified Ideographs: every one is NFKC as it is and combines with nothing (test
/// `cjk_unified_ideographs_are_nfkc_as_they_are`), so text of them and ASCII needs no table
/// lookups (two a character: ~10,000 instructions for an import row's Chinese cells).
const CJK_UNIFIED: std::ops::RangeInclusive<char> = '\u{4E00}'..='\u{9FFF}';

/// NFKC (full-width → half-width, compatibility forms) and trimmed.
///
/// A value that is NFKC already ([`is_nfkc`]) is only trimmed: exactly what the rewrite
/// gives, without it (an email's normalisation was ~5,000 instructions, most of an import
/// row's identity work).
pub fn nfkc(value: &str) -> String {
    if is_nfkc(value) {
        return value.trim().to_string();
    }
    value.nfkc().collect::<String>().trim().to_string()
}

/// Phones already parsed, by region and raw spelling. One web form's phone is parsed by
/// the channel, the domain's decision and the matching index: parsing is the costliest
/// step of all three, and the answer never changes.
static PHONES: std::sync::LazyLock<
    quick_cache::sync::Cache<(phonenumber::country::Id, String), Result<String, NormalizeError>>,
> = std::sync::LazyLock::new(|| quick_cache::sync::Cache::new(100_000));

/// A phone number in E.164 (`+8613800138000`), `default_region` for numbers without a country code.
pub fn phone(value: &str, default_region: phonenumber::country::Id) -> Result<String, NormalizeError> {
    if let Some(e164) = plain_cn_mobile(value, default_region) {
        return Ok(e164);
    }
    let key = (default_region, value.to_string());
    if let Some(known) = PHONES.get(&key) {
        return known;
    }
    let parsed = parse_phone(value, default_region);
    PHONES.insert(key, parsed.clone());
    parsed
}

/// A CN mobile number in a plain shape (13x, 15x but 154, 18x; spaces, dashes and a
/// +86/0086 prefix allowed) in E.164, without asking libphonenumber: its regex matching
/// costs ~25 µs a number and dominated imports (a million distinct numbers also outgrow
/// the memo). The test checks it agrees with libphonenumber on every shape it accepts.
fn plain_cn_mobile(value: &str, region: phonenumber::country::Id) -> Option<String> {
    let v = value.trim();
    let v = match v.strip_prefix("+86").or_else(|| v.strip_prefix("0086")) {
        Some(rest) => rest,
        None if region == phonenumber::country::Id::CN => v,
        None => return None,
    };
    let mut digits = [0u8; 11];
    let mut n = 0;
    for b in v.bytes() {
        match b {
            b'0'..=b'9' => {
                *digits.get_mut(n)? = b;
                n += 1;
            }
            b' ' | b'-' => {}
            _ => return None,
        }
    }
    let plain = n == 11
        && digits[0] == b'1'
        && match digits[1] {
            b'3' | b'8' => true,
            b'5' => digits[2] != b'4',
            _ => false,
        };
    plain.then(|| ["+86", std::str::from_utf8(&digits).unwrap_or_default()].concat())
}

fn parse_phone(value: &str, default_region: phonenumber::country::Id) -> Result<String, NormalizeError> {
    let text = nfkc(value);
    if text.is_empty() {
        return Err(NormalizeError::Empty);
    }
    if text.contains('*') {
        return Err(NormalizeError::Masked(value.to_string()));
    }
    let err = |reason: &str| NormalizeError::Phone {
        value: value.to_string(),
        reason: reason.to_string(),
    };
    if !text
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '+' | ' ' | '-' | '(' | ')' | '.' | '\u{a0}'))
    {
        return Err(err("only digits, spaces, + - ( ) . are allowed"));
    }
    let parsed = phonenumber::parse(Some(default_region), &text).map_err(|e| err(&e.to_string()))?;
    if !phonenumber::is_valid(&parsed) {
        return Err(err(
            "not a valid number for its region; write it with its country code, e.g. +86 138 0013 8000",
        ));
    }
    Ok(parsed.format().mode(phonenumber::Mode::E164).to_string())
}

/// An email trimmed, NFKC-normalised and lower-cased.
pub fn email(value: &str) -> Result<String, NormalizeError> {
    let text = nfkc(value).to_lowercase();
    if text.is_empty() {
        return Err(NormalizeError::Empty);
    }
    let err = |reason: &str| NormalizeError::Email {
        value: value.to_string(),
        reason: reason.to_string(),
    };
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(err("contains spaces"));
    }
    let Some((local, domain)) = text.rsplit_once('@') else {
        return Err(err("has no @"));
    };
    if local.is_empty() || local.contains('@') {
        return Err(err("the part before @ is empty or has a second @"));
    }
    if !domain.contains('.') || domain.starts_with('.') || domain.ends_with('.') || domain.contains("..") {
        return Err(err("the domain after @ must look like example.com"));
    }
    if text.contains('*') {
        return Err(NormalizeError::Masked(value.to_string()));
    }
    Ok(text)
}

/// A name for comparison: NFKC, lower-case, without spaces and punctuation.
pub fn name(value: &str) -> String {
    nfkc(value)
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric())
        .collect()
}

/// Parses a region code like "CN" or "US"; `None` if unknown.
pub fn region(code: &str) -> Option<phonenumber::country::Id> {
    code.trim().to_ascii_uppercase().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use phonenumber::country::Id::CN;

    #[test]
    fn the_already_normalised_fast_path_gives_what_the_rewrite_gives() {
        let rewrite = |v: &str| v.nfkc().collect::<String>().trim().to_string();
        for v in [
            "",
            "  zw@example.com ",
            "张伟",
            " 上海市浦东新区 ",
            "ＺＷ＠ｅｘａｍｐｌｅ．ｃｏｍ",
            "\u{3000}１３８\u{3000}",
            "e\u{301}cole",
            " \u{301}abc",
            "ﬁle ① ㈱",
            "\u{a0}nbsp\u{a0}",
            "\u{feff}bom",
            "Ａ\u{2003}B",
        ] {
            assert_eq!(nfkc(v), rewrite(v), "{v:?}");
        }
    }

    #[test]
    fn cjk_unified_ideographs_are_nfkc_as_they_are() {
        use unicode_normalization::{IsNormalized, is_nfkc_quick};
        for c in CJK_UNIFIED {
            let s = format!("a{c}b{c}");
            assert_eq!(is_nfkc_quick(s.chars()), IsNormalized::Yes, "{c:?}");
            assert_eq!(s.nfkc().collect::<String>(), s, "{c:?}");
        }
        // Next to anything else, the tables decide.
        assert!(!is_nfkc("张\u{301}"));
        assert!(!is_nfkc("张\u{3000}伟"));
        assert!(!is_nfkc("张伟１"));
        assert!(is_nfkc("张伟 Zhang 1"));
    }

    #[test]
    fn the_mobile_fast_path_agrees_with_libphonenumber() {
        use phonenumber::country::Id::US;
        let mut accepted = 0;
        for prefix in (130..=139).chain(150..=159).chain(180..=189) {
            for rest in ["00138000", "12345678", "99999999"] {
                for shape in [
                    format!("{prefix}{rest}"),
                    format!("+86 {prefix} {rest}"),
                    format!("0086{prefix}-{rest}"),
                    format!(" {prefix}-{rest} "),
                ] {
                    if let Some(fast) = plain_cn_mobile(&shape, CN) {
                        assert_eq!(Ok(fast), parse_phone(&shape, CN), "{shape}");
                        accepted += 1;
                    }
                }
            }
        }
        assert!(accepted > 300, "{accepted}");
        assert_eq!(plain_cn_mobile("138 0013 8000", CN).as_deref(), Some("+8613800138000"));
        assert_eq!(plain_cn_mobile("138 0013 8000", US), None);
        assert_eq!(plain_cn_mobile("+8613800138000", US).as_deref(), Some("+8613800138000"));
        assert_eq!(plain_cn_mobile("15400138000", CN), None);
        assert_eq!(plain_cn_mobile("1380013800", CN), None);
        assert_eq!(plain_cn_mobile("138001380001", CN), None);
        assert_eq!(
            plain_cn_mobile("１３８００１３８０００", CN),
            None,
            "full-width: libphonenumber's path"
        );
    }

    #[test]
    fn phones_normalise_to_e164() {
        for (raw, want) in [
            ("138 0013 8000", "+8613800138000"),
            ("１３８００１３８０００", "+8613800138000"),
            ("+86 138-0013-8000", "+8613800138000"),
            ("008613800138000", "+8613800138000"),
            ("+1 (415) 555-2671", "+14155552671"),
        ] {
            assert_eq!(phone(raw, CN).as_deref(), Ok(want), "{raw}");
        }
        assert!(matches!(phone("12345", CN), Err(NormalizeError::Phone { .. })));
        assert!(matches!(phone("138****8000", CN), Err(NormalizeError::Masked(_))));
        assert!(matches!(phone("call me", CN), Err(NormalizeError::Phone { .. })));
    }

    #[test]
    fn emails_are_trimmed_and_lowercased() {
        assert_eq!(email("  ZW@Example.com ").as_deref(), Ok("zw@example.com"));
        assert_eq!(email("ＺＷ＠example.com").as_deref(), Ok("zw@example.com"));
        for bad in ["zw", "zw@", "@x.com", "zw@example", "z w@x.com", "a@b@c.com"] {
            assert!(matches!(email(bad), Err(NormalizeError::Email { .. })), "{bad}");
        }
    }

    #[test]
    fn names_drop_spaces_and_punctuation() {
        assert_eq!(name(" 张 伟 "), "张伟");
        assert_eq!(name("O'Brien, Mary"), "obrienmary");
    }
}
