//! Synthetic customers for scale tests: Latin and Chinese names (characters
//! or pinyin), phones, emails, addresses and dates of birth, with a known
//! share of duplicates carrying realistic errors (typos, swapped names,
//! homophone characters, romanised names, missing values, reformatted
//! phones and dates). Ids are opaque. Records are derived from the seed and
//! their position, so a million rows stream without being held in memory.

use std::io::Write;

use crate::MatchError;
use crate::train::SplitMix;

const GIVEN: &[&str] = &[
    "james",
    "john",
    "robert",
    "michael",
    "william",
    "david",
    "richard",
    "joseph",
    "thomas",
    "charles",
    "daniel",
    "matthew",
    "anthony",
    "mark",
    "donald",
    "steven",
    "paul",
    "andrew",
    "joshua",
    "kenneth",
    "kevin",
    "brian",
    "george",
    "timothy",
    "ronald",
    "edward",
    "jason",
    "jeffrey",
    "ryan",
    "jacob",
    "gary",
    "nicholas",
    "eric",
    "jonathan",
    "stephen",
    "larry",
    "justin",
    "scott",
    "brandon",
    "benjamin",
    "samuel",
    "gregory",
    "alexander",
    "patrick",
    "frank",
    "raymond",
    "jack",
    "dennis",
    "jerry",
    "tyler",
    "aaron",
    "jose",
    "adam",
    "nathan",
    "henry",
    "zachary",
    "douglas",
    "peter",
    "kyle",
    "noah",
    "ethan",
    "jeremy",
    "walter",
    "christian",
    "keith",
    "roger",
    "terry",
    "austin",
    "sean",
    "gerald",
    "carl",
    "harold",
    "dylan",
    "arthur",
    "lawrence",
    "jordan",
    "jesse",
    "bryan",
    "billy",
    "bruce",
    "gabriel",
    "joe",
    "logan",
    "alan",
    "juan",
    "albert",
    "willie",
    "elijah",
    "wayne",
    "randy",
    "mary",
    "patricia",
    "jennifer",
    "linda",
    "elizabeth",
    "barbara",
    "susan",
    "jessica",
    "sarah",
    "karen",
    "lisa",
    "nancy",
    "betty",
    "sandra",
    "margaret",
    "ashley",
    "kimberly",
    "emily",
    "donna",
    "michelle",
    "carol",
    "amanda",
    "melissa",
    "deborah",
    "stephanie",
    "dorothy",
    "rebecca",
    "sharon",
    "laura",
    "cynthia",
    "amy",
    "kathleen",
    "angela",
    "shirley",
    "brenda",
    "emma",
    "anna",
    "pamela",
    "nicole",
    "samantha",
    "katherine",
    "christine",
    "helen",
    "debra",
    "rachel",
    "carolyn",
    "janet",
    "maria",
    "catherine",
    "heather",
    "diane",
    "olivia",
    "julie",
    "joyce",
    "victoria",
    "ruth",
    "virginia",
    "lauren",
    "kelly",
    "christina",
    "joan",
    "evelyn",
    "judith",
    "andrea",
    "hannah",
    "megan",
    "cheryl",
    "jacqueline",
    "martha",
    "madison",
    "teresa",
    "gloria",
    "sara",
    "janice",
    "ann",
    "kathryn",
    "abigail",
    "sophia",
    "frances",
    "jean",
    "alice",
    "judy",
    "isabella",
    "julia",
    "grace",
    "amber",
    "denise",
    "danielle",
    "marilyn",
    "beverly",
    "charlotte",
    "natalie",
    "theresa",
    "diana",
    "brittany",
    "doris",
    "kayla",
    "alexis",
    "lori",
    "marie",
    "chloe",
    "zoe",
    "mia",
    "ella",
    "lily",
    "ruby",
    "isla",
    "harper",
    "jade",
];
const SURNAME: &[&str] = &[
    "smith",
    "johnson",
    "williams",
    "brown",
    "jones",
    "garcia",
    "miller",
    "davis",
    "rodriguez",
    "martinez",
    "hernandez",
    "lopez",
    "gonzalez",
    "wilson",
    "anderson",
    "thomas",
    "taylor",
    "moore",
    "jackson",
    "martin",
    "lee",
    "perez",
    "thompson",
    "white",
    "harris",
    "sanchez",
    "clark",
    "ramirez",
    "lewis",
    "robinson",
    "walker",
    "young",
    "allen",
    "king",
    "wright",
    "scott",
    "torres",
    "nguyen",
    "hill",
    "flores",
    "green",
    "adams",
    "nelson",
    "baker",
    "hall",
    "rivera",
    "campbell",
    "mitchell",
    "carter",
    "roberts",
    "gomez",
    "phillips",
    "evans",
    "turner",
    "diaz",
    "parker",
    "cruz",
    "edwards",
    "collins",
    "reyes",
    "stewart",
    "morris",
    "morales",
    "murphy",
    "cook",
    "rogers",
    "gutierrez",
    "ortiz",
    "morgan",
    "cooper",
    "peterson",
    "bailey",
    "reed",
    "kelly",
    "howard",
    "ramos",
    "kim",
    "cox",
    "ward",
    "richardson",
    "watson",
    "brooks",
    "chavez",
    "wood",
    "james",
    "bennett",
    "gray",
    "mendoza",
    "ruiz",
    "hughes",
    "price",
    "alvarez",
    "castillo",
    "sanders",
    "patel",
    "myers",
    "long",
    "ross",
    "foster",
    "jimenez",
    "powell",
    "jenkins",
    "perry",
    "russell",
    "sullivan",
    "bell",
    "coleman",
    "butler",
    "henderson",
    "barnes",
    "gonzales",
    "fisher",
    "vasquez",
    "simmons",
    "romero",
    "jordan",
    "patterson",
    "alexander",
    "hamilton",
    "graham",
    "reynolds",
    "griffin",
    "wallace",
    "moreno",
    "west",
    "cole",
    "hayes",
    "bryant",
    "herrera",
    "gibson",
    "ellis",
    "tran",
    "medina",
    "aguilar",
    "stevens",
    "murray",
    "ford",
    "castro",
    "marshall",
    "owens",
    "harrison",
    "fernandez",
    "mcdonald",
    "woods",
    "washington",
    "kennedy",
    "wells",
    "vargas",
    "henry",
    "chen",
    "freeman",
    "webb",
    "tucker",
    "guzman",
    "burns",
    "crawford",
    "olson",
    "simpson",
    "porter",
    "hunter",
    "gordon",
    "mendez",
    "silva",
    "shaw",
    "snyder",
    "mason",
    "dixon",
    "munoz",
    "hunt",
    "hicks",
    "holmes",
    "palmer",
    "wagner",
    "black",
    "robertson",
    "boyd",
    "rose",
    "stone",
    "salazar",
    "fox",
    "warren",
    "mills",
    "meyer",
    "rice",
    "schmidt",
    "garza",
    "daniels",
    "ferguson",
    "nichols",
    "stephens",
    "soto",
    "weaver",
    "ryan",
    "gardner",
    "payne",
    "grant",
    "dunn",
    "kelley",
    "spencer",
    "hawkins",
    "arnold",
    "pierce",
    "vazquez",
    "hansen",
    "peters",
    "santos",
    "hart",
    "bradley",
    "knight",
    "elliott",
    "cunningham",
    "duncan",
    "armstrong",
    "hudson",
    "carroll",
    "lane",
    "riley",
    "andrews",
    "alvarado",
    "ray",
    "delgado",
    "berry",
    "perkins",
    "hoffman",
    "johnston",
    "matthews",
    "pena",
    "richards",
    "willis",
    "carpenter",
    "lawrence",
    "sandoval",
    "obrien",
    "oconnor",
    "mccarthy",
    "fitzgerald",
    "nolan",
    "byrne",
    "doyle",
    "kavanagh",
];
const CN_SURNAME: &[&str] = &[
    "王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周", "徐", "孙", "马", "朱", "胡", "郭", "何", "林", "高",
    "罗", "郑", "梁", "谢", "宋", "唐", "许", "韩", "冯", "邓", "曹", "彭", "曾", "肖", "田", "董", "袁", "潘", "于",
    "蒋", "蔡", "余", "杜", "叶", "程", "苏", "魏", "吕", "丁", "任", "沈", "姚", "卢", "姜", "崔", "钟", "谭", "陆",
    "汪", "范", "金", "石", "廖", "贾", "夏", "韦", "付", "方", "白", "邹", "孟", "熊", "秦", "邱", "江", "尹", "薛",
    "闫", "段", "雷", "侯", "龙", "史", "陶", "黎", "贺", "顾", "毛", "郝", "龚", "邵", "万", "钱", "严", "覃", "武",
    "戴", "莫", "孔", "向", "汤", "欧阳", "司马", "上官", "诸葛",
];
const CN_GIVEN: &[&str] = &[
    "伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "娟", "涛", "明", "超", "秀", "霞",
    "平", "刚", "桂", "英", "华", "玉", "兰", "辉", "鹏", "建", "国", "红", "梅", "林", "志", "海", "斌", "云", "飞",
    "峰", "亮", "宇", "浩", "凯", "晨", "欣", "怡", "佳", "雪", "婷", "琳", "颖", "倩", "瑶", "晶", "丹", "萍", "春",
    "文", "博", "宁", "思", "雨", "嘉", "子", "轩", "涵", "梓", "睿", "诗", "梦", "悦", "鑫", "俊", "昊", "天", "泽",
    "航", "晓", "东", "小", "新", "德", "永", "立", "成", "晖", "帆", "毅", "琪", "璐",
];
/// Characters a clerk may type for the same sound.
const HOMOPHONES: &[(&str, &str)] = &[
    ("王", "汪"),
    ("张", "章"),
    ("刘", "留"),
    ("陈", "晨"),
    ("杨", "阳"),
    ("黄", "皇"),
    ("吴", "武"),
    ("周", "州"),
    ("徐", "许"),
    ("林", "琳"),
    ("何", "和"),
    ("明", "铭"),
    ("伟", "玮"),
    ("静", "靜"),
    ("丽", "莉"),
    ("杰", "捷"),
    ("华", "骅"),
    ("军", "君"),
    ("涛", "韬"),
    ("敏", "闵"),
    ("芳", "方"),
    ("晨", "辰"),
    ("宇", "雨"),
    ("佳", "嘉"),
];
const STREETS: &[&str] = &[
    "wallaby",
    "kangaroo",
    "banksia",
    "wattle",
    "acacia",
    "eucalyptus",
    "jacaranda",
    "waratah",
    "bottlebrush",
    "george",
    "king",
    "queen",
    "victoria",
    "elizabeth",
    "albert",
    "william",
    "church",
    "station",
    "high",
    "park",
    "main",
    "hill",
    "river",
    "lake",
    "ocean",
    "beach",
    "forest",
    "mountain",
    "valley",
    "bridge",
    "mill",
    "market",
    "school",
    "college",
    "railway",
    "harbour",
    "bay",
    "cliff",
    "ridge",
    "garden",
    "orchard",
    "meadow",
    "spring",
    "summer",
    "winter",
    "autumn",
    "north",
    "south",
    "east",
    "west",
    "central",
    "new",
    "old",
    "grand",
    "royal",
    "crown",
    "anzac",
    "federation",
    "macquarie",
    "flinders",
    "collins",
    "bourke",
    "swanston",
    "elizabeth",
    "pitt",
    "castlereagh",
    "sussex",
    "kent",
    "clarence",
    "york",
    "oxford",
    "cambridge",
    "darling",
    "hunter",
    "murray",
    "renmin",
    "zhongshan",
    "jiefang",
    "nanjing",
    "beijing",
    "huaihai",
    "heping",
    "xinhua",
    "jianshe",
    "wenhua",
];
const STREET_TYPES: &[&str] = &[
    "street", "road", "avenue", "place", "crescent", "drive", "court", "lane", "parade",
];
const TYPE_SHORT: &[(&str, &str)] = &[
    ("street", "st"),
    ("road", "rd"),
    ("avenue", "ave"),
    ("place", "pl"),
    ("crescent", "cres"),
    ("drive", "dr"),
];
const PLACES: &[(&str, &str, &str)] = &[
    ("sydney", "2000", "nsw"),
    ("parramatta", "2150", "nsw"),
    ("newcastle", "2300", "nsw"),
    ("wollongong", "2500", "nsw"),
    ("penrith", "2750", "nsw"),
    ("gosford", "2250", "nsw"),
    ("bondi", "2026", "nsw"),
    ("manly", "2095", "nsw"),
    ("melbourne", "3000", "vic"),
    ("geelong", "3220", "vic"),
    ("ballarat", "3350", "vic"),
    ("bendigo", "3550", "vic"),
    ("st kilda", "3182", "vic"),
    ("richmond", "3121", "vic"),
    ("brisbane", "4000", "qld"),
    ("cairns", "4870", "qld"),
    ("townsville", "4810", "qld"),
    ("toowoomba", "4350", "qld"),
    ("perth", "6000", "wa"),
    ("fremantle", "6160", "wa"),
    ("adelaide", "5000", "sa"),
    ("glenelg", "5045", "sa"),
    ("hobart", "7000", "tas"),
    ("launceston", "7250", "tas"),
    ("canberra", "2600", "act"),
    ("darwin", "0800", "nt"),
    ("shanghai", "200000", "shanghai"),
    ("pudong", "200120", "shanghai"),
    ("beijing", "100000", "beijing"),
    ("haidian", "100080", "beijing"),
    ("guangzhou", "510000", "guangdong"),
    ("shenzhen", "518000", "guangdong"),
    ("dongguan", "523000", "guangdong"),
    ("hangzhou", "310000", "zhejiang"),
    ("ningbo", "315000", "zhejiang"),
    ("nanjing", "210000", "jiangsu"),
    ("suzhou", "215000", "jiangsu"),
    ("chengdu", "610000", "sichuan"),
    ("wuhan", "430000", "hubei"),
    ("xian", "710000", "shaanxi"),
    ("chongqing", "400000", "chongqing"),
    ("tianjin", "300000", "tianjin"),
];
/// Latin suburbs are built from these halves (600 suburbs, postcodes by state).
const SUBURB_HEADS: &[&str] = &[
    "north", "south", "east", "west", "glen", "mount", "port", "lake", "river", "green", "oak", "ash", "elm", "pine",
    "red", "black", "white", "fair", "high", "long", "rose", "spring", "stone", "sunny", "brook", "clear", "deep",
    "wood", "kings", "queens",
];
const SUBURB_TAILS: &[&str] = &[
    "field", "vale", "ton", "wood", "dale", "haven", "ridge", "hill", "bank", "brook", "ford", "grove", "park", "view",
    "lea", "mead", "cliff", "bury", "worth", "side",
];
const STATES: &[(&str, u32)] = &[
    ("nsw", 2000),
    ("vic", 3000),
    ("qld", 4000),
    ("sa", 5000),
    ("wa", 6000),
    ("tas", 7000),
    ("act", 2600),
];

const DOMAINS: &[&str] = &[
    "gmail.com",
    "qq.com",
    "163.com",
    "outlook.com",
    "yahoo.com",
    "bigpond.com",
    "126.com",
];

/// What [`generate`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct GenerateSummary {
    pub records: usize,
    pub entities: usize,
    pub duplicates: usize,
    /// Pairs of records that are the same entity (all pairs within a cluster).
    pub true_pairs: usize,
}

/// One synthetic person.
struct Person {
    given: String,
    surname: String,
    full_name: String,
    chinese: bool,
    street_number: String,
    address_1: String,
    address_2: String,
    suburb: String,
    postcode: String,
    state: String,
    dob: String,
    phone: String,
    email: String,
    national_id: String,
}

fn pick<'a>(rng: &mut SplitMix, list: &[&'a str]) -> &'a str {
    list[rng.below(list.len())]
}

fn chance(rng: &mut SplitMix, p: f64) -> bool {
    ((rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
}

fn pinyin_of(s: &str) -> String {
    crate::text::tokens(s).concat()
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map_or_else(String::new, |f| f.to_uppercase().chain(c).collect())
}

impl Person {
    fn new(seed: u64, entity: u64) -> Person {
        let mut rng = SplitMix::new(seed ^ entity.wrapping_mul(0xA076_1D64_78BD_642F));
        let chinese = chance(&mut rng, 0.35);
        let (given, surname, full_name) = if chinese {
            let s = pick(&mut rng, CN_SURNAME);
            let mut g = pick(&mut rng, CN_GIVEN).to_string();
            if chance(&mut rng, 0.7) {
                g.push_str(pick(&mut rng, CN_GIVEN));
            }
            (g.clone(), s.to_string(), format!("{s}{g}"))
        } else {
            let (g, s) = (pick(&mut rng, GIVEN), pick(&mut rng, SURNAME));
            (
                g.to_string(),
                s.to_string(),
                format!("{} {}", capitalise(g), capitalise(s)),
            )
        };
        let latin_place;
        let place = if chinese {
            PLACES[26 + rng.below(PLACES.len() - 26)]
        } else {
            let (h, t) = (rng.below(SUBURB_HEADS.len()), rng.below(SUBURB_TAILS.len()));
            let (state, base) = STATES[(h * 7 + t) % STATES.len()];
            latin_place = (
                format!("{}{}", SUBURB_HEADS[h], SUBURB_TAILS[t]),
                (base + (h * SUBURB_TAILS.len() + t) as u32 % 600).to_string(),
            );
            (latin_place.0.as_str(), latin_place.1.as_str(), state)
        };
        let year = 1940 + rng.below(66);
        let (month, day) = (1 + rng.below(12), 1 + rng.below(28));
        let phone = if chinese {
            format!("1{}{:09}", 3 + rng.below(7), rng.below(1_000_000_000))
        } else {
            format!("04{:08}", rng.below(100_000_000))
        };
        let local = if chinese {
            format!("{}{}", pinyin_of(&surname), pinyin_of(&given))
        } else {
            format!("{given}.{surname}")
        };
        Person {
            email: format!("{local}{}@{}", rng.below(1000), pick(&mut rng, DOMAINS)),
            street_number: (1 + rng.below(400)).to_string(),
            address_1: format!("{} {}", pick(&mut rng, STREETS), pick(&mut rng, STREET_TYPES)),
            address_2: if chance(&mut rng, 0.3) {
                format!("unit {}", 1 + rng.below(40))
            } else {
                String::new()
            },
            suburb: place.0.to_string(),
            postcode: place.1.to_string(),
            state: place.2.to_string(),
            dob: format!("{year}{month:02}{day:02}"),
            national_id: format!("{:08}", rng.below(100_000_000)),
            phone,
            given,
            surname,
            full_name,
            chinese,
        }
    }

    fn row(&self) -> [&str; 14] {
        [
            "",
            &self.given,
            &self.surname,
            &self.full_name,
            &self.street_number,
            &self.address_1,
            &self.address_2,
            &self.suburb,
            &self.postcode,
            &self.state,
            &self.dob,
            &self.phone,
            &self.email,
            &self.national_id,
        ]
    }

    /// Applies one to three errors a person or a channel would make.
    fn corrupt(&mut self, rng: &mut SplitMix) {
        let errors = 1 + rng.below(3);
        for _ in 0..errors {
            match rng.below(12) {
                0 | 1 => {
                    if self.chinese {
                        self.homophone(rng)
                    } else {
                        self.given = typo(rng, &self.given)
                    }
                }
                2 => {
                    if self.chinese {
                        self.romanise()
                    } else {
                        self.surname = typo(rng, &self.surname)
                    }
                }
                3 => std::mem::swap(&mut self.given, &mut self.surname),
                4 => match rng.below(4) {
                    0 => self.phone.clear(),
                    1 => self.email.clear(),
                    2 => self.dob.clear(),
                    _ => self.address_1.clear(),
                },
                5 => {
                    self.phone = if self.chinese && self.phone.len() == 11 {
                        format!("+86 {} {} {}", &self.phone[..3], &self.phone[3..7], &self.phone[7..])
                    } else {
                        typo_digit(rng, &self.phone)
                    }
                }
                6 => {
                    self.email = if chance(rng, 0.5) {
                        self.email.to_uppercase()
                    } else {
                        typo(rng, &self.email)
                    }
                }
                7 => {
                    self.dob = match rng.below(3) {
                        0 => typo_digit(rng, &self.dob),
                        1 if self.dob.len() == 8 => format!("{}{}{}", &self.dob[..4], &self.dob[6..], &self.dob[4..6]),
                        _ if self.dob.len() == 8 => {
                            format!("{}-{}-{}", &self.dob[..4], &self.dob[4..6], &self.dob[6..])
                        }
                        _ => self.dob.clone(),
                    }
                }
                8 => {
                    if let Some((long, short)) = TYPE_SHORT.iter().find(|(l, _)| self.address_1.ends_with(l)) {
                        self.address_1 = self.address_1.replace(long, short);
                    } else {
                        self.address_1 = typo(rng, &self.address_1);
                    }
                }
                9 => self.street_number = typo_digit(rng, &self.street_number),
                10 => self.postcode = typo_digit(rng, &self.postcode),
                _ => self.suburb = typo(rng, &self.suburb),
            }
        }
    }

    fn homophone(&mut self, rng: &mut SplitMix) {
        let swap = |s: &str| {
            HOMOPHONES
                .iter()
                .find_map(|(a, b)| s.contains(a).then(|| s.replacen(a, b, 1)))
                .unwrap_or_else(|| s.to_string())
        };
        if chance(rng, 0.5) {
            self.surname = swap(&self.surname);
        } else {
            self.given = swap(&self.given);
        }
        self.full_name = format!("{}{}", self.surname, self.given);
    }

    fn romanise(&mut self) {
        self.given = capitalise(&pinyin_of(&self.given));
        self.surname = capitalise(&pinyin_of(&self.surname));
        self.full_name = format!("{} {}", self.surname, self.given);
    }
}

/// One typing error: substitution, deletion, insertion or transposition.
fn typo(rng: &mut SplitMix, s: &str) -> String {
    let mut chars: Vec<char> = s.chars().collect();
    if chars.len() < 2 {
        return s.to_string();
    }
    let at = rng.below(chars.len() - 1);
    let letter = (b'a' + rng.below(26) as u8) as char;
    match rng.below(4) {
        0 => chars[at] = letter,
        1 => {
            chars.remove(at);
        }
        2 => chars.insert(at, letter),
        _ => chars.swap(at, at + 1),
    }
    chars.into_iter().collect()
}

fn typo_digit(rng: &mut SplitMix, s: &str) -> String {
    let digits: Vec<usize> = s
        .char_indices()
        .filter(|(_, c)| c.is_ascii_digit())
        .map(|(i, _)| i)
        .collect();
    if digits.is_empty() {
        return s.to_string();
    }
    let at = digits[rng.below(digits.len())];
    let mut out = s.to_string();
    out.replace_range(at..at + 1, &rng.below(10).to_string());
    out
}

/// Writes `n` customers as CSV (header
/// `id,given_name,surname,full_name,street_number,address_1,address_2,suburb,postcode,state,date_of_birth,phone,email,soc_sec_id`),
/// of which about `dup_rate` are duplicates of others.
pub fn generate<W: Write>(n: usize, dup_rate: f64, seed: u64, writer: W) -> Result<GenerateSummary, MatchError> {
    generate_with_truth(n, dup_rate, seed, writer, std::io::sink())
}

/// [`generate`], also writing the true pairs (`id_a,id_b`, all pairs within each entity) to `truth`.
pub fn generate_with_truth<W: Write, T: Write>(
    n: usize,
    dup_rate: f64,
    seed: u64,
    writer: W,
    truth: T,
) -> Result<GenerateSummary, MatchError> {
    if !(0.0..1.0).contains(&dup_rate) {
        return Err(MatchError::InvalidSetting {
            name: "dup_rate",
            value: dup_rate.to_string(),
            expected: "a share of duplicates in [0, 1)",
        });
    }
    let entities = (((n as f64) * (1.0 - dup_rate)).round() as usize).clamp(usize::from(n > 0), n.max(1));
    let write_err = |e: csv::Error| MatchError::Write {
        source: std::io::Error::other(e),
    };
    let mut out = csv::Writer::from_writer(writer);
    out.write_record([
        "id",
        "given_name",
        "surname",
        "full_name",
        "street_number",
        "address_1",
        "address_2",
        "suburb",
        "postcode",
        "state",
        "date_of_birth",
        "phone",
        "email",
        "soc_sec_id",
    ])
    .map_err(write_err)?;
    // Output position → record index through a seeded permutation, so
    // duplicates are scattered; record index < entities is an original.
    let mut order: Vec<u32> = (0..n as u32).collect();
    let mut rng = SplitMix::new(seed);
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let mut members: std::collections::HashMap<u32, Vec<String>> = std::collections::HashMap::new();
    for (position, &index) in order.iter().enumerate() {
        let mut rng = SplitMix::new(seed.rotate_left(17) ^ u64::from(index).wrapping_mul(0x9E37_79B9));
        let entity = if (index as usize) < entities {
            index
        } else {
            rng.below(entities) as u32
        };
        let mut person = Person::new(seed, u64::from(entity));
        if (index as usize) >= entities {
            person.corrupt(&mut rng);
        }
        let id = format!("c{:016x}", SplitMix::new(seed ^ ((position as u64) << 1)).next_u64());
        let mut row = person.row();
        row[0] = &id;
        out.write_record(row).map_err(write_err)?;
        if (index as usize) >= entities || members.contains_key(&entity) {
            members.entry(entity).or_default().push(id);
        } else {
            members.insert(entity, vec![id]);
        }
    }
    out.flush().map_err(|source| MatchError::Write { source })?;
    let mut truth = std::io::BufWriter::new(truth);
    let w = |source| MatchError::Write { source };
    writeln!(truth, "id_a,id_b").map_err(w)?;
    let mut true_pairs = 0;
    for ids in members.values().filter(|ids| ids.len() > 1) {
        for (i, a) in ids.iter().enumerate() {
            for b in &ids[i + 1..] {
                writeln!(truth, "{a},{b}").map_err(w)?;
                true_pairs += 1;
            }
        }
    }
    truth.flush().map_err(w)?;
    Ok(GenerateSummary {
        records: n,
        entities,
        duplicates: n - entities,
        true_pairs,
    })
}
