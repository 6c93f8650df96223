//! Comparison levels per field and the function that puts a pair of records
//! into one level per field (a comparison vector). Levels are ordered from
//! strongest to weakest agreement; the first that holds wins; the last is
//! "else". A missing value on either side is the null level (no evidence).

use crate::record::{FIELD_COUNT, Field};
use crate::store::{Entry, View};
use crate::text::{jaro_winkler, within_one_edit, within_two_edits};

/// The null level in a comparison vector.
pub(crate) const NULL_LEVEL: u8 = 15;

/// Comparison levels of one record pair, one per field (`NULL_LEVEL` when a
/// side is missing).
pub(crate) type Levels = [u8; FIELD_COUNT];

/// Level names of a field, strongest first; the last is always `else`.
pub fn level_labels(field: Field) -> &'static [&'static str] {
    match field {
        Field::GivenName | Field::Surname => &[
            "exact",
            "one_edit",
            "swapped_with_other_name",
            "jaro_winkler_0.92",
            "phonetic",
            "jaro_winkler_0.80",
            "else",
        ],
        Field::FullName => &[
            "exact",
            "reordered",
            "one_edit",
            "jaro_winkler_0.92",
            "jaro_winkler_0.80",
            "else",
        ],
        Field::StreetNumber => &["exact", "one_edit", "else"],
        Field::Address1 | Field::Address2 => &["exact", "one_edit", "jaro_winkler_0.90", "jaro_winkler_0.80", "else"],
        Field::Suburb => &["exact", "one_edit", "jaro_winkler_0.88", "else"],
        Field::Postcode => &["exact", "one_edit", "numeric_within_10", "else"],
        Field::State => &["exact", "else"],
        Field::DateOfBirth => &["exact", "one_edit", "day_month_swapped", "two_edits", "else"],
        Field::Phone => &["exact", "same_last_8_digits", "one_edit", "else"],
        Field::Email => &["exact", "same_local_part", "one_edit", "jaro_winkler_0.90", "else"],
        Field::NationalId => &["exact", "one_edit", "two_edits", "else"],
    }
}

/// Compares two records field by field.
pub(crate) fn compare(a: &View<'_>, b: &View<'_>) -> Levels {
    std::array::from_fn(|i| compare_one(i, a, b))
}

/// Full name repeats given name and surname: it counts only when a side
/// lacks one of them, so a name is never evidence twice.
fn names_on_both_sides(a: &View<'_>, b: &View<'_>) -> bool {
    let (g, s) = (Field::GivenName.index(), Field::Surname.index());
    a[g].is_some() && a[s].is_some() && b[g].is_some() && b[s].is_some()
}

/// Compares one field (by index) of two records.
pub(crate) fn compare_one(i: usize, a: &View<'_>, b: &View<'_>) -> u8 {
    if i == Field::FullName.index() && names_on_both_sides(a, b) {
        return NULL_LEVEL;
    }
    compare_unpaired(i, a, b)
}

/// [`compare_one`] without the full-name rule (for u sampling, where only
/// the field's own behaviour matters).
pub(crate) fn compare_unpaired(i: usize, a: &View<'_>, b: &View<'_>) -> u8 {
    match (a[i], b[i]) {
        (Some(x), Some(y)) => compare_field(Field::ALL[i], x, y, a, b),
        _ => NULL_LEVEL,
    }
}

/// Packs a comparison vector into 4 bits per field.
pub(crate) fn pack(levels: &Levels) -> u64 {
    levels
        .iter()
        .enumerate()
        .fold(0u64, |acc, (i, &l)| acc | (u64::from(l) << (4 * i)))
}

/// Inverse of [`pack`].
pub(crate) fn unpack(packed: u64) -> Levels {
    std::array::from_fn(|i| ((packed >> (4 * i)) & 0xF) as u8)
}

fn compare_field(field: Field, x: &Entry, y: &Entry, a: &View<'_>, b: &View<'_>) -> u8 {
    let (xk, yk) = (x.key(), y.key());
    // Interned values are shared, so the same entry means the same key.
    if std::ptr::eq(x, y) || xk == yk {
        return 0;
    }
    match field {
        Field::GivenName | Field::Surname => {
            if within_one_edit(xk, yk) {
                return 1;
            }
            let other = if field == Field::GivenName {
                Field::Surname
            } else {
                Field::GivenName
            }
            .index();
            let swapped = |p: Option<&Entry>, q: &Entry| p.is_some_and(|p| p.key() == q.key());
            if swapped(b[other], x) || swapped(a[other], y) {
                return 2;
            }
            let jw = jaro_winkler(xk, yk);
            if jw >= 0.92 {
                3
            } else if !x.alt().is_empty() && x.alt() == y.alt() {
                4
            } else if jw >= 0.80 {
                5
            } else {
                6
            }
        }
        Field::FullName => {
            if x.alt() == y.alt() {
                return 1;
            }
            if within_one_edit(xk, yk) {
                return 2;
            }
            let jw = jaro_winkler(xk, yk).max(jaro_winkler(x.alt(), y.alt()));
            if jw >= 0.92 {
                3
            } else if jw >= 0.80 {
                4
            } else {
                5
            }
        }
        Field::StreetNumber => {
            if within_one_edit(xk, yk) {
                1
            } else {
                2
            }
        }
        Field::Address1 | Field::Address2 => {
            if within_one_edit(xk, yk) {
                return 1;
            }
            let jw = jaro_winkler(xk, yk);
            if jw >= 0.90 {
                2
            } else if jw >= 0.80 {
                3
            } else {
                4
            }
        }
        Field::Suburb => {
            if within_one_edit(xk, yk) {
                1
            } else if jaro_winkler(xk, yk) >= 0.88 {
                2
            } else {
                3
            }
        }
        Field::Postcode => {
            if within_one_edit(xk, yk) {
                return 1;
            }
            match (xk.parse::<u64>(), yk.parse::<u64>()) {
                (Ok(p), Ok(q)) if p.abs_diff(q) <= 10 => 2,
                _ => 3,
            }
        }
        Field::State => 1,
        Field::DateOfBirth => {
            if within_one_edit(xk, yk) {
                return 1;
            }
            let (p, q) = (xk.as_bytes(), yk.as_bytes());
            if p.len() == 8 && q.len() == 8 && p[..4] == q[..4] && p[4..6] == q[6..8] && p[6..8] == q[4..6] {
                2
            } else if within_two_edits(xk, yk) {
                3
            } else {
                4
            }
        }
        Field::Phone => {
            if x.alt().len() >= 7 && x.alt() == y.alt() {
                1
            } else if within_one_edit(xk, yk) {
                2
            } else {
                3
            }
        }
        Field::Email => {
            if !x.alt().is_empty() && x.alt() == y.alt() {
                1
            } else if within_one_edit(xk, yk) {
                2
            } else if jaro_winkler(xk, yk) >= 0.90 {
                3
            } else {
                4
            }
        }
        Field::NationalId => {
            if within_one_edit(xk, yk) {
                1
            } else if within_two_edits(xk, yk) {
                2
            } else {
                3
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use expect_test::expect;

    use super::*;
    use crate::Record;
    use crate::store::{Store, view_of};

    /// Renders the level of every field both records have.
    fn levels(a: &[(Field, &str)], b: &[(Field, &str)]) -> String {
        let store = Store::default();
        let all = [true; FIELD_COUNT];
        let rec = |fields: &[(Field, &str)]| fields.iter().fold(Record::new(), |r, (f, v)| r.with(*f, *v));
        let (pa, pb) = (store.prepare(&rec(a), &all), store.prepare(&rec(b), &all));
        let levels = compare(&view_of(&pa), &view_of(&pb));
        Field::ALL
            .iter()
            .zip(levels)
            .filter(|(_, l)| *l != NULL_LEVEL)
            .map(|(f, l)| format!("{f}={}", level_labels(*f)[usize::from(l)]))
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn comparison_levels() {
        use Field::*;
        let cases = [
            levels(
                &[(GivenName, "Jonathon"), (Surname, "Smith")],
                &[(GivenName, "jonathan"), (Surname, "smith")],
            ),
            levels(
                &[(GivenName, "smith"), (Surname, "john")],
                &[(GivenName, "john"), (Surname, "smith")],
            ),
            levels(&[(GivenName, "catherine")], &[(GivenName, "kathryn")]),
            levels(&[(FullName, "王小明")], &[(FullName, "Xiaoming Wang")]),
            levels(&[(FullName, "王小明")], &[(FullName, "汪小明")]),
            levels(&[(DateOfBirth, "19560409")], &[(DateOfBirth, "1956-09-04")]),
            levels(&[(DateOfBirth, "19560409")], &[(DateOfBirth, "19650409")]),
            levels(&[(Phone, "+61 2 9876 5432")], &[(Phone, "(02) 9876 5432")]),
            levels(&[(Phone, "0298765432")], &[(Phone, "0398765432")]),
            levels(&[(Email, "J.Smith+crm@example.com")], &[(Email, "jsmith@gmail.com")]),
            levels(&[(Address1, "12 Wallaby Pl")], &[(Address1, "12 wallaby place")]),
            levels(&[(Postcode, "2119")], &[(Postcode, "2125")]),
            levels(&[(NationalId, "1804974")], &[(NationalId, "1804947")]),
            levels(&[(State, "nsw")], &[(State, "vic")]),
        ];
        expect![[r#"
            given_name=one_edit surname=exact
            given_name=swapped_with_other_name surname=swapped_with_other_name
            given_name=phonetic
            full_name=reordered
            full_name=exact
            date_of_birth=day_month_swapped
            date_of_birth=one_edit
            phone=exact
            phone=same_last_8_digits
            email=same_local_part
            address_1=exact
            postcode=numeric_within_10
            national_id=one_edit
            state=else"#]]
        .assert_eq(&cases.join("\n"));
    }

    #[test]
    fn packing_round_trips() {
        let levels: Levels = std::array::from_fn(|i| if i % 3 == 0 { NULL_LEVEL } else { (i % 7) as u8 });
        assert_eq!(unpack(pack(&levels)), levels);
    }
}
