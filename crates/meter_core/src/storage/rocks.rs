//! The RocksDB implementation of `Store`: column families, tuning, and the aggregate merge operator.
//!
//! Durability: every commit is one `WriteBatch`; with `sync` the WAL is fsynced before `write` returns.
//! We never write a log of our own: RocksDB's WAL is the only redo log.

use std::path::Path;

use rocksdb::{
    BlockBasedOptions, ColumnFamilyDescriptor, DBCompressionType, DBRawIteratorWithThreadMode, MergeOperands, Options,
    SnapshotWithThreadMode, WriteBatch, WriteOptions, DB,
};

use super::{Cf, Cursor, OpKind, ReadStore, Store, WriteSet};
use crate::aggregate::state::merge_values;
use crate::error::{Error, Result};

pub struct RocksStore {
    db: DB,
}

fn storage(e: rocksdb::Error) -> Error {
    Error::Storage(e.into_string())
}

fn agg_merge(_key: &[u8], existing: Option<&[u8]>, operands: &MergeOperands) -> Option<Vec<u8>> {
    merge_values(existing, operands.iter())
}

impl RocksStore {
    pub fn open(path: &Path) -> Result<RocksStore> {
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_background_jobs(2);
        // Bound the WAL so that recovery after a crash stays quick.
        db_opts.set_max_total_wal_size(256 << 20);
        db_opts.set_compression_type(DBCompressionType::None);

        let cfs = Cf::ALL.iter().map(|&cf| {
            let mut o = Options::default();
            o.set_write_buffer_size(64 << 20);
            let mut table = BlockBasedOptions::default();
            table.set_bloom_filter(10.0, false);
            o.set_block_based_table_factory(&table);
            // Retained events are zstd-compressed by the engine and dedup values are hashes: compressing
            // them again would burn CPU for nothing. Keys of agg/uniq share long prefixes and compress well.
            o.set_compression_type(match cf {
                Cf::Agg | Cf::Uniq | Cf::Days | Cf::Meta => DBCompressionType::Zstd,
                Cf::Events | Cf::Dedup => DBCompressionType::None,
            });
            // A day's mark is a count state, merged like any aggregate.
            if matches!(cf, Cf::Agg | Cf::Days) {
                o.set_merge_operator_associative("meter_agg_v1", agg_merge);
            }
            ColumnFamilyDescriptor::new(cf.name(), o)
        });
        let db = DB::open_cf_descriptors(&db_opts, path, cfs).map_err(storage)?;
        Ok(RocksStore { db })
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
}

impl ReadStore for RocksStore {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get_cf(self.cf(cf), key).map_err(storage)
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
