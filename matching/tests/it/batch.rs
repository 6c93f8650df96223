//! The batch command on real and generated data.

use std::path::PathBuf;

use expect_test::expect;
use matching::cli::{DedupArgs, run};

/// febrl1 (public record-linkage benchmark data) is kept in the repository so this always runs.
fn febrl(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

#[test]
fn febrl1_dedup_beats_splink() {
    let (input, truth) = (febrl("febrl1.csv"), febrl("febrl1_truth.csv"));
    for exclude in [vec![], vec!["soc_sec_id".to_string()]] {
        let mut args = DedupArgs::for_file(&input);
        args.truth = Some(truth.clone());
        args.exclude_columns = exclude.clone();
        let report = run(&args).map_err(|e| e.to_string());
        let metrics = report.as_ref().ok().and_then(|r| r.cluster_metrics);
        let f1 = metrics.map_or(0.0, |m| m.f1);
        assert!(f1 >= 0.995, "febrl1 excluding {exclude:?}: F1 {f1} ({report:?})");
    }
}

#[test]
fn generated_customers_dedup_and_link() {
    let dir = std::env::temp_dir().join(format!("matching-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .map_err(|e| e.to_string())
        .unwrap_or_else(|e| panic!("{e}"));
    let (input, truth) = (dir.join("gen.csv"), dir.join("gen_truth.csv"));
    let summary = (|| -> std::io::Result<_> {
        let out = std::fs::File::create(&input)?;
        let t = std::fs::File::create(&truth)?;
        Ok(matching::generate_with_truth(3000, 0.2, 7, out, t))
    })();
    let summary = format!("{:?}", summary.map(|s| s.map_err(|e| e.to_string())));
    expect!["Ok(Ok(GenerateSummary { records: 3000, entities: 2400, duplicates: 600, true_pairs: 667 }))"]
        .assert_eq(&summary);
    let mut args = DedupArgs::for_file(&input);
    args.truth = Some(truth);
    args.out_pairs = Some(dir.join("pairs.csv"));
    args.out_clusters = Some(dir.join("clusters.csv"));
    args.out_model = Some(dir.join("model.json"));
    let report = run(&args).map_err(|e| e.to_string());
    let f1 = report
        .as_ref()
        .ok()
        .and_then(|r| r.cluster_metrics)
        .map_or(0.0, |m| m.f1);
    assert!(f1 >= 0.98, "generated F1 {f1}: {report:?}");
    let model = std::fs::read_to_string(dir.join("model.json")).unwrap_or_default();
    assert!(matching::Model::from_json(&model).is_ok());
    let pairs = std::fs::read_to_string(dir.join("pairs.csv")).unwrap_or_default();
    expect![[r#"id_a,id_b,match_probability,match_weight,decision,evidence"#]]
        .assert_eq(pairs.lines().next().unwrap_or_default());
    // Reusing the trained model skips training and gives the same result.
    let mut again = args.clone();
    again.model = Some(dir.join("model.json"));
    again.out_model = None;
    let f1_again = run(&again).ok().and_then(|r| r.cluster_metrics).map_or(0.0, |m| m.f1);
    assert!((f1 - f1_again).abs() < 1e-9, "{f1} vs {f1_again}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_inputs_say_what_to_do() {
    let dir = std::env::temp_dir().join(format!("matching-bad-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let file = dir.join("x.csv");
    let _ = std::fs::write(&file, "key,given_name\n1,ann\n");
    let err = |args: DedupArgs| {
        run(&args)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
            .replace(&*dir.to_string_lossy(), "DIR")
    };
    expect![[r#"DIR/x.csv has no column "id" (columns: key,given_name); pass the id column with --id-column"#]]
        .assert_eq(&err(DedupArgs::for_file(&file)));
    let mut args = DedupArgs::for_file(&file);
    args.id_column = "key".into();
    args.merge_threshold = Some(1.5);
    expect![[r#"invalid setting --merge-threshold = 1.5: a probability between 0 and 1"#]].assert_eq(&err(args));
    let _ = std::fs::remove_dir_all(&dir);
}
