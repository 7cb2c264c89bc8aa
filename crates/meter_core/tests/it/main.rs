//! Engine integration tests: one binary, real RocksDB in a temporary directory.

use meter_core::aggregate::MeterSpec;
use meter_core::error::{IssueCode, SkipCode};
use meter_core::query::{UsageQuery, WindowSize};
use meter_core::{Config, Engine, Error};

const T0: i64 = 1_795_428_000_000_000; // 2026-11-23T10:00:00Z
const MIN: i64 = 60_000_000;

fn open(dir: &tempfile::TempDir) -> Engine {
    Engine::open(dir.path(), Config::default()).unwrap()
}

fn spec(json: &str) -> MeterSpec {
    serde_json::from_str(json).unwrap()
}

fn event(id: &str, subject: &str, minute: i64, tokens: &str, model: &str) -> String {
    format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"gw","type":"llm","subject":"{subject}","time":"{}","data":{{"tokens":{tokens},"model":"{model}"}}}}"#,
        chrono::DateTime::from_timestamp_micros(T0 + minute * MIN).unwrap().to_rfc3339()
    )
}

fn batch(events: &[String]) -> Vec<u8> {
    format!("[{}]", events.join(",")).into_bytes()
}

fn total(engine: &Engine, tenant: &str, meter: &str) -> String {
    let q = UsageQuery { meter: meter.into(), from_us: T0 - 60 * MIN, to_us: T0 + 60 * MIN, ..Default::default() };
    let r = engine.query(tenant, &q).unwrap();
    r.rows.iter().map(|r| r.value.0).sum::<i128>().to_string()
}

fn tokens_meter(engine: &Engine, tenant: &str) {
    engine
        .create_meter(
            tenant,
            spec(r#"{"slug":"tokens","event_type":"llm","aggregation":"sum","value_property":"$.tokens","group_by":{"model":"$.model"}}"#),
            Some(T0),
        )
        .unwrap();
}

#[test]
fn counts_each_event_once_across_retries_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let body = batch(&[event("a", "c1", 0, "10", "m1"), event("b", "c1", 1, "2.5", "m2")]);
    {
        let engine = open(&dir);
        tokens_meter(&engine, "t");
        let r = engine.ingest("t", body.clone(), false, Some(T0)).unwrap();
        assert_eq!((r.accepted, r.duplicates, r.issues.len()), (2, 0, 0));
        let r = engine.ingest("t", body.clone(), false, Some(T0)).unwrap();
        assert_eq!((r.accepted, r.duplicates), (0, 2));
        assert_eq!(total(&engine, "t", "tokens"), "12500000000");
    }
    let engine = open(&dir);
    let r = engine.ingest("t", body, false, Some(T0)).unwrap();
    assert_eq!((r.accepted, r.duplicates), (0, 2), "dedup survives a restart");
    assert_eq!(total(&engine, "t", "tokens"), "12500000000");
}

#[test]
fn same_id_with_another_payload_is_a_conflict_and_the_first_stands() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    tokens_meter(&engine, "t");
    engine.ingest("t", batch(&[event("a", "c1", 0, "10", "m1")]), false, Some(T0)).unwrap();
    let r = engine.ingest("t", batch(&[event("a", "c1", 0, "99", "m1")]), false, Some(T0)).unwrap();
    assert_eq!(r.accepted, 0);
    assert_eq!(r.issues[0].code, IssueCode::Conflict);
    assert_eq!(total(&engine, "t", "tokens"), "10000000000");
}

#[test]
fn bad_events_are_reported_by_index_and_the_rest_applied() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    tokens_meter(&engine, "t");
    let events = [
        event("a", "c1", 0, "1", "m"),
        r#"{"specversion":"1.0","source":"gw","type":"llm","subject":"c1"}"#.to_string(),
        event("c", "c1", 0, "\"lots\"", "m"),
        event("d", "c1", -100 * 24 * 60, "1", "m"),
        event("e", "c1", 30, "1", "m"),
        "17".to_string(),
        event("g", "c1", 0, "2", "m"),
    ];
    let r = engine.ingest("t", batch(&events), false, Some(T0)).unwrap();
    let codes: Vec<(usize, IssueCode)> = r.issues.iter().map(|i| (i.index, i.code)).collect();
    assert_eq!(
        codes,
        vec![
            (1, IssueCode::MissingField),
            (3, IssueCode::TooOld),
            (4, IssueCode::TooFarInFuture),
            (5, IssueCode::InvalidEvent)
        ]
    );
    // An event its meter cannot read is accepted (and retained) with a warning, not rejected; the meter skips it.
    assert_eq!(r.accepted, 3);
    let warnings: Vec<(usize, &str, &str, SkipCode)> =
        r.warnings.iter().map(|w| (w.index, w.id.as_str(), w.meter.as_str(), w.code)).collect();
    assert_eq!(warnings, vec![(2, "c", "tokens", SkipCode::ValueInvalid)]);
    assert_eq!(total(&engine, "t", "tokens"), "3000000000");
}

#[test]
fn an_atomic_batch_with_one_bad_event_applies_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    tokens_meter(&engine, "t");
    let events = [event("a", "c1", 0, "1", "m"), event("b", "c1", -100 * 24 * 60, "1", "m")];
    match engine.ingest("t", batch(&events), true, Some(T0)) {
        Err(Error::BatchRejected { issues }) => assert_eq!(issues[0].index, 1),
        other => panic!("expected a rejected batch, got {other:?}"),
    }
    assert_eq!(total(&engine, "t", "tokens"), "0");
    let r = engine.ingest("t", batch(&events[..1]), true, Some(T0)).unwrap();
    assert_eq!(r.accepted, 1, "nothing of the rejected batch was remembered as seen");
    // A meter that cannot read an event is a warning, never a reason to reject an atomic batch.
    let unreadable = [event("c", "c1", 0, "2", "m"), event("d", "c1", 0, "[1]", "m")];
    let r = engine.ingest("t", batch(&unreadable), true, Some(T0)).unwrap();
    assert_eq!((r.accepted, r.issues.len(), r.warnings.len()), (2, 0, 1));
    assert_eq!(total(&engine, "t", "tokens"), "3000000000");
}

#[test]
fn whole_batch_errors_apply_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    for (body, code) in
        [(&b"[1,"[..], "invalid_json"), (b"[]", "empty_batch"), (b"\"x\"", "invalid_json"), (b"\xff", "invalid_json")]
    {
        let err = engine.ingest("t", body.to_vec(), false, Some(T0)).unwrap_err();
        assert_eq!(err.code(), code);
    }
    let many = batch(&(0..10_001).map(|i| event(&i.to_string(), "c", 0, "1", "m")).collect::<Vec<_>>());
    assert_eq!(engine.ingest("t", many, false, Some(T0)).unwrap_err().code(), "too_many_events");
}

#[test]
fn tenants_are_isolated() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    tokens_meter(&engine, "a");
    tokens_meter(&engine, "b");
    let body = batch(&[event("same-id", "c1", 0, "5", "m")]);
    assert_eq!(engine.ingest("a", body.clone(), false, Some(T0)).unwrap().accepted, 1);
    assert_eq!(
        engine.ingest("b", body, false, Some(T0)).unwrap().accepted,
        1,
        "same id in another tenant is another event"
    );
    engine.ingest("a", batch(&[event("x", "c1", 0, "1", "m")]), false, Some(T0)).unwrap();
    assert_eq!(total(&engine, "a", "tokens"), "6000000000");
    assert_eq!(total(&engine, "b", "tokens"), "5000000000");
    assert!(matches!(engine.delete_meter("c", "tokens"), Err(Error::NotFound { .. })));
}

#[test]
fn a_new_meter_is_backfilled_from_retained_events() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    let events: Vec<String> =
        (0..50).map(|i| event(&format!("e{i}"), &format!("c{}", i % 3), i % 7, "2", "m")).collect();
    engine.ingest("t", batch(&events), false, Some(T0 + 10 * MIN)).unwrap();
    let created = engine
        .create_meter("t", spec(r#"{"slug":"calls","event_type":"llm","aggregation":"count"}"#), Some(T0))
        .unwrap();
    assert_eq!(created.backfill.events, 50);
    assert_eq!(total(&engine, "t", "calls"), "50000000000");
    drop(engine);
    let engine = open(&dir);
    assert_eq!(total(&engine, "t", "calls"), "50000000000", "the backfill was durable");
}

#[test]
fn deleting_a_meter_removes_its_usage_and_the_slug_can_be_reused() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    tokens_meter(&engine, "t");
    engine.ingest("t", batch(&[event("a", "c1", 0, "10", "m1")]), false, Some(T0)).unwrap();
    engine.delete_meter("t", "tokens").unwrap();
    assert!(matches!(engine.get_meter("t", "tokens"), Err(Error::NotFound { .. })));
    engine
        .create_meter("t", spec(r#"{"slug":"tokens","event_type":"other","aggregation":"count"}"#), Some(T0))
        .unwrap();
    assert_eq!(total(&engine, "t", "tokens"), "0");
}

#[test]
fn queries_group_filter_and_window() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    tokens_meter(&engine, "t");
    let events = [
        event("1", "c1", 0, "1", "m1"),
        event("2", "c1", 61, "2", "m2"),
        event("3", "c2", 5, "4", "m1"),
        event("4", "c2", 125, "8", "m1"),
    ];
    engine.ingest("t", batch(&events), false, Some(T0 + 130 * MIN)).unwrap();
    let q = UsageQuery {
        meter: "tokens".into(),
        from_us: T0,
        to_us: T0 + 180 * MIN,
        window: Some(WindowSize::Hour),
        group_by: vec!["subject".into()],
        filters: vec![("model".into(), vec!["m1".into()])],
        ..Default::default()
    };
    let rows = engine.query("t", &q).unwrap().rows;
    let got: Vec<(i64, Option<&str>, i128)> = rows
        .iter()
        .map(|r| ((r.window_start_us - T0) / MIN, r.subject.as_deref(), r.value.0 / 1_000_000_000))
        .collect();
    assert_eq!(got, vec![(0, Some("c1"), 1), (0, Some("c2"), 4), (120, Some("c2"), 8)]);
    let bad = UsageQuery { group_by: vec!["region".into()], ..q.clone() };
    assert_eq!(engine.query("t", &bad).unwrap_err().code(), "invalid_query");
    let unaligned = UsageQuery { from_us: T0 + 1, ..q };
    assert_eq!(engine.query("t", &unaligned).unwrap_err().code(), "invalid_query");
}

/// A RocksDB store with two test levers: `broken` makes writes fail (a full disk, a failed WAL fsync), and
/// holding `gate` keeps writes waiting (a busy writer); `entered` counts writes that began.
struct TestStore {
    inner: meter_core::storage::rocks::RocksStore,
    broken: std::sync::atomic::AtomicBool,
    gate: std::sync::Mutex<()>,
    entered: std::sync::atomic::AtomicUsize,
}

impl TestStore {
    fn open(dir: &tempfile::TempDir) -> std::sync::Arc<TestStore> {
        std::sync::Arc::new(TestStore {
            inner: meter_core::storage::rocks::RocksStore::open(
                dir.path(),
                &meter_core::Config::default().store_options(),
            )
            .unwrap(),
            broken: Default::default(),
            gate: Default::default(),
            entered: Default::default(),
        })
    }
}

impl meter_core::storage::Store for TestStore {
    fn write(&self, set: &meter_core::storage::WriteSet, sync: bool) -> meter_core::Result<()> {
        self.entered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _open = self.gate.lock().unwrap();
        if self.broken.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::Storage("IO error: No space left on device".into()));
        }
        self.inner.write(set, sync)
    }
    fn snapshot(&self) -> Box<dyn meter_core::storage::ReadStore + '_> {
        self.inner.snapshot()
    }
}

impl meter_core::storage::ReadStore for TestStore {
    fn get(&self, cf: meter_core::storage::Cf, key: &[u8]) -> meter_core::Result<Option<Vec<u8>>> {
        self.inner.get(cf, key)
    }
    fn cursor(&self, cf: meter_core::storage::Cf) -> Box<dyn meter_core::storage::Cursor + '_> {
        self.inner.cursor(cf)
    }
}

#[test]
fn after_a_failed_write_nothing_is_acknowledged_and_nothing_acknowledged_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::open(&dir);
    let engine = Engine::open_store(store.clone(), Config::default()).unwrap();
    tokens_meter(&engine, "t");
    engine.ingest("t", batch(&[event("a", "c1", 0, "10", "m1")]), false, Some(T0)).unwrap();

    store.broken.store(true, std::sync::atomic::Ordering::SeqCst);
    let err = engine.ingest("t", batch(&[event("b", "c1", 0, "5", "m1")]), false, Some(T0)).unwrap_err();
    // Its own write failed: it may have reached the WAL, so the answer cannot be "not applied".
    assert_eq!(err.code(), "outcome_unknown");
    let text = err.to_string();
    assert!(text.contains("No space left"), "says why: {text}");
    assert!(text.contains("retry with the same event ids"), "says what to do: {text}");
    assert_eq!(text.matches("storage error").count(), 1, "the cause once: {text}");
    assert_eq!(text.matches("the store").count(), 1, "one prefix, not one per wrapping: {text}");
    assert_eq!(engine.failure().as_deref(), Some("storage error: IO error: No space left on device"));

    // Even once the disk is back, this engine acknowledges nothing until it is reopened; these requests were
    // refused before any write: definitely not applied.
    store.broken.store(false, std::sync::atomic::Ordering::SeqCst);
    let again = engine.ingest("t", batch(&[event("c", "c1", 0, "1", "m1")]), false, Some(T0)).unwrap_err();
    assert_eq!(again.code(), "store_failed");
    let text = again.to_string();
    assert_eq!(text.matches("the store has failed").count(), 1, "the prefix once: {text}");
    assert_eq!(text.matches("storage error").count(), 1, "the cause once: {text}");
    let meter = spec(r#"{"slug":"later","event_type":"llm","aggregation":"count"}"#);
    assert_eq!(engine.create_meter("t", meter, Some(T0)).unwrap_err().code(), "store_failed");
    engine.close();
    drop(engine);
    drop(store);

    let engine = open(&dir);
    assert_eq!(
        total(&engine, "t", "tokens"),
        "10000000000",
        "the acknowledged event survived, the failed one is absent"
    );
    let r = engine.ingest("t", batch(&[event("b", "c1", 0, "5", "m1")]), false, Some(T0)).unwrap();
    assert_eq!(r.accepted, 1, "the failed event was never marked as seen");
}

#[test]
fn a_full_queue_answers_overloaded_instead_of_growing() {
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::open(&dir);
    let config = Config { queue_capacity: 1, ..Config::default() };
    let engine = std::sync::Arc::new(Engine::open_store(store.clone(), config).unwrap());
    let opened = store.entered.load(std::sync::atomic::Ordering::SeqCst);
    let closed = store.gate.lock().unwrap();

    let send = |id: &'static str| {
        let engine = engine.clone();
        std::thread::spawn(move || engine.ingest("t", batch(&[event(id, "c", 0, "1", "m")]), false, Some(T0)))
    };
    // The first request holds the writer (blocked in `write`), the second fills the one-slot queue.
    let first = send("a");
    while store.entered.load(std::sync::atomic::Ordering::SeqCst) == opened {
        std::thread::yield_now();
    }
    let second = send("b");
    while engine.stats().queue_depth < 1 {
        std::thread::yield_now();
    }
    let err = engine.ingest("t", batch(&[event("c", "c", 0, "1", "m")]), false, Some(T0)).unwrap_err();
    assert_eq!(err.code(), "overloaded");
    assert!(err.to_string().contains("retry"), "{err}");

    drop(closed);
    assert_eq!(first.join().unwrap().unwrap().accepted, 1);
    assert_eq!(second.join().unwrap().unwrap().accepted, 1);
    // Overload refused the request before any of it was applied: sending it again counts it.
    assert_eq!(engine.ingest("t", batch(&[event("c", "c", 0, "1", "m")]), false, Some(T0)).unwrap().accepted, 1);
}

/// Queries read RocksDB plus a copy of the folds while ingest goes on and folds are handed over: every
/// query must count each acknowledged event once, never a copied state twice.
#[test]
fn queries_during_ingest_count_every_acknowledged_event_once() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    const PER_BATCH: u64 = 50;
    const SENDERS: u64 = 2;
    let dir = tempfile::tempdir().unwrap();
    // Folds handed over every few milliseconds, so that hand-overs keep meeting queries.
    let config = Config { flush_interval: std::time::Duration::from_millis(3), ..Config::default() };
    let engine = Arc::new(Engine::open(dir.path(), config).unwrap());
    engine.create_meter("t", spec(r#"{"slug":"calls","event_type":"llm","aggregation":"count"}"#), Some(T0)).unwrap();
    let acked = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let calls = |engine: &Engine| total(engine, "t", "calls").parse::<u64>().unwrap() / 1_000_000_000;

    let senders: Vec<_> = (0..SENDERS)
        .map(|s| {
            let (engine, acked) = (engine.clone(), acked.clone());
            std::thread::spawn(move || {
                let until = std::time::Instant::now() + std::time::Duration::from_millis(2000);
                let mut b = 0;
                while std::time::Instant::now() < until {
                    let events: Vec<String> = (0..PER_BATCH)
                        .map(|i| event(&format!("{s}-{b}-{i}"), &format!("c{}", i % 7), i as i64 % 3, "1", "m"))
                        .collect();
                    let report = engine.ingest("t", batch(&events), false, Some(T0 + 10 * MIN)).unwrap();
                    acked.fetch_add(report.accepted as u64, Ordering::SeqCst);
                    b += 1;
                }
            })
        })
        .collect();
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (engine, acked, done) = (engine.clone(), acked.clone(), done.clone());
            std::thread::spawn(move || {
                let mut queries = 0;
                while !done.load(Ordering::SeqCst) {
                    let before = acked.load(Ordering::SeqCst);
                    let seen = calls(&engine);
                    let after = acked.load(Ordering::SeqCst);
                    // At most one batch per sender can be committed and not yet counted in `acked`.
                    assert!(seen >= before && seen <= after + SENDERS * PER_BATCH, "{before} <= {seen} <= {after}+");
                    queries += 1;
                }
                queries
            })
        })
        .collect();
    senders.into_iter().for_each(|s| s.join().unwrap());
    done.store(true, Ordering::SeqCst);
    let queries: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert!(queries > 0);
    assert_eq!(calls(&engine), acked.load(Ordering::SeqCst));
}

/// A usage row as (minute start, customer, dims, value, events).
type MinuteRow = (i64, String, Vec<Option<String>>, i128, u64);

/// Every row of `Engine::minutes` in `[from, to)`, sorted.
fn minute_rows(engine: &Engine, meter: &str, from_us: i64, to_us: i64) -> Vec<MinuteRow> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Decimal128Type, TimestampMicrosecondType, UInt64Type};
    use arrow_array::Array;
    let mut rows = Vec::new();
    for batch in engine.minutes("t", meter, from_us, to_us, 7).unwrap() {
        let batch = batch.unwrap();
        let n_dims = batch.num_columns() - 5;
        for i in 0..batch.num_rows() {
            let dims = (1..=n_dims)
                .map(|c| {
                    let col = batch.column(c).as_string::<i32>();
                    col.is_valid(i).then(|| col.value(i).to_owned())
                })
                .collect();
            rows.push((
                batch.column(n_dims + 1).as_primitive::<TimestampMicrosecondType>().value(i),
                batch.column(0).as_string::<i32>().value(i).to_owned(),
                dims,
                batch.column(n_dims + 3).as_primitive::<Decimal128Type>().value(i),
                batch.column(n_dims + 4).as_primitive::<UInt64Type>().value(i),
            ));
        }
    }
    rows.sort();
    rows
}

#[test]
fn day_marks_and_minute_rows_agree_with_queries() {
    const DAY: i64 = 1440 * MIN;
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    tokens_meter(&engine, "t");
    engine
        .create_meter(
            "t",
            spec(r#"{"slug":"models","event_type":"llm","aggregation":"unique_count","value_property":"$.model"}"#),
            Some(T0),
        )
        .unwrap();
    // Four customers over three UTC days (T0 is 10:00), some minutes with several events and models.
    let events: Vec<String> = (0..90)
        .map(|i| {
            event(
                &format!("e{i}"),
                &format!("c{}", i % 4),
                (i * 37) % 1600 - 700,
                &i.to_string(),
                &format!("m{}", i % 3),
            )
        })
        .collect();
    let (first, second) = events.split_at(40);
    engine.ingest("t", batch(first), false, Some(T0 + 1000 * MIN)).unwrap();
    engine.ingest("t", batch(second), false, Some(T0 + 1000 * MIN)).unwrap();
    let (from, to) = (T0 - DAY, T0 + 2 * DAY);

    for (meter, group_by) in
        [("tokens", vec!["subject".to_string(), "model".to_string()]), ("models", vec!["subject".to_string()])]
    {
        let days = engine.day_counts("t", meter).unwrap();
        let q = UsageQuery {
            meter: meter.into(),
            from_us: from - from.rem_euclid(DAY),
            to_us: to,
            window: Some(WindowSize::Day),
            ..Default::default()
        };
        let by_day: Vec<(i64, u64)> =
            engine.query("t", &q).unwrap().rows.iter().map(|r| (r.window_start_us, r.events)).collect();
        assert_eq!(days, by_day, "{meter}: day marks");
        assert_eq!(days.len(), 3);
        assert_eq!(days.iter().map(|d| d.1).sum::<u64>(), 90);

        let q = UsageQuery {
            meter: meter.into(),
            from_us: from - from.rem_euclid(DAY),
            to_us: to,
            window: Some(WindowSize::Minute),
            group_by,
            ..Default::default()
        };
        let mut expected: Vec<_> = engine
            .query("t", &q)
            .unwrap()
            .rows
            .into_iter()
            .map(|r| (r.window_start_us, r.subject.unwrap(), r.dims, r.value.0, r.events))
            .collect();
        expected.sort();
        let mut streamed = Vec::new();
        for (day, _) in &days {
            streamed.extend(minute_rows(&engine, meter, *day, day + DAY));
        }
        streamed.sort();
        assert_eq!(streamed, expected, "{meter}: minute rows");
    }

    drop(engine);
    let engine = open(&dir);
    assert_eq!(engine.day_counts("t", "tokens").unwrap().iter().map(|d| d.1).sum::<u64>(), 90, "marks are durable");
    engine.delete_meter("t", "tokens").unwrap();
    // The same slug on another event type: a new meter, which no retained event feeds.
    engine
        .create_meter("t", spec(r#"{"slug":"tokens","event_type":"other","aggregation":"count"}"#), Some(T0))
        .unwrap();
    assert_eq!(engine.day_counts("t", "tokens").unwrap(), vec![], "a deleted meter's marks go with it");
}

/// A RocksDB store that can lose every unsynced write, as a crash of the machine would: the fold threads' flushes
/// are not synced (the retained events are their redo log), so losing them makes the next open replay.
struct CrashStore {
    inner: meter_core::storage::rocks::RocksStore,
    lose_unsynced: std::sync::atomic::AtomicBool,
}

impl meter_core::storage::Store for CrashStore {
    fn write(&self, set: &meter_core::storage::WriteSet, sync: bool) -> meter_core::Result<()> {
        if !sync && self.lose_unsynced.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        self.inner.write(set, sync)
    }
    fn snapshot(&self) -> Box<dyn meter_core::storage::ReadStore + '_> {
        self.inner.snapshot()
    }
}

impl meter_core::storage::ReadStore for CrashStore {
    fn get(&self, cf: meter_core::storage::Cf, key: &[u8]) -> meter_core::Result<Option<Vec<u8>>> {
        self.inner.get(cf, key)
    }
    fn cursor(&self, cf: meter_core::storage::Cf) -> Box<dyn meter_core::storage::Cursor + '_> {
        self.inner.cursor(cf)
    }
}

fn llm(id: &str, subject: &str, minute: i64, data: &str) -> String {
    format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"gw","type":"llm.request","subject":"{subject}","time":"{}","data":{data}}}"#,
        chrono::DateTime::from_timestamp_micros(T0 + minute * MIN).unwrap().to_rfc3339()
    )
}

/// Totals per meter over the test's hour, as (value in units of 10^-9, events).
fn totals(engine: &Engine, meter: &str) -> (i128, u64) {
    let q = UsageQuery { meter: meter.into(), from_us: T0 - 60 * MIN, to_us: T0 + 60 * MIN, ..Default::default() };
    let rows = engine.query("t", &q).unwrap().rows;
    (rows.iter().map(|r| r.value.0).sum(), rows.iter().map(|r| r.events).sum())
}

const INPUT: &str = r#"{"slug":"input","event_type":"llm.request","aggregation":"sum","value_property":"$.input_tokens","group_by":{"model":"$.model"}}"#;
const CACHED: &str =
    r#"{"slug":"cached","event_type":"llm.request","aggregation":"sum","value_property":"$.cached_tokens"}"#;

/// The issue's scenario: a second meter on `llm.request` reads `$.cached_tokens`, which most events lack. Before,
/// every such event was refused (`invalid_value`) and counted by no meter at all.
#[test]
fn a_meter_that_cannot_read_an_event_never_stops_the_others_from_counting_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(CrashStore {
        inner: meter_core::storage::rocks::RocksStore::open(dir.path(), &meter_core::Config::default().store_options())
            .unwrap(),
        lose_unsynced: Default::default(),
    });
    let engine = Engine::open_store(store.clone(), Config::default()).unwrap();
    engine.create_meter("t", spec(INPUT), Some(T0)).unwrap();
    engine.create_meter("t", spec(CACHED), Some(T0)).unwrap();
    engine
        .create_meter("t", spec(r#"{"slug":"calls","event_type":"llm.request","aggregation":"count"}"#), Some(T0))
        .unwrap();
    let events = [
        llm("a", "c1", 0, r#"{"input_tokens":100,"model":"gpt"}"#),
        llm("b", "c1", 1, r#"{"input_tokens":10,"cached_tokens":"4","model":"gpt"}"#),
        llm("c", "c2", 2, r#"{"input_tokens":7,"cached_tokens":null,"model":"o1"}"#),
        llm("d", "c2", 3, r#"{"input_tokens":1,"cached_tokens":"many","model":"o1"}"#),
        llm("e", "c3", 4, r#"{"input_tokens":2,"cached_tokens":3,"model":{"name":"gpt"}}"#),
    ];
    let r = engine.ingest("t", batch(&events), false, Some(T0 + 10 * MIN)).unwrap();
    assert_eq!((r.accepted, r.duplicates, r.issues.len()), (5, 0, 0), "{r:?}");
    let warnings: Vec<(usize, &str, SkipCode)> =
        r.warnings.iter().map(|w| (w.index, w.meter.as_str(), w.code)).collect();
    assert_eq!(
        warnings,
        vec![
            (0, "cached", SkipCode::ValueMissing),
            (2, "cached", SkipCode::ValueMissing),
            (3, "cached", SkipCode::ValueInvalid),
            (4, "input", SkipCode::DimensionInvalid),
        ]
    );
    assert!(r.warnings[0].message.contains("data.cached_tokens is missing"), "{}", r.warnings[0].message);
    let expect = [("input", (118_000_000_000, 4)), ("cached", (7_000_000_000, 2)), ("calls", (5_000_000_000, 5))];
    for (meter, want) in expect {
        assert_eq!(totals(&engine, meter), want, "{meter}");
    }
    // A retry is a duplicate, with no warnings and no second count.
    let again = engine.ingest("t", batch(&events), false, Some(T0 + 10 * MIN)).unwrap();
    assert_eq!((again.accepted, again.duplicates, again.warnings.len()), (0, 5, 0));

    let counts: Vec<(String, u64)> = engine.stats().skipped.into_iter().map(|c| (c.meter, c.events)).collect();
    assert_eq!(counts, vec![("cached".to_string(), 3), ("input".to_string(), 1)]);

    // The skipped events, found again from the retained events by the same decision, page by page.
    let page = engine.skipped("t", "cached", T0 - 60 * MIN, T0 + 60 * MIN, None, 2, 1_000).unwrap();
    let ids: Vec<(&str, SkipCode)> = page.events.iter().map(|e| (e.id.as_str(), e.code)).collect();
    assert_eq!(ids, vec![("a", SkipCode::ValueMissing), ("c", SkipCode::ValueMissing)]);
    assert_eq!(page.events[0].time, "2026-11-23T10:00:00Z");
    let after = page.next.as_deref().unwrap().parse().unwrap();
    let rest = engine.skipped("t", "cached", T0 - 60 * MIN, T0 + 60 * MIN, Some(after), 2, 1_000).unwrap();
    assert_eq!(rest.events.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["d"]);
    assert_eq!((rest.next, rest.scanned), (None, 2));
    let narrow = engine.skipped("t", "cached", T0 + 2 * MIN, T0 + 3 * MIN, None, 100, 1_000).unwrap();
    assert_eq!(narrow.events.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["c"]);
    let budget = engine.skipped("t", "cached", T0 - 60 * MIN, T0 + 60 * MIN, None, 100, 1).unwrap();
    assert_eq!((budget.events.len(), budget.scanned, budget.next.is_some()), (1, 1, true));
    assert_eq!(engine.skipped("t", "calls", T0 - 60 * MIN, T0 + 60 * MIN, None, 100, 1_000).unwrap().events, vec![]);
    assert_eq!(engine.skipped("t", "cached", T0, T0, None, 100, 1_000).unwrap_err().code(), "invalid_query");
    assert_eq!(engine.skipped("t", "cached", T0, T0 + MIN, None, 0, 1_000).unwrap_err().code(), "invalid_query");

    // A crash that loses every unsynced flush: the next open re-aggregates from the retained events and must make
    // the same decisions ingest made.
    let more = [
        llm("f", "c1", 5, r#"{"input_tokens":5,"model":"gpt"}"#),
        llm("g", "c4", 6, r#"{"input_tokens":6,"cached_tokens":"1.5","model":"gpt"}"#),
    ];
    store.lose_unsynced.store(true, std::sync::atomic::Ordering::SeqCst);
    engine.ingest("t", batch(&more), false, Some(T0 + 10 * MIN)).unwrap();
    let before: Vec<_> = ["input", "cached", "calls"].iter().map(|m| totals(&engine, m)).collect();
    assert_eq!(before, vec![(129_000_000_000, 6), (8_500_000_000, 3), (7_000_000_000, 7)]);
    engine.close();
    drop(engine);
    drop(store);
    let engine = open(&dir);
    let after: Vec<_> = ["input", "cached", "calls"].iter().map(|m| totals(&engine, m)).collect();
    assert_eq!(after, before, "replay after a crash counts what ingest counted");

    // A meter created now is backfilled by the same decision: it agrees with the meter that saw the events arrive.
    let twin = engine.create_meter("t", spec(&CACHED.replace(r#""cached""#, r#""cached2""#)), Some(T0)).unwrap();
    assert_eq!((twin.backfill.events, twin.backfill.unreadable), (3, 4));
    assert_eq!(totals(&engine, "cached2"), totals(&engine, "cached"));
    let counts: Vec<(String, u64)> = engine.stats().skipped.into_iter().map(|c| (c.meter, c.events)).collect();
    assert_eq!(counts, vec![("cached2".to_string(), 4)], "counters since open: the backfill's skips");
    let listed = engine.skipped("t", "cached2", T0 - 60 * MIN, T0 + 60 * MIN, None, 100, 1_000).unwrap();
    assert_eq!(listed.events.len() as u64, twin.backfill.unreadable);
    engine.delete_meter("t", "cached2").unwrap();
    assert!(engine.stats().skipped.is_empty(), "a deleted meter's counter goes with it");
}

const DAY: i64 = 86_400_000_000;

/// Configs under which dedup must behave the same: recent identities kept in memory (the default), and
/// none kept, so that every decision is read from the `seen` column family.
fn dedup_configs() -> [Config; 2] {
    [Config::default(), Config { recent_dedup_us: 0, recent_dedup_capacity: 0, ..Config::default() }]
}

#[test]
fn a_retry_is_a_duplicate_after_its_identity_left_memory_and_after_restarts() {
    for config in dedup_configs() {
        let dir = tempfile::tempdir().unwrap();
        let body = batch(&[event("a", "c1", 0, "10", "m1"), event("b", "c1", 1, "2.5", "m2")]);
        let conflicting = batch(&[event("a", "c1", 0, "99", "m1")]);
        {
            let engine = Engine::open(dir.path(), config.clone()).unwrap();
            tokens_meter(&engine, "t");
            assert_eq!(engine.ingest("t", body.clone(), false, Some(T0)).unwrap().accepted, 2);
            // Later commits push the identities out of memory (a minute later, then a day later).
            for (i, at) in [(0, T0 + MIN), (1, T0 + DAY)] {
                let other = batch(&[event(&format!("x{i}"), "c2", 2, "1", "m1")]);
                assert_eq!(engine.ingest("t", other, false, Some(at)).unwrap().accepted, 1);
            }
            let r = engine.ingest("t", body.clone(), false, Some(T0 + DAY + MIN)).unwrap();
            assert_eq!((r.accepted, r.duplicates), (0, 2), "read back from disk, a day later");
            let r = engine.ingest("t", conflicting.clone(), false, Some(T0 + DAY + MIN)).unwrap();
            assert_eq!(r.issues[0].code, IssueCode::Conflict);
        }
        for restart in 1..=2 {
            let engine = Engine::open(dir.path(), config.clone()).unwrap();
            let r = engine.ingest("t", body.clone(), false, Some(T0 + (1 + restart) * DAY)).unwrap();
            assert_eq!((r.accepted, r.duplicates), (0, 2), "after restart {restart}");
            let r = engine.ingest("t", conflicting.clone(), false, Some(T0 + (1 + restart) * DAY)).unwrap();
            assert_eq!(r.issues[0].code, IssueCode::Conflict);
            assert_eq!(total(&engine, "t", "tokens"), "14500000000");
        }
    }
}

#[test]
fn an_identity_is_remembered_exactly_until_its_window_ends() {
    for config in dedup_configs() {
        let config = Config { dedup_window_us: DAY, backdate_window_us: DAY, max_future_us: 5 * MIN, ..config };
        let kept_for = config.dedup_retention_us();
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), config).unwrap();
        tokens_meter(&engine, "t");
        // Stamped as far ahead as allowed, so that it is still recent enough when its identity expires.
        let body = batch(&[event("a", "c1", 5, "10", "m1")]);
        assert_eq!(engine.ingest("t", body.clone(), false, Some(T0)).unwrap().accepted, 1);
        let r = engine.ingest("t", body.clone(), false, Some(T0 + kept_for)).unwrap();
        assert_eq!((r.accepted, r.duplicates), (0, 1), "the last instant of the window still knows it");
        let r = engine.ingest("t", body, false, Some(T0 + kept_for + 1)).unwrap();
        // Forgotten one microsecond later, when the event itself is too old to count: never counted twice.
        assert_eq!((r.accepted, r.duplicates, r.issues[0].code), (0, 0, IssueCode::TooOld));
        assert_eq!(total(&engine, "t", "tokens"), "10000000000");
    }
}

#[test]
fn a_batch_and_its_group_commit_see_each_others_identities_before_they_reach_disk() {
    for config in dedup_configs() {
        let dir = tempfile::tempdir().unwrap();
        let engine = std::sync::Arc::new(Engine::open(dir.path(), config).unwrap());
        tokens_meter(&engine, "t");
        let inside =
            batch(&[event("a", "c1", 0, "1", "m1"), event("a", "c1", 0, "1", "m1"), event("a", "c1", 0, "2", "m1")]);
        let r = engine.ingest("t", inside, false, Some(T0)).unwrap();
        assert_eq!((r.accepted, r.duplicates, r.issues[0].code), (1, 1, IssueCode::Conflict));
        // Many callers at once: their requests share group commits; each identity is accepted once in all.
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let engine = engine.clone();
                std::thread::spawn(move || {
                    let events: Vec<String> = (0..50).map(|i| event(&format!("p{i}"), "c1", 1, "1", "m1")).collect();
                    engine.ingest("t", batch(&events), false, Some(T0)).unwrap().accepted
                })
            })
            .collect();
        let accepted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(accepted, 50);
        assert_eq!(total(&engine, "t", "tokens"), "51000000000");
    }
}
mod changes;
mod limits;
mod queries;
mod retention;
