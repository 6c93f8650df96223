//! `crm import` end to end: a CSV through the domain into the views; the summary counts
//! new and matched customers; a re-run adds nothing; the imported customer is queryable.

use crate::harness::{Server, crm};

/// The value of a summary line (`  new customers       3`).
fn figure(stdout: &str, label: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {label:?} line in:\n{stdout}"))
        .to_string()
}

fn assert_figures(stdout: &str, expected: &[(&str, &str)]) {
    for (label, want) in expected {
        assert_eq!(figure(stdout, label), *want, "{label} in:\n{stdout}");
    }
}

fn import(data: &std::path::Path, file: &std::path::Path) -> String {
    let out = crm()
        .arg("--data-dir")
        .arg(data)
        .arg("import")
        .arg(file)
        .args(["--template", "trade-show", "--source", "2026上海展会"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "import failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Row 4 is row 2's person (the same phone written differently, a second email); row 6
/// has no usable identifier and is rejected; the blank row is not a row.
const VISITORS: &str = "客户名称,联系人,手机,邮箱\n\
    甲公司,张伟,138 0013 8000,zw@example.com\n\
    乙公司,李娜,13900139000,\n\
    甲公司,张伟,+86 138-0013-8000,zhang.wei@example.com\n\
    丙公司,王芳,,fang@example.com\n\
    ,,,\n\
    丁公司,赵六,not a phone,\n";

#[tokio::test(flavor = "multi_thread")]
async fn an_import_counts_new_and_matched_customers_and_a_rerun_adds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let csv = dir.path().join("visitors.csv");
    std::fs::write(&csv, VISITORS).unwrap();

    let first = import(&data, &csv);
    assert_figures(
        &first,
        &[
            ("rows read", "5"),
            ("accepted", "4"),
            ("already imported", "0"),
            ("rejected", "1"),
            ("new customers", "3"),
            ("matched existing", "1"),
        ],
    );
    // The re-run publishes nothing and finds nobody new.
    let again = import(&data, &csv);
    assert_figures(
        &again,
        &[
            ("accepted", "0"),
            ("already imported", "4"),
            ("rejected", "1"),
            ("new customers", "0"),
            ("matched existing", "0"),
        ],
    );

    // The person of rows 2 and 4 is one customer with both emails and the phone.
    let mut server = Server::start(&data).await;
    let q = r#"{ customerByIdentifier(kind: "email", value: "ZHANG.WEI@example.com") {
        name identifiers { kind normalized } timeline(first: 10) { totalCount } } }"#;
    let found = server
        .eventually(q, |d| d["customerByIdentifier"]["timeline"]["totalCount"] == 2)
        .await;
    let c = &found["customerByIdentifier"];
    assert_eq!(c["name"], "张伟");
    let mut ids: Vec<String> = c["identifiers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| format!("{}:{}", i["kind"].as_str().unwrap(), i["normalized"].as_str().unwrap()))
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        [
            "email:zhang.wei@example.com",
            "email:zw@example.com",
            "phone:+8613800138000"
        ]
    );
    assert!(server.stop().success());
}

/// The same file over HTTP (`POST /v1/imports`, multipart) to a running server: the job's
/// summary in GraphQL counts the same new and matched customers once the domain is idle.
#[tokio::test(flavor = "multi_thread")]
async fn an_http_import_job_reports_new_and_matched_customers_in_graphql() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("data")).await;
    let mut body = Vec::new();
    body.extend_from_slice(b"--XyZ\r\nContent-Disposition: form-data; name=\"template\"\r\n\r\ntrade-show\r\n");
    body.extend_from_slice(
        b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"visitors.csv\"\r\nContent-Type: text/csv\r\n\r\n",
    );
    body.extend_from_slice(VISITORS.as_bytes());
    body.extend_from_slice(b"\r\n--XyZ--\r\n");
    let response = server
        .client
        .post(format!("{}/v1/imports", server.url))
        .header("content-type", "multipart/form-data; boundary=XyZ")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let created: serde_json::Value = response.json().await.unwrap();
    let id = created["status_url"]
        .as_str()
        .and_then(|u| u.rsplit('/').next())
        .unwrap()
        .to_string();
    let q = format!(r#"{{ importJob(id: "{id}") {{ state accepted rejected newCustomers matchedCustomers }} }}"#);
    let job = server
        .eventually(&q, |d| d["importJob"]["newCustomers"].is_number())
        .await;
    let job = &job["importJob"];
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(
        (
            &job["accepted"],
            &job["rejected"],
            &job["newCustomers"],
            &job["matchedCustomers"]
        ),
        (&4.into(), &1.into(), &3.into(), &1.into()),
        "{job}"
    );
    assert!(server.stop().success());
}

/// `crm bench import --rows N` with its temporary files under `tmp`.
fn bench_import(rows: usize, tmp: &std::path::Path) -> std::process::Command {
    let mut bench = crm();
    bench
        .args(["bench", "import", "--rows", &rows.to_string()])
        .env("TMPDIR", tmp);
    bench
}

/// `--repeat` runs the bench in a process per run, shows each run's figures and ends with
/// the fastest, median and slowest; it leaves no temporary files either.
#[test]
fn a_repeated_import_bench_summarises_its_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let out = bench_import(3_000, tmp.path())
        .args(["--repeat", "2"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for run in ["run 1 of 2", "run 2 of 2"] {
        assert!(stdout.lines().any(|l| l == run), "{run} missing from {stdout}");
    }
    let runs = stdout
        .matches("bench import: 3000 rows end to end into the views in")
        .count();
    assert_eq!(runs, 2, "{stdout}");
    let summary = stdout
        .lines()
        .find_map(|l| l.strip_prefix("bench import, 2 runs of 3000 rows: "))
        .unwrap_or_else(|| panic!("no summary in {stdout}"));
    assert!(summary.contains("(fastest / median / slowest)"), "{summary}");
    assert!(summary.contains("MiB (lowest / median / highest)"), "{summary}");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);

    let kept = tmp.path().join("kept");
    let out = bench_import(3_000, tmp.path())
        .args(["--repeat", "2", "--keep"])
        .arg(&kept)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("use it without --repeat"), "{stderr}");
    assert!(!kept.exists(), "nothing imported");

    // --data-dir would be ignored by a benchmark: refused, with what to use instead.
    let out = bench_import(3_000, tmp.path())
        .arg("--data-dir")
        .arg(&kept)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("does not apply to a benchmark") && stderr.contains("--keep DIR"),
        "{stderr}"
    );
    assert!(!kept.exists(), "nothing imported");
}

/// An interrupted `crm bench import` removes its temporary directory (generated file, bus,
/// store, views: gigabytes at a million rows) and says so.
#[test]
fn an_interrupted_import_bench_leaves_no_temporary_files() {
    let tmp = tempfile::tempdir().unwrap();
    let child = bench_import(300_000, tmp.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the import is under way: its data directory exists.
    let started = std::time::Instant::now();
    let data_dir = || {
        std::fs::read_dir(tmp.path())
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| e.path().join("data").join("store").exists())
    };
    while !data_dir() {
        assert!(started.elapsed().as_secs() < 60, "the bench never started importing");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let pid = child.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an interrupted bench reports failure");
    assert!(stderr.contains("benchmark interrupted"), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// `crm bench import` prints the figures the issue asks for (time, rows/s, peak RSS) and
/// where the CPU went, by thread, with the projector and the store's writer named.
#[test]
fn a_small_import_bench_reports_time_memory_and_cpu_by_thread() {
    let tmp = tempfile::tempdir().unwrap();
    let out = bench_import(10_000, tmp.path()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("bench import: 10000 rows end to end into the views in"),
        "{stdout}"
    );
    assert!(stdout.contains("rows/s; peak RSS"), "{stdout}");
    let by_thread = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("CPU by thread: "))
        .unwrap_or_else(|| panic!("no CPU by thread line in {stdout}"));
    for name in ["projector ", "store-writer "] {
        assert!(by_thread.contains(name), "{name}missing from {by_thread}");
    }
    let io = stdout
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("I/O by thread (read/written by system calls, page cache included): ")
        })
        .unwrap_or_else(|| panic!("no I/O by thread line in {stdout}"));
    // The store's writer writes the log: a nonzero figure after the slash.
    let writer = io
        .split(", ")
        .find_map(|t| t.strip_prefix("store-writer "))
        .unwrap_or_else(|| panic!("store-writer missing from {io}"));
    let written: f64 = writer
        .trim_end_matches(" MB")
        .split_once('/')
        .and_then(|(_, w)| w.parse().ok())
        .unwrap_or_else(|| panic!("unreadable figures {writer:?}"));
    assert!(written >= 1.0, "the store's writer wrote {written} MB: {io}");
    // The temporary directory is removed when the bench ends.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}
