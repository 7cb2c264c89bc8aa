//! Storage behind a small trait. Only `rocks.rs` names `rocksdb::`; the engine speaks `Store`.
//!
//! Writes go as one [`WriteSet`] that the store applies atomically: the retained events, their dedup
//! markers and the aggregate deltas of a commit either all land or none does.

pub mod codec;
pub mod events;
pub mod keys;
pub mod rocks;

use std::ops::Range;

use crate::error::Result;

/// The column families; see `keys` for what each one holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cf {
    Meta,
    Events,
    Dedup,
    Agg,
    Uniq,
    Days,
    Seen,
}

impl Cf {
    pub const ALL: [Cf; 7] = [Cf::Meta, Cf::Events, Cf::Dedup, Cf::Agg, Cf::Uniq, Cf::Days, Cf::Seen];

    pub fn name(self) -> &'static str {
        match self {
            Cf::Meta => "meta",
            Cf::Events => "events",
            Cf::Dedup => "dedup",
            Cf::Agg => "agg",
            Cf::Uniq => "uniq",
            Cf::Days => "days",
            Cf::Seen => "seen",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Put,
    Merge,
    Delete,
    /// Deletes `[key, value)`.
    DeleteRange,
}

/// An atomic group of writes. Keys and values live in one buffer, so building a commit of thousands of
/// operations costs a handful of allocations.
#[derive(Default)]
pub struct WriteSet {
    buf: Vec<u8>,
    ops: Vec<(OpKind, Cf, Range<usize>, Range<usize>)>,
}

impl WriteSet {
    pub fn push(&mut self, kind: OpKind, cf: Cf, key: &[u8], value: &[u8]) {
        let k = self.append(key);
        let v = self.append(value);
        self.ops.push((kind, cf, k, v));
    }

    pub fn put(&mut self, cf: Cf, key: &[u8], value: &[u8]) {
        self.push(OpKind::Put, cf, key, value);
    }

    pub fn merge(&mut self, cf: Cf, key: &[u8], value: &[u8]) {
        self.push(OpKind::Merge, cf, key, value);
    }

    pub fn delete_range(&mut self, cf: Cf, from: &[u8], to: &[u8]) {
        self.push(OpKind::DeleteRange, cf, from, to);
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn ops(&self) -> impl Iterator<Item = (OpKind, Cf, &[u8], &[u8])> {
        self.ops.iter().map(|(kind, cf, k, v)| (*kind, *cf, &self.buf[k.clone()], &self.buf[v.clone()]))
    }

    fn append(&mut self, bytes: &[u8]) -> Range<usize> {
        let start = self.buf.len();
        self.buf.extend_from_slice(bytes);
        start..self.buf.len()
    }
}

/// How the operands written by [`WriteSet::merge`] combine with the value they apply to. The owner of the values'
/// format gives it to the store at open (the engine gives the aggregates': `Config::store_options`), so that storage
/// applies it without knowing the format.
#[derive(Clone, Copy)]
pub struct MergeOperator {
    /// Names the format; RocksDB records it with the column family's options.
    pub name: &'static str,
    pub merge: MergeFn,
}

/// The existing value (if any) and the operands, oldest first, folded into one value; `None` when they cannot be
/// (bytes the format's owner did not write), which fails the read or the compaction that needed them.
pub type MergeFn = fn(Option<&[u8]>, &mut dyn Iterator<Item = &[u8]>) -> Option<Vec<u8>>;

impl std::fmt::Debug for MergeOperator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MergeOperator").field("name", &self.name).finish_non_exhaustive()
    }
}

/// A forward cursor over one column family.
pub trait Cursor {
    fn seek(&mut self, key: &[u8]);
    fn next(&mut self);
    /// The current entry, or `None` past the end (check `status` then).
    fn entry(&self) -> Option<(&[u8], &[u8])>;
    fn status(&self) -> Result<()>;
}

/// Reads, of the live store or of a snapshot of it.
pub trait ReadStore {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Reads many keys, given in ascending order, at once: calls `found(i, value)` for the `i`-th key.
    fn multi_get_sorted(&self, cf: Cf, keys: &[&[u8]], found: &mut dyn FnMut(usize, Option<&[u8]>)) -> Result<()> {
        for (i, key) in keys.iter().enumerate() {
            found(i, self.get(cf, key)?.as_deref());
        }
        Ok(())
    }
    fn cursor(&self, cf: Cf) -> Box<dyn Cursor + '_>;
}

pub trait Store: ReadStore + Send + Sync + 'static {
    /// Applies the set atomically; with `sync`, returns only once it is on stable storage.
    fn write(&self, set: &WriteSet, sync: bool) -> Result<()>;
    /// The store as it is now, whatever is written later: every read through it sees the same writes.
    fn snapshot(&self) -> Box<dyn ReadStore + '_>;
    /// The dedup horizon the store's compaction filter drops identities by, if it has one
    /// (`dedup::Horizon`); the engine moves it forward.
    fn dedup_horizon(&self) -> Option<std::sync::Arc<crate::dedup::Horizon>> {
        None
    }
    /// Gives back the disk space of `[from, to)` in `cf` once a range delete covers it: drops the files wholly
    /// inside it now; RocksDB's own compactions drop the rest as the range tombstone moves down. Nothing for stores
    /// without files of their own.
    fn reclaim(&self, _cf: Cf, _from: &[u8], _to: &[u8]) -> Result<()> {
        Ok(())
    }
    /// Writes a consistent copy of the store to `dir`, which must not exist (`Engine::checkpoint`).
    fn checkpoint(&self, _dir: &std::path::Path) -> Result<()> {
        Err(crate::error::Error::invalid("unsupported", "this store cannot write checkpoints"))
    }
}

/// Calls `f` for every entry whose key starts with `prefix`, until `f` returns `false`.
pub fn scan_prefix(
    store: &dyn ReadStore,
    cf: Cf,
    prefix: &[u8],
    mut f: impl FnMut(&[u8], &[u8]) -> Result<bool>,
) -> Result<()> {
    let mut c = store.cursor(cf);
    c.seek(prefix);
    while let Some((k, v)) = c.entry() {
        if !k.starts_with(prefix) || !f(k, v)? {
            return Ok(());
        }
        c.next();
    }
    c.status()
}
