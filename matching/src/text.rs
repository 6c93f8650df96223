//! Normalisation of raw field values into matching keys, and the cheap string
//! distances the comparisons use. Matching keys only: raw values are never
//! rewritten here (the event keeps what the channel sent).

use pinyin::ToPinyin;
use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

/// True for the CJK ideographs that carry a pinyin reading.
pub(crate) fn is_cjk(c: char) -> bool {
    matches!(c, '\u{4E00}'..='\u{9FFF}' | '\u{3400}'..='\u{4DBF}' | '\u{F900}'..='\u{FAFF}')
}

/// Splits a value into lower-case alphanumeric tokens: NFKD with accents
/// dropped (so full-width and accented forms agree), apostrophes removed
/// (o'brien = obrien), every other symbol a separator, and every CJK
/// ideograph its own token in plain pinyin (王 → "wang").
pub(crate) fn tokens(raw: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for c in raw.nfkd() {
        if is_combining_mark(c) || c == '\'' || c == '\u{2019}' {
            continue;
        }
        if is_cjk(c) {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            match c.to_pinyin() {
                Some(p) => out.push(p.plain().to_string()),
                None => out.push(c.to_string()),
            }
        } else if c.is_alphanumeric() {
            current.extend(c.to_lowercase());
        } else if !current.is_empty() {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Tokens of a full name with a CJK name grouped the Chinese way: the first
/// ideograph is the surname, the rest one given-name token, so 王小明 gives
/// `["wang", "xiaoming"]`, like its romanisation "Wang Xiaoming".
pub(crate) fn full_name_tokens(raw: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut segment = String::new();
    let mut segment_is_cjk = false;
    let mut flush = |segment: &mut String, is_cjk: bool| {
        let toks = tokens(segment);
        if is_cjk {
            if let Some((first, rest)) = toks.split_first() {
                out.push(first.clone());
                if !rest.is_empty() {
                    out.push(rest.concat());
                }
            }
        } else {
            out.extend(toks);
        }
        segment.clear();
    };
    for c in raw.chars() {
        let c_is_cjk = is_cjk(c);
        if c_is_cjk != segment_is_cjk && !segment.is_empty() {
            flush(&mut segment, segment_is_cjk);
        }
        segment_is_cjk = c_is_cjk;
        segment.push(c);
    }
    flush(&mut segment, segment_is_cjk);
    out
}

/// Address tokens with the usual street-type abbreviations expanded, so
/// "12 wallaby pl" and "12 wallaby place" agree.
pub(crate) fn address_tokens(raw: &str) -> Vec<String> {
    tokens(raw)
        .into_iter()
        .map(|t| {
            let long = match t.as_str() {
                "st" | "str" => "street",
                "rd" => "road",
                "ave" | "av" => "avenue",
                "pl" => "place",
                "cres" | "cr" => "crescent",
                "dr" | "drv" => "drive",
                "ct" | "crt" => "court",
                "hwy" => "highway",
                "ln" => "lane",
                "tce" => "terrace",
                "cct" => "circuit",
                "pde" => "parade",
                "blvd" => "boulevard",
                "lu" => "road",
                "jie" => "street",
                _ => return t,
            };
            long.to_string()
        })
        .collect()
}

/// A date as `YYYYMMDD` when it can be read (`19560409`, `1956-04-09`,
/// `1956/4/9`, `09/04/1956` read day first), otherwise its digits.
pub(crate) fn date_key(raw: &str) -> String {
    let parts: Vec<&str> = raw
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .collect();
    match parts.as_slice() {
        [y, m, d] if y.len() == 4 && m.len() <= 2 && d.len() <= 2 => format!("{y}{m:0>2}{d:0>2}"),
        [d, m, y] if y.len() == 4 && m.len() <= 2 && d.len() <= 2 => format!("{y}{m:0>2}{d:0>2}"),
        _ => parts.concat(),
    }
}

/// Phone digits without international prefix, country code (86, 61, 1, 44
/// when the rest is a full national number) or trunk zero.
pub(crate) fn phone_key(raw: &str) -> String {
    // NFKC leaves ASCII as it is: its digits are the raw text's.
    let mut digits: String = if raw.is_ascii() {
        raw.chars().filter(char::is_ascii_digit).collect()
    } else {
        raw.nfkc().filter(char::is_ascii_digit).collect()
    };
    let mut international = raw.trim_start().starts_with('+');
    if let Some(rest) = digits.strip_prefix("00") {
        digits = rest.to_string();
        international = true;
    }
    // 86 + an 11-digit mobile is unambiguous; other codes only after + or 00
    // (a Chinese mobile starts with 1 like a NANP country code).
    for (code, national_len) in [("86", 11), ("61", 9), ("44", 10), ("1", 10)] {
        if (international || code == "86")
            && digits.len() == code.len() + national_len
            && let Some(rest) = digits.strip_prefix(code)
        {
            digits = rest.to_string();
            break;
        }
    }
    digits.trim_start_matches('0').to_string()
}

/// Lower-cased email and its canonical local part (no `+tag`, no dots).
pub(crate) fn email_key(raw: &str) -> (String, String) {
    // NFKC leaves ASCII as it is, and lower-cases it as ASCII: most emails skip the
    // normaliser (~7,000 instructions an email with it, a tenth of that without).
    let email: String = if raw.is_ascii() {
        raw.chars()
            .filter(|c| !c.is_whitespace())
            .map(|c| c.to_ascii_lowercase())
            .collect()
    } else {
        raw.nfkc()
            .filter(|c| !c.is_whitespace())
            .flat_map(char::to_lowercase)
            .collect()
    };
    let local = email.split('@').next().unwrap_or_default();
    let local = local.split('+').next().unwrap_or_default();
    let canonical = local.replace('.', "");
    (email, canonical)
}

/// Double Metaphone primary code of a latin token (empty for others).
pub(crate) fn phonetic(key: &str) -> String {
    use rphonetic::{DoubleMetaphone, Encoder};
    if key.is_empty() || !key.is_ascii() {
        return String::new();
    }
    DoubleMetaphone::default().encode(key)
}

/// Optimal-string-alignment distance is at most one (one insertion,
/// deletion, substitution or adjacent transposition). Allocation-free.
pub(crate) fn within_one_edit(a: &str, b: &str) -> bool {
    if !a.is_ascii() || !b.is_ascii() {
        return strsim::osa_distance(a, b) <= 1;
    }
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len().abs_diff(b.len()) > 1 {
        return false;
    }
    let p = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let (a, b) = (&a[p..], &b[p..]);
    match a.len().cmp(&b.len()) {
        std::cmp::Ordering::Equal => {
            a.is_empty() || a[1..] == b[1..] || (a.len() >= 2 && a[0] == b[1] && a[1] == b[0] && a[2..] == b[2..])
        }
        std::cmp::Ordering::Greater => a[1..] == *b,
        std::cmp::Ordering::Less => *a == b[1..],
    }
}

/// OSA distance at most two, with a length pre-check before the O(n·m) work.
pub(crate) fn within_two_edits(a: &str, b: &str) -> bool {
    if a.len().abs_diff(b.len()) > 2 {
        return false;
    }
    if a.is_ascii() && b.is_ascii() && a.len() < 32 && b.len() < 32 {
        return osa_ascii(a.as_bytes(), b.as_bytes()) <= 2;
    }
    strsim::osa_distance(a, b) <= 2
}

/// Optimal string alignment distance of short ASCII strings, three rolling rows on the stack.
fn osa_ascii(a: &[u8], b: &[u8]) -> usize {
    let m = b.len();
    let (mut two_back, mut prev, mut cur) = ([0u8; 33], [0u8; 33], [0u8; 33]);
    for (j, v) in prev.iter_mut().enumerate().take(m + 1) {
        *v = j as u8;
    }
    for i in 1..=a.len() {
        cur[0] = i as u8;
        for j in 1..=m {
            let cost = u8::from(a[i - 1] != b[j - 1]);
            let mut v = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(two_back[j - 2] + 1);
            }
            cur[j] = v;
        }
        two_back = prev;
        prev = cur;
    }
    usize::from(prev[m])
}

/// Jaro–Winkler similarity (prefix scale 0.1, prefix up to 4), allocation
/// free for ASCII strings up to 64 bytes; `strsim` otherwise.
pub(crate) fn jaro_winkler(a: &str, b: &str) -> f64 {
    let (x, y) = (a.as_bytes(), b.as_bytes());
    if !a.is_ascii() || !b.is_ascii() || x.len() > 64 || y.len() > 64 {
        return strsim::jaro_winkler(a, b);
    }
    if x.is_empty() || y.is_empty() {
        return if x.len() == y.len() { 1.0 } else { 0.0 };
    }
    let window = (x.len().max(y.len()) / 2).saturating_sub(1);
    let (mut x_flags, mut y_flags) = (0u64, 0u64);
    let mut matches = 0usize;
    for (i, &c) in x.iter().enumerate() {
        let lo = i.saturating_sub(window);
        let hi = (i + window + 1).min(y.len());
        if let Some(j) = (lo..hi).find(|&j| y_flags & (1 << j) == 0 && y[j] == c) {
            x_flags |= 1 << i;
            y_flags |= 1 << j;
            matches += 1;
        }
    }
    if matches == 0 {
        return 0.0;
    }
    let mut transpositions = 0usize;
    let mut j = 0usize;
    for (i, &c) in x.iter().enumerate() {
        if x_flags & (1 << i) != 0 {
            while y_flags & (1 << j) == 0 {
                j += 1;
            }
            if c != y[j] {
                transpositions += 1;
            }
            j += 1;
        }
    }
    let m = matches as f64;
    let jaro = (m / x.len() as f64 + m / y.len() as f64 + (m - (transpositions / 2) as f64) / m) / 3.0;
    let prefix = x.iter().zip(y).take(4).take_while(|(p, q)| p == q).count() as f64;
    jaro + prefix * 0.1 * (1.0 - jaro)
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    #[test]
    fn ascii_fast_paths_give_what_the_normaliser_gives() {
        let email_slow = |raw: &str| -> String {
            raw.nfkc()
                .filter(|c| !c.is_whitespace())
                .flat_map(char::to_lowercase)
                .collect()
        };
        let digits_slow = |raw: &str| -> String { raw.nfkc().filter(char::is_ascii_digit).collect() };
        for raw in [
            " Zhang.Wei+crm@Example.COM ",
            "a\tb\x0bc\x0cd\re\nf@x.cn",
            "+86 138-0013-8000",
            "0086 (138) 0013 8000",
            "",
            "~!@#$%^&*()_{}|:<>?",
        ] {
            assert_eq!(email_key(raw).0, email_slow(raw), "{raw:?}");
            let digits: String = raw.chars().filter(char::is_ascii_digit).collect();
            assert_eq!(digits, digits_slow(raw), "{raw:?}");
        }
        for raw in ["+86 138-0013-8000", "0086 (138) 0013 8000", "138 0013 8000"] {
            assert_eq!(phone_key(raw), "13800138000", "{raw:?}");
        }
        assert_eq!(phone_key("+1 (415) 555-0100"), "4155550100");
        // Not ASCII: the normaliser's way (full-width digits and letters).
        assert_eq!(phone_key("１３８００１３８０００"), "13800138000");
        assert_eq!(email_key("ＺＷ@Ｅｘａｍｐｌｅ.com").0, "zw@example.com");
    }

    #[test]
    fn normalises_values() {
        let cases = [
            ("tokens", tokens("  O'Brien-Smith  ")),
            ("tokens", tokens("Ｍａｒｙ José")),
            ("tokens", tokens("王小明")),
            ("full_name", full_name_tokens("王小明")),
            ("full_name", full_name_tokens("Xiaoming WANG")),
            ("full_name", full_name_tokens("欧阳 娜娜")),
            ("address", address_tokens("12 Wallaby Pl.")),
            (
                "date",
                vec![date_key("1956-4-9"), date_key("09/04/1956"), date_key("19560409")],
            ),
            (
                "phone",
                vec![
                    phone_key("+86 138 0013 8000"),
                    phone_key("(02) 9876 5432"),
                    phone_key("0061 2 9876 5432"),
                ],
            ),
            ("email", {
                let (e, l) = email_key(" John.Smith+crm@Example.COM ");
                vec![e, l]
            }),
            ("phonetic", vec![phonetic("smith"), phonetic("smyth"), phonetic("wang")]),
        ];
        let out: String = cases.iter().map(|(k, v)| format!("{k}: {v:?}\n")).collect();
        expect![[r#"
            tokens: ["obrien", "smith"]
            tokens: ["mary", "jose"]
            tokens: ["wang", "xiao", "ming"]
            full_name: ["wang", "xiaoming"]
            full_name: ["xiaoming", "wang"]
            full_name: ["ou", "yang", "na", "na"]
            address: ["12", "wallaby", "place"]
            date: ["19560409", "19560409", "19560409"]
            phone: ["13800138000", "298765432", "298765432"]
            email: ["john.smith+crm@example.com", "johnsmith"]
            phonetic: ["SM0", "SM0", "ANK"]
        "#]]
        .assert_eq(&out);
    }

    #[test]
    fn edit_distance_bands() {
        let pairs = [
            ("smith", "smiht"),
            ("smith", "smth"),
            ("smith", "smitth"),
            ("smith", "snith"),
            ("smith", "simth"),
        ];
        let pairs2 = [("smith", "smyht"), ("abc", "cba"), ("", "a"), ("ab", "")];
        let out: Vec<_> = pairs
            .iter()
            .chain(&pairs2)
            .map(|(a, b)| {
                let one = within_one_edit(a, b);
                assert_eq!(one, strsim::osa_distance(a, b) <= 1, "{a} {b}");
                assert_eq!(within_two_edits(a, b), strsim::osa_distance(a, b) <= 2, "{a} {b}");
                assert!(
                    (jaro_winkler(a, b) - strsim::jaro_winkler(a, b)).abs() < 1e-12,
                    "{a} {b}"
                );
                format!("{a}/{b}:{}{}", u8::from(one), u8::from(within_two_edits(a, b)))
            })
            .collect();
        expect![[r#"smith/smiht:11 smith/smth:11 smith/smitth:11 smith/snith:11 smith/simth:11 smith/smyht:01 abc/cba:01 /a:11 ab/:01"#]]
            .assert_eq(&out.join(" "));
    }
}
