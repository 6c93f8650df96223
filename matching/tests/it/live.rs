//! The live path as given/when/then: given customers in the index, when a
//! record arrives, then the candidates, decisions and explanations.

use expect_test::{Expect, expect};
use matching::{Decision, Field, LiveIndex, Model, Record};

fn person(fields: &[(Field, &str)]) -> Record {
    fields.iter().fold(Record::new(), |r, (f, v)| r.with(*f, *v))
}

fn index_with(customers: &[(&str, Record)]) -> LiveIndex {
    let mut index = LiveIndex::default();
    for (id, r) in customers {
        index.insert(*id, r);
    }
    index
}

/// Renders the scored candidates: id, decision, probability, and per field level:weight.
fn check(index: &LiveIndex, incoming: &Record, expect: Expect) {
    let out: String = index
        .score_candidates(incoming)
        .iter()
        .map(|c| {
            let fields: Vec<String> = c
                .explanation
                .fields
                .iter()
                .map(|f| format!("{}={}:{:+.1}", f.field, f.level, f.weight))
                .collect();
            format!(
                "{} {:?} p={:.3} {}\n",
                c.id,
                c.decision,
                c.probability,
                fields.join(" ")
            )
        })
        .collect();
    expect.assert_eq(&out);
}

fn wang() -> Record {
    person(&[
        (Field::FullName, "王小明"),
        (Field::Phone, "13800138000"),
        (Field::Email, "wangxm@qq.com"),
        (Field::DateOfBirth, "1988-03-12"),
        (Field::Suburb, "上海"),
    ])
}

fn smith() -> Record {
    person(&[
        (Field::GivenName, "John"),
        (Field::Surname, "Smith"),
        (Field::Phone, "0412 345 678"),
        (Field::Email, "john.smith@example.com"),
        (Field::DateOfBirth, "19700101"),
        (Field::Postcode, "2000"),
        (Field::StreetNumber, "12"),
    ])
}

#[test]
fn romanised_chinese_name_with_reformatted_phone_merges() {
    let index = index_with(&[("c-wang", wang()), ("c-smith", smith())]);
    let incoming = person(&[
        (Field::FullName, "Wang Xiaoming"),
        (Field::Phone, "+86 138-0013-8000"),
        (Field::DateOfBirth, "12/03/1988"),
    ]);
    check(
        &index,
        &incoming,
        expect![[r#"
            c-wang Merge p=1.000 full_name=exact:+9.4 date_of_birth=exact:+9.6 phone=exact:+9.6
        "#]],
    );
}

#[test]
fn homophone_and_typo_go_to_review_or_merge_with_evidence() {
    let index = index_with(&[("c-wang", wang()), ("c-smith", smith())]);
    let homophone = person(&[(Field::FullName, "汪小明"), (Field::Email, "wangxm@qq.com")]);
    check(
        &index,
        &homophone,
        expect![[r#"
            c-wang Merge p=0.726 full_name=exact:+9.4 email=exact:+9.6
        "#]],
    );
    let typo = person(&[
        (Field::GivenName, "Jon"),
        (Field::Surname, "Smith"),
        (Field::DateOfBirth, "19700101"),
    ]);
    check(
        &index,
        &typo,
        expect![[r#"
            c-smith Merge p=0.961 given_name=one_edit:+5.3 surname=exact:+7.3 date_of_birth=exact:+9.6
        "#]],
    );
}

#[test]
fn removed_customers_are_no_longer_candidates() {
    let mut index = index_with(&[("c-wang", wang()), ("c-smith", smith())]);
    assert!(index.remove("c-wang"));
    assert!(!index.remove("c-wang"));
    check(&index, &wang(), expect![[""]]);
    index.insert("c-wang-2", &wang());
    let ids: Vec<_> = index
        .score_candidates(&wang())
        .into_iter()
        .map(|c| (c.id, c.decision))
        .collect();
    assert_eq!(ids, vec![("c-wang-2".to_string(), Decision::Merge)]);
    assert_eq!(index.len(), 2);
}

#[test]
fn a_family_member_at_the_same_address_is_reviewed_not_merged() {
    let index = index_with(&[("c-wang", wang()), ("c-smith", smith())]);
    let other = person(&[
        (Field::GivenName, "Mary"),
        (Field::Surname, "Smith"),
        (Field::Postcode, "2000"),
        (Field::StreetNumber, "12"),
    ]);
    check(
        &index,
        &other,
        expect![[r#"
        c-smith Review p=0.361 given_name=else:-5.0 surname=exact:+7.3 street_number=exact:+6.3 postcode=exact:+8.1
    "#]],
    );
}

#[test]
fn model_json_round_trips_and_rejects_bad_models() {
    let model = Model::default();
    let back = Model::from_json(&model.to_json()).map_err(|e| e.to_string());
    assert_eq!(back, Ok(model.clone()));
    let mut bad = model.clone();
    bad.comparisons[0].levels[0].m = 0.0;
    expect![[r#"invalid model: given_name level exact has m 0 u 0.004 outside (0, 1]; retrain it or start from Model::default()"#]]
        .assert_eq(&bad.validate().map_err(|e| e.to_string()).unwrap_err());
    let mut bad = model;
    bad.thresholds.review = 0.9;
    bad.thresholds.merge = 0.5;
    expect![[r#"invalid model: thresholds merge 0.5 / review 0.9 must satisfy 0 ≤ review ≤ merge ≤ 1; retrain it or start from Model::default()"#]]
        .assert_eq(&bad.validate().map_err(|e| e.to_string()).unwrap_err());
}

#[test]
fn labelled_pairs_move_m_toward_what_reviewers_confirmed() {
    let mut model = Model::default();
    let before = model.comparisons[Field::Surname.index()].levels[1].m;
    let confirmed: Vec<(Record, Record)> = (0..20)
        .map(|_| {
            (
                person(&[(Field::Surname, "smith")]),
                person(&[(Field::Surname, "smyth")]),
            )
        })
        .collect();
    model.learn_from_labelled(&confirmed, 10.0);
    let after = model.comparisons[Field::Surname.index()].levels[1].m;
    assert!(after > before + 0.5, "one_edit m {before} -> {after}");
    assert!(model.validate().is_ok());
}

/// `upsert` stores what `insert` of the overlaid raw record would, and
/// `score_candidates_over` scores what `score_candidates` of it would: the index keeps no
/// raw records, so the overlay happens on normalised entries.
#[test]
fn an_update_laid_over_a_stored_record_equals_inserting_the_overlaid_record() {
    let base = person(&[
        (Field::FullName, "张伟"),
        (Field::Address1, "上海市浦东新区世纪大道100号"),
        (Field::Phone, "+8613800138000"),
    ]);
    let update = person(&[(Field::Email, "zw@example.com"), (Field::Phone, "+8613900139000")]);
    let overlaid = person(&[
        (Field::FullName, "张伟"),
        (Field::Address1, "上海市浦东新区世纪大道100号"),
        (Field::Phone, "+8613900139000"),
        (Field::Email, "zw@example.com"),
    ]);
    let others = [
        (
            "other",
            person(&[(Field::FullName, "张伟"), (Field::Phone, "+8613900139001")]),
        ),
        (
            "third",
            person(&[(Field::FullName, "张伟"), (Field::Email, "zw@example.com")]),
        ),
    ];
    let mut upserted = index_with(&others);
    upserted.upsert("c1", &base);
    upserted.upsert("c1", &update);
    let mut inserted = index_with(&others);
    inserted.insert("c1", &overlaid);
    let probe = person(&[(Field::FullName, "张 伟"), (Field::Phone, "+8613900139000")]);
    let render = |index: &LiveIndex, r: &Record| {
        index
            .score_candidates(r)
            .iter()
            .map(|c| format!("{} {:.6}", c.id, c.match_weight))
            .collect::<Vec<_>>()
    };
    let found = render(&upserted, &probe);
    assert!(found.iter().any(|c| c.starts_with("c1 ")), "{found:?}");
    assert_eq!(found, render(&inserted, &probe));
    assert_eq!(upserted.len(), 3);

    // Scoring an update over a stored record: as if the overlaid record were scored.
    let over = |index: &LiveIndex| {
        index
            .score_candidates_over("other", &person(&[(Field::Email, "zw@example.com")]))
            .iter()
            .map(|c| format!("{} {:.6}", c.id, c.match_weight))
            .collect::<Vec<_>>()
    };
    let direct = render(
        &inserted,
        &person(&[
            (Field::FullName, "张伟"),
            (Field::Phone, "+8613900139001"),
            (Field::Email, "zw@example.com"),
        ]),
    );
    assert_eq!(over(&inserted), direct);
    assert!(!direct.is_empty());
}
