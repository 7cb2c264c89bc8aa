//! Cardinality limits (`engine::cardinality`): per-event `cardinality_limit`, exact across minutes, restarts,
//! backfills and atomic batches.

use super::*;

fn limited(dir: &tempfile::TempDir, combinations: u32, customers: u32) -> Engine {
    let config =
        Config { max_combinations_per_minute: combinations, max_customers_per_minute: customers, ..Config::default() };
    Engine::open(dir.path(), config).unwrap()
}

/// (index, code) of every issue of a report.
fn codes(r: &meter_core::IngestReport) -> Vec<(usize, IssueCode)> {
    r.issues.iter().map(|i| (i.index, i.code)).collect()
}

/// Events of customer `subject` in `minute`, one per model in `models`, with ids `<prefix><model>`.
fn models(prefix: &str, subject: &str, minute: i64, models: &[&str]) -> Vec<String> {
    models.iter().map(|m| event(&format!("{prefix}{m}"), subject, minute, "1", m)).collect()
}

#[test]
fn a_customer_past_its_combinations_is_refused_per_event_and_the_rest_applied() {
    let dir = tempfile::tempdir().unwrap();
    let engine = limited(&dir, 3, 100);
    tokens_meter(&engine, "t");
    let mut events = models("a-", "c1", 0, &["r1", "r2", "r3", "r4", "r5"]);
    events.push(event("a-again", "c1", 0, "1", "r2")); // a combination it already has
    events.push(event("a-next", "c1", 1, "1", "r4")); // another minute
    events.push(event("a-other", "c2", 0, "1", "r4")); // another customer
    let r = engine.ingest("t", batch(&events), false, Some(T0)).unwrap();
    assert_eq!(codes(&r), vec![(3, IssueCode::CardinalityLimit), (4, IssueCode::CardinalityLimit)]);
    assert_eq!(r.accepted, 6);
    let message = &r.issues[0].message;
    for needle in
        ["meter 'tokens'", "at most 3", "customer 'c1'", "2026-11-23T10:00:00Z", "max_combinations_per_minute"]
    {
        assert!(message.contains(needle), "{needle}: {message}");
    }
    assert_eq!(r.issues[0].id.as_deref(), Some("a-r4"));
    assert_eq!(total(&engine, "t", "tokens"), "6000000000");

    // A refused event was not accepted: sent again it is judged again (refused again), never a duplicate.
    let r = engine.ingest("t", batch(&[event("a-r4", "c1", 0, "1", "r4")]), false, Some(T0)).unwrap();
    assert_eq!((r.accepted, r.duplicates, codes(&r)), (0, 0, vec![(0, IssueCode::CardinalityLimit)]));
}

#[test]
fn a_minute_past_its_customers_is_refused_per_event() {
    let dir = tempfile::tempdir().unwrap();
    let engine = limited(&dir, 100, 2);
    tokens_meter(&engine, "t");
    let events = [
        event("1", "c1", 0, "1", "m"),
        event("2", "c2", 0, "1", "m"),
        event("3", "c3", 0, "1", "m"),
        event("4", "c1", 0, "1", "other"), // a customer already in the minute, a new combination
        event("5", "c3", 1, "1", "m"),
    ];
    let r = engine.ingest("t", batch(&events), false, Some(T0)).unwrap();
    assert_eq!(codes(&r), vec![(2, IssueCode::CardinalityLimit)]);
    let message = &r.issues[0].message;
    for needle in ["meter 'tokens'", "at most 2 distinct customers", "max_customers_per_minute"] {
        assert!(message.contains(needle), "{needle}: {message}");
    }
    assert_eq!(r.accepted, 4);
}

#[test]
fn an_event_one_meter_refuses_is_counted_by_none() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    let by_model = r#"{"slug":"by-model","event_type":"llm","aggregation":"count","group_by":{"model":"$.model"},
                       "limits":{"max_combinations_per_minute":1}}"#;
    engine.create_meter("t", spec(by_model), Some(T0)).unwrap();
    engine.create_meter("t", spec(r#"{"slug":"calls","event_type":"llm","aggregation":"count"}"#), Some(T0)).unwrap();
    let r = engine.ingest("t", batch(&models("", "c1", 0, &["a", "b"])), false, Some(T0)).unwrap();
    assert_eq!(codes(&r), vec![(1, IssueCode::CardinalityLimit)]);
    assert!(r.issues[0].message.contains("meter 'by-model'"), "{}", r.issues[0].message);
    assert_eq!(total(&engine, "t", "calls"), "1000000000", "never counted by some meters and not others");
}

#[test]
fn meter_limits_override_the_defaults_are_validated_and_shown() {
    let dir = tempfile::tempdir().unwrap();
    let engine = limited(&dir, 50, 60);
    let own = r#"{"slug":"own","event_type":"llm","aggregation":"count","group_by":{"model":"$.model"},
                  "limits":{"max_combinations_per_minute":2}}"#;
    let created = engine.create_meter("t", spec(own), Some(T0)).unwrap();
    let shown = |m: &meter_core::aggregate::StoredMeter| {
        let l = m.spec.limits.unwrap();
        (l.max_combinations_per_minute, l.max_customers_per_minute)
    };
    assert_eq!(shown(&created.meter), (Some(2), Some(60)), "its own, and the engine's for what it leaves out");
    assert_eq!(shown(&engine.get_meter("t", "own").unwrap()), (Some(2), Some(60)));
    engine.create_meter("t", spec(r#"{"slug":"plain","event_type":"x","aggregation":"count"}"#), Some(T0)).unwrap();
    assert_eq!(shown(&engine.list_meters("t")[0]), (Some(2), Some(60)));
    assert_eq!(shown(&engine.list_meters("t")[1]), (Some(50), Some(60)));
    let r = engine.ingest("t", batch(&models("", "c1", 0, &["a", "b", "c"])), false, Some(T0)).unwrap();
    assert_eq!(codes(&r), vec![(2, IssueCode::CardinalityLimit)]);

    for (limits, needle) in [
        (
            r#"{"max_combinations_per_minute":0}"#,
            "limits.max_combinations_per_minute must be between 1 and 100000; got 0",
        ),
        (r#"{"max_customers_per_minute":20000000}"#, "limits.max_customers_per_minute must be between 1 and 10000000"),
    ] {
        let json = format!(r#"{{"slug":"bad","event_type":"llm","aggregation":"count","limits":{limits}}}"#);
        let err = engine.create_meter("t", spec(&json), Some(T0)).unwrap_err();
        assert_eq!(err.code(), "invalid_meter");
        assert!(err.to_string().contains(needle), "{err}");
    }
    assert!(serde_json::from_str::<MeterSpec>(
        r#"{"slug":"s","event_type":"t","aggregation":"count","limits":{"max_combos":1}}"#
    )
    .is_err());
    let bad = Config { max_customers_per_minute: 0, ..Config::default() };
    let err = Engine::open(tempfile::tempdir().unwrap().path(), bad).err().unwrap();
    assert_eq!(err.code(), "invalid_config");
}

#[test]
fn an_atomic_batch_over_a_limit_is_refused_whole_and_counts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = limited(&dir, 3, 2);
    tokens_meter(&engine, "t");
    let mut events = models("a-", "c1", 0, &["r1", "r2", "r3", "r4"]);
    events.push(event("a-c2", "c2", 0, "1", "r1"));
    events.push(event("a-c3", "c3", 0, "1", "r1"));
    match engine.ingest("t", batch(&events), true, Some(T0)) {
        Err(Error::BatchRejected { issues }) => {
            let codes: Vec<_> = issues.iter().map(|i| (i.index, i.code)).collect();
            assert_eq!(codes, vec![(3, IssueCode::CardinalityLimit), (5, IssueCode::CardinalityLimit)]);
        }
        other => panic!("expected a rejected batch, got {other:?}"),
    }
    assert_eq!(total(&engine, "t", "tokens"), "0");
    // What the refused batch would have added was taken back: the limits are all still there to use.
    let mut events = models("b-", "c1", 0, &["x1", "x2", "x3"]);
    events.push(event("b-c2", "c2", 0, "1", "x1"));
    let r = engine.ingest("t", batch(&events), true, Some(T0)).unwrap();
    assert_eq!((r.accepted, r.issues.len()), (4, 0));
    let r = engine.ingest("t", batch(&[event("b-c3", "c3", 0, "1", "x1")]), true, Some(T0));
    assert!(matches!(r, Err(Error::BatchRejected { .. })), "{r:?}");
}

/// After a restart nothing is in memory: the combinations come back from `agg`, the customer counts from `meta`.
#[test]
fn counts_survive_a_restart_and_back_dated_minutes_are_exact() {
    let dir = tempfile::tempdir().unwrap();
    let back = -3 * 24 * 60; // three days back: a minute no cache has seen
    {
        let engine = limited(&dir, 2, 2);
        tokens_meter(&engine, "t");
        let mut events = models("a-", "c1", 0, &["r1", "r2"]);
        events.extend(models("b-", "c1", back, &["r1", "r2"]));
        events.push(event("c", "c2", back, "1", "r1"));
        let r = engine.ingest("t", batch(&events), false, Some(T0)).unwrap();
        assert_eq!((r.accepted, r.issues.len()), (5, 0));
    }
    let engine = limited(&dir, 2, 2);
    let events = [
        event("d", "c1", 0, "1", "r3"),        // a third combination: refused
        event("e", "c1", 0, "1", "r1"),        // one it has: accepted
        event("f", "c3", back, "1", "r1"),     // a third customer in the back-dated minute: refused
        event("g", "c2", back, "1", "r2"),     // a customer it has, a second combination: accepted
        event("h", "c1", back, "1", "r3"),     // a third combination in the back-dated minute: refused
        event("i", "c3", back + 1, "1", "r1"), // the next minute is empty
    ];
    let r = engine.ingest("t", batch(&events), false, Some(T0)).unwrap();
    assert_eq!(
        codes(&r),
        vec![(0, IssueCode::CardinalityLimit), (2, IssueCode::CardinalityLimit), (4, IssueCode::CardinalityLimit)]
    );
    assert_eq!(r.accepted, 3);
}

/// Counts hold while the folds have not written the aggregates yet (the cache keeps what `agg` lacks).
#[test]
fn counts_are_exact_before_the_folds_flush() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        max_combinations_per_minute: 2,
        flush_interval: std::time::Duration::from_secs(3600),
        ..Config::default()
    };
    let engine = Engine::open(dir.path(), config).unwrap();
    tokens_meter(&engine, "t");
    for (i, model) in ["r1", "r2", "r3", "r1"].iter().enumerate() {
        let r = engine.ingest("t", batch(&[event(&format!("{i}"), "c1", 0, "1", model)]), false, Some(T0)).unwrap();
        assert_eq!(r.accepted, usize::from(i != 2), "event {i}: {r:?}");
    }
}

/// A new meter's backfill writes the customer counts of the minutes it filled.
#[test]
fn a_backfilled_meter_starts_from_its_counts() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    tokens_meter(&engine, "t");
    let events: Vec<String> = (0..3).map(|i| event(&format!("{i}"), &format!("c{i}"), 0, "1", "m")).collect();
    engine.ingest("t", batch(&events), false, Some(T0)).unwrap();
    let late = r#"{"slug":"late","event_type":"llm","aggregation":"count","limits":{"max_customers_per_minute":3}}"#;
    assert_eq!(engine.create_meter("t", spec(late), Some(T0)).unwrap().backfill.events, 3);
    let r = engine.ingest("t", batch(&[event("4", "c4", 0, "1", "m")]), false, Some(T0)).unwrap();
    assert_eq!(codes(&r), vec![(0, IssueCode::CardinalityLimit)]);
    assert!(r.issues[0].message.contains("meter 'late'"), "{}", r.issues[0].message);
}
