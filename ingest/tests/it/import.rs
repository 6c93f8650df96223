//! Imports of real files: XLSX written by openpyxl, GB18030/GBK CSV encoded by
//! Python, an Excel-damaged phone column, a file with 5% bad rows, a Taobao
//! export. Fixtures are committed (made by tests/peers/make_import_fixtures.py);
//! with CRM_PEERS_PYTHON set they are regenerated live and checked the same way.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use bus::{Ack, Bus, BusConsumer, BusError, BusRecord, DeadLetter, Delivery, Position};
use ingest::import::{self, ImportLedger, ImportOptions, ImportSummary, NoProgress};
use proto::InboundEvent;
use proto::inbound::Observation;

/// A bus that keeps what is published in memory.
#[derive(Default)]
struct MemoryBus {
    records: Mutex<Vec<BusRecord>>,
}

#[async_trait::async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, record: BusRecord) -> Result<Ack, BusError> {
        let mut records = self.records.lock().map_err(|e| BusError::Other(e.to_string()))?;
        records.push(record);
        Ok(Ack {
            position: Position {
                partition: 0,
                offset: records.len() as i64 - 1,
            },
        })
    }
    async fn consumer(&self, _: &str) -> Result<Box<dyn BusConsumer>, BusError> {
        Err(BusError::Unavailable("memory bus has no consumers".into()))
    }
    async fn dead_letter(&self, _: &Delivery, _: &str) -> Result<(), BusError> {
        Ok(())
    }
    async fn dead_letters(&self, _: usize) -> Result<Vec<DeadLetter>, BusError> {
        Ok(Vec::new())
    }
    fn kind(&self) -> &'static str {
        "memory"
    }
}

impl MemoryBus {
    fn events(&self) -> Vec<InboundEvent> {
        self.records
            .lock()
            .unwrap()
            .iter()
            .map(|r| {
                assert_eq!(r.header(bus::HEADER_SCHEMA_VERSION), Some("1"));
                let ev = InboundEvent::decode(r.header(bus::HEADER_SCHEMA).unwrap(), &r.payload).unwrap();
                assert_eq!(r.header(bus::HEADER_EVENT_ID), Some(ev.event_id()));
                assert_eq!(r.key, ev.bus_key());
                ev
            })
            .collect()
    }
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Copies a fixture into a temp dir (the error report is written beside it).
fn copy(dir: &Path, from: &Path, name: &str) -> PathBuf {
    let to = dir.join(name);
    std::fs::copy(from.join(name), &to).unwrap();
    to
}

async fn import(options: &ImportOptions) -> (ImportSummary, MemoryBus) {
    let bus = MemoryBus::default();
    let summary = import::run(options, &bus, &NoProgress).await.unwrap();
    (summary, bus)
}

fn observation(ev: &InboundEvent) -> &Observation {
    ev.observation().unwrap()
}

fn ids(ev: &InboundEvent) -> Vec<(String, String)> {
    observation(ev)
        .subject
        .as_ref()
        .unwrap()
        .identifiers
        .iter()
        .map(|i| (i.kind.clone(), i.value.clone()))
        .collect()
}

fn counts(s: &ImportSummary) -> (u64, u64, u64, u64) {
    (s.rows_read, s.accepted, s.already_imported, s.rejected)
}

fn report_rows(path: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(
        text.starts_with('\u{feff}'),
        "reports start with a BOM so Excel shows Chinese"
    );
    csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(text.trim_start_matches('\u{feff}').as_bytes())
        .records()
        .map(|r| r.unwrap().iter().map(str::to_string).collect())
        .collect()
}

async fn check_trade_show_xlsx(src: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let path = copy(dir.path(), src, "trade_show.xlsx");
    let mut options = ImportOptions::new(&path);
    options.template = Some("trade-show".into());
    options.source = Some("2026上海展会".into());
    let (summary, bus) = import(&options).await;
    assert_eq!(counts(&summary), (6, 5, 0, 1), "{summary}");
    assert_eq!(summary.sheets, ["2026上海展会"]);
    assert!(
        summary.warnings.iter().any(|w| w.contains("说明")),
        "{:?}",
        summary.warnings
    );
    let events = bus.events();
    assert_eq!(events.len(), 5);
    let phones: Vec<Vec<(String, String)>> = events.iter().map(ids).collect();
    // Number cells back to phones, full-width digits read, an international number kept.
    assert_eq!(phones[0][0], ("phone".into(), "13800138000".into()));
    assert_eq!(phones[1], [("phone".to_string(), "13900139000".to_string())]);
    assert_eq!(phones[2][0], ("phone".into(), "137 0013 7000".into()));
    assert_eq!(phones[2][1], ("email".into(), "LINA@RUIFENG.COM".into()));
    assert_eq!(phones[3][0], ("phone".into(), "+1 415 555 2671".into()));
    let first = &events[0];
    let header = first.header().unwrap();
    assert_eq!(header.channel, "import");
    assert_eq!(header.channel_instance, "2026上海展会");
    assert_eq!(header.source_ref, format!("{}/2026上海展会/3", summary.file_sha256));
    assert_eq!(
        header.event_id,
        proto::derived_id(&format!("import/{}/2026上海展会/3", summary.file_sha256)).to_string()
    );
    // 2026-03-01 10:30 in China.
    assert_eq!(header.occurred_at_us, 1_772_332_200_000_000);
    let subject = observation(first).subject.as_ref().unwrap();
    assert_eq!(
        (subject.company.as_str(), subject.name.as_str()),
        ("上海华信科技有限公司", "张伟")
    );
    assert_eq!(subject.industry, "制造业");
    // The date serial 45717 in a date column is 2025-03-01.
    let third = events[2].header().unwrap();
    assert_eq!(third.occurred_at_us, 1_740_758_400_000_000);
    let raw: serde_json::Value = serde_json::from_slice(&header.raw).unwrap();
    assert_eq!(raw["客户名称"], "上海华信科技有限公司");
    // XLSX input → XLSX report with the rejected row and the reason.
    let report = summary.error_report.clone().unwrap();
    assert!(report.ends_with("trade_show.errors.xlsx"));
    let mut options = ImportOptions::new(&report);
    options.template = Some("trade-show".into());
    let bus = MemoryBus::default();
    let again = import::run(&options, &bus, &NoProgress).await.unwrap();
    // The report re-imported unchanged is rejected the same way (its error column is ignored).
    assert_eq!(counts(&again), (1, 0, 0, 1));
    assert!(again.rejections[0].errors[0].reason.contains("chenjie@zhongke"));
    assert_eq!(again.rejections[0].errors[0].column, "邮箱");
}

async fn check_gb18030(src: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let path = copy(dir.path(), src, "gb18030.csv");
    let (summary, bus) = import(&ImportOptions::new(&path)).await;
    assert_eq!(counts(&summary), (4, 4, 0, 0), "{summary}");
    assert_eq!(summary.templates, ["trade-show"], "detected from the headers");
    assert_eq!(summary.encoding.as_deref(), Some("GB18030/GBK (detected)"));
    assert!(summary.error_report.is_none());
    let events = bus.events();
    let names: Vec<&str> = events
        .iter()
        .map(|e| observation(e).subject.as_ref().unwrap().name.as_str())
        .collect();
    assert_eq!(
        names,
        ["王𠀾", "李䶮", "赵敏", "周涛"],
        "four-byte GB18030 characters survive"
    );
    let note = &observation(&events[0]).interaction.as_ref().unwrap().details["note"];
    assert_eq!(note, "第一天\n下午回访", "a quoted field keeps its line break");
}

async fn check_damaged_phones(src: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let path = copy(dir.path(), src, "damaged_phones.csv");
    let mut options = ImportOptions::new(&path);
    options.template = Some("trade-show".into());
    let (summary, bus) = import(&options).await;
    assert_eq!(counts(&summary), (7, 5, 0, 2), "{summary}");
    assert_eq!(summary.delimiter.as_deref(), Some(";"));
    let phones: Vec<String> = bus
        .events()
        .iter()
        .flat_map(|e| ids(e).into_iter().filter(|(k, _)| k == "phone").map(|(_, v)| v))
        .collect();
    assert_eq!(phones, ["13800138000", "13800138001", "13900139000", "139 0013 9001"]);
    let events = bus.events();
    let masked = &observation(&events[4]).subject.as_ref().unwrap().attributes;
    assert_eq!(masked["masked_phone"], "138****8000");
    let rows = report_rows(&summary.error_report.unwrap());
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].last().unwrap(), "导入错误 (import error)");
    assert_eq!(rows[1][2], "1.38E+10", "the cell as it was, to fix in place");
    assert!(
        rows[1]
            .last()
            .unwrap()
            .starts_with("row 4: 联系方式: 1.38E+10: Excel turned this number"),
        "{rows:?}"
    );
    assert!(
        rows[2].last().unwrap().contains("kept only 9 of its 11 digits"),
        "{rows:?}"
    );
}

async fn check_bad_rows(src: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let path = copy(dir.path(), src, "bad_rows_5pct.csv");
    let data = dir.path().join("ledger");
    let ledger = ImportLedger::open(&data).unwrap();
    let mut options = ImportOptions::new(&path);
    options.template = Some("trade-show".into());
    options.ledger = Some(ledger.clone());
    let before = proto::now_us();
    let (summary, bus) = import(&options).await;
    assert_eq!(counts(&summary), (200, 190, 0, 10), "{summary}");
    assert_eq!(bus.events().len(), 190);
    assert_eq!(summary.published.len(), 190);
    // Each row is stamped when it was read, and its bus event carries that stamp.
    let stamps: std::collections::HashMap<String, i64> = bus
        .events()
        .iter()
        .map(|e| (e.event_id().to_string(), e.header().unwrap().recorded_at_us))
        .collect();
    for p in &summary.published {
        assert!(p.recorded_at_us >= before && p.recorded_at_us <= proto::now_us());
        assert_eq!(stamps[&p.event_id.to_string()], p.recorded_at_us);
    }
    let reasons: Vec<String> = summary
        .rejections
        .iter()
        .map(|r| format!("{} {}", r.row, r.errors[0].column))
        .collect();
    assert_eq!(
        reasons,
        [
            "21 邮箱",
            "41 联系方式",
            "61 ",
            "81 留资时间",
            "101 联系方式",
            "121 邮箱",
            "141 联系方式",
            "161 ",
            "181 留资时间",
            "201 联系方式"
        ]
    );
    let text = summary.to_string();
    for line in [
        "rows read           200",
        "accepted            190",
        "rejected            10",
        "new customers",
    ] {
        assert!(text.contains(line), "{text}");
    }

    // Re-running the same file publishes nothing new.
    let bus2 = MemoryBus::default();
    let rerun = import::run(&options, &bus2, &NoProgress).await.unwrap();
    assert_eq!(counts(&rerun), (200, 0, 190, 10));
    assert!(bus2.events().is_empty());
    assert!(rerun.published.is_empty(), "event ids are those this run published");

    // The user fixes the report in place and imports it: the error column is ignored.
    let report = summary.error_report.unwrap();
    let mut rows = report_rows(&report);
    for row in rows.iter_mut().skip(1) {
        row[2] = "13912345678".into();
        row[3] = "fixed@example.com".into();
        row[5] = "2026-03-05".into();
        *row.last_mut().unwrap() = "this column is ignored".into();
    }
    let fixed = dir.path().join("fixed.csv");
    let mut w = csv::Writer::from_path(&fixed).unwrap();
    for row in &rows {
        w.write_record(row).unwrap();
    }
    w.flush().unwrap();
    let mut options = ImportOptions::new(&fixed);
    options.template = Some("trade-show".into());
    let (summary, bus) = import(&options).await;
    assert_eq!(counts(&summary), (10, 10, 0, 0), "{summary}");
    let raw = String::from_utf8(bus.events()[0].header().unwrap().raw.clone()).unwrap();
    assert!(!raw.contains("ignored"), "{raw}");
}

async fn check_taobao(src: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let path = copy(dir.path(), src, "taobao_orders.csv");
    let mut options = ImportOptions::new(&path);
    options.template = Some("taobao-orders".into());
    let (summary, bus) = import(&options).await;
    assert_eq!(counts(&summary), (3, 2, 0, 1), "{summary}");
    let events = bus.events();
    let subject = observation(&events[0]).subject.as_ref().unwrap();
    assert_eq!(subject.identifiers.len(), 1, "a masked phone is never an identifier");
    assert_eq!(
        (
            subject.identifiers[0].kind.as_str(),
            subject.identifiers[0].value.as_str(),
            subject.identifiers[0].scope.as_str()
        ),
        ("buyer_open_uid", "tb_buyer_01", "某某旗舰店")
    );
    assert_eq!(subject.attributes["masked_phone"], "138****8000");
    let order = observation(&events[0])
        .interaction
        .as_ref()
        .unwrap()
        .order
        .clone()
        .unwrap();
    assert_eq!(
        (order.order_id.as_str(), order.total_cents),
        ("2893749283749283749", 12_900)
    );
    let second = observation(&events[1]).subject.as_ref().unwrap();
    assert_eq!(second.attributes["virtual_phone"], "13900139000-1234");
    assert!(summary.rejections[0].errors[0].reason.contains("买家会员名"));
}

async fn check_all(src: &Path) {
    check_trade_show_xlsx(src).await;
    check_gb18030(src).await;
    check_damaged_phones(src).await;
    check_bad_rows(src).await;
    check_taobao(src).await;
}

#[tokio::test]
async fn committed_fixtures_import_as_expected() {
    check_all(&fixtures()).await;
}

/// With CRM_PEERS_PYTHON (a Python with openpyxl), the fixtures are made anew by the peer tools.
#[tokio::test]
async fn fixtures_made_live_by_python_import_as_expected() {
    let Ok(python) = std::env::var("CRM_PEERS_PYTHON") else {
        eprintln!("CRM_PEERS_PYTHON not set: checked the committed fixtures only");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/peers/make_import_fixtures.py");
    let status = std::process::Command::new(python)
        .arg(script)
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    check_all(dir.path()).await;
}

#[tokio::test]
async fn generated_files_import_with_the_expected_row_counts() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["gen.csv", "gen.xlsx"] {
        let out = dir.path().join(name);
        let g = import::generate(2_000, 0.1, 42, &out).unwrap();
        assert_eq!((g.people, g.duplicate_rows), (1_800, 200));
        let (summary, bus) = import(&ImportOptions::new(&out)).await;
        assert_eq!(
            counts(&summary),
            (2_000, 2_000, 0, 0),
            "{name}: {:?}",
            summary.rejections.first()
        );
        assert_eq!(bus.events().len(), 2_000);
    }
}

#[tokio::test]
async fn a_failing_bus_stops_the_import_with_a_resumable_error() {
    struct Refusing;
    #[async_trait::async_trait]
    impl Bus for Refusing {
        async fn publish(&self, _: BusRecord) -> Result<Ack, BusError> {
            tokio::time::sleep(Duration::from_millis(1)).await;
            Err(BusError::Unavailable("disk full".into()))
        }
        async fn consumer(&self, _: &str) -> Result<Box<dyn BusConsumer>, BusError> {
            Err(BusError::Closed)
        }
        async fn dead_letter(&self, _: &Delivery, _: &str) -> Result<(), BusError> {
            Ok(())
        }
        async fn dead_letters(&self, _: usize) -> Result<Vec<DeadLetter>, BusError> {
            Ok(Vec::new())
        }
        fn kind(&self) -> &'static str {
            "refusing"
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("gen.csv");
    import::generate(5_000, 0.0, 1, &out).unwrap();
    let err = import::run(&ImportOptions::new(&out), &Refusing, &NoProgress)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("run the same import again to resume"), "{err}");
}

#[tokio::test]
async fn empty_templates_print_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    for name in import::template::builtin_names() {
        for ext in ["csv", "xlsx"] {
            let out = dir.path().join(format!("{name}.{ext}"));
            let t = import::template::builtin(name).unwrap();
            import::template::write_empty(&t, &out).unwrap();
            let mut options = ImportOptions::new(&out);
            options.template = Some(name.to_string());
            let (summary, _) = import(&options).await;
            assert_eq!(counts(&summary), (0, 0, 0, 0), "{name}.{ext}");
        }
    }
}

#[tokio::test]
async fn http_upload_runs_a_job_with_status_and_error_report() {
    use axum::body::{Body, to_bytes};
    use axum::http::Request;
    use tower::ServiceExt;

    let dir = tempfile::tempdir().unwrap();
    let bus: std::sync::Arc<dyn Bus> = std::sync::Arc::new(MemoryBus::default());
    let jobs = import::ImportJobs::new(bus, dir.path().join("uploads"), None);
    let app = import::router(jobs.clone());
    let file = std::fs::read(fixtures().join("damaged_phones.csv")).unwrap();
    let mut body = Vec::new();
    body.extend_from_slice(b"--XyZ\r\nContent-Disposition: form-data; name=\"template\"\r\n\r\ntrade-show\r\n");
    body.extend_from_slice(
        b"--XyZ\r\nContent-Disposition: form-data; name=\"source\"\r\n\r\n2026\xe4\xb8\x8a\xe6\xb5\xb7\r\n",
    );
    body.extend_from_slice(
        b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"damaged_phones.csv\"\r\nContent-Type: text/csv\r\n\r\n",
    );
    body.extend_from_slice(&file);
    body.extend_from_slice(b"\r\n--XyZ--\r\n");
    let request = Request::post("/v1/imports")
        .header("content-type", "multipart/form-data; boundary=XyZ")
        .body(Body::from(body))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 202);
    let created: serde_json::Value =
        serde_json::from_slice(&to_bytes(response.into_body(), 1 << 20).await.unwrap()).unwrap();
    let url = created["status_url"].as_str().unwrap().to_string();
    let mut status = serde_json::Value::Null;
    for _ in 0..200 {
        let response = app
            .clone()
            .oneshot(Request::get(&url).body(Body::empty()).unwrap())
            .await
            .unwrap();
        status = serde_json::from_slice(&to_bytes(response.into_body(), 1 << 20).await.unwrap()).unwrap();
        if status["state"] != "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status["state"], "succeeded", "{status}");
    assert_eq!(status["summary"]["accepted"], 5);
    assert_eq!(status["summary"]["rejected"], 2);
    assert_eq!(status["summary"]["source"], "2026上海");
    let errors = app
        .clone()
        .oneshot(Request::get(format!("{url}/errors")).body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(errors.status(), 200);
    let text = String::from_utf8(to_bytes(errors.into_body(), 1 << 20).await.unwrap().to_vec()).unwrap();
    assert!(text.contains("1.38E+10"), "{text}");
    assert_eq!(jobs.list().len(), 1);
    let missing = app
        .oneshot(Request::get("/v1/imports/nope").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}
