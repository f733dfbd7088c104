//! The raft log's write-ahead journal: what makes a `Ready` durable.
//!
//! sled's own `flush` costs a hand-off to its I/O thread pool (which wakes
//! every idle pool thread) and a `sync_file_range` per call, and its log file
//! grows as it is written, so each `fdatasync` also commits file-size
//! metadata. The hub therefore journals each `Ready`'s new entries and hard
//! state here, one record per `Ready` written with one `pwrite`, and makes
//! them durable with one `fdatasync` of a preallocated segment (etcd's WAL
//! does the same). sled still stores everything; it is flushed only at a
//! checkpoint, after which the journal starts an empty segment.
//!
//! Segment layout: an 8-byte magic, the segment's sequence number (u64 LE),
//! then records `[len u32 LE][crc32 u32 LE][payload]`. The rest of the
//! preallocated file reads as zeros, and a zero length ends the segment. A
//! record that is cut short or fails its checksum is a write torn by a crash
//! before its `fdatasync` returned (nothing was acknowledged on it): reading
//! stops there.
//!
//! Payload: a flags byte (bit 0: a hard state follows), the hard state as
//! `[len u32][protobuf]` if present, the number of entries (u32), then each
//! entry as `[len u32][protobuf]`.

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
/// Preallocated size of a segment (etcd's WAL uses the same).
pub const SEGMENT_BYTES: u64 = 64 << 20;
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

/// The journal of one replica, owned by its storage.
pub struct Wal {
    dir: PathBuf,
    current: Arc<ArcSwap<Segment>>,
    seq: u64,
    /// Where the next record goes in the current segment.
    offset: u64,
    /// The current segment's preallocated size.
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
    /// A segment is only replaced after a checkpoint has made all of its
    /// records durable in sled, so syncing the current one is enough.
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
    /// records of every segment found, oldest first, for the storage to
    /// replay. Call [`Wal::reset`] once they are durable elsewhere: until
    /// then nothing can be appended.
    pub fn open(dir: &Path) -> Result<(Self, Vec<Record>), WalError> {
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
        for (_, path) in &segments {
            read_segment(path, &mut records)?;
        }
        let seq = segments.last().map_or(0, |(seq, _)| *seq);
        // Until `reset`, the current segment is a placeholder with no room.
        let placeholder = match segments.last() {
            Some((_, path)) => Segment {
                file: File::open(path).map_err(io(path))?,
                path: path.clone(),
            },
            None => Segment {
                file: File::open(dir).map_err(io(dir))?,
                path: dir.to_path_buf(),
            },
        };
        let wal = Self {
            dir: dir.to_path_buf(),
            current: Arc::new(ArcSwap::from_pointee(placeholder)),
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

    /// Whether a record of `entries` (plus a hard state) fits in the
    /// current segment; if not, the storage checkpoints first.
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
        Ok(())
    }

    /// Starts a new, empty segment with room for at least `min_room` bytes
    /// of records and deletes the older ones. Only call once every record
    /// so far is durable elsewhere (sled flushed): they are gone after this.
    pub fn reset(&mut self, min_room: u64) -> Result<(), WalError> {
        let seq = self.seq + 1;
        let path = self.dir.join(segment_name(seq));
        let capacity = SEGMENT_BYTES.max(SEGMENT_HEADER + min_room);
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
        file.sync_all().map_err(io(&path))?;
        sync_dir(&self.dir)?;
        self.current.store(Arc::new(Segment {
            file,
            path: path.clone(),
        }));
        self.seq = seq;
        self.offset = SEGMENT_HEADER;
        self.capacity = capacity;
        // Older segments hold only records that are durable in sled now.
        for item in std::fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let item = item.map_err(io(&self.dir))?;
            let old = item.path();
            if old != path && old.extension().is_some_and(|e| e == "wal") {
                std::fs::remove_file(&old).map_err(io(&old))?;
            }
        }
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
        // Created but never initialised (a crash inside `reset`).
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
        Wal::open(dir).expect("open the journal")
    }

    #[test]
    fn records_come_back_in_order_after_reopen() {
        let dir = tempdir();
        let (mut wal, records) = open(dir.path());
        assert!(records.is_empty());
        assert!(
            !wal.has_room(&[entry(1, 1, b"x")], None),
            "no room before reset"
        );
        wal.reset(0).unwrap();
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
    fn reset_forgets_older_segments() {
        let dir = tempdir();
        let (mut wal, _) = open(dir.path());
        wal.reset(0).unwrap();
        wal.append(&[entry(1, 1, b"old")], None).unwrap();
        wal.reset(0).unwrap();
        wal.append(&[entry(2, 1, b"new")], None).unwrap();
        drop(wal);
        let (_, records) = open(dir.path());
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].entries, vec![entry(2, 1, b"new")]);
        let segments = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(segments, 1, "only the current segment is left");
    }

    #[test]
    fn a_torn_record_ends_the_journal_without_error() {
        let dir = tempdir();
        let (mut wal, _) = open(dir.path());
        wal.reset(0).unwrap();
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
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].entries, vec![entry(1, 1, b"kept")]);
    }

    #[test]
    fn a_record_cut_short_ends_the_journal() {
        let dir = tempdir();
        let (mut wal, _) = open(dir.path());
        wal.reset(0).unwrap();
        wal.append(&[entry(1, 1, b"kept")], None).unwrap();
        let cut_at = wal.offset;
        wal.append(&[entry(2, 1, &[7; 100])], None).unwrap();
        let path = wal.current.load().path.clone();
        drop(wal);
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(cut_at + 20).unwrap();
        let (_, records) = open(dir.path());
        assert_eq!(records.len(), 1);
    }

    #[test]
    fn a_record_larger_than_a_segment_gets_a_segment_that_fits() {
        let dir = tempdir();
        let (mut wal, _) = open(dir.path());
        wal.reset(0).unwrap();
        let big = vec![entry(1, 1, &vec![1; SEGMENT_BYTES as usize])];
        assert!(!wal.has_room(&big, None));
        wal.reset(record_bound(&big, None)).unwrap();
        assert!(wal.has_room(&big, None));
        wal.append(&big, None).unwrap();
        drop(wal);
        let (_, records) = open(dir.path());
        assert_eq!(records[0].entries, big);
    }

    #[test]
    fn a_checksummed_record_that_does_not_decode_is_corruption() {
        let dir = tempdir();
        let (mut wal, _) = open(dir.path());
        wal.reset(0).unwrap();
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
        match Wal::open(dir.path()) {
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
