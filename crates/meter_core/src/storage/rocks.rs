//! The RocksDB implementation of `Store`: column families and tuning. The column families written by merge (`agg`
//! and `days`, see `keys`) fold their operands with the [`MergeOperator`] the store is opened with: storage never
//! reads an aggregate.
//!
//! Durability: every commit is one `WriteBatch`; with `sync` the WAL is fsynced before `write` returns.
//! We never write a log of our own: RocksDB's WAL is the only redo log.
//!
//! Memory is bounded by settings, not by what is stored: memtables share one budget
//! ([`MEMTABLE_BUDGET`]), and every table's index and filter blocks live in the one block cache
//! (`StoreOptions::cache_bytes`) instead of beside it, so opening a store reads no filter and the filters of
//! a billion dedup identities cost what the cache is given. The top level of each partitioned index and
//! filter stays pinned, so a lookup needs at most one filter partition from the cache.

use std::path::Path;
use std::sync::Arc;

use rocksdb::compaction_filter::Decision;
use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBCompressionType,
    DBRawIteratorWithThreadMode, IngestExternalFileOptions, MemtableFactory, MergeOperands, Options, SliceTransform,
    SnapshotWithThreadMode, SstFileWriter, WriteBatch, WriteOptions, DB,
};

use super::{Cf, Cursor, MergeOperator, OpKind, ReadStore, Store, WriteSet};
use crate::dedup::{self, Horizon};
use crate::error::{Error, Result};

/// Memory all memtables of all column families may use together.
pub const MEMTABLE_BUDGET: usize = 256 << 20;

#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The block cache: data blocks, and the index and filter blocks of every table.
    pub cache_bytes: usize,
    /// How the operands of `agg` and `days` combine. Without one, merge writes fail and merged values cannot be read:
    /// the engine's data directories are opened with the engine's (`Config::store_options`).
    pub merge: Option<MergeOperator>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { cache_bytes: 512 << 20, merge: None }
    }
}

pub struct RocksStore {
    db: DB,
    horizon: Arc<Horizon>,
    cache: Cache,
}

fn storage(e: rocksdb::Error) -> Error {
    Error::Storage(e.into_string())
}

/// The options of one column family: its tables' format and cache, compression, merge operator, and for
/// `seen` its memtable and expiry.
fn cf_options(cf: Cf, cache: &Cache, horizon: &Arc<Horizon>, merge: Option<MergeOperator>) -> Options {
    let mut o = Options::default();
    o.set_write_buffer_size(64 << 20);
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_cache_index_and_filter_blocks(true);
    table.set_cache_index_and_filter_blocks_with_high_priority(true);
    table.set_pin_top_level_index_and_filter(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    table.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
    table.set_partition_filters(true);
    table.set_optimize_filters_for_memory(true);
    // Bloom filters, 10 bits per key (1% false positives): 1.25 B of cache per identity, well inside the 4 B
    // budget. Ribbon filters take 7 bits for the same rate, but building them was a third of the CPU of
    // compacting `seen` in the soak (perf: `Standard128RibbonBitsBuilder::Finish`), and compaction competes
    // with ingest for the same two cores.
    table.set_bloom_filter(10.0, false);
    o.set_block_based_table_factory(&table);
    // Retained events are zstd-compressed by the engine, dedup values and fingerprints are hashes:
    // compressing them again would burn CPU for nothing. Keys of agg/uniq share long prefixes.
    o.set_compression_type(match cf {
        Cf::Agg | Cf::Uniq | Cf::Days | Cf::Meta => DBCompressionType::Zstd,
        Cf::Events | Cf::Dedup | Cf::Seen => DBCompressionType::None,
    });
    // The minute states and the days' marks: written by merge, in one format that is not storage's to know.
    if let (Cf::Agg | Cf::Days, Some(MergeOperator { name, merge })) = (cf, merge) {
        o.set_merge_operator_associative(
            name,
            move |_key: &[u8], existing: Option<&[u8]>, operands: &MergeOperands| merge(existing, &mut operands.iter()),
        );
    }
    if cf == Cf::Seen {
        // `seen` is only read by whole key. Its keys are uniform hashes, so a memtable hashed on the first
        // 8 bytes puts about one key per bucket: an insert costs one bucket instead of a walk down a
        // skiplist of a million random keys (the writer's main cost with the default memtable, by perf).
        // Ordering happens once, when the memtable is flushed, on a background thread.
        o.set_prefix_extractor(SliceTransform::create_fixed_prefix(8));
        o.set_memtable_factory(MemtableFactory::HashSkipList { bucket_count: 1 << 20, height: 4, branching_factor: 4 });
        // Most lookups are for new identities: a filter on the memtable answers them without reading a
        // bucket (perf on bench-core: 313 writer samples with it, 357 and 388 without).
        o.set_memtable_prefix_bloom_ratio(0.05);
        o.set_memtable_whole_key_filtering(true);
        // Identities received before the horizon are dead: drop them whenever compaction passes, and make
        // sure it passes every file at least daily.
        let horizon = horizon.clone();
        o.set_compaction_filter("meter_seen_expiry", move |_level: u32, _key: &[u8], value: &[u8]| {
            match dedup::received_us(value) {
                Some(received) if !horizon.keeps(received) => Decision::Remove,
                _ => Decision::Keep,
            }
        });
        o.set_periodic_compaction_seconds(86_400);
    }
    o
}

impl RocksStore {
    pub fn open(path: &Path, options: &StoreOptions) -> Result<RocksStore> {
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_background_jobs(2);
        // Bound the WAL so that recovery after a crash stays quick.
        db_opts.set_max_total_wal_size(256 << 20);
        db_opts.set_db_write_buffer_size(MEMTABLE_BUDGET);
        // The hashed memtable of `seen` takes one writer at a time (RocksDB groups concurrent writes anyway).
        db_opts.set_allow_concurrent_memtable_write(false);
        db_opts.set_compression_type(DBCompressionType::None);

        let cache = Cache::new_lru_cache(options.cache_bytes);
        let horizon = Arc::new(Horizon::new(i64::MIN));
        let cfs = Cf::ALL
            .iter()
            .map(|&cf| ColumnFamilyDescriptor::new(cf.name(), cf_options(cf, &cache, &horizon, options.merge)));
        let db = DB::open_cf_descriptors(&db_opts, path, cfs).map_err(storage)?;
        Ok(RocksStore { db, horizon, cache })
    }

    /// Adds identities to `seen` without the write path: sorted `(fingerprint, mark)` entries are written as
    /// table files of `per_file` entries under `scratch` and moved into the store. For benchmarks that need a
    /// store holding a billion identities (the engine's write path would take an hour); the files are the
    /// same as a full compaction of those identities would leave.
    pub fn bulk_load_seen(
        &self,
        scratch: &Path,
        entries: impl Iterator<Item = (u128, dedup::Mark)>,
        per_file: usize,
        mut progress: impl FnMut(usize),
    ) -> Result<usize> {
        let options = cf_options(Cf::Seen, &self.cache, &self.horizon, None);
        let mut entries = entries.peekable();
        let mut loaded = 0;
        let mut file = 0;
        while entries.peek().is_some() {
            let path = scratch.join(format!("seen-{file:05}.sst"));
            let mut writer = SstFileWriter::create(&options);
            writer.open(&path).map_err(storage)?;
            for (fingerprint, mark) in entries.by_ref().take(per_file) {
                writer.put(dedup::seen_key(fingerprint), mark.encode()).map_err(storage)?;
                loaded += 1;
            }
            writer.finish().map_err(storage)?;
            let mut ingest = IngestExternalFileOptions::default();
            ingest.set_move_files(true);
            self.db.ingest_external_file_cf_opts(self.cf(Cf::Seen), &ingest, vec![&path]).map_err(storage)?;
            file += 1;
            progress(loaded);
        }
        Ok(loaded)
    }

    fn cf(&self, cf: Cf) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(cf.name()).expect("every column family is created at open")
    }
}

impl Store for RocksStore {
    fn write(&self, set: &WriteSet, sync: bool) -> Result<()> {
        let mut batch = WriteBatch::default();
        for (kind, cf, key, value) in set.ops() {
            let h = self.cf(cf);
            match kind {
                OpKind::Put => batch.put_cf(h, key, value),
                OpKind::Merge => batch.merge_cf(h, key, value),
                OpKind::Delete => batch.delete_cf(h, key),
                OpKind::DeleteRange => batch.delete_range_cf(h, key, value),
            }
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        self.db.write_opt(batch, &opts).map_err(storage)
    }

    fn snapshot(&self) -> Box<dyn ReadStore + '_> {
        Box::new(RocksSnapshot { store: self, snapshot: self.db.snapshot() })
    }

    fn dedup_horizon(&self) -> Option<Arc<Horizon>> {
        Some(self.horizon.clone())
    }

    fn reclaim(&self, cf: Cf, from: &[u8], to: &[u8]) -> Result<()> {
        // Only files wholly inside the range go (none of L0): open iterators keep theirs until they are dropped.
        self.db.delete_file_in_range_cf(self.cf(cf), from, to).map_err(storage)
    }

    fn checkpoint(&self, dir: &Path) -> Result<()> {
        // Flushes the memtables first, so the copy is whole SST files (hard links on the same file system).
        rocksdb::checkpoint::Checkpoint::new(&self.db).and_then(|c| c.create_checkpoint(dir)).map_err(storage)
    }
}

impl ReadStore for RocksStore {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get_cf(self.cf(cf), key).map_err(storage)
    }

    fn multi_get_sorted(&self, cf: Cf, keys: &[&[u8]], found: &mut dyn FnMut(usize, Option<&[u8]>)) -> Result<()> {
        for (i, value) in self.db.batched_multi_get_cf(self.cf(cf), keys.iter().copied(), true).into_iter().enumerate()
        {
            found(i, value.map_err(storage)?.as_deref());
        }
        Ok(())
    }

    fn cursor(&self, cf: Cf) -> Box<dyn Cursor + '_> {
        Box::new(RocksCursor(self.db.raw_iterator_cf(self.cf(cf))))
    }
}

/// Reads at one RocksDB snapshot.
struct RocksSnapshot<'a> {
    store: &'a RocksStore,
    snapshot: SnapshotWithThreadMode<'a, DB>,
}

impl ReadStore for RocksSnapshot<'_> {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.snapshot.get_cf(self.store.cf(cf), key).map_err(storage)
    }

    fn cursor(&self, cf: Cf) -> Box<dyn Cursor + '_> {
        Box::new(RocksCursor(self.snapshot.raw_iterator_cf(self.store.cf(cf))))
    }
}

struct RocksCursor<'a>(DBRawIteratorWithThreadMode<'a, DB>);

impl Cursor for RocksCursor<'_> {
    fn seek(&mut self, key: &[u8]) {
        self.0.seek(key);
    }
    fn next(&mut self) {
        self.0.next();
    }
    fn entry(&self) -> Option<(&[u8], &[u8])> {
        self.0.item()
    }
    fn status(&self) -> Result<()> {
        self.0.status().map_err(storage)
    }
}
