//! A generator of realistic trade-show sheets for benchmarks and tests: Chinese
//! and Latin names, companies, CN mobile phones written the ways people write
//! them (spaces, dashes, +86, full-width), emails, and duplicate rows of the
//! same person at an exact rate, with typos in names and changed formatting.
//! Deterministic for a seed. Not used by the import itself.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::ImportError;

/// What [`generate`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedFile {
    pub path: PathBuf,
    pub rows: usize,
    /// Distinct people (what perfect deduplication finds).
    pub people: usize,
    /// Rows that repeat an earlier person (`rows - people`).
    pub duplicate_rows: usize,
}

/// The headers of generated sheets (template `trade-show`).
pub const HEADERS: [&str; 10] = [
    "客户名称",
    "联系人",
    "联系方式",
    "邮箱",
    "来源渠道",
    "留资时间",
    "所属行业",
    "规模",
    "地区",
    "备注",
];

/// splitmix64: tiny, fast and stable across versions (unlike library RNGs).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    fn pick<'a, T: ?Sized>(&mut self, items: &[&'a T]) -> &'a T {
        items[self.below(items.len())]
    }
}

const SURNAMES: [&str; 24] = [
    "王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周", "徐", "孙", "马", "朱", "胡", "郭", "何", "高", "林",
    "罗", "郑", "梁", "谢", "宋",
];
const SURNAME_PINYIN: [&str; 24] = [
    "wang", "li", "zhang", "liu", "chen", "yang", "huang", "zhao", "wu", "zhou", "xu", "sun", "ma", "zhu", "hu", "guo",
    "he", "gao", "lin", "luo", "zheng", "liang", "xie", "song",
];
const GIVEN: [&str; 40] = [
    "伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "娟", "涛", "明", "超", "秀", "霞",
    "平", "刚", "桂", "英", "华", "玉", "萍", "红", "鹏", "辉", "飞", "宁", "欣", "浩", "宇", "晨", "婷", "雪", "琳",
    "晓", "峰",
];
const FIRST: [&str; 16] = [
    "James", "Mary", "John", "Linda", "Michael", "Sarah", "David", "Emma", "Daniel", "Olivia", "Thomas", "Sophie",
    "Lucas", "Anna", "Peter", "Laura",
];
const LAST: [&str; 16] = [
    "Smith", "Johnson", "Brown", "Miller", "Davis", "Wilson", "Taylor", "Anderson", "Martin", "Thompson", "Garcia",
    "Clark", "Lewis", "Walker", "Young", "Schmidt",
];
const CITIES: [&str; 12] = [
    "上海", "北京", "深圳", "广州", "杭州", "苏州", "成都", "武汉", "南京", "天津", "重庆", "西安",
];
const WORDS: [&str; 12] = [
    "华信",
    "宏达",
    "瑞丰",
    "中科",
    "新纪元",
    "博远",
    "金桥",
    "恒通",
    "智联",
    "天成",
    "安泰",
    "汇丰",
];
const KINDS: [&str; 6] = [
    "科技有限公司",
    "贸易有限公司",
    "制造有限公司",
    "信息技术有限公司",
    "实业有限公司",
    "咨询有限公司",
];
const INDUSTRIES: [&str; 8] = ["制造业", "IT服务", "零售", "金融", "医疗", "教育", "物流", "餐饮"];
const SIZES: [&str; 5] = ["1-49人", "50-199人", "200-499人", "500-999人", "1000人以上"];
const CHANNELS: [&str; 5] = ["展会", "展会", "门店", "合作伙伴转介绍", "官网"];
const PREFIXES: [&str; 20] = [
    "130", "131", "132", "133", "135", "136", "137", "138", "139", "150", "151", "152", "155", "158", "159", "180",
    "186", "187", "188", "189",
];
const MAIL: [&str; 6] = ["qq.com", "163.com", "126.com", "gmail.com", "outlook.com", "sina.com"];
const NOTES: [&str; 5] = ["", "", "对A产品感兴趣", "需要报价", "展位A12咨询"];

struct Person {
    name: String,
    latin: bool,
    company: String,
    phone: String,
    email: Option<String>,
    industry: &'static str,
    size: &'static str,
    city: &'static str,
}

fn person(seed: u64, index: usize) -> Person {
    let mut r = Rng(seed ^ (index as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93));
    r.next();
    let latin = r.chance(0.2);
    let s = r.below(SURNAMES.len());
    let (name, local) = if latin {
        let (f, l) = (r.pick(&FIRST), r.pick(&LAST));
        (format!("{f} {l}"), format!("{}.{}", f.to_lowercase(), l.to_lowercase()))
    } else {
        let given: String = (0..1 + r.below(2)).map(|_| r.pick(&GIVEN)).collect();
        (
            format!("{}{given}", SURNAMES[s]),
            format!("{}{}", SURNAME_PINYIN[s], r.below(10_000)),
        )
    };
    let city = r.pick(&CITIES);
    let company = format!("{city}{}{}", r.pick(&WORDS), r.pick(&KINDS));
    // Index in the number keeps phones of different people distinct.
    let phone = format!(
        "{}{:08}",
        r.pick(&PREFIXES),
        (index as u64 * 7_919 + r.below(7_919) as u64) % 100_000_000
    );
    let email = r
        .chance(0.8)
        .then(|| format!("{local}{}@{}", index % 997, r.pick(&MAIL)));
    Person {
        name,
        latin,
        company,
        phone,
        email,
        industry: r.pick(&INDUSTRIES),
        size: r.pick(&SIZES),
        city,
    }
}

fn full_width(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_digit() {
                char::from_u32(c as u32 + 0xFEE0).unwrap_or(c)
            } else {
                c
            }
        })
        .collect()
}

fn written_phone(phone: &str, r: &mut Rng) -> String {
    let (a, b, c) = (&phone[..3], &phone[3..7], &phone[7..]);
    match r.below(20) {
        0..=11 => phone.to_string(),
        12..=14 => format!("{a} {b} {c}"),
        15..=16 => format!("{a}-{b}-{c}"),
        17..=18 => format!("+86 {phone}"),
        _ => full_width(&format!("{a} {b} {c}")),
    }
}

fn typo(name: &str, latin: bool, r: &mut Rng) -> String {
    let mut chars: Vec<char> = name.chars().collect();
    if latin && chars.len() > 3 {
        let i = 1 + r.below(chars.len() - 2);
        chars.swap(i, i + 1);
    } else if chars.len() > 1 {
        let i = 1 + r.below(chars.len() - 1);
        chars[i] = r.pick(&GIVEN).chars().next().unwrap_or(chars[i]);
    }
    chars.into_iter().collect()
}

fn row(seed: u64, person_index: usize, duplicate: bool, r: &mut Rng) -> [String; 10] {
    let p = person(seed, person_index);
    let name = if duplicate && r.chance(0.3) {
        typo(&p.name, p.latin, r)
    } else {
        p.name.clone()
    };
    // A duplicate keeps at least one identifier of the person.
    let (phone, email) = match (duplicate, r.below(10), &p.email) {
        (true, 0..=1, Some(e)) => (String::new(), e.to_uppercase()),
        (true, 2..=3, Some(_)) => (written_phone(&p.phone, r), String::new()),
        (_, _, e) => (written_phone(&p.phone, r), e.clone().unwrap_or_default()),
    };
    let minute = r.below(3 * 24 * 60);
    let captured = format!(
        "2026-03-{:02} {:02}:{:02}",
        1 + minute / 1440,
        minute % 1440 / 60,
        minute % 60
    );
    [
        p.company,
        name,
        phone,
        email,
        r.pick(&CHANNELS).to_string(),
        captured,
        p.industry.to_string(),
        p.size.to_string(),
        p.city.to_string(),
        r.pick(&NOTES).to_string(),
    ]
}

/// Writes `rows` trade-show rows to `out` (`.xlsx` by extension, CSV UTF-8 with BOM otherwise);
/// exactly `floor(rows * dup_rate)` rows repeat an earlier person.
pub fn generate(rows: usize, dup_rate: f64, seed: u64, out: &Path) -> Result<GeneratedFile, ImportError> {
    let rate = dup_rate.clamp(0.0, 0.95);
    let err = |e: &dyn std::fmt::Display| ImportError::Report {
        path: out.to_path_buf(),
        message: e.to_string(),
    };
    let mut r = Rng(seed);
    let mut people = 0usize;
    let mut duplicates = 0usize;
    let mut next_row = |i: usize, r: &mut Rng| {
        let due = ((i + 1) as f64 * rate).floor() as usize;
        let duplicate = people > 0 && due > duplicates;
        let index = if duplicate {
            duplicates += 1;
            r.below(people)
        } else {
            people += 1;
            people - 1
        };
        row(seed, index, duplicate, r)
    };
    if super::report::is_xlsx_path(out) {
        let mut book = rust_xlsxwriter::Workbook::new();
        let sheet = book.add_worksheet_with_constant_memory().map_err(|e| err(&e))?;
        sheet.set_name("展会客户").map_err(|e| err(&e))?;
        for (c, h) in HEADERS.iter().enumerate() {
            sheet.write_string(0, c as u16, *h).map_err(|e| err(&e))?;
        }
        for i in 0..rows {
            let cells = next_row(i, &mut r);
            for (c, v) in cells.iter().enumerate() {
                if !v.is_empty() {
                    sheet.write_string(i as u32 + 1, c as u16, v).map_err(|e| err(&e))?;
                }
            }
        }
        book.save(out).map_err(|e| err(&e))?;
    } else {
        let mut file = BufWriter::with_capacity(1 << 20, File::create(out).map_err(|e| err(&e))?);
        file.write_all(b"\xEF\xBB\xBF").map_err(|e| err(&e))?;
        let mut w = csv::Writer::from_writer(file);
        w.write_record(HEADERS).map_err(|e| err(&e))?;
        for i in 0..rows {
            w.write_record(next_row(i, &mut r)).map_err(|e| err(&e))?;
        }
        w.flush().map_err(|e| err(&e))?;
    }
    Ok(GeneratedFile {
        path: out.to_path_buf(),
        rows,
        people,
        duplicate_rows: duplicates,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_come_at_the_exact_rate_and_phones_are_valid() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("g.csv");
        let g = generate(1_000, 0.2, 7, &out).unwrap();
        assert_eq!(g.duplicate_rows, 200);
        assert_eq!(g.people, 800);
        let text = std::fs::read_to_string(&out).unwrap();
        let mut reader = csv::Reader::from_reader(text.trim_start_matches('\u{feff}').as_bytes());
        for record in reader.records() {
            let record = record.unwrap();
            let phone = &record[2];
            if !phone.is_empty() {
                proto::normalize::phone(phone, phonenumber::country::Id::CN).unwrap();
            }
        }
        // Same seed, same file.
        let again = dir.path().join("h.csv");
        generate(1_000, 0.2, 7, &again).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap());
    }
}
