//! Interned, normalised field values. Each field has a vocabulary of distinct
//! matching keys with their counts (the term frequencies) and precomputed
//! helpers (phonetic code, reordered name); a stored record is one vocabulary
//! id per field. The batch engine and the live index share this store.

use std::hash::BuildHasher;

use crate::record::{FIELD_COUNT, Field, Record};
use crate::text;

/// Id of "no value" in a [`Row`].
pub(crate) const NULL: u32 = u32::MAX;

/// One vocabulary id per field.
pub(crate) type Row = [u32; FIELD_COUNT];

/// A normalised value: `key` decides exact agreement, `alt` is a helper
/// (phonetic code for names, reordered tokens for full names, last 8 digits of
/// a phone, canonical local part of an email). Both live in one allocation (key, then
/// alt): at a million customers most phones and emails are entries of their own.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Entry {
    text: Box<str>,
    key_len: u32,
    pub count: u32,
}

impl Entry {
    /// Normalises a raw value of `field`; `None` when nothing is left.
    pub fn prepare(field: Field, raw: &str) -> Option<Entry> {
        let (key, alt) = match field {
            Field::GivenName | Field::Surname => {
                let key = text::tokens(raw).concat();
                let alt = text::phonetic(&key);
                (key, alt)
            }
            Field::FullName => {
                let toks = text::full_name_tokens(raw);
                let key = toks.concat();
                let mut sorted = toks;
                sorted.sort_unstable();
                (key, sorted.concat())
            }
            Field::Address1 | Field::Address2 => (text::address_tokens(raw).concat(), String::new()),
            Field::DateOfBirth => (text::date_key(raw), String::new()),
            Field::Phone => {
                let key = text::phone_key(raw);
                let alt = key[key.len().saturating_sub(8)..].to_string();
                (key, alt)
            }
            Field::Email => text::email_key(raw),
            Field::StreetNumber | Field::Suburb | Field::Postcode | Field::State | Field::NationalId => {
                (text::tokens(raw).concat(), String::new())
            }
        };
        (!key.is_empty()).then(|| Entry::new(&key, &alt))
    }

    fn new(key: &str, alt: &str) -> Entry {
        let mut text = String::with_capacity(key.len() + alt.len());
        text.push_str(key);
        text.push_str(alt);
        Entry {
            text: text.into(),
            // Normalised field values are short; a key over 4 GiB cannot come from a record.
            key_len: u32::try_from(key.len()).unwrap_or(u32::MAX),
            count: 0,
        }
    }

    pub fn key(&self) -> &str {
        &self.text[..self.key_len as usize]
    }

    pub fn alt(&self) -> &str {
        &self.text[self.key_len as usize..]
    }

    /// First character of the key (blocking on initials).
    pub fn initial(&self) -> Option<char> {
        self.key().chars().next()
    }
}

/// The vocabulary of one field. The index holds entry ids only (hashed by their key), so
/// each distinct value's key is stored once: at a million customers, most phones,
/// emails and addresses are distinct values.
#[derive(Default, Debug)]
pub(crate) struct Column {
    index: hashbrown::HashTable<u32>,
    hasher: hashbrown::DefaultHashBuilder,
    pub entries: Vec<Entry>,
    /// Number of stored records with a value for this field.
    pub non_null: u64,
}

impl Column {
    fn find(&self, key: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(key);
        self.index
            .find(hash, |&id| self.entries[id as usize].key() == key)
            .copied()
    }

    /// Stores one occurrence of `entry`; `hint` is the id [`Column::find`] gave for its key
    /// when it was prepared (or [`NULL`]): entries are never removed, so a hint whose key
    /// matches is the entry, without hashing and probing the index again.
    fn intern(&mut self, entry: Entry, hint: u32) -> u32 {
        self.non_null += 1;
        if let Some(e) = self.entries.get_mut(hint as usize)
            && e.key() == entry.key()
        {
            e.count += 1;
            return hint;
        }
        if let Some(id) = self.find(entry.key()) {
            self.entries[id as usize].count += 1;
            return id;
        }
        let id = self.entries.len() as u32;
        let Column {
            index, hasher, entries, ..
        } = self;
        index.insert_unique(hasher.hash_one(entry.key()), id, |&other| {
            hasher.hash_one(entries[other as usize].key())
        });
        entries.push(Entry { count: 1, ..entry });
        id
    }

    fn release(&mut self, id: u32) {
        if let Some(e) = self.entries.get_mut(id as usize) {
            e.count = e.count.saturating_sub(1);
            self.non_null = self.non_null.saturating_sub(1);
        }
    }

    /// Stored count of a key (0 when never seen), and its id ([`NULL`] when never seen).
    pub fn count_of(&self, key: &str) -> (u32, u32) {
        self.find(key)
            .map_or((0, NULL), |id| (self.entries[id as usize].count, id))
    }

    /// Probability that two distinct random non-null records agree exactly.
    pub fn exact_agreement_rate(&self) -> f64 {
        let n = self.non_null as f64;
        if n < 2.0 {
            return 0.0;
        }
        let same: f64 = self
            .entries
            .iter()
            .map(|e| f64::from(e.count) * (f64::from(e.count) - 1.0))
            .sum();
        same / (n * (n - 1.0))
    }
}

/// All interned records, addressed by slot.
#[derive(Default, Debug)]
pub(crate) struct Store {
    pub columns: [Column; FIELD_COUNT],
    pub rows: Vec<Row>,
}

/// A record normalised but not stored: what the live index scores.
pub(crate) type PreparedRecord = [Option<Entry>; FIELD_COUNT];

/// Borrowed entries of one record, as comparisons see it.
pub(crate) type View<'a> = [Option<&'a Entry>; FIELD_COUNT];

impl Store {
    /// Normalises a record without storing it.
    pub fn prepare(&self, record: &Record, enabled: &[bool; FIELD_COUNT]) -> PreparedRecord {
        self.prepare_hinted(record, enabled).0
    }

    /// [`Store::prepare`], and per field the id its value has in the store ([`NULL`]: none
    /// yet), for [`Store::intern_hinted`].
    pub fn prepare_hinted(&self, record: &Record, enabled: &[bool; FIELD_COUNT]) -> (PreparedRecord, Row) {
        let mut hints = [NULL; FIELD_COUNT];
        let prepared = std::array::from_fn(|i| {
            let field = Field::ALL[i];
            let mut e = record
                .get(field)
                .filter(|_| enabled[i])
                .and_then(|raw| Entry::prepare(field, raw))?;
            (e.count, hints[i]) = self.columns[i].count_of(e.key());
            Some(e)
        });
        (prepared, hints)
    }

    /// Interns a prepared record and returns its row.
    pub fn intern(&mut self, prepared: PreparedRecord) -> Row {
        self.intern_hinted(prepared, &[NULL; FIELD_COUNT])
    }

    /// [`Store::intern`] with the ids [`Store::prepare_hinted`] found (a hint that no longer
    /// names the value is looked up again, so any hint gives the same row).
    pub fn intern_hinted(&mut self, prepared: PreparedRecord, hints: &Row) -> Row {
        let mut row = [NULL; FIELD_COUNT];
        for (i, e) in prepared.into_iter().enumerate() {
            if let Some(e) = e {
                row[i] = self.columns[i].intern(e, hints[i]);
            }
        }
        row
    }

    /// Forgets one occurrence of each value of `row` (live removal).
    pub fn release(&mut self, row: &Row) {
        for (i, &id) in row.iter().enumerate() {
            if id != NULL {
                self.columns[i].release(id);
            }
        }
    }

    /// Appends a record to the batch store; returns its slot.
    pub fn push(&mut self, record: &Record, enabled: &[bool; FIELD_COUNT]) -> u32 {
        let prepared = self.prepare(record, enabled);
        let row = self.intern(prepared);
        self.rows.push(row);
        (self.rows.len() - 1) as u32
    }

    /// The entries of a stored row.
    pub fn view(&self, row: &Row) -> View<'_> {
        std::array::from_fn(|i| (row[i] != NULL).then(|| &self.columns[i].entries[row[i] as usize]))
    }
}

/// Borrowed view of a prepared (not stored) record.
pub(crate) fn view_of(prepared: &PreparedRecord) -> View<'_> {
    std::array::from_fn(|i| prepared[i].as_ref())
}
