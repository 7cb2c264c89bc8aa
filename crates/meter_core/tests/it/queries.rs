//! Queries during ingest (`Engine::query`): they never wait for a fold to be written, and still count every
//! acknowledged event exactly once, whether it is in a live fold, in a fold being written, or in RocksDB.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use meter_core::storage::{Cf, Cursor, ReadStore, Store, WriteSet};

/// RocksDB whose aggregate writes (the flush thread's) take `delay` each, half before the write and half after it:
/// folds stay in flight while queries run, both before they are in RocksDB and after.
struct SlowFlushes {
    inner: meter_core::storage::rocks::RocksStore,
    delay: Duration,
}

impl Store for SlowFlushes {
    fn write(&self, set: &WriteSet, sync: bool) -> meter_core::Result<()> {
        let slow = set.ops().any(|(_, cf, _, _)| cf == Cf::Agg);
        if slow {
            std::thread::sleep(self.delay / 2);
        }
        self.inner.write(set, sync)?;
        if slow {
            std::thread::sleep(self.delay / 2);
        }
        Ok(())
    }
    fn snapshot(&self) -> Box<dyn ReadStore + '_> {
        self.inner.snapshot()
    }
}

impl ReadStore for SlowFlushes {
    fn get(&self, cf: Cf, key: &[u8]) -> meter_core::Result<Option<Vec<u8>>> {
        self.inner.get(cf, key)
    }
    fn cursor(&self, cf: Cf) -> Box<dyn Cursor + '_> {
        self.inner.cursor(cf)
    }
}

/// Customers of the test; each batch has 20 events, 4 of each.
const CUSTOMERS: usize = 5;

fn calls_of(engine: &Engine, subjects: &[&str]) -> u64 {
    let q = UsageQuery {
        meter: "calls".into(),
        from_us: T0 - 60 * MIN,
        to_us: T0 + 60 * MIN,
        subjects: subjects.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let r = engine.query("t", &q).unwrap();
    (r.rows.iter().map(|r| r.value.0).sum::<i128>() / 1_000_000_000) as u64
}

/// Slow flushes keep folds in flight; queries of one customer, of two, and of all see each acknowledged event once,
/// and return long before a flush could have been waited for.
#[test]
fn queries_count_folds_in_flight_once_and_never_wait_for_them() {
    let dir = tempfile::tempdir().unwrap();
    let delay = Duration::from_millis(200);
    let store = Arc::new(SlowFlushes {
        inner: meter_core::storage::rocks::RocksStore::open(dir.path(), &meter_core::Config::default().store_options())
            .unwrap(),
        delay,
    });
    // The flush thread busy about half the time: folds are in flight for many of the queries.
    let config = Config { flush_interval: Duration::from_millis(400), ..Config::default() };
    let engine = Arc::new(Engine::open_store(store, config).unwrap());
    engine.create_meter("t", spec(r#"{"slug":"calls","event_type":"llm","aggregation":"count"}"#), Some(T0)).unwrap();
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..CUSTOMERS).map(|_| AtomicU64::new(0)).collect());
    let done = Arc::new(AtomicBool::new(false));

    let sender = {
        let (engine, acked) = (engine.clone(), acked.clone());
        std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_millis(3000);
            let mut b = 0;
            while Instant::now() < until {
                let events: Vec<String> = (0..20)
                    .map(|i| event(&format!("{b}-{i}"), &format!("c{}", i % CUSTOMERS), (i % 3) as i64, "1", "m"))
                    .collect();
                let report = engine.ingest("t", batch(&events), false, Some(T0 + 10 * MIN)).unwrap();
                assert_eq!(report.accepted, 20);
                // 20 events over 5 customers: 4 each.
                for n in acked.iter() {
                    n.fetch_add(20 / CUSTOMERS as u64, Ordering::SeqCst);
                }
                b += 1;
            }
        })
    };
    let readers: Vec<_> = [vec!["c1"], vec!["c2", "c3"], vec![]]
        .into_iter()
        .map(|subjects| {
            let (engine, acked, done) = (engine.clone(), acked.clone(), done.clone());
            std::thread::spawn(move || {
                let ids: Vec<usize> = match subjects.is_empty() {
                    true => (0..CUSTOMERS).collect(),
                    false => subjects.iter().map(|s| s[1..].parse().unwrap()).collect(),
                };
                let sum = |acked: &[AtomicU64]| ids.iter().map(|&i| acked[i].load(Ordering::SeqCst)).sum::<u64>();
                let (mut queries, mut slowest) = (0, Duration::ZERO);
                while !done.load(Ordering::SeqCst) {
                    let before = sum(&acked);
                    let started = Instant::now();
                    let seen = calls_of(&engine, &subjects);
                    slowest = slowest.max(started.elapsed());
                    let after = sum(&acked);
                    // One batch can be committed and not yet counted in `acked`: at most its 20 events.
                    assert!(seen >= before && seen <= after + 20, "{subjects:?}: {before} <= {seen} <= {after} + 20");
                    queries += 1;
                }
                (queries, slowest)
            })
        })
        .collect();
    sender.join().unwrap();
    done.store(true, Ordering::SeqCst);
    for r in readers {
        let (queries, slowest) = r.join().unwrap();
        assert!(queries > 5, "{queries} queries");
        // Writes take 200 ms each and keep being made; a query that waited for one would take that long.
        assert!(slowest < delay, "a query waited {slowest:?} for a flush");
    }
    let total: u64 = acked.iter().map(|n| n.load(Ordering::SeqCst)).sum();
    assert_eq!(calls_of(&engine, &[]), total);
}
