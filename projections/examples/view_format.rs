//! What storing a view costs in the view store's format (postcard, LZ4 when long) against
//! the LZ4-compressed JSON of earlier versions: bytes stored, and time to write and read one
//! view, for a view as a million-row import leaves it (one trade-show row).
//! `cargo run --release -p projections --example view_format [N]` (N views, default 200000).

use std::time::Instant;

use projections::projector::{decode, encode};
use projections::view::CustomerView;

/// The view of one imported row, as the views store holds it.
const IMPORTED_ROW: &str = r#"{"id":"01a21b3f-e131-702c-9d51-68e69d150fcf","created_at_us":1772323620000000,"updated_at_us":1772323620000000,"identifiers":[{"kind":"email","normalized":"huang6384177@163.com","scope":"","raw":["huang6384177@163.com"],"source":{"event_id":"b0b804a8-2107-522a-8098-34f2ad72a8a2","channel":"import","instance":"visitors.csv","occurred_at_us":1772323620000000}},{"kind":"phone","normalized":"+8615901403784","scope":"","raw":["159 0140 3784"],"source":{"event_id":"b0b804a8-2107-522a-8098-34f2ad72a8a2","channel":"import","instance":"visitors.csv","occurred_at_us":1772323620000000}}],"fields":{"company":{"value":"西安金桥信息技术有限公司","source":{"event_id":"b0b804a8-2107-522a-8098-34f2ad72a8a2","channel":"import","instance":"visitors.csv","occurred_at_us":1772323620000000},"previous":[]},"company_size":{"value":"500-999人","source":{"event_id":"b0b804a8-2107-522a-8098-34f2ad72a8a2","channel":"import","instance":"visitors.csv","occurred_at_us":1772323620000000},"previous":[]},"industry":{"value":"医疗","source":{"event_id":"b0b804a8-2107-522a-8098-34f2ad72a8a2","channel":"import","instance":"visitors.csv","occurred_at_us":1772323620000000},"previous":[]},"name":{"value":"黄玉","source":{"event_id":"b0b804a8-2107-522a-8098-34f2ad72a8a2","channel":"import","instance":"visitors.csv","occurred_at_us":1772323620000000},"previous":[]},"region":{"value":"西安","source":{"event_id":"b0b804a8-2107-522a-8098-34f2ad72a8a2","channel":"import","instance":"visitors.csv","occurred_at_us":1772323620000000},"previous":[]}},"channels":[{"channel":"import","instance":"visitors.csv","first_at_us":1772323620000000,"last_at_us":1772323620000000,"count":1,"attributions":[]}],"first_touch":{"channel":"import","instance":"visitors.csv","at_us":1772323620000000,"attribution":null,"event_id":"b0b804a8-2107-522a-8098-34f2ad72a8a2"},"consent":{},"order_count":0,"order_total_cents":0,"timeline_count":1,"merged_from":[]}"#;

/// As versions before postcard stored a long value: 0x04, then LZ4 of the JSON.
fn json_lz4(view: &CustomerView) -> Vec<u8> {
    let mut out = vec![0x04];
    out.extend_from_slice(&lz4_flex::compress_prepend_size(
        &serde_json::to_vec(view).expect("JSON"),
    ));
    out
}

/// Mean time per call of `f`, over `n` calls.
fn per_call(n: u32, mut f: impl FnMut()) -> f64 {
    let started = Instant::now();
    for _ in 0..n {
        f();
    }
    started.elapsed().as_secs_f64() * 1e6 / f64::from(n)
}

fn main() {
    let n: u32 = std::env::args().nth(1).and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let view: CustomerView = serde_json::from_str(IMPORTED_ROW).expect("the sample view");
    let key = b"v/01a21b3f-e131-702c-9d51-68e69d150fcf";
    let json = json_lz4(&view);
    let postcard = encode(&view.id, &view).expect("encode");
    assert_eq!(decode::<CustomerView>(key, &json).expect("decode JSON"), view);
    assert_eq!(decode::<CustomerView>(key, &postcard).expect("decode postcard"), view);
    let json_write = per_call(n, || drop(std::hint::black_box(json_lz4(&view))));
    let json_read = per_call(n, || drop(std::hint::black_box(decode::<CustomerView>(key, &json))));
    let pc_write = per_call(n, || drop(std::hint::black_box(encode(&view.id, &view))));
    let pc_read = per_call(n, || drop(std::hint::black_box(decode::<CustomerView>(key, &postcard))));
    println!("one imported row's view, {n} times each:");
    println!(
        "  LZ4 JSON (earlier versions): {:4} bytes stored, write {json_write:.2} µs, read {json_read:.2} µs",
        json.len()
    );
    println!(
        "  postcard (LZ4 when long):    {:4} bytes stored, write {pc_write:.2} µs, read {pc_read:.2} µs",
        postcard.len()
    );
}
