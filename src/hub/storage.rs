//! Raft log storage of one replica, behind raft-rs's [`raft::Storage`]
//! trait: the log in memory, made durable by the write-ahead journal
//! ([`super::wal`]); the latest snapshot and the configuration in sled.
//!
//! This is etcd's layout (an in-memory log, a WAL, snapshots beside them):
//! appending an entry costs one journal record and no tree update, and
//! compaction only drops entries from memory and releases journal segments
//! that a snapshot covers.
//!
//! The latest [`Snapshot`] is a file of its own, named by its index and
//! term (written to a temporary name, synced, renamed); sled's `meta` tree
//! names the current one (its metadata) and holds the [`ConfState`], the
//! hard state as of the last installed snapshot, and the first journal
//! segment to read (set when a snapshot from the leader replaces the whole
//! log, so the records it superseded are never replayed). Each change of
//! `meta` is one atomic batch, flushed (and `fdatasync`ed) before the call
//! returns; an older snapshot file is deleted only after that. sled keeps
//! only small values: it does not reclaim the space of large ones it
//! rewrites.
//!
//! Opening the storage loads the snapshot metadata, replays the journal
//! (entries after the snapshot, the latest hard state) and starts a new
//! journal segment.

use std::collections::VecDeque;
use std::path::Path;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState};
use sled::{Batch, Tree};

use super::wal::{Record, Wal, WalError, WalSyncer};

const HARD_STATE: &[u8] = b"hard_state";
const CONF_STATE: &[u8] = b"conf_state";
const SNAPSHOT: &[u8] = b"snapshot";
const FIRST_SEGMENT: &[u8] = b"first_wal_segment";

/// What can go wrong reading or writing the raft log.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// sled failed (I/O, or sled's own corruption checks).
    #[error("raft storage I/O failed: {0}")]
    Sled(#[from] sled::Error),
    /// Writing, reading or syncing a file (sled's log, a snapshot) failed.
    #[error("raft storage I/O on {path} failed: {source}")]
    Sync {
        /// The file being synced.
        path: std::path::PathBuf,
        /// What the OS reported.
        source: std::io::Error,
    },
    /// The write-ahead journal failed.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// A stored value does not decode: the data directory is damaged.
    #[error(
        "raft storage is corrupt ({what}); restore the data directory from a replica or a backup"
    )]
    Corrupt {
        /// Which value could not be read, and why.
        what: String,
    },
    /// The requested index was compacted away into a snapshot.
    #[error("raft log index {index} is compacted (first index is {first})")]
    Compacted {
        /// The requested index.
        index: u64,
        /// The first index still in the log.
        first: u64,
    },
    /// The requested index is past the end of the log.
    #[error("raft log index {index} is unavailable (last index is {last})")]
    Unavailable {
        /// The requested index.
        index: u64,
        /// The last index in the log.
        last: u64,
    },
    /// Entries to append do not follow the log (gap, overlap with compacted
    /// entries, or non-contiguous indexes).
    #[error("cannot append entries starting at {first}: log covers {log_first}..={log_last}")]
    NotContiguous {
        /// Index of the first entry to append.
        first: u64,
        /// First index of the log.
        log_first: u64,
        /// Last index of the log.
        log_last: u64,
    },
    /// A snapshot older than what the storage already holds.
    #[error("snapshot at index {index} is out of date (storage is at {current})")]
    SnapshotOutOfDate {
        /// Index of the rejected snapshot.
        index: u64,
        /// Index the storage already covers.
        current: u64,
    },
    /// No snapshot at least as new as requested exists yet.
    #[error("no snapshot at or after index {requested} yet")]
    SnapshotTemporarilyUnavailable {
        /// The requested index.
        requested: u64,
    },
}

impl From<StorageError> for raft::Error {
    fn from(err: StorageError) -> Self {
        use raft::StorageError as Raft;
        raft::Error::Store(match err {
            StorageError::Compacted { .. } => Raft::Compacted,
            StorageError::Unavailable { .. } => Raft::Unavailable,
            StorageError::SnapshotOutOfDate { .. } => Raft::SnapshotOutOfDate,
            StorageError::SnapshotTemporarilyUnavailable { .. } => {
                Raft::SnapshotTemporarilyUnavailable
            }
            other => Raft::Other(Box::new(other)),
        })
    }
}

/// [`raft::Storage`] of one replica (see the module docs). Mutating methods
/// take `&mut self`: the raft node task owns the storage (inside its
/// `RawNode`).
pub struct SledStorage {
    db: sled::Db,
    /// sled's log file, for `fdatasync` (sled itself only calls
    /// `sync_file_range` on Linux, which leaves the device cache unflushed).
    log: std::fs::File,
    log_path: std::path::PathBuf,
    wal: Wal,
    /// The storage's directory (sled's files, snapshot files, `wal/`).
    dir: std::path::PathBuf,
    meta: Tree,
    hard_state: HardState,
    conf_state: ConfState,
    snapshot_meta: SnapshotMetadata,
    /// Index and term of the entry just before `entries` (the compaction
    /// point; the snapshot's index and term after a restart).
    truncated: (u64, u64),
    /// The log: entries `truncated.0 + 1 ..= last_index()`.
    entries: VecDeque<Entry>,
}

/// Makes every write to a [`SledStorage`] so far durable, from another
/// thread: one `fdatasync` of the write-ahead journal.
pub struct Syncer {
    wal: WalSyncer,
}

impl Syncer {
    /// Blocks until everything written before the call is on the device.
    pub fn sync(&self) -> Result<(), StorageError> {
        Ok(self.wal.sync()?)
    }
}

/// Opens sled, waiting up to 5 s for the file lock: after an in-process
/// restart sled's background threads may hold it a moment longer.
fn open_db(path: &Path) -> Result<sled::Db, StorageError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match sled::open(path) {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return Ok(other?),
        }
    }
}

impl SledStorage {
    /// Opens (or creates) the storage in the directory `path` (sled's files,
    /// and the journal in `path/wal`), replaying the journal.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        let db = open_db(path.as_ref())?;
        let log_path = path.as_ref().join("db");
        let log = std::fs::File::open(&log_path).map_err(|source| StorageError::Sync {
            path: log_path.clone(),
            source,
        })?;
        let meta = db.open_tree("meta")?;
        let hard_state: HardState = read_meta(&meta, HARD_STATE)?.unwrap_or_default();
        let conf_state: ConfState = read_meta(&meta, CONF_STATE)?.unwrap_or_default();
        let snapshot_meta: SnapshotMetadata = read_meta(&meta, SNAPSHOT)?.unwrap_or_default();
        let first_segment = match meta.get(FIRST_SEGMENT)? {
            None => 0,
            Some(v) => decode_u64(&v)?,
        };
        let (wal, records) = Wal::open(&path.as_ref().join("wal"), first_segment)?;
        let mut storage = Self {
            db,
            log,
            log_path,
            wal,
            dir: path.as_ref().to_path_buf(),
            meta,
            hard_state,
            conf_state,
            truncated: (snapshot_meta.index, snapshot_meta.term),
            snapshot_meta,
            entries: VecDeque::new(),
        };
        let replayed = records.len();
        for record in records {
            storage.replay(record)?;
        }
        storage.check_consistency()?;
        if storage.snapshot_meta.index > 0 {
            let file = storage.snapshot_path(&storage.snapshot_meta);
            if !file.exists() {
                return Err(corrupt(format!(
                    "snapshot file {} is missing",
                    file.display()
                )));
            }
        }
        storage.remove_other_snapshots()?;
        storage.wal.start(&storage.hard_state)?;
        if replayed > 0 {
            tracing::info!(
                records = replayed,
                last_index = storage.last(),
                commit = storage.hard_state.commit,
                "replayed the raft journal"
            );
        }
        Ok(storage)
    }

    /// Applies one journal record to the in-memory log, as
    /// [`Self::persist`] did before the restart. Entries the snapshot
    /// covers are skipped.
    fn replay(&mut self, record: Record) -> Result<(), StorageError> {
        let entries: Vec<Entry> = record
            .entries
            .into_iter()
            .filter(|e| e.index > self.truncated.0)
            .collect();
        if !entries.is_empty() {
            self.check_append(&entries)?;
            self.append_in_memory(entries);
        }
        if let Some(hs) = record.hard_state {
            self.hard_state = hs;
        }
        Ok(())
    }

    fn flush_sled(&self) -> Result<(), StorageError> {
        self.db.flush()?;
        self.log.sync_data().map_err(|source| StorageError::Sync {
            path: self.log_path.clone(),
            source,
        })
    }

    /// Refuses a storage whose state raft-rs would panic on.
    fn check_consistency(&mut self) -> Result<(), StorageError> {
        if self.hard_state.commit > self.last() {
            return Err(corrupt(format!(
                "commit index {} is past the last log index {}",
                self.hard_state.commit,
                self.last()
            )));
        }
        // A snapshot is only taken of applied, hence committed, entries.
        if self.hard_state.commit < self.snapshot_meta.index {
            self.hard_state.commit = self.snapshot_meta.index;
        }
        Ok(())
    }

    /// Whether the storage holds a configuration (false on a fresh directory).
    pub fn is_initialized(&self) -> bool {
        self.conf_state != ConfState::default()
    }

    /// The stored hard state.
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// The stored configuration.
    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// Metadata of the latest snapshot (index 0 if none).
    pub fn snapshot_metadata(&self) -> &SnapshotMetadata {
        &self.snapshot_meta
    }

    /// How many journal segments are on disk (for tests and metrics).
    pub fn journal_segments(&self) -> usize {
        self.wal.segments()
    }

    /// Stores one `Ready`'s new entries and hard state: journaled (durable
    /// at the next [`Syncer::sync`]) and added to the log. The entries
    /// follow the log, replacing any suffix from `entries[0].index` on (a
    /// conflicting suffix from an older term).
    pub fn persist(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), StorageError> {
        if entries.is_empty() && hard_state.is_none() {
            return Ok(());
        }
        self.check_append(entries)?;
        if !self.wal.has_room(entries, hard_state) {
            let current = hard_state.unwrap_or(&self.hard_state).clone();
            self.wal
                .roll(super::wal::record_bound(entries, hard_state), &current)?;
        }
        self.wal.append(entries, hard_state)?;
        if !entries.is_empty() {
            self.append_in_memory(entries.to_vec());
        }
        if let Some(hs) = hard_state {
            self.hard_state = hs.clone();
        }
        Ok(())
    }

    /// Appends `ents` (see [`Self::persist`]).
    pub fn append(&mut self, ents: &[Entry]) -> Result<(), StorageError> {
        self.persist(ents, None)
    }

    /// The last index of the log.
    fn last(&self) -> u64 {
        self.truncated.0 + self.entries.len() as u64
    }

    /// Refuses entries that do not follow the log.
    fn check_append(&self, ents: &[Entry]) -> Result<(), StorageError> {
        let Some(first) = ents.first().map(|e| e.index) else {
            return Ok(());
        };
        let contiguous = ents.iter().zip(first..).all(|(e, i)| e.index == i);
        if first <= self.truncated.0 || first > self.last() + 1 || !contiguous {
            return Err(StorageError::NotContiguous {
                first,
                log_first: self.truncated.0 + 1,
                log_last: self.last(),
            });
        }
        Ok(())
    }

    /// Puts checked entries in the log, dropping any suffix they replace.
    fn append_in_memory(&mut self, ents: Vec<Entry>) {
        if let Some(first) = ents.first() {
            let keep = (first.index - self.truncated.0 - 1) as usize;
            self.entries.truncate(keep);
            self.entries.extend(ents);
        }
    }

    /// Stores the hard state (term, vote, commit), journaled.
    pub fn set_hard_state(&mut self, hs: HardState) -> Result<(), StorageError> {
        self.persist(&[], Some(&hs))
    }

    /// Stores the configuration, durably before returning.
    pub fn set_conf_state(&mut self, cs: ConfState) -> Result<(), StorageError> {
        self.meta.insert(CONF_STATE, encode(&cs)?)?;
        self.conf_state = cs;
        self.flush_sled()
    }

    /// Installs a snapshot received from the leader: it replaces the whole
    /// log and the configuration, and moves the commit index to the
    /// snapshot. The journal starts over: its records before this point
    /// describe a log that no longer exists.
    pub fn apply_snapshot(&mut self, mut snapshot: Snapshot) -> Result<(), StorageError> {
        let meta = snapshot.get_metadata().clone();
        if meta.index <= self.truncated.0 {
            return Err(StorageError::SnapshotOutOfDate {
                index: meta.index,
                current: self.truncated.0,
            });
        }
        let mut hs = self.hard_state.clone();
        hs.term = hs.term.max(meta.term);
        hs.commit = hs.commit.max(meta.index);
        let cs = snapshot.mut_metadata().take_conf_state();
        snapshot.mut_metadata().set_conf_state(cs.clone());
        let first_segment = self.wal.next_seq();

        self.write_snapshot_file(&snapshot)?;
        let mut batch = Batch::default();
        batch.insert(HARD_STATE, encode(&hs)?);
        batch.insert(CONF_STATE, encode(&cs)?);
        batch.insert(FIRST_SEGMENT, &first_segment.to_be_bytes());
        batch.insert(SNAPSHOT, encode(snapshot.get_metadata())?);
        self.meta.apply_batch(batch)?;
        self.flush_sled()?;
        self.wal.restart_at(first_segment, &hs)?;

        self.hard_state = hs;
        self.conf_state = cs;
        self.truncated = (meta.index, meta.term);
        self.entries.clear();
        self.snapshot_meta = snapshot.take_metadata();
        self.remove_other_snapshots()
    }

    /// Records a snapshot of the state machine taken at applied `index`
    /// (which must be in the log), durably. Follow with [`Self::compact`]
    /// to drop the entries it covers.
    pub fn create_snapshot(
        &mut self,
        index: u64,
        conf_state: ConfState,
        data: Vec<u8>,
    ) -> Result<(), StorageError> {
        if index < self.snapshot_meta.index {
            return Err(StorageError::SnapshotOutOfDate {
                index,
                current: self.snapshot_meta.index,
            });
        }
        let term = self.term_of(index)?;
        let mut snapshot = Snapshot::default();
        snapshot.set_data(data.into());
        let meta = snapshot.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(conf_state);
        let meta = meta.clone();
        self.write_snapshot_file(&snapshot)?;
        self.meta.insert(SNAPSHOT, encode(&meta)?)?;
        self.flush_sled()?;
        self.snapshot_meta = meta;
        self.remove_other_snapshots()
    }

    /// Drops the entries up to and including `index`, which the latest
    /// snapshot must cover, and releases the journal segments that held
    /// only such entries. A no-op if they are already gone.
    pub fn compact(&mut self, index: u64) -> Result<(), StorageError> {
        if index <= self.truncated.0 {
            return Ok(());
        }
        if index > self.snapshot_meta.index {
            return Err(StorageError::Unavailable {
                index,
                last: self.snapshot_meta.index,
            });
        }
        let term = self.term_of(index)?;
        let drop = (index - self.truncated.0) as usize;
        self.entries.drain(..drop);
        self.truncated = (index, term);
        self.wal.release(index)?;
        Ok(())
    }

    /// Makes every write so far durable (fsync). Call before acknowledging
    /// anything that depends on them.
    pub fn flush(&self) -> Result<(), StorageError> {
        self.syncer().sync()
    }

    /// A handle that makes this storage's writes durable from another
    /// thread, so the raft node can go on while an fsync runs.
    pub fn syncer(&self) -> Syncer {
        Syncer {
            wal: self.wal.syncer(),
        }
    }

    /// The latest snapshot, metadata and data, if one was taken or installed:
    /// what a restarting node restores its state machine from.
    pub fn snapshot_data(&self) -> Result<Option<Snapshot>, StorageError> {
        if self.snapshot_meta.index == 0 {
            return Ok(None);
        }
        let path = self.snapshot_path(&self.snapshot_meta);
        let bytes = std::fs::read(&path).map_err(|source| StorageError::Sync {
            path: path.clone(),
            source,
        })?;
        let snapshot: Snapshot = decode(&bytes, "snapshot file")?;
        if snapshot.get_metadata().index != self.snapshot_meta.index {
            return Err(corrupt(format!(
                "snapshot file {} holds index {}",
                path.display(),
                snapshot.get_metadata().index
            )));
        }
        Ok(Some(snapshot))
    }

    /// Where the snapshot with `meta` lives.
    fn snapshot_path(&self, meta: &SnapshotMetadata) -> std::path::PathBuf {
        self.dir.join(format!(
            "snapshot-{:016x}-{:016x}.snap",
            meta.index, meta.term
        ))
    }

    /// Writes a snapshot file durably: a temporary name, synced, renamed,
    /// the directory synced. `meta` names it only after this returns.
    fn write_snapshot_file(&self, snapshot: &Snapshot) -> Result<(), StorageError> {
        let path = self.snapshot_path(snapshot.get_metadata());
        let tmp = path.with_extension("tmp");
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StorageError::Sync { path, source }
        };
        let bytes = encode(snapshot)?;
        {
            use std::io::Write as _;
            let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
            file.write_all(&bytes).map_err(io(&tmp))?;
            file.sync_all().map_err(io(&tmp))?;
        }
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))
    }

    /// Deletes snapshot files other than the current one (superseded ones,
    /// and any a crash left half-written).
    fn remove_other_snapshots(&self) -> Result<(), StorageError> {
        let keep = (self.snapshot_meta.index > 0).then(|| self.snapshot_path(&self.snapshot_meta));
        let entries = std::fs::read_dir(&self.dir).map_err(|source| StorageError::Sync {
            path: self.dir.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let ours = name.starts_with("snapshot-")
                && (name.ends_with(".snap") || name.ends_with(".tmp"));
            if ours && keep.as_deref() != Some(path.as_path()) {
                std::fs::remove_file(&path).map_err(|source| StorageError::Sync {
                    path: path.clone(),
                    source,
                })?;
            }
        }
        Ok(())
    }

    fn first(&self) -> u64 {
        self.truncated.0 + 1
    }

    fn term_of(&self, index: u64) -> Result<u64, StorageError> {
        if index == self.truncated.0 {
            return Ok(self.truncated.1);
        }
        if index < self.truncated.0 {
            return Err(StorageError::Compacted {
                index,
                first: self.first(),
            });
        }
        match self.entries.get((index - self.truncated.0 - 1) as usize) {
            Some(entry) => Ok(entry.term),
            None => Err(StorageError::Unavailable {
                index,
                last: self.last(),
            }),
        }
    }

    fn entries_in(
        &self,
        low: u64,
        high: u64,
        max_size: Option<u64>,
    ) -> Result<Vec<Entry>, StorageError> {
        if low < self.first() {
            return Err(StorageError::Compacted {
                index: low,
                first: self.first(),
            });
        }
        if high > self.last() + 1 {
            return Err(StorageError::Unavailable {
                index: high - 1,
                last: self.last(),
            });
        }
        let from = (low - self.first()) as usize;
        let to = (high - self.first()) as usize;
        let mut ents = Vec::with_capacity(to - from);
        let mut size = 0u64;
        for entry in self.entries.range(from..to) {
            size += u64::from(entry.compute_size());
            ents.push(entry.clone());
            // Take one past the limit; limit_size trims to the exact size.
            if max_size.is_some_and(|max| size > max) {
                break;
            }
        }
        raft::util::limit_size(&mut ents, max_size);
        Ok(ents)
    }
}

impl raft::Storage for SledStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        Ok(self.entries_in(low, high, max_size.into())?)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        Ok(self.term_of(idx)?)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        match self.snapshot_data()? {
            Some(snapshot) if snapshot.get_metadata().index >= request_index => Ok(snapshot),
            _ => Err(StorageError::SnapshotTemporarilyUnavailable {
                requested: request_index,
            }
            .into()),
        }
    }
}

fn corrupt(what: impl Into<String>) -> StorageError {
    StorageError::Corrupt { what: what.into() }
}

fn encode(msg: &impl protobuf::Message) -> Result<Vec<u8>, StorageError> {
    msg.write_to_bytes()
        .map_err(|e| corrupt(format!("cannot encode: {e}")))
}

fn decode<M: protobuf::Message>(bytes: &[u8], what: &str) -> Result<M, StorageError> {
    M::parse_from_bytes(bytes).map_err(|e| corrupt(format!("{what} does not decode: {e}")))
}

fn read_meta<M: protobuf::Message>(meta: &Tree, key: &[u8]) -> Result<Option<M>, StorageError> {
    let what = String::from_utf8_lossy(key);
    meta.get(key)?
        .map(|bytes| decode(&bytes, &what))
        .transpose()
}

fn decode_u64(bytes: &[u8]) -> Result<u64, StorageError> {
    let array: [u8; 8] = bytes
        .try_into()
        .map_err(|_| corrupt(format!("{} bytes where a u64 was expected", bytes.len())))?;
    Ok(u64::from_be_bytes(array))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use raft::Storage as _;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: format!("cmd-{index}").into_bytes().into(),
            ..Entry::default()
        }
    }

    fn entries(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
        range.map(|i| entry(i, term)).collect()
    }

    fn ctx() -> GetEntriesContext {
        GetEntriesContext::empty(false)
    }

    fn is_store(err: raft::Error, want: raft::StorageError) -> bool {
        matches!(err, raft::Error::Store(e) if e == want)
    }

    #[test]
    fn fresh_storage_is_empty_and_uninitialized() {
        let dir = tempdir();
        let s = SledStorage::open(dir.path()).unwrap();
        assert!(!s.is_initialized());
        assert_eq!(s.first_index().unwrap(), 1);
        assert_eq!(s.last_index().unwrap(), 0);
        assert_eq!(s.term(0).unwrap(), 0);
        assert!(s.snapshot_data().unwrap().is_none());
    }

    #[test]
    fn append_truncates_conflicting_suffix() {
        let dir = tempdir();
        let mut s = SledStorage::open(dir.path()).unwrap();
        s.append(&entries(1..=5, 1)).unwrap();
        assert_eq!(s.last_index().unwrap(), 5);
        s.append(&entries(3..=4, 2)).unwrap();
        assert_eq!(s.last_index().unwrap(), 4);
        let got = s.entries(1, 5, None, ctx()).unwrap();
        let terms: Vec<u64> = got.iter().map(|e| e.term).collect();
        assert_eq!(terms, vec![1, 1, 2, 2]);
        assert!(is_store(
            s.term(5).unwrap_err(),
            raft::StorageError::Unavailable
        ));
        // Gaps and non-contiguous batches are refused.
        assert!(s.append(&entries(7..=8, 2)).is_err());
        assert!(s.append(&[entry(5, 2), entry(7, 2)]).is_err());
    }

    #[test]
    fn entries_honor_max_size() {
        let dir = tempdir();
        let mut s = SledStorage::open(dir.path()).unwrap();
        s.append(&entries(1..=10, 1)).unwrap();
        let one = u64::from(entry(1, 1).compute_size());
        assert_eq!(s.entries(1, 11, Some(0), ctx()).unwrap().len(), 1);
        assert_eq!(s.entries(1, 11, Some(one * 3), ctx()).unwrap().len(), 3);
        assert_eq!(s.entries(1, 11, None, ctx()).unwrap().len(), 10);
        assert_eq!(s.entries(4, 6, None, ctx()).unwrap()[0].index, 4);
    }

    #[test]
    fn compaction_keeps_term_of_snapshot_index() {
        let dir = tempdir();
        let mut s = SledStorage::open(dir.path()).unwrap();
        s.append(&entries(1..=5, 1)).unwrap();
        s.append(&entries(6..=10, 2)).unwrap();
        let cs = ConfState {
            voters: vec![1],
            ..ConfState::default()
        };
        s.create_snapshot(7, cs.clone(), b"state@7".to_vec())
            .unwrap();
        // Compaction past the snapshot is refused: followers could not catch up.
        assert!(s.compact(8).is_err());
        s.compact(7).unwrap();
        assert_eq!(s.first_index().unwrap(), 8);
        assert_eq!(s.last_index().unwrap(), 10);
        assert_eq!(s.term(7).unwrap(), 2);
        assert!(is_store(
            s.term(6).unwrap_err(),
            raft::StorageError::Compacted
        ));
        assert!(is_store(
            s.entries(5, 9, None, ctx()).unwrap_err(),
            raft::StorageError::Compacted
        ));
        assert_eq!(s.entries(8, 11, None, ctx()).unwrap().len(), 3);
        assert_eq!(s.entries.len(), 3, "compacted entries are gone from disk");
        let snap = s.snapshot(0, 2).unwrap();
        assert_eq!(snap.get_metadata().index, 7);
        assert_eq!(snap.get_metadata().term, 2);
        assert_eq!(snap.get_metadata().get_conf_state(), &cs);
        assert_eq!(&snap.data[..], b"state@7");
        assert!(is_store(
            s.snapshot(9, 2).unwrap_err(),
            raft::StorageError::SnapshotTemporarilyUnavailable
        ));
    }

    #[test]
    fn reopen_after_drop_keeps_everything() {
        let dir = tempdir();
        let cs = ConfState {
            voters: vec![1, 2, 3],
            ..ConfState::default()
        };
        let hs = HardState {
            term: 3,
            vote: 2,
            commit: 9,
            ..HardState::default()
        };
        {
            let mut s = SledStorage::open(dir.path()).unwrap();
            s.append(&entries(1..=12, 3)).unwrap();
            s.set_conf_state(cs.clone()).unwrap();
            s.set_hard_state(hs.clone()).unwrap();
            s.create_snapshot(6, cs.clone(), b"six".to_vec()).unwrap();
            s.compact(6).unwrap();
            s.flush().unwrap();
        }
        let s = SledStorage::open(dir.path()).unwrap();
        assert!(s.is_initialized());
        let state = s.initial_state().unwrap();
        assert_eq!(state.hard_state, hs);
        assert_eq!(state.conf_state, cs);
        assert_eq!(s.first_index().unwrap(), 7);
        assert_eq!(s.last_index().unwrap(), 12);
        assert_eq!(s.term(6).unwrap(), 3);
        assert_eq!(s.entries(7, 13, None, ctx()).unwrap().len(), 6);
        let snap = s.snapshot_data().unwrap().unwrap();
        assert_eq!(snap.get_metadata().index, 6);
        assert_eq!(&snap.data[..], b"six");
    }

    #[test]
    fn installing_a_snapshot_replaces_the_log() {
        let dir = tempdir();
        let mut s = SledStorage::open(dir.path()).unwrap();
        s.append(&entries(1..=5, 1)).unwrap();
        let mut snap = Snapshot::default();
        snap.set_data(b"leader state".to_vec().into());
        snap.mut_metadata().index = 20;
        snap.mut_metadata().term = 4;
        snap.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
        s.apply_snapshot(snap.clone()).unwrap();
        assert_eq!(s.first_index().unwrap(), 21);
        assert_eq!(s.last_index().unwrap(), 20);
        assert_eq!(s.term(20).unwrap(), 4);
        assert_eq!(s.hard_state().commit, 20);
        assert_eq!(s.hard_state().term, 4);
        assert_eq!(s.conf_state().voters, vec![1, 2, 3]);
        assert_eq!(s.entries.len(), 0);
        // The log continues after the snapshot.
        s.append(&entries(21..=22, 4)).unwrap();
        assert_eq!(s.entries(21, 23, None, ctx()).unwrap().len(), 2);
        // An older snapshot is refused.
        snap.mut_metadata().index = 10;
        assert!(matches!(
            s.apply_snapshot(snap),
            Err(StorageError::SnapshotOutOfDate { .. })
        ));
        drop(s);
        let s = SledStorage::open(dir.path()).unwrap();
        assert_eq!(s.first_index().unwrap(), 21);
        assert_eq!(s.last_index().unwrap(), 22);
        assert_eq!(s.snapshot(0, 1).unwrap().data.as_ref(), b"leader state");
    }

    #[test]
    fn replay_skips_what_a_later_snapshot_covers() {
        let dir = tempdir();
        let mut s = SledStorage::open(dir.path()).unwrap();
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 10;
        snap.mut_metadata().term = 2;
        s.apply_snapshot(snap).unwrap();
        let hs = s.hard_state().clone();
        // Records older than the snapshot (a crash between a checkpoint's
        // flush and its journal reset) leave the log alone...
        s.replay(Record {
            hard_state: None,
            entries: entries(4..=8, 1),
        })
        .unwrap();
        assert_eq!((s.first(), s.last()), (11, 10));
        // ...and a record straddling it only adds what follows it.
        s.replay(Record {
            hard_state: None,
            entries: entries(9..=12, 2),
        })
        .unwrap();
        assert_eq!((s.first(), s.last()), (11, 12));
        assert_eq!(s.term(12).unwrap(), 2);
        assert_eq!(s.hard_state(), &hs);
    }

    /// Run by `journal_replays_acknowledged_writes_after_kill_9` in a child
    /// process: persists entries (a new term every 40, replacing the last
    /// few entries as a new leader would) and prints each synced index.
    #[test]
    #[ignore = "run as a child process by journal_replays_acknowledged_writes_after_kill_9"]
    fn journal_crash_child() {
        let Ok(dir) = std::env::var("SWITCHYARD_JOURNAL_CRASH_DIR") else {
            return;
        };
        let mut s = SledStorage::open(&dir).unwrap();
        let syncer = s.syncer();
        let mut term = 1;
        let mut next: u64 = 1;
        for round in 1u64.. {
            if round % 20 == 0 {
                term += 1;
                next -= 3;
            }
            let hs = HardState {
                term,
                vote: 1,
                commit: next.saturating_sub(5),
                ..HardState::default()
            };
            s.persist(&entries(next..=next + 1, term), Some(&hs))
                .unwrap();
            syncer.sync().unwrap();
            println!("synced {} {term}", next + 1);
            next += 2;
        }
    }

    #[test]
    fn journal_replays_acknowledged_writes_after_kill_9() {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};

        let dir = tempdir();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "hub::storage::tests::journal_crash_child"])
            .args(["--ignored", "--nocapture", "--test-threads=1"])
            .env("SWITCHYARD_JOURNAL_CRASH_DIR", dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut synced = None;
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            if let Some(rest) = line.strip_prefix("synced ") {
                let (index, term) = rest.split_once(' ').unwrap();
                let index: u64 = index.parse().unwrap();
                synced = Some((index, term.parse::<u64>().unwrap()));
                if index >= 300 {
                    break;
                }
            }
        }
        child.kill().unwrap(); // SIGKILL: sled is never flushed by a clean drop.
        child.wait().unwrap();
        let (index, term) = synced.expect("the child synced entries");

        let (_, records) = Wal::open(&dir.path().join("wal"), 0).unwrap();
        assert!(!records.is_empty(), "the journal holds the latest writes");
        let s = SledStorage::open(dir.path()).unwrap();
        assert!(s.last() >= index, "last {} < synced {index}", s.last());
        assert!(s.hard_state().term >= term);
        let log = s.entries(1, s.last() + 1, None, ctx()).unwrap();
        for (i, e) in log.iter().enumerate() {
            assert_eq!(e.index, i as u64 + 1);
            assert_eq!(e.data.as_ref(), format!("cmd-{}", e.index).as_bytes());
        }
        assert!(
            log.windows(2).all(|w| w[0].term <= w[1].term),
            "terms never go down along the log"
        );
        assert_eq!(s.term(index).unwrap(), term);
        // Opening again (after a journal restart) gives the same log.
        let hs = s.hard_state().clone();
        drop(s);
        let s = SledStorage::open(dir.path()).unwrap();
        assert_eq!(s.entries(1, s.last() + 1, None, ctx()).unwrap(), log);
        assert_eq!(s.hard_state(), &hs);
    }

    #[test]
    fn only_the_latest_snapshot_file_stays() {
        let dir = tempdir();
        let cs = ConfState {
            voters: vec![1],
            ..ConfState::default()
        };
        let mut s = SledStorage::open(dir.path()).unwrap();
        s.append(&entries(1..=40, 1)).unwrap();
        for index in (4..=40).step_by(4) {
            s.create_snapshot(index, cs.clone(), vec![index as u8; 100_000])
                .unwrap();
            s.compact(index).unwrap();
        }
        let snapshot_files = || {
            std::fs::read_dir(dir.path())
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .starts_with("snapshot-")
                })
                .count()
        };
        assert_eq!(snapshot_files(), 1);
        drop(s);
        // A half-written snapshot a crash left behind is cleaned up.
        std::fs::write(
            dir.path()
                .join("snapshot-00000000000000ff-0000000000000001.tmp"),
            b"x",
        )
        .unwrap();
        let s = SledStorage::open(dir.path()).unwrap();
        assert_eq!(snapshot_files(), 1);
        let snap = s.snapshot_data().unwrap().unwrap();
        assert_eq!(snap.get_metadata().index, 40);
        assert_eq!(&snap.data[..], &vec![40u8; 100_000][..]);
    }

    #[test]
    fn a_missing_snapshot_file_is_an_error_not_a_panic() {
        let dir = tempdir();
        {
            let mut s = SledStorage::open(dir.path()).unwrap();
            s.append(&entries(1..=5, 1)).unwrap();
            s.create_snapshot(5, ConfState::default(), b"five".to_vec())
                .unwrap();
        }
        for e in std::fs::read_dir(dir.path()).unwrap() {
            let path = e.unwrap().path();
            if path.extension().is_some_and(|x| x == "snap") {
                std::fs::remove_file(path).unwrap();
            }
        }
        match SledStorage::open(dir.path()) {
            Err(StorageError::Corrupt { what }) => assert!(what.contains("missing"), "{what}"),
            Err(other) => panic!("expected Corrupt, got {other}"),
            Ok(_) => panic!("opened without its snapshot"),
        }
    }

    #[test]
    fn a_journal_with_a_gap_is_an_error_not_a_panic() {
        let dir = tempdir();
        {
            let mut s = SledStorage::open(dir.path()).unwrap();
            s.append(&entries(1..=3, 1)).unwrap();
            s.flush().unwrap();
        }
        {
            // A record that does not follow the log (written by hand: the
            // storage itself refuses it).
            let (mut wal, _) = Wal::open(&dir.path().join("wal"), 0).unwrap();
            wal.start(&HardState::default()).unwrap();
            wal.append(&entries(7..=8, 1), None).unwrap();
            wal.syncer().sync().unwrap();
        }
        match SledStorage::open(dir.path()) {
            Err(StorageError::NotContiguous { first: 7, .. }) => {}
            Err(other) => panic!("expected NotContiguous, got {other}"),
            Ok(_) => panic!("a log with a gap was accepted"),
        }
    }

    #[test]
    fn compaction_releases_journal_segments_and_restart_replays_the_rest() {
        let dir = tempdir();
        let cs = ConfState {
            voters: vec![1],
            ..ConfState::default()
        };
        let mut s = SledStorage::open(dir.path()).unwrap();
        // Entries big enough that the journal rolls over every few.
        let big = |range: std::ops::RangeInclusive<u64>| -> Vec<Entry> {
            range
                .map(|i| Entry {
                    index: i,
                    term: 1,
                    data: vec![i as u8; (super::super::wal::SEGMENT_BYTES / 3) as usize].into(),
                    ..Entry::default()
                })
                .collect()
        };
        for i in 1..=30 {
            s.append(&big(i..=i)).unwrap();
        }
        let before = s.journal_segments();
        assert!(before >= 8, "{before} segments");
        s.create_snapshot(24, cs.clone(), b"state@24".to_vec())
            .unwrap();
        s.compact(24).unwrap();
        let after = s.journal_segments();
        assert!(after <= 4, "{before} segments before, {after} after");
        s.set_hard_state(HardState {
            term: 1,
            commit: 30,
            ..HardState::default()
        })
        .unwrap();
        s.flush().unwrap();
        drop(s);
        let s = SledStorage::open(dir.path()).unwrap();
        assert_eq!((s.first(), s.last()), (25, 30));
        assert_eq!(s.entries(25, 31, None, ctx()).unwrap(), big(25..=30));
        assert_eq!(s.hard_state().commit, 30);
    }

    /// A temporary directory removed on drop.
    pub(crate) struct TempDir(std::path::PathBuf);

    impl TempDir {
        pub(crate) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    pub(crate) fn tempdir() -> TempDir {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "switchyard-raft-{}-{n}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        TempDir(path)
    }
}
