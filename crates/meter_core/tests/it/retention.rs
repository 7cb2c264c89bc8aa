//! Retention of retained events and roll-ups of aggregates (`Engine::maintain`), with the clock moved by `now_us`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::UInt64Type;

use super::*;

const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;

/// Maintenance only when a test asks for it.
fn config() -> Config {
    Config { maintenance_interval: None, ..Config::default() }
}

/// The commits of the tenant's retained events, in order.
fn retained(engine: &Engine, tenant: &str) -> Vec<u64> {
    let (batch, _) = engine.retained_events(tenant, 0, 1_000_000).unwrap();
    let mut seqs: Vec<u64> = batch.column(0).as_primitive::<UInt64Type>().values().to_vec();
    seqs.dedup();
    seqs
}

/// A batch of `n` events of tenant-unique ids at `minute` (from T0), received at `now`.
fn send(engine: &Engine, tenant: &str, tag: &str, n: usize, minute: i64, now: i64) {
    let events: Vec<String> =
        (0..n).map(|i| event(&format!("{tag}-{i}"), &format!("c{}", i % 3), minute, "1", "m")).collect();
    let r = engine.ingest(tenant, batch(&events), false, Some(now)).unwrap();
    assert_eq!(r.accepted, n, "{r:?}");
}

fn all_time(engine: &Engine, tenant: &str, meter: &str) -> (i128, u64) {
    // On whole UTC days (T0 is 10:00): the oldest usage is kept per day once rolled up.
    let (from_us, to_us) = (T0 - 400 * DAY - 10 * HOUR, T0 + 400 * DAY - 10 * HOUR);
    let q = UsageQuery { meter: meter.into(), from_us, to_us, ..Default::default() };
    let rows = engine.query(tenant, &q).unwrap().rows;
    (rows.iter().map(|r| r.value.0).sum(), rows.iter().map(|r| r.events).sum())
}

fn held(report: &meter_core::engine::MaintenanceReport) -> Vec<(String, u64)> {
    report.held_back.iter().map(|h| (h.tenant.clone(), h.events)).collect()
}

#[test]
fn events_are_dropped_once_exported_and_past_retention() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || Config { retention_us: 3 * DAY, ..config() };
    let engine = Engine::open(dir.path(), cfg()).unwrap();
    tokens_meter(&engine, "t");
    tokens_meter(&engine, "u");
    send(&engine, "t", "a", 4, 0, T0); // commit 1
    send(&engine, "u", "a", 2, 0, T0); // commit 2
    send(&engine, "t", "b", 3, DAY / MIN, T0 + DAY); // commit 3
    send(&engine, "t", "c", 5, 5 * DAY / MIN, T0 + 5 * DAY); // commit 4
    engine.day_counts("t", "tokens").unwrap(); // the fold threads flush: every commit is aggregated
    assert_eq!(retained(&engine, "t"), vec![1, 3, 4]);
    let totals = all_time(&engine, "t", "tokens");
    assert_eq!(totals, (12_000_000_000, 12));

    // Commits 1 and 2 were received more than 3 days before; neither tenant was exported: all kept, and said so.
    let report = engine.maintain(Some(T0 + 5 * DAY + MIN), None).unwrap();
    assert!(report.dropped.is_empty() && report.done, "{report:?}");
    assert_eq!(held(&report), vec![("t".into(), 4), ("u".into(), 2)]);
    let stats = engine.stats().maintenance;
    assert_eq!((stats.runs, stats.held_back.len()), (1, 2));

    // The export wrote t through commit 3: only what is also past retention goes.
    engine.events_exported("t", 3).unwrap();
    let report = engine.maintain(Some(T0 + 5 * DAY + MIN), None).unwrap();
    let dropped: Vec<(&str, u64)> = report.dropped.iter().map(|d| (d.tenant.as_str(), d.through_seq)).collect();
    assert_eq!(dropped, vec![("t", 2)]);
    assert_eq!(held(&report), vec![("u".into(), 2)]);
    assert_eq!(retained(&engine, "t"), vec![3, 4]);
    assert_eq!(retained(&engine, "u"), vec![2], "never exported: kept");
    assert_eq!(all_time(&engine, "t", "tokens"), totals, "aggregates stay");
    assert_eq!(engine.events_exported("t", 99).unwrap_err().code(), "invalid_request");
    engine.events_exported("t", 1).unwrap(); // an export that is behind lowers nothing

    // Later, commit 3 is past retention too; commit 4 is not exported.
    let report = engine.maintain(Some(T0 + 10 * DAY), None).unwrap();
    assert_eq!(report.dropped.iter().map(|d| d.through_seq).collect::<Vec<_>>(), vec![3]);
    assert_eq!(held(&report), vec![("t".into(), 5), ("u".into(), 2)]);
    assert_eq!(retained(&engine, "t"), vec![4]);

    // What reads retained events reads what remains: a new meter's backfill, the skipped events, the export cursor.
    let created = engine
        .create_meter("t", spec(r#"{"slug":"calls","event_type":"llm","aggregation":"count"}"#), Some(T0))
        .unwrap();
    assert_eq!(created.backfill.events, 5, "backfill covers the retained events only");
    let page = engine.skipped("t", "tokens", T0 - DAY, T0 + 10 * DAY, None, 10, 1_000).unwrap();
    assert_eq!((page.scanned, page.events.len()), (5, 0));
    let (rows, last) = engine.retained_events("t", 0, 1_000).unwrap();
    assert_eq!((rows.num_rows(), last), (5, 4));
    drop(engine);

    // After a restart the export's mark and the drops stand; retention goes on from them.
    let engine = Engine::open(dir.path(), cfg()).unwrap();
    assert_eq!(retained(&engine, "t"), vec![4]);
    assert_eq!(all_time(&engine, "t", "tokens"), totals);
    engine.events_exported("t", 4).unwrap();
    let report = engine.maintain(Some(T0 + 10 * DAY), None).unwrap();
    assert_eq!(report.dropped.iter().map(|d| d.through_seq).collect::<Vec<_>>(), vec![4]);
    assert_eq!(retained(&engine, "t"), Vec::<u64>::new());
    assert_eq!(engine.retained_events("t", 0, 10).unwrap().1, 0);
    assert_eq!(all_time(&engine, "t", "tokens"), totals);
    // New events after the drops are retained and counted as before.
    send(&engine, "t", "d", 2, 10 * DAY / MIN, T0 + 10 * DAY + MIN);
    assert_eq!(retained(&engine, "t"), vec![5]);
    assert_eq!(all_time(&engine, "t", "tokens").1, 14);
}

/// The retained events are the redo log of the aggregates not written yet: they stay, however old and exported.
#[test]
fn events_are_never_dropped_past_the_aggregate_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(CrashStore {
        inner: meter_core::storage::rocks::RocksStore::open(dir.path(), &meter_core::Config::default().store_options())
            .unwrap(),
        lose_unsynced: Default::default(),
    });
    // The fold threads keep everything in memory: the watermark stays where the meter's creation left it.
    let held_in_memory = Config { retention_us: DAY, flush_interval: std::time::Duration::from_secs(3600), ..config() };
    let engine = Engine::open_store(store.clone(), held_in_memory).unwrap();
    tokens_meter(&engine, "t");
    send(&engine, "t", "a", 3, 0, T0);
    send(&engine, "t", "b", 2, 2 * DAY / MIN, T0 + 2 * DAY);
    engine.events_exported("t", 2).unwrap();
    let report = engine.maintain(Some(T0 + 10 * DAY), None).unwrap();
    assert!(report.dropped.is_empty(), "{report:?}");
    assert_eq!(retained(&engine, "t"), vec![1, 2]);
    let totals = all_time(&engine, "t", "tokens");
    assert_eq!(totals.1, 5);

    // A crash that loses every unsynced write (the folds' flush at close among them): the next open replays both
    // commits from the events retention kept.
    store.lose_unsynced.store(true, Ordering::SeqCst);
    drop(engine);
    drop(store);
    let engine = Engine::open(dir.path(), Config { retention_us: DAY, ..config() }).unwrap();
    assert_eq!(all_time(&engine, "t", "tokens"), totals);
    let report = engine.maintain(Some(T0 + 10 * DAY), None).unwrap();
    assert_eq!(report.dropped.iter().map(|d| d.through_seq).collect::<Vec<_>>(), vec![2], "aggregated at open");
    assert_eq!(all_time(&engine, "t", "tokens"), totals);
}

/// A drop is written after the watermark it relies on: a crash that loses the watermark loses the drop too, and the
/// next open replays from the events.
#[test]
fn a_crash_between_a_drop_and_its_watermark_keeps_everything_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(CrashStore {
        inner: meter_core::storage::rocks::RocksStore::open(dir.path(), &meter_core::Config::default().store_options())
            .unwrap(),
        lose_unsynced: Default::default(),
    });
    let engine = Engine::open_store(store.clone(), Config { retention_us: DAY, ..config() }).unwrap();
    tokens_meter(&engine, "t");
    send(&engine, "t", "a", 3, 0, T0);
    engine.day_counts("t", "tokens").unwrap(); // watermark 1, durable
    send(&engine, "t", "b", 2, 2 * DAY / MIN, T0 + 2 * DAY);
    engine.events_exported("t", 2).unwrap();
    store.lose_unsynced.store(true, Ordering::SeqCst);
    engine.day_counts("t", "tokens").unwrap(); // watermark 2: lost in the crash below, but the engine went on it
    let report = engine.maintain(Some(T0 + 10 * DAY), None).unwrap();
    assert_eq!(report.dropped.iter().map(|d| d.through_seq).collect::<Vec<_>>(), vec![2]);
    drop(engine);
    drop(store);

    let engine = Engine::open(dir.path(), Config { retention_us: DAY, ..config() }).unwrap();
    let totals = (5_000_000_000, 5);
    assert_eq!(all_time(&engine, "t", "tokens"), totals, "replayed from the events whose drop was lost with it");
    assert_eq!(retained(&engine, "t"), vec![1, 2]);
    let report = engine.maintain(Some(T0 + 10 * DAY), None).unwrap();
    assert_eq!(report.dropped.iter().map(|d| d.through_seq).collect::<Vec<_>>(), vec![2]);
    assert_eq!(retained(&engine, "t"), Vec::<u64>::new());
    assert_eq!(all_time(&engine, "t", "tokens"), totals);
}

/// Every aggregation, a few customers and dimension values over three days, minutes with several events.
fn rollup_engine(dir: &tempfile::TempDir) -> Engine {
    let engine = Engine::open(dir.path(), Config { maintenance_step_keys: 5, ..config() }).unwrap();
    tokens_meter(&engine, "t");
    for (slug, aggregation) in
        [("models", "unique_count"), ("last", "latest"), ("mean", "avg"), ("low", "min"), ("high", "max")]
    {
        let value = if slug == "models" { "$.model" } else { "$.tokens" };
        let json = format!(
            r#"{{"slug":"{slug}","event_type":"llm","aggregation":"{aggregation}","value_property":"{value}","group_by":{{"model":"$.model"}}}}"#
        );
        engine.create_meter("t", spec(&json), Some(T0)).unwrap();
    }
    // Three customers, two models, 72 hours from T0 - 1 day, several minutes of each hour: rows merge when rolled up.
    let events: Vec<String> = (0..600)
        .map(|i| {
            let minute = ((i * 37) % 72) * 60 + (i % 11) * 5 - 1440;
            let tokens = format!("{}.{}", i % 17, i % 10);
            event(&format!("e{i}"), &format!("c{}", i % 3), minute, &tokens, &format!("m{}", i % 2))
        })
        .collect();
    for chunk in events.chunks(70) {
        engine.ingest("t", batch(chunk), false, Some(T0 + 3 * DAY)).unwrap();
    }
    // Written to RocksDB before any roll-up: what the folds still held would land later, as late minutes.
    engine.day_counts("t", "tokens").unwrap();
    engine
}

const METERS: [&str; 6] = ["tokens", "models", "last", "mean", "low", "high"];

/// Rows as (window start, end, subject, dims, value, events).
type Rows = Vec<(i64, i64, Option<String>, Vec<Option<String>>, i128, u64)>;

fn usage(engine: &Engine, meter: &str, window: Option<WindowSize>, tz: Option<&str>) -> meter_core::Result<Rows> {
    let q = UsageQuery {
        meter: meter.into(),
        from_us: T0 - 2 * DAY - 10 * HOUR, // on a whole UTC day
        to_us: T0 + 4 * DAY - 10 * HOUR,
        window,
        tz: tz.map(str::to_owned),
        group_by: vec!["subject".into(), "model".into()],
        ..Default::default()
    };
    let rows = engine.query("t", &q)?.rows;
    Ok(rows.into_iter().map(|r| (r.window_start_us, r.window_end_us, r.subject, r.dims, r.value.0, r.events)).collect())
}

/// Every query a roll-up to `unit` must keep exact.
fn exact_queries(unit: i64) -> Vec<(Option<WindowSize>, Option<&'static str>)> {
    let mut all = vec![(None, None), (Some(WindowSize::Day), None), (Some(WindowSize::Month), None)];
    if unit == HOUR {
        all.extend([(Some(WindowSize::Hour), None), (Some(WindowSize::Hour), Some("Europe/Paris"))]);
        all.push((Some(WindowSize::Day), Some("Europe/Paris")));
    }
    all
}

fn answers(engine: &Engine, unit: i64) -> Vec<Rows> {
    let mut all = Vec::new();
    for meter in METERS {
        for (window, tz) in exact_queries(unit) {
            all.push(usage(engine, meter, window, tz).unwrap());
        }
    }
    all
}

fn refused(engine: &Engine, window: Option<WindowSize>, tz: Option<&str>) -> bool {
    match usage(engine, "tokens", window, tz) {
        Err(e) => {
            assert_eq!(e.code(), "resolution_unavailable", "{e}");
            assert!(e.to_string().contains("is kept per"), "{e}");
            true
        }
        Ok(_) => false,
    }
}

#[test]
fn roll_ups_keep_every_total_exact_and_refuse_finer_windows() {
    let dir = tempfile::tempdir().unwrap();
    let engine = rollup_engine(&dir);
    let by_hour = answers(&engine, HOUR);
    let by_day = answers(&engine, DAY);
    let minutes = usage(&engine, "tokens", Some(WindowSize::Minute), None).unwrap();
    assert!(minutes.len() > 200);
    let exported = |engine: &Engine| minute_rows(engine, "tokens", T0 - 2 * DAY - 10 * HOUR, T0 + 4 * DAY - 10 * HOUR);
    let rows_before = exported(&engine);

    // Nothing is old enough yet.
    let report = engine.maintain(Some(T0 + 3 * DAY), None).unwrap();
    assert_eq!(report.keys_merged, 0, "{report:?}");
    assert!(!refused(&engine, Some(WindowSize::Minute), None));

    // 41 days later every minute of the data is older than the 40 days minutes are kept: hours.
    let hours_at = T0 + 44 * DAY;
    let report = engine.maintain(Some(hours_at), None).unwrap();
    assert!(report.done && report.keys_merged > 0 && report.steps > 20, "bounded steps: {report:?}");
    assert_eq!(report.meters_rolled_up, 6);
    assert_eq!(answers(&engine, HOUR), by_hour, "hour, day and month windows are exact after the roll-up");
    assert!(refused(&engine, Some(WindowSize::Minute), None));
    assert!(refused(&engine, Some(WindowSize::Hour), Some("Asia/Kolkata")), "a half-hour offset");
    assert!(refused(&engine, Some(WindowSize::Day), Some("Asia/Kolkata")));
    // The Parquet export's rows are now hours: the same totals per customer and day, each row one hour long.
    let rows_after = exported(&engine);
    assert!(rows_after.len() < rows_before.len());
    assert!(rows_after.iter().all(|r| r.0 % HOUR == 0));
    let per_day = |rows: &[MinuteRow]| {
        let mut sums = std::collections::BTreeMap::new();
        for (start, customer, dims, value, events) in rows {
            let e = sums.entry((start.div_euclid(DAY), customer.clone(), dims.clone())).or_insert((0, 0));
            *e = (e.0 + value, e.1 + events);
        }
        sums
    };
    assert_eq!(per_day(&rows_after), per_day(&rows_before));
    let ends: Vec<i64> = engine
        .minutes("t", "tokens", T0 - DAY - 10 * HOUR, T0 - 10 * HOUR, 100)
        .unwrap()
        .flat_map(|b| {
            let b = b.unwrap();
            let (start, end) =
                (b.column(2).as_primitive::<arrow_array::types::TimestampMicrosecondType>(), b.column(3));
            let end = end.as_primitive::<arrow_array::types::TimestampMicrosecondType>();
            (0..b.num_rows()).map(|i| end.value(i) - start.value(i)).collect::<Vec<_>>()
        })
        .collect();
    assert!(!ends.is_empty() && ends.iter().all(|&span| span == HOUR), "{ends:?}");

    // Events keep arriving, into minutes still kept per minute.
    send(&engine, "t", "late", 3, 43 * DAY / MIN, hours_at);
    let recent = UsageQuery {
        meter: "tokens".into(),
        from_us: T0 + 43 * DAY,
        to_us: T0 + 43 * DAY + HOUR,
        window: Some(WindowSize::Minute),
        ..Default::default()
    };
    assert_eq!(engine.query("t", &recent).unwrap().rows.len(), 1);
    drop(engine);

    // After a restart; then 401 days on, hours become UTC days.
    let engine = Engine::open(dir.path(), Config { maintenance_step_keys: 5, ..config() }).unwrap();
    assert!(refused(&engine, Some(WindowSize::Minute), None));
    let report = engine.maintain(Some(hours_at), None).unwrap();
    assert_eq!(report.keys_merged, 0, "nothing left to do: {report:?}");
    let report = engine.maintain(Some(T0 + 404 * DAY), None).unwrap();
    assert!(report.done && report.keys_merged > 0, "{report:?}");
    assert_eq!(answers(&engine, DAY), by_day, "day and month windows are exact after the roll-up to days");
    assert!(refused(&engine, Some(WindowSize::Hour), None));
    assert!(refused(&engine, Some(WindowSize::Day), Some("Europe/Paris")));
    assert!(exported(&engine).iter().all(|r| r.0 % DAY == 0));
}

/// A roll-up stopped half-way (bounded steps, then a restart) answers exactly at every point, and finishes.
#[test]
fn a_roll_up_stopped_half_way_stays_exact_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let engine = rollup_engine(&dir);
    let by_hour = answers(&engine, HOUR);
    let report = engine.maintain(Some(T0 + 44 * DAY), Some(7)).unwrap();
    assert!(!report.done && report.steps == 7, "{report:?}");
    assert_eq!(answers(&engine, HOUR), by_hour, "half-way");
    assert!(refused(&engine, Some(WindowSize::Minute), None), "declared before any hour is rolled up");
    drop(engine);
    let engine = Engine::open(dir.path(), Config { maintenance_step_keys: 5, ..config() }).unwrap();
    assert_eq!(answers(&engine, HOUR), by_hour, "after a restart half-way");
    let report = engine.maintain(Some(T0 + 44 * DAY), Some(5)).unwrap();
    assert!(!report.done);
    let report = engine.maintain(Some(T0 + 44 * DAY), None).unwrap();
    assert!(report.done);
    assert_eq!(answers(&engine, HOUR), by_hour);
    assert!(exported_rows_are_hours(&engine));
    // Deleting a meter takes its roll-up record along: the slug made again starts with minutes.
    engine.delete_meter("t", "tokens").unwrap();
    tokens_meter(&engine, "t");
    assert!(!refused(&engine, Some(WindowSize::Minute), None));
}

fn exported_rows_are_hours(engine: &Engine) -> bool {
    minute_rows(engine, "tokens", T0 - 2 * DAY - 10 * HOUR, T0 + 4 * DAY).iter().all(|r| r.0 % HOUR == 0)
}

#[test]
fn settings_that_would_roll_up_accepted_minutes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for bad in [
        Config { minute_aggregates_us: 30 * DAY, ..config() },
        Config { hour_aggregates_us: 39 * DAY, ..config() },
        Config { retention_us: -1, ..config() },
    ] {
        let err = Engine::open(dir.path(), bad).err().expect("refused");
        assert_eq!(err.code(), "invalid_config", "{err}");
    }
    let longer = Config { backdate_window_us: 100 * DAY, dedup_window_us: 100 * DAY, ..config() };
    assert!(Engine::open(dir.path(), longer.clone()).is_err(), "minutes must outlive the back-dating window");
    let derived = longer.with_backdate_defaults();
    assert_eq!((derived.retention_us, derived.minute_aggregates_us), (131 * DAY, 105 * DAY));
    Engine::open(dir.path(), derived).unwrap();
}
