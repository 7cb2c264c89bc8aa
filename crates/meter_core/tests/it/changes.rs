//! Which customers' usage changed (`Engine::changes`): what a drain names, and the guarantee a live view builds on: an
//! acknowledged event is in a drain, now or later, and a query started after that drain counts it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

/// (tenant, meter, customer) -> (earliest minute's start, events).
type Rows = BTreeMap<(String, String, String), (i64, u64)>;

fn rows(drained: meter_core::Drained) -> Rows {
    drained.changes.into_iter().map(|c| ((c.tenant, c.meter, c.customer), (c.earliest_us, c.events))).collect()
}

fn key(tenant: &str, meter: &str, customer: &str) -> (String, String, String) {
    (tenant.into(), meter.into(), customer.into())
}

/// Every commit so far recorded: a flush goes through each fold thread after the commits before it.
fn settle(engine: &Engine, tenant: &str, meter: &str) {
    engine.day_counts(tenant, meter).unwrap();
}

fn at(id: &str, subject: &str, time: &str) -> String {
    format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"gw","type":"llm","subject":"{subject}","time":"{time}","data":{{"tokens":1,"model":"m"}}}}"#
    )
}

fn calls_meter(engine: &Engine, tenant: &str) {
    engine
        .create_meter(tenant, spec(r#"{"slug":"calls","event_type":"llm","aggregation":"count"}"#), Some(T0))
        .unwrap();
}

#[test]
fn a_drain_names_each_tenant_meter_and_customer_with_its_earliest_minute_once() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    for tenant in ["t", "u"] {
        tokens_meter(&engine, tenant);
        calls_meter(&engine, tenant);
    }
    // A meter with a filter counts fewer events than it receives: only the "big" model's.
    let big = r#"{"slug":"big","event_type":"llm","aggregation":"count","filters":[{"property":"$.model","op":"eq","value":"big"}]}"#;
    engine.create_meter("t", spec(big), Some(T0)).unwrap();
    assert_eq!(rows(engine.changes()), Rows::new(), "nothing yet: creating meters is not a change");

    let now = Some(T0 + 10 * MIN);
    let t_events = [
        event("a", "c1", 5, "10", "m1"),
        event("b", "c1", -30, "1", "big"), // back-dated half an hour
        event("c", "c2", 2, "3", "m1"),
    ];
    engine.ingest("t", batch(&t_events), false, now).unwrap();
    engine.ingest("u", batch(&[at("a", "c1", "2026-11-23T10:03:59.999Z")]), false, now).unwrap();
    settle(&engine, "t", "calls");
    let expected: Rows = [
        (key("t", "big", "c1"), (T0 - 30 * MIN, 1)),
        (key("t", "calls", "c1"), (T0 - 30 * MIN, 2)),
        (key("t", "calls", "c2"), (T0 + 2 * MIN, 1)),
        (key("t", "tokens", "c1"), (T0 - 30 * MIN, 2)),
        (key("t", "tokens", "c2"), (T0 + 2 * MIN, 1)),
        // The minute's start, not the event's time.
        (key("u", "calls", "c1"), (T0 + 3 * MIN, 1)),
        (key("u", "tokens", "c1"), (T0 + 3 * MIN, 1)),
    ]
    .into_iter()
    .collect();
    assert_eq!(rows(engine.changes()), expected);
    assert_eq!(rows(engine.changes()), Rows::new(), "a drain takes what it returns");

    // A retry is a duplicate: it counts nothing, and changes nothing.
    engine.ingest("t", batch(&t_events), false, now).unwrap();
    settle(&engine, "t", "calls");
    assert_eq!(rows(engine.changes()), Rows::new());
}

#[test]
fn a_backfill_is_not_reported_and_a_deleted_meters_events_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    tokens_meter(&engine, "t");
    engine.ingest("t", batch(&[event("a", "c1", 0, "1", "m")]), false, Some(T0)).unwrap();
    settle(&engine, "t", "tokens");
    // Created after the event: backfilled from it, and not reported (its creator knows).
    calls_meter(&engine, "t");
    assert_eq!(rows(engine.changes()), [(key("t", "tokens", "c1"), (T0, 1))].into_iter().collect());

    engine.ingest("t", batch(&[event("b", "c1", 0, "1", "m")]), false, Some(T0)).unwrap();
    settle(&engine, "t", "tokens");
    engine.delete_meter("t", "calls").unwrap();
    assert_eq!(rows(engine.changes()), [(key("t", "tokens", "c1"), (T0, 1))].into_iter().collect());
    // A meter of the same slug is another meter: the old one's events are not its changes.
    calls_meter(&engine, "t");
    engine.ingest("t", batch(&[event("c", "c2", 0, "1", "m")]), false, Some(T0)).unwrap();
    settle(&engine, "t", "tokens");
    let expected = [(key("t", "calls", "c2"), (T0, 1)), (key("t", "tokens", "c2"), (T0, 1))];
    assert_eq!(rows(engine.changes()), expected.into_iter().collect());
}

#[test]
fn past_the_pending_limit_a_drain_says_overflowed_then_recording_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), Config { max_pending_changes: 3, ..Config::default() }).unwrap();
    tokens_meter(&engine, "t");
    let events: Vec<String> = (0..5).map(|i| event(&format!("e{i}"), &format!("c{i}"), 0, "1", "m")).collect();
    engine.ingest("t", batch(&events), false, Some(T0)).unwrap();
    settle(&engine, "t", "tokens");
    let drained = engine.changes();
    assert!(drained.overflowed);
    assert!(drained.changes.is_empty(), "an overflowed drain names no one: everyone is to be refreshed");

    engine.ingest("t", batch(&[event("f", "c9", 1, "1", "m")]), false, Some(T0)).unwrap();
    settle(&engine, "t", "tokens");
    let drained = engine.changes();
    assert!(!drained.overflowed);
    assert_eq!(rows(drained), [(key("t", "tokens", "c9"), (T0 + MIN, 1))].into_iter().collect());
}

/// Senders ingest while a drainer drains and, after each drain, queries the customers it named: the usage it finds is
/// at least everything drained so far for them (a drained event is visible to a later query), and once the senders
/// stop, the drains add up to exactly what was acknowledged (no acknowledged event is lost, none counted twice).
#[test]
fn every_acknowledged_event_is_drained_once_and_a_later_query_counts_it() {
    const CUSTOMERS: u64 = 11;
    const SENDERS: u64 = 2;
    let dir = tempfile::tempdir().unwrap();
    // Folds handed over every few milliseconds, so that hand-overs meet the drains' queries.
    let config = Config { flush_interval: Duration::from_millis(3), ..Config::default() };
    let engine = Arc::new(Engine::open(dir.path(), config).unwrap());
    calls_meter(&engine, "t");
    let acked = Arc::new(AtomicU64::new(0));
    let calls_of = |engine: &Engine, customer: &str| -> u64 {
        let q = UsageQuery {
            meter: "calls".into(),
            from_us: T0 - 60 * MIN,
            to_us: T0 + 60 * MIN,
            subjects: vec![customer.into()],
            ..Default::default()
        };
        let r = engine.query("t", &q).unwrap();
        (r.rows.iter().map(|r| r.value.0).sum::<i128>() / 1_000_000_000) as u64
    };

    let senders: Vec<_> = (0..SENDERS)
        .map(|s| {
            let (engine, acked) = (engine.clone(), acked.clone());
            std::thread::spawn(move || {
                let until = Instant::now() + Duration::from_millis(1500);
                let mut b = 0u64;
                while Instant::now() < until {
                    let events: Vec<String> = (0..20u64)
                        .map(|i| {
                            event(&format!("{s}-{b}-{i}"), &format!("c{}", (b + i) % CUSTOMERS), -(i as i64), "1", "m")
                        })
                        .collect();
                    // Every other batch sent twice: the retry is all duplicates.
                    let report = engine.ingest("t", batch(&events), false, Some(T0 + 10 * MIN)).unwrap();
                    if b.is_multiple_of(2) {
                        assert_eq!(engine.ingest("t", batch(&events), false, Some(T0 + 10 * MIN)).unwrap().accepted, 0);
                    }
                    acked.fetch_add(report.accepted as u64, Ordering::SeqCst);
                    b += 1;
                }
            })
        })
        .collect();

    let mut drained: BTreeMap<String, u64> = BTreeMap::new();
    let mut drains = 0;
    let drain = |drained: &mut BTreeMap<String, u64>| {
        let d = engine.changes();
        assert!(!d.overflowed);
        for c in d.changes {
            assert_eq!((c.tenant.as_str(), c.meter.as_str()), ("t", "calls"));
            assert!(c.earliest_us <= T0 && c.earliest_us >= T0 - 19 * MIN && c.earliest_us % MIN == 0);
            let total = drained.entry(c.customer.clone()).or_default();
            *total += c.events;
            let seen = calls_of(&engine, &c.customer);
            assert!(seen >= *total, "{}: a query after the drain counts {seen}, the drains {total}", c.customer);
        }
    };
    while !senders.iter().all(|s| s.is_finished()) {
        drain(&mut drained);
        drains += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
    senders.into_iter().for_each(|s| s.join().unwrap());
    // Every acknowledged event reaches a drain within a second of its acknowledgement, here the last one.
    let deadline = Instant::now() + Duration::from_secs(1);
    while drained.values().sum::<u64>() < acked.load(Ordering::SeqCst) && Instant::now() < deadline {
        drain(&mut drained);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(drains > 10, "the drains met the ingest: {drains}");
    assert_eq!(drained.values().sum::<u64>(), acked.load(Ordering::SeqCst));
    for (customer, &total) in &drained {
        assert_eq!(calls_of(&engine, customer), total, "{customer}");
    }
    assert_eq!(drained.len() as u64, CUSTOMERS);
}
