//! The raft log's write-ahead journal: where entries and hard states live
//! durably between snapshots.
//!
//! Each `Ready`'s new entries and hard state become one record, written with
//! one `pwrite` into a preallocated segment and made durable with one
//! `fdatasync` (etcd's WAL works the same way). The log itself is kept in
//! memory ([`super::storage`]); the journal is what rebuilds it after a
//! restart, so a segment is kept until a snapshot covers every entry in it.
//!
//! Segment layout: an 8-byte magic, the segment's sequence number (u64 LE),
//! then records `[len u32 LE][crc32 u32 LE][payload]`. The rest of the
//! preallocated file reads as zeros, and a zero length ends the segment. A
//! record that is cut short or fails its checksum is a write torn by a crash
//! before its `fdatasync` returned (nothing was acknowledged on it): reading
//! that segment stops there. A new segment starts with a record of the
//! current hard state, so older segments are never needed for it.
//!
//! Payload: a flags byte (bit 0: a hard state follows), the hard state as
//! `[len u32][protobuf]` if present, the number of entries (u32), then each
//! entry as `[len u32][protobuf]`.

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use protobuf::Message;
use raft::eraftpb::{Entry, HardState};
use tracing::{debug, warn};

const MAGIC: &[u8; 8] = b"SYWAL\0\0\x01";
const SEGMENT_HEADER: u64 = 16;
const RECORD_HEADER: u64 = 8;
/// Preallocated size of a segment (etcd's WAL uses the same; tests use
/// small ones so that they roll over often).
#[cfg(not(test))]
pub const SEGMENT_BYTES: u64 = 64 << 20;
#[cfg(test)]
pub const SEGMENT_BYTES: u64 = 64 << 10;
const HAS_HARD_STATE: u8 = 1;

/// What can go wrong with the journal.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// Reading, writing, creating or syncing a journal file failed.
    #[error("raft journal I/O on {path} failed: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// What the OS reported.
        source: std::io::Error,
    },
    /// A record passed its checksum but does not decode: the file was
    /// written by something else, or this is a bug.
    #[error("raft journal {path} is corrupt at offset {offset}: {reason}")]
    Corrupt {
        /// The segment.
        path: PathBuf,
        /// Where the record starts.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// Encoding a raft message failed.
    #[error("cannot encode a raft journal record: {0}")]
    Encode(#[from] protobuf::ProtobufError),
}

/// One journaled `Ready`: an optional hard state and the entries appended.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Record {
    /// The hard state, when it changed.
    pub hard_state: Option<HardState>,
    /// New entries, contiguous; the first one truncates any stored suffix.
    pub entries: Vec<Entry>,
}

/// An open segment file.
struct Segment {
    file: File,
    path: PathBuf,
}

/// A segment on disk and the highest entry index written to it.
#[derive(Debug)]
struct Held {
    seq: u64,
    path: PathBuf,
    max_index: u64,
}

/// The journal of one replica, owned by its storage.
pub struct Wal {
    dir: PathBuf,
    current: Arc<ArcSwap<Segment>>,
    /// Every segment on disk, oldest first; the last one is `current`
    /// once the journal has been started.
    held: VecDeque<Held>,
    /// Sequence number of the newest segment.
    seq: u64,
    /// Where the next record goes in the current segment.
    offset: u64,
    /// The current segment's preallocated size (0 until started).
    capacity: u64,
    /// Reused encoding buffer.
    buf: Vec<u8>,
}

/// Makes every record appended so far durable, from another thread.
#[derive(Clone)]
pub struct WalSyncer {
    current: Arc<ArcSwap<Segment>>,
}

impl WalSyncer {
    /// Blocks until every record appended before the call is on the device.
    ///
    /// The journal syncs a segment itself before it moves on to the next
    /// one, so syncing the current one is enough.
    pub fn sync(&self) -> Result<(), WalError> {
        let segment = self.current.load_full();
        segment.file.sync_data().map_err(|source| WalError::Io {
            path: segment.path.clone(),
            source,
        })
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn segment_name(seq: u64) -> String {
    format!("{seq:016x}.wal")
}

impl Wal {
    /// Opens the journal in `dir` (created if missing) and returns the
    /// records of every segment numbered `first_seq` or later, oldest first,
    /// for the storage to replay. Older segments were superseded (by an
    /// installed snapshot) and are deleted. Call [`Wal::start`] before
    /// appending.
    pub fn open(dir: &Path, first_seq: u64) -> Result<(Self, Vec<Record>), WalError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut segments = Vec::new();
        for item in std::fs::read_dir(dir).map_err(io(dir))? {
            let item = item.map_err(io(dir))?;
            let name = item.file_name();
            let Some(seq) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".wal"))
                .and_then(|n| u64::from_str_radix(n, 16).ok())
            else {
                continue;
            };
            segments.push((seq, item.path()));
        }
        segments.sort();
        let mut records = Vec::new();
        let mut held = VecDeque::new();
        for (seq, path) in segments {
            if seq < first_seq {
                std::fs::remove_file(&path).map_err(io(&path))?;
                continue;
            }
            let from = records.len();
            read_segment(&path, &mut records)?;
            let max_index = records[from..]
                .iter()
                .filter_map(|r: &Record| r.entries.last().map(|e| e.index))
                .max()
                .unwrap_or(0);
            held.push_back(Held {
                seq,
                path,
                max_index,
            });
        }
        let seq = held.back().map_or(first_seq.saturating_sub(1), |h| h.seq);
        // Until `start`, the current segment is a placeholder with no room.
        let placeholder = Segment {
            file: File::open(dir).map_err(io(dir))?,
            path: dir.to_path_buf(),
        };
        let wal = Self {
            dir: dir.to_path_buf(),
            current: Arc::new(ArcSwap::from_pointee(placeholder)),
            held,
            seq,
            offset: 0,
            capacity: 0,
            buf: Vec::new(),
        };
        Ok((wal, records))
    }

    /// A handle for the persister thread.
    pub fn syncer(&self) -> WalSyncer {
        WalSyncer {
            current: self.current.clone(),
        }
    }

    /// The sequence number the next segment will get.
    pub fn next_seq(&self) -> u64 {
        self.seq + 1
    }

    /// Whether a record of `entries` (plus a hard state) fits in the
    /// current segment; if not, [`Wal::roll`] first.
    pub fn has_room(&self, entries: &[Entry], hard_state: Option<&HardState>) -> bool {
        self.offset + record_bound(entries, hard_state) <= self.capacity
    }

    /// Appends one record (not yet durable: see [`WalSyncer::sync`]). The
    /// caller checks [`Wal::has_room`] first.
    pub fn append(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), WalError> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        buf.extend_from_slice(&[0; RECORD_HEADER as usize]);
        let flags = if hard_state.is_some() {
            HAS_HARD_STATE
        } else {
            0
        };
        buf.push(flags);
        if let Some(hs) = hard_state {
            put_message(&mut buf, hs)?;
        }
        buf.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        for entry in entries {
            put_message(&mut buf, entry)?;
        }
        let payload = &buf[RECORD_HEADER as usize..];
        let len = payload.len() as u32;
        let crc = crc32fast::hash(payload);
        buf[..4].copy_from_slice(&len.to_le_bytes());
        buf[4..8].copy_from_slice(&crc.to_le_bytes());
        let segment = self.current.load();
        segment
            .file
            .write_all_at(&buf, self.offset)
            .map_err(io(&segment.path))?;
        self.offset += buf.len() as u64;
        self.buf = buf;
        if let (Some(last), Some(held)) = (entries.last(), self.held.back_mut()) {
            held.max_index = held.max_index.max(last.index);
        }
        Ok(())
    }

    /// Starts appending, after the records [`Wal::open`] returned were
    /// replayed: a new segment that begins with `hard_state` (the last
    /// segment read may end in a torn record, so nothing is appended to it).
    pub fn start(&mut self, hard_state: &HardState) -> Result<(), WalError> {
        self.roll(0, hard_state)
    }

    /// Moves on to a new segment with room for at least `min_room` bytes of
    /// records; it begins with `hard_state`. The current segment is synced
    /// first (the persister only syncs the current one) and kept until
    /// [`Wal::release`] finds its entries covered by a snapshot.
    pub fn roll(&mut self, min_room: u64, hard_state: &HardState) -> Result<(), WalError> {
        if self.capacity > 0 {
            self.syncer().sync()?;
        }
        let seq = self.seq + 1;
        self.create(seq, min_room, hard_state)?;
        Ok(())
    }

    /// Starts over at segment `seq` (a new log after an installed snapshot)
    /// and deletes every other segment. The storage records `seq` as the
    /// first segment to read before it calls this, so a crash in between
    /// never replays the superseded records.
    pub fn restart_at(&mut self, seq: u64, hard_state: &HardState) -> Result<(), WalError> {
        self.create(seq, 0, hard_state)?;
        while self.held.len() > 1 {
            if let Some(old) = self.held.pop_front() {
                std::fs::remove_file(&old.path).map_err(io(&old.path))?;
            }
        }
        sync_dir(&self.dir)
    }

    /// Deletes the oldest segments whose entries all lie at or below
    /// `index` (covered by a durable snapshot), never the current one. Only
    /// a prefix goes: a later segment may have replaced entries of an
    /// earlier one, so an earlier one is never dropped alone.
    pub fn release(&mut self, index: u64) -> Result<(), WalError> {
        let mut removed = false;
        while self.held.len() > 1 && self.held.front().is_some_and(|h| h.max_index <= index) {
            if let Some(old) = self.held.pop_front() {
                std::fs::remove_file(&old.path).map_err(io(&old.path))?;
                debug!(
                    seq = old.seq,
                    max_index = old.max_index,
                    "released a raft journal segment"
                );
                removed = true;
            }
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// How many segments are on disk.
    pub fn segments(&self) -> usize {
        self.held.len()
    }

    /// Creates segment `seq`, writes its header and `hard_state`, syncs it
    /// and makes it current.
    fn create(&mut self, seq: u64, min_room: u64, hard_state: &HardState) -> Result<(), WalError> {
        let path = self.dir.join(segment_name(seq));
        let capacity =
            SEGMENT_BYTES.max(SEGMENT_HEADER + min_room + record_bound(&[], Some(hard_state)));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io(&path))?;
        preallocate(&file, capacity).map_err(io(&path))?;
        let mut header = MAGIC.to_vec();
        header.extend_from_slice(&seq.to_le_bytes());
        file.write_all_at(&header, 0).map_err(io(&path))?;
        self.current.store(Arc::new(Segment {
            file,
            path: path.clone(),
        }));
        self.held.push_back(Held {
            seq,
            path: path.clone(),
            max_index: 0,
        });
        self.seq = seq;
        self.offset = SEGMENT_HEADER;
        self.capacity = capacity;
        self.append(&[], Some(hard_state))?;
        self.current.load().file.sync_all().map_err(io(&path))?;
        sync_dir(&self.dir)?;
        debug!(seq, capacity, "started a new raft journal segment");
        Ok(())
    }
}

/// An upper bound on the encoded size of a record (header included).
pub fn record_bound(entries: &[Entry], hard_state: Option<&HardState>) -> u64 {
    let hs = hard_state.map_or(0, |hs| 4 + u64::from(hs.compute_size()));
    let ents: u64 = entries
        .iter()
        .map(|e| 4 + u64::from(e.compute_size()))
        .sum();
    RECORD_HEADER + 1 + hs + 4 + ents
}

fn put_message(buf: &mut Vec<u8>, msg: &impl Message) -> Result<(), WalError> {
    let at = buf.len();
    buf.extend_from_slice(&[0; 4]);
    msg.write_to_vec(buf)?;
    let len = (buf.len() - at - 4) as u32;
    buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

/// Allocates the segment's blocks up front so that writes inside it do not
/// change the file size (an `fdatasync` then need not commit metadata).
fn preallocate(file: &File, len: u64) -> std::io::Result<()> {
    use rustix::fs::{fallocate, FallocateFlags};
    match fallocate(file, FallocateFlags::empty(), 0, len) {
        Ok(()) => Ok(()),
        // A file system without fallocate: a sparse file still works.
        Err(rustix::io::Errno::OPNOTSUPP) => file.set_len(len),
        Err(err) => Err(err.into()),
    }
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Reads a segment's records into `out`, stopping at its end or at a torn record.
fn read_segment(path: &Path, out: &mut Vec<Record>) -> Result<(), WalError> {
    let data = std::fs::read(path).map_err(io(path))?;
    if data.len() < SEGMENT_HEADER as usize || &data[..8] != MAGIC {
        // Created but never initialised (a crash inside segment creation).
        warn!(path = %path.display(), "ignoring a raft journal segment without a header");
        return Ok(());
    }
    let mut offset = SEGMENT_HEADER as usize;
    while let Some(header) = data.get(offset..offset + RECORD_HEADER as usize) {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len == 0 {
            break;
        }
        let start = offset + RECORD_HEADER as usize;
        let Some(payload) = data.get(start..start + len) else {
            warn!(path = %path.display(), offset, "raft journal ends in a torn record");
            break;
        };
        if crc32fast::hash(payload) != crc {
            warn!(path = %path.display(), offset, "raft journal record fails its checksum (torn write); ignoring it and what follows");
            break;
        }
        let record = decode_record(payload).map_err(|reason| WalError::Corrupt {
            path: path.to_path_buf(),
            offset: offset as u64,
            reason,
        })?;
        out.push(record);
        offset = start + len;
    }
    Ok(())
}

fn decode_record(payload: &[u8]) -> Result<Record, String> {
    let mut rest = payload;
    let flags = take(&mut rest, 1)?[0];
    let hard_state = if flags & HAS_HARD_STATE != 0 {
        let bytes = take_prefixed(&mut rest)?;
        Some(HardState::parse_from_bytes(bytes).map_err(|e| format!("hard state: {e}"))?)
    } else {
        None
    };
    let count = u32::from_le_bytes(take(&mut rest, 4)?.try_into().map_err(|_| "count")?);
    let mut entries = Vec::with_capacity(count.min(1 << 16) as usize);
    for _ in 0..count {
        let bytes = take_prefixed(&mut rest)?;
        entries.push(Entry::parse_from_bytes(bytes).map_err(|e| format!("entry: {e}"))?);
    }
    if !rest.is_empty() {
        return Err(format!("{} stray bytes after the entries", rest.len()));
    }
    Ok(Record {
        hard_state,
        entries,
    })
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if rest.len() < n {
        return Err(format!("record ends {} bytes early", n - rest.len()));
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Ok(head)
}

fn take_prefixed<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8], String> {
    let len = take(rest, 4)?;
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    take(rest, len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::storage::tests::tempdir;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec().into(),
            ..Entry::default()
        }
    }

    fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
        HardState {
            term,
            vote,
            commit,
            ..HardState::default()
        }
    }

    fn open(dir: &Path) -> (Wal, Vec<Record>) {
        Wal::open(dir, 0).expect("open the journal")
    }

    /// The entries of `records`, record by record, without the hard-state
    /// records each segment starts with.
    fn entries_of(records: &[Record]) -> Vec<Vec<Entry>> {
        records
            .iter()
            .filter(|r| !r.entries.is_empty())
            .map(|r| r.entries.clone())
            .collect()
    }

    #[test]
    fn records_come_back_in_order_after_reopen() {
        let dir = tempdir();
        let (mut wal, records) = open(dir.path());
        assert!(records.is_empty());
        assert!(
            !wal.has_room(&[entry(1, 1, b"x")], None),
            "no room before start"
        );
        let hs0 = hard_state(2, 1, 0);
        wal.start(&hs0).unwrap();
        let hs = hard_state(3, 2, 1);
        wal.append(&[entry(1, 3, b"a"), entry(2, 3, b"b")], Some(&hs))
            .unwrap();
        wal.append(&[entry(3, 3, b"c")], None).unwrap();
        wal.append(&[], Some(&hard_state(3, 2, 3))).unwrap();
        wal.syncer().sync().unwrap();
        drop(wal);
        let (_, records) = open(dir.path());
        assert_eq!(
            records,
            vec![
                Record {
                    hard_state: Some(hs0),
                    entries: vec![],
                },
                Record {
                    hard_state: Some(hs),
                    entries: vec![entry(1, 3, b"a"), entry(2, 3, b"b")],
                },
                Record {
                    hard_state: None,
                    entries: vec![entry(3, 3, b"c")],
                },
                Record {
                    hard_state: Some(hard_state(3, 2, 3)),
                    entries: vec![],
                },
            ]
        );
    }

    #[test]
    fn segments_stay_until_a_snapshot_covers_them() {
        let dir = tempdir();
        let (mut wal, _) = open(dir.path());
        let hs = hard_state(1, 1, 0);
        wal.start(&hs).unwrap();
        wal.append(&[entry(1, 1, b"one")], None).unwrap();
        wal.roll(0, &hs).unwrap();
        wal.append(&[entry(2, 1, b"two")], None).unwrap();
        wal.roll(0, &hs).unwrap();
        wal.append(&[entry(3, 1, b"three")], None).unwrap();
        assert_eq!(wal.segments(), 3);
        // Entry 2 is not covered yet: only the first segment goes.
        wal.release(1).unwrap();
        assert_eq!(wal.segments(), 2);
        // The current segment always stays.
        wal.release(10).unwrap();
        assert_eq!(wal.segments(), 1);
        drop(wal);
        let (_, records) = open(dir.path());
        assert_eq!(entries_of(&records), vec![vec![entry(3, 1, b"three")]]);
    }

    #[test]
    fn an_earlier_segment_is_never_released_before_a_later_one() {
        let dir = tempdir();
        let (mut wal, _) = open(dir.path());
        let hs = hard_state(1, 1, 0);
        wal.start(&hs).unwrap();
        wal.append(&[entry(1, 1, b"a"), entry(2, 1, b"b")], None)
            .unwrap();
        wal.roll(0, &hs).unwrap();
        // A new leader replaces entry 2; the old segment still holds it.
        wal.append(&[entry(2, 2, b"B")], None).unwrap();
        wal.roll(0, &hs).unwrap();
        wal.release(1).unwrap();
        assert_eq!(wal.segments(), 3, "the first segment still has entry 2");
    }

    #[test]
    fn open_deletes_segments_before_the_first_to_read() {
        let dir = tempdir();
        let (mut wal, _) = open(dir.path());
        let hs = hard_state(1, 1, 0);
        wal.start(&hs).unwrap();
        wal.append(&[entry(1, 1, b"superseded")], None).unwrap();
        let first = wal.next_seq();
        wal.roll(0, &hs).unwrap();
        wal.append(&[entry(9, 2, b"after a snapshot")], None)
            .unwrap();
        drop(wal);
        let (wal, records) = Wal::open(dir.path(), first).unwrap();
        assert_eq!(
            entries_of(&records),
            vec![vec![entry(9, 2, b"after a snapshot")]]
        );
        assert_eq!(wal.segments(), 1);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn restart_at_leaves_only_the_new_segment() {
        let dir = tempdir();
        let (mut wal, _) = open(dir.path());
        let hs = hard_state(1, 1, 0);
        wal.start(&hs).unwrap();
        wal.append(&[entry(1, 1, b"old")], None).unwrap();
        wal.roll(0, &hs).unwrap();
        wal.append(&[entry(2, 1, b"old too")], None).unwrap();
        let seq = wal.next_seq();
        wal.restart_at(seq, &hard_state(3, 1, 20)).unwrap();
        assert_eq!(wal.segments(), 1);
        drop(wal);
        let (_, records) = Wal::open(dir.path(), seq).unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].hard_state, Some(hard_state(3, 1, 20)));
    }

    #[test]
    fn a_torn_record_ends_the_journal_without_error() {
        let dir = tempdir();
        let (mut wal, _) = open(dir.path());
        wal.start(&HardState::default()).unwrap();
        wal.append(&[entry(1, 1, b"kept")], None).unwrap();
        let torn_at = wal.offset;
        wal.append(&[entry(2, 1, b"torn")], None).unwrap();
        wal.append(&[entry(3, 1, b"after")], None).unwrap();
        let path = wal.current.load().path.clone();
        drop(wal);
        // Flip a payload byte of the second record, as a crash mid-write would leave it.
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0xff], torn_at + RECORD_HEADER + 3)
            .unwrap();
        let (_, records) = open(dir.path());
        assert_eq!(entries_of(&records), vec![vec![entry(1, 1, b"kept")]]);
    }

    #[test]
    fn a_record_cut_short_ends_the_journal() {
        let dir = tempdir();
        let (mut wal, _) = open(dir.path());
        wal.start(&HardState::default()).unwrap();
        wal.append(&[entry(1, 1, b"kept")], None).unwrap();
        let cut_at = wal.offset;
        wal.append(&[entry(2, 1, &[7; 100])], None).unwrap();
        let path = wal.current.load().path.clone();
        drop(wal);
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(cut_at + 20).unwrap();
        let (_, records) = open(dir.path());
        assert_eq!(entries_of(&records), vec![vec![entry(1, 1, b"kept")]]);
    }

    #[test]
    fn a_record_larger_than_a_segment_gets_a_segment_that_fits() {
        let dir = tempdir();
        let (mut wal, _) = open(dir.path());
        wal.start(&HardState::default()).unwrap();
        let big = vec![entry(1, 1, &vec![1; SEGMENT_BYTES as usize])];
        assert!(!wal.has_room(&big, None));
        wal.roll(record_bound(&big, None), &HardState::default())
            .unwrap();
        assert!(wal.has_room(&big, None));
        wal.append(&big, None).unwrap();
        drop(wal);
        let (_, records) = open(dir.path());
        assert_eq!(entries_of(&records), vec![big]);
    }

    #[test]
    fn a_checksummed_record_that_does_not_decode_is_corruption() {
        let dir = tempdir();
        let (mut wal, _) = open(dir.path());
        wal.start(&HardState::default()).unwrap();
        let path = wal.current.load().path.clone();
        let payload = [0u8, 9, 0, 0, 0]; // no hard state, 9 entries, none present
        let mut record = (payload.len() as u32).to_le_bytes().to_vec();
        record.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        record.extend_from_slice(&payload);
        wal.current
            .load()
            .file
            .write_all_at(&record, SEGMENT_HEADER)
            .unwrap();
        drop(wal);
        match Wal::open(dir.path(), 0) {
            Err(WalError::Corrupt {
                path: p, offset, ..
            }) => {
                assert_eq!(p, path);
                assert_eq!(offset, SEGMENT_HEADER);
            }
            other => panic!("expected corruption, got {:?}", other.map(|(_, r)| r)),
        }
    }
}
