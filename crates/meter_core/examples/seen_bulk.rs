//! Fills a data directory's dedup index with N identities, for `make bench-open` (benches/bench_open.py):
//! `seen_bulk DIR N`. Identities are spread evenly over the fingerprint space (as hashes are) and received
//! within the last day; they are written as table files and moved into the store (`bulk_load_seen`),
//! because the engine's write path would need about an hour for a billion. Prints one JSON line.

use std::path::PathBuf;
use std::time::Instant;

use meter_core::dedup::Mark;
use meter_core::storage::rocks::RocksStore;

const DAY_US: i64 = 86_400_000_000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (dir, n): (PathBuf, u64) = match args.as_slice() {
        [_, dir, n] => (dir.into(), n.parse().expect("N is a count")),
        _ => panic!("usage: seen_bulk DIR N"),
    };
    let started = Instant::now();
    // The engine's options: the directory may hold aggregates, whose merges the store must be able to apply.
    let store = RocksStore::open(&dir, &meter_core::Config::default().store_options()).expect("open the store");
    let scratch = dir.join("bulk-scratch");
    std::fs::create_dir_all(&scratch).expect("scratch directory");
    let now = meter_core::ingest::time::now_micros();
    let step = u128::MAX / u128::from(n.max(1));
    let entries =
        (0..n).map(|i| (u128::from(i) * step, Mark { received_us: now - (i as i64 % DAY_US), payload_hash: i }));
    let mut last = Instant::now();
    let loaded = store
        .bulk_load_seen(&scratch, entries, 50_000_000, |done| {
            if last.elapsed().as_secs() >= 10 {
                eprintln!("  {done} identities in {:.0} s", started.elapsed().as_secs_f64());
                last = Instant::now();
            }
        })
        .expect("bulk load");
    std::fs::remove_dir_all(&scratch).ok();
    println!(r#"{{"identities": {loaded}, "seconds": {:.1}}}"#, started.elapsed().as_secs_f64());
}
