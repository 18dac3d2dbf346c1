//! The agent's durable buffer of unacknowledged batches: an append-only log of framed,
//! checksummed records in the data directory, read back at start; recent batches are
//! also kept in memory so sending rarely reads the disk.
//!
//! Record: `[0xB7][kind u8][len u32 LE][crc32 u32 LE of kind and payload][payload]`.
//!
//! | kind | payload | meaning |
//! |---|---|---|
//! | 1 batch | seq u64, flags u8 (bit 0: from conntrack), the encoded batch | a batch to deliver |
//! | 2 acked | seq u64 | the server acknowledged it |
//! | 3 checkpoint | covered seq u64, the conntrack tracker's state | the tracker after every batch ≤ seq |
//! | 4 next seq | u64 | the highest sequence number ever given |
//!
//! Durability: a batch and a checkpoint are synced (`fdatasync`) before `push` returns,
//! so a batch the source handed over survives a SIGKILL or a power cut; an acked record
//! is not synced (losing one costs one resend, which the server recognises). At start a
//! torn tail (a record cut short or failing its checksum) is cut off and counted.
//!
//! What is kept: every unacknowledged batch, the latest checkpoint, and the conntrack
//! batches after it even once acknowledged (the tracker is rebuilt from the checkpoint
//! plus those, so the first dump after a restart continues where the last one left off).
//! The log is rewritten (compacted) when it would pass its bound; if it still would, the
//! oldest batches are dropped and counted. When the disk refuses a write (full, read-only)
//! batches are held in memory only, within the memory bound, and the oldest of those are
//! dropped and counted beyond it.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use podflow_conntrack::Crc32;

const MAGIC: u8 = 0xB7;
const HEADER: usize = 10;
const KIND_BATCH: u8 = 1;
const KIND_ACKED: u8 = 2;
const KIND_CHECKPOINT: u8 = 3;
const KIND_NEXT_SEQ: u8 = 4;
/// The largest record read back (a checkpoint of a big table is the largest).
const MAX_RECORD: usize = 1 << 30;

/// A record's checksum: CRC-32 (IEEE) of its kind and payload.
fn crc_of(kind: u8, payload: &[&[u8]]) -> u32 {
    let mut c = Crc32::default();
    c.update(&[kind]);
    payload.iter().for_each(|p| c.update(p));
    c.finish()
}

/// A record's header: magic, kind, payload length, CRC-32 of the kind and the payload.
fn header(kind: u8, payload: &[&[u8]]) -> [u8; HEADER] {
    let len = payload.iter().map(|p| p.len()).sum();
    header_of(kind, len, crc_of(kind, payload))
}

/// Hands a record's payload to the function it is given, in pieces.
pub type Pieces<'a> = dyn FnMut(&mut dyn FnMut(&[u8])) + 'a;

fn header_of(kind: u8, len: usize, crc: u32) -> [u8; HEADER] {
    let mut out = [0u8; HEADER];
    out[0] = MAGIC;
    out[1] = kind;
    out[2..6].copy_from_slice(&(len as u32).to_le_bytes());
    out[6..].copy_from_slice(&crc.to_le_bytes());
    out
}

/// A whole record: its header, then the payload's parts.
fn record(kind: u8, payload: &[&[u8]]) -> Vec<u8> {
    let len: usize = payload.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(HEADER + len);
    out.extend_from_slice(&header(kind, payload));
    for p in payload {
        out.extend_from_slice(p);
    }
    out
}

/// Where a batch's bytes are.
#[derive(Debug)]
struct Held {
    /// Offset and length of the encoded batch in the log file, when it is on disk.
    disk: Option<(u64, u32)>,
    /// The encoded batch in memory (always, when it is not on disk).
    mem: Option<Vec<u8>>,
    /// Made by the conntrack source (replayed into the tracker at start).
    conntrack: bool,
}

/// What the log held when it was opened.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The latest tracker checkpoint and the sequence number it covers.
    pub checkpoint: Option<(u64, Vec<u8>)>,
    /// The conntrack batches after the checkpoint, in order (acked or not).
    pub replay: Vec<Vec<u8>>,
    /// The highest sequence number ever given, if the log knows one.
    pub last_seq: Option<u64>,
    /// Unacknowledged batches recovered.
    pub batches: usize,
    /// Bytes cut off a torn tail (0: the log was whole).
    pub torn_bytes: u64,
}

/// Counters of the buffer (monotonic, except the sizes).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BufferCounts {
    /// Batches dropped because the buffer was full (never delivered).
    pub dropped: u64,
    /// Writes the disk refused (the batch was kept in memory instead).
    pub disk_errors: u64,
    /// Torn tails cut at start.
    pub torn: u64,
    /// Times the log was rewritten to free space.
    pub compactions: u64,
}

/// The durable buffer.
#[derive(Debug)]
pub struct Buffer {
    path: PathBuf,
    file: Option<File>,
    end: u64,
    live: BTreeMap<u64, Held>,
    /// Acked conntrack batches after the checkpoint (offset, length), for the tracker.
    retained: BTreeMap<u64, (u64, u32)>,
    checkpoint: Option<(u64, u64, u32)>,
    last_seq: u64,
    mem_bytes: usize,
    max_mem: usize,
    max_disk: u64,
    /// Bytes of conntrack batches added since the latest checkpoint (what a restart would
    /// replay into the tracker on top of it).
    since_checkpoint: u64,
    /// What happened so far.
    pub counts: BufferCounts,
}

fn read_at(f: &mut File, offset: u64, len: u32) -> io::Result<Vec<u8>> {
    f.seek(SeekFrom::Start(offset))?;
    let mut b = vec![0u8; len as usize];
    f.read_exact(&mut b)?;
    Ok(b)
}

fn u64_at(b: &[u8]) -> Option<u64> {
    b.get(..8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
}

impl Buffer {
    /// Opens (or creates) the log `path`, holding up to `max_mem` bytes of batches in
    /// memory and `max_disk` bytes on disk, and reads back what it held.
    pub fn open(path: &Path, max_mem: usize, max_disk: u64) -> io::Result<(Buffer, Recovered)> {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)?;
        let mut b = Buffer {
            path: path.to_path_buf(),
            file: None,
            end: 0,
            live: BTreeMap::new(),
            retained: BTreeMap::new(),
            checkpoint: None,
            last_seq: 0,
            mem_bytes: 0,
            max_mem,
            max_disk: max_disk.max(1 << 16),
            since_checkpoint: 0,
            counts: BufferCounts::default(),
        };
        let len = file.metadata()?.len();
        let mut rec = Recovered::default();
        let mut r = BufReader::with_capacity(1 << 20, &mut file);
        let mut at = 0u64;
        let mut head = [0u8; HEADER];
        let mut after_checkpoint: Vec<(u64, u64, u32, bool)> = Vec::new();
        loop {
            if r.read_exact(&mut head).is_err() {
                break;
            }
            let kind = head[1];
            let n = u32::from_le_bytes([head[2], head[3], head[4], head[5]]) as usize;
            let crc = u32::from_le_bytes([head[6], head[7], head[8], head[9]]);
            if head[0] != MAGIC || n > MAX_RECORD {
                break;
            }
            let mut payload = vec![0u8; n];
            if r.read_exact(&mut payload).is_err() || crc_of(kind, &[&payload]) != crc {
                break;
            }
            let body = at + HEADER as u64;
            match kind {
                KIND_BATCH if n >= 9 => {
                    let seq = u64_at(&payload).unwrap_or(0);
                    let conntrack = payload[8] & 1 != 0;
                    b.last_seq = b.last_seq.max(seq);
                    let (off, blen) = (body + 9, (n - 9) as u32);
                    b.live.insert(
                        seq,
                        Held {
                            disk: Some((off, blen)),
                            mem: None,
                            conntrack,
                        },
                    );
                    after_checkpoint.push((seq, off, blen, conntrack));
                }
                KIND_ACKED if n >= 8 => {
                    let seq = u64_at(&payload).unwrap_or(0);
                    if let Some(h) = b.live.remove(&seq)
                        && h.conntrack
                        && let Some(d) = h.disk
                    {
                        b.retained.insert(seq, d);
                    }
                }
                KIND_CHECKPOINT if n >= 8 => {
                    let covered = u64_at(&payload).unwrap_or(0);
                    b.checkpoint = Some((covered, body + 8, (n - 8) as u32));
                    b.retained.retain(|s, _| *s > covered);
                    after_checkpoint.retain(|(s, ..)| *s > covered);
                }
                KIND_NEXT_SEQ if n >= 8 => {
                    b.last_seq = b.last_seq.max(u64_at(&payload).unwrap_or(0));
                }
                _ => {} // unknown kinds from a newer agent: skipped
            }
            at = body + n as u64;
        }
        drop(r);
        if at < len {
            rec.torn_bytes = len - at;
            b.counts.torn = 1;
            file.set_len(at)?;
            file.sync_data()?;
        }
        b.end = at;
        if let Some((covered, off, clen)) = b.checkpoint {
            rec.checkpoint = Some((covered, read_at(&mut file, off, clen)?));
        }
        for (seq, off, blen, conntrack) in after_checkpoint {
            let kept = b.live.contains_key(&seq) || b.retained.contains_key(&seq);
            if conntrack && kept {
                rec.replay.push(read_at(&mut file, off, blen)?);
            }
        }
        b.since_checkpoint = rec.replay.iter().map(|r| r.len() as u64).sum();
        rec.last_seq = (b.last_seq > 0).then_some(b.last_seq);
        rec.batches = b.live.len();
        b.file = Some(file);
        Ok((b, rec))
    }

    /// Batches held (not acknowledged).
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Bytes of batches in memory.
    pub fn mem_bytes(&self) -> usize {
        self.mem_bytes
    }

    /// Bytes of the log file.
    pub fn disk_bytes(&self) -> u64 {
        self.end
    }

    /// The highest sequence number given so far (0: none).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Starts numbering after `last` (a fresh log), durably.
    pub fn start_at(&mut self, last: u64) -> io::Result<()> {
        self.last_seq = self.last_seq.max(last);
        let last = self.last_seq.to_le_bytes();
        self.append(KIND_NEXT_SEQ, &[&last], true).map(|_| ())
    }

    /// Appends a record of `kind` made of `payload` to the log (syncing it when `sync`);
    /// the offset of the record. The parts are written one after the other, not copied
    /// into one buffer first: a large batch is not held twice.
    fn append(&mut self, kind: u8, payload: &[&[u8]], sync: bool) -> io::Result<u64> {
        let len = payload.iter().map(|p| p.len()).sum();
        let head = header(kind, payload);
        self.append_with(head, len, sync, &mut |f| {
            payload.iter().try_for_each(|p| f.write_all(p))
        })
    }

    /// Appends a record whose header is `head` and whose `len` payload bytes `write`
    /// writes (exactly those: anything else is an error and leaves no record).
    fn append_with(
        &mut self,
        head: [u8; HEADER],
        len: usize,
        sync: bool,
        write: &mut dyn FnMut(&mut File) -> io::Result<()>,
    ) -> io::Result<u64> {
        let f = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("log file closed"))?;
        let at = self.end;
        let total = (HEADER + len) as u64;
        let written = f
            .seek(SeekFrom::Start(at))
            .and_then(|_| f.write_all(&head))
            .and_then(|()| write(f))
            .and_then(|()| f.stream_position())
            .and_then(|end| {
                if end == at + total {
                    Ok(())
                } else {
                    Err(io::Error::other(format!(
                        "a record of {len} bytes came out {} bytes long",
                        end - at - HEADER as u64
                    )))
                }
            })
            .and_then(|()| if sync { f.sync_data() } else { Ok(()) });
        if let Err(e) = written {
            // Cut whatever part was written, so the file stays a sequence of records.
            let _ = f.set_len(at);
            return Err(e);
        }
        self.end = at + total;
        Ok(at)
    }

    /// Adds batch `seq` (`conntrack`: made by the conntrack source); on disk before it
    /// returns unless the disk refuses, then in memory only (counted).
    pub fn push(&mut self, seq: u64, conntrack: bool, bytes: Vec<u8>) {
        self.last_seq = self.last_seq.max(seq);
        if conntrack {
            self.since_checkpoint += bytes.len() as u64;
        }
        let payload: [&[u8]; 3] = [&seq.to_le_bytes(), &[u8::from(conntrack)], &bytes];
        self.make_room((HEADER + 9 + bytes.len()) as u64);
        let disk = match self.append(KIND_BATCH, &payload, true) {
            Ok(at) => Some((at + HEADER as u64 + 9, bytes.len() as u32)),
            Err(e) => {
                self.counts.disk_errors += 1;
                tracing::warn!(error = %e, path = %self.path.display(), "buffer log write failed; batch kept in memory only");
                None
            }
        };
        let mem = (disk.is_none() || self.mem_bytes + bytes.len() <= self.max_mem).then(|| {
            self.mem_bytes += bytes.len();
            bytes
        });
        self.live.insert(
            seq,
            Held {
                disk,
                mem,
                conntrack,
            },
        );
        // Memory-only batches beyond the memory bound: the oldest go (counted).
        while self.mem_bytes > self.max_mem {
            let Some(seq) = self
                .live
                .iter()
                .find(|(_, h)| h.disk.is_none())
                .map(|(s, _)| *s)
            else {
                break;
            };
            self.forget(seq);
            self.counts.dropped += 1;
        }
    }

    /// Records the tracker's state covering every batch up to `covered` (synced).
    #[cfg(test)]
    pub fn checkpoint(&mut self, covered: u64, state: &[u8]) -> io::Result<()> {
        self.checkpoint_with(covered, &mut |out| out(state))
    }

    /// [`Buffer::checkpoint`] with the state handed over in pieces by `state`, twice:
    /// once for the header's length and checksum, once to write it. It must give the same
    /// bytes both times (a tracker that does not change meanwhile), or nothing is recorded.
    /// The state is never whole in memory.
    pub fn checkpoint_with(&mut self, covered: u64, state: &mut Pieces<'_>) -> io::Result<()> {
        let covered_le = covered.to_le_bytes();
        let mut crc = Crc32::default();
        crc.update(&[KIND_CHECKPOINT]);
        crc.update(&covered_le);
        let mut state_len = 0usize;
        state(&mut |piece| {
            crc.update(piece);
            state_len += piece.len();
        });
        let len = 8 + state_len;
        if len > MAX_RECORD {
            return Err(io::Error::other(format!(
                "a tracker checkpoint of {state_len} bytes is over the log's {MAX_RECORD}-byte record limit"
            )));
        }
        self.make_room((HEADER + len) as u64);
        let head = header_of(KIND_CHECKPOINT, len, crc.finish());
        let at = self.append_with(head, len, true, &mut |f| {
            f.write_all(&covered_le)?;
            let mut failed = None;
            state(&mut |piece| {
                if failed.is_none() {
                    failed = f.write_all(piece).err();
                }
            });
            failed.map_or(Ok(()), Err)
        })?;
        self.checkpoint = Some((covered, at + HEADER as u64 + 8, state_len as u32));
        self.retained.retain(|s, _| *s > covered);
        self.since_checkpoint = 0;
        Ok(())
    }

    /// Whether a new checkpoint is due: there is none, or the conntrack batches since the
    /// latest one weigh as much as it does (and at least `min` bytes). So a restart
    /// replays at most about one checkpoint's worth of batches, and checkpoints at most
    /// double what the log writes; an idle table writes none after its first.
    pub fn checkpoint_due(&self, min: u64) -> bool {
        match self.checkpoint {
            None => true,
            Some((_, _, len)) => self.since_checkpoint >= u64::from(len).max(min),
        }
    }

    /// Bytes of the latest checkpoint (0: none).
    pub fn checkpoint_bytes(&self) -> u64 {
        self.checkpoint.map_or(0, |(_, _, len)| u64::from(len))
    }

    fn forget(&mut self, seq: u64) -> Option<Held> {
        let h = self.live.remove(&seq)?;
        if let Some(m) = &h.mem {
            self.mem_bytes -= m.len();
        }
        Some(h)
    }

    /// Forgets batch `seq` (acknowledged). Returns whether it was held.
    pub fn remove(&mut self, seq: u64) -> bool {
        let Some(h) = self.forget(seq) else {
            return false;
        };
        let after = self.checkpoint.is_none_or(|(c, ..)| seq > c);
        if let (true, true, Some(d)) = (h.conntrack, after, h.disk) {
            self.retained.insert(seq, d);
        }
        // Not synced: a lost ack record costs one resend, recognised by the server.
        let _ = self.append(KIND_ACKED, &[&seq.to_le_bytes()], false);
        true
    }

    /// The first held batch after sequence number `after`.
    pub fn next_after(&mut self, after: u64) -> io::Result<Option<(u64, Vec<u8>)>> {
        let Some((&seq, h)) = self.live.range(after + 1..).next() else {
            return Ok(None);
        };
        let bytes = match (&h.mem, h.disk) {
            (Some(m), _) => m.clone(),
            (None, Some((off, len))) => {
                let f = self
                    .file
                    .as_mut()
                    .ok_or_else(|| io::Error::other("log file closed"))?;
                read_at(f, off, len)?
            }
            (None, None) => return Ok(None),
        };
        Ok(Some((seq, bytes)))
    }

    /// Gives every held batch a new sequence number from `first` on, in order (a data
    /// directory whose numbers the server has already seen: a wiped disk, a node name used
    /// again). `reencode` rewrites a batch's bytes for its new number.
    pub fn renumber(
        &mut self,
        first: u64,
        mut reencode: impl FnMut(u64, &[u8]) -> Option<Vec<u8>>,
    ) -> io::Result<usize> {
        let old: Vec<u64> = self.live.keys().copied().collect();
        let mut moved = BTreeMap::new();
        for (i, seq) in old.iter().enumerate() {
            let new = first + i as u64;
            let Some((_, bytes)) = self.next_after(seq - 1)? else {
                continue;
            };
            let Some(conntrack) = self.live.get(seq).map(|h| h.conntrack) else {
                continue;
            };
            if let Some(b) = reencode(new, &bytes) {
                moved.insert(new, (conntrack, b));
            }
        }
        for seq in old {
            self.forget(seq);
        }
        // The tracker's replay set no longer matches these numbers: a checkpoint is
        // written afresh by the source soon; until then none is kept.
        self.retained.clear();
        self.checkpoint = None;
        let n = moved.len();
        for (seq, (conntrack, b)) in moved {
            self.mem_bytes += b.len();
            self.live.insert(
                seq,
                Held {
                    disk: None,
                    mem: Some(b),
                    conntrack,
                },
            );
        }
        self.last_seq = first + n as u64 - u64::from(n > 0);
        self.last_seq = self.last_seq.max(first.saturating_sub(1));
        self.compact()?;
        Ok(n)
    }

    /// Bytes a compacted log would hold.
    fn kept_bytes(&self) -> u64 {
        let batch = |len: u32| HEADER as u64 + 9 + u64::from(len);
        let live: u64 = self
            .live
            .values()
            .map(|h| match (&h.mem, h.disk) {
                (_, Some((_, len))) => batch(len),
                (Some(m), None) => batch(m.len() as u32),
                (None, None) => 0,
            })
            .sum();
        let retained: u64 = self
            .retained
            .values()
            .map(|(_, len)| batch(*len) + HEADER as u64 + 8)
            .sum();
        let checkpoint = self
            .checkpoint
            .map_or(0, |(_, _, len)| HEADER as u64 + 8 + u64::from(len));
        2 * HEADER as u64 + 8 + live + retained + checkpoint
    }

    /// Makes room for a record of `len` bytes. When acknowledged records take the space,
    /// one compaction frees it; when unacknowledged batches fill the bound, the oldest go
    /// (counted) down to 80% of it, then one compaction — so a long outage costs a
    /// rewrite per fifth of the bound, not one per batch.
    fn make_room(&mut self, len: u64) {
        if self.end + len <= self.max_disk {
            return;
        }
        let target = self.max_disk / 10 * 8;
        if self.kept_bytes() + len > self.max_disk / 10 * 9 {
            while self.kept_bytes() + len > target {
                if let Some(&oldest) = self.live.keys().next() {
                    self.forget(oldest);
                    self.counts.dropped += 1;
                } else if !self.retained.is_empty() || self.checkpoint.is_some() {
                    // Only the tracker's replay is left: it gives way (the next dump after a
                    // restart would then take a new baseline).
                    self.retained.clear();
                    self.checkpoint = None;
                } else {
                    break;
                }
            }
        }
        if let Err(e) = self.compact() {
            tracing::warn!(error = %e, path = %self.path.display(), "buffer log compaction failed");
        }
    }

    /// Rewrites the log with only what must be kept (atomically: a new file renamed over).
    fn compact(&mut self) -> io::Result<()> {
        let tmp = self.path.with_extension("log.tmp");
        let mut out = Vec::new();
        out.extend(record(KIND_NEXT_SEQ, &[&self.last_seq.to_le_bytes()]));
        let f = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("log file closed"))?;
        let mut new_checkpoint = None;
        if let Some((covered, off, len)) = self.checkpoint {
            let state = read_at(f, off, len)?;
            new_checkpoint = Some((covered, out.len() as u64 + HEADER as u64 + 8, len));
            out.extend(record(KIND_CHECKPOINT, &[&covered.to_le_bytes(), &state]));
        }
        let mut seqs: Vec<(u64, bool)> = self.live.keys().map(|s| (*s, false)).collect();
        seqs.extend(self.retained.keys().map(|s| (*s, true)));
        seqs.sort_unstable();
        let mut new_live = BTreeMap::new();
        let mut new_retained = BTreeMap::new();
        for (seq, acked) in seqs {
            let (bytes, conntrack) = if acked {
                let (off, len) = self.retained[&seq];
                (read_at(f, off, len)?, true)
            } else {
                let h = &self.live[&seq];
                let b = match (&h.mem, h.disk) {
                    (Some(m), _) => m.clone(),
                    (None, Some((off, len))) => read_at(f, off, len)?,
                    (None, None) => continue,
                };
                (b, h.conntrack)
            };
            let at = out.len() as u64 + HEADER as u64 + 9;
            out.extend(record(
                KIND_BATCH,
                &[&seq.to_le_bytes(), &[u8::from(conntrack)], &bytes],
            ));
            if acked {
                out.extend(record(KIND_ACKED, &[&seq.to_le_bytes()]));
                new_retained.insert(seq, (at, bytes.len() as u32));
            } else {
                new_live.insert(seq, (at, bytes.len() as u32));
            }
        }
        {
            let mut t = File::create(&tmp)?;
            if let Err(e) = t.write_all(&out).and_then(|()| t.sync_all()) {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        self.file = Some(OpenOptions::new().read(true).write(true).open(&self.path)?);
        self.end = out.len() as u64;
        self.checkpoint = new_checkpoint;
        self.retained = new_retained;
        for (seq, d) in new_live {
            if let Some(h) = self.live.get_mut(&seq) {
                h.disk = Some(d);
            }
        }
        self.counts.compactions += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batches(b: &mut Buffer) -> Vec<u64> {
        let mut out = Vec::new();
        let mut at = 0;
        while let Some((s, _)) = b.next_after(at).expect("read") {
            out.push(s);
            at = s;
        }
        out
    }

    #[test]
    fn batches_survive_a_reopen_and_acked_ones_do_not() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("outbox.log");
        let (mut b, rec) = Buffer::open(&p, 1 << 20, 1 << 20).expect("open");
        assert_eq!((rec.batches, rec.last_seq, rec.torn_bytes), (0, None, 0));
        for s in 1..=4 {
            b.push(s, true, vec![s as u8; 100]);
        }
        assert!(b.remove(2));
        drop(b);
        let (mut b, rec) = Buffer::open(&p, 1 << 20, 1 << 20).expect("reopen");
        assert_eq!((rec.batches, rec.last_seq), (3, Some(4)));
        assert_eq!(batches(&mut b), vec![1, 3, 4]);
        assert_eq!(b.next_after(2).expect("read"), Some((3, vec![3; 100])));
        assert_eq!(
            rec.replay.len(),
            4,
            "no checkpoint yet: every conntrack batch replays"
        );
    }

    #[test]
    fn a_torn_tail_is_cut_and_counted_and_the_rest_kept() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("outbox.log");
        let (mut b, _) = Buffer::open(&p, 1 << 20, 1 << 20).expect("open");
        b.push(1, false, vec![1; 50]);
        b.push(2, false, vec![2; 50]);
        drop(b);
        let len = std::fs::metadata(&p).expect("meta").len();
        // A crash in the middle of the second record.
        let f = OpenOptions::new().write(true).open(&p).expect("open");
        f.set_len(len - 20).expect("cut");
        drop(f);
        let (mut b, rec) = Buffer::open(&p, 1 << 20, 1 << 20).expect("reopen");
        assert_eq!(rec.torn_bytes, HEADER as u64 + 9 + 50 - 20);
        assert_eq!(batches(&mut b), vec![1]);
        assert_eq!(b.counts.torn, 1);
        // A flipped bit fails the checksum the same way.
        b.push(3, false, vec![3; 50]);
        drop(b);
        let mut bytes = std::fs::read(&p).expect("read");
        let last = bytes.len() - 5;
        bytes[last] ^= 1;
        std::fs::write(&p, bytes).expect("write");
        let (mut b, rec) = Buffer::open(&p, 1 << 20, 1 << 20).expect("reopen");
        assert!(rec.torn_bytes > 0);
        assert_eq!(batches(&mut b), vec![1]);
    }

    #[test]
    fn the_checkpoint_and_the_batches_after_it_come_back_even_once_acked() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("outbox.log");
        let (mut b, _) = Buffer::open(&p, 1 << 20, 1 << 20).expect("open");
        b.push(1, true, vec![1; 10]);
        b.push(2, false, vec![2; 10]); // NetFlow: never replayed into the tracker
        b.checkpoint(2, b"state").expect("checkpoint");
        b.push(3, true, vec![3; 10]);
        b.push(4, true, vec![4; 10]);
        assert!(b.remove(1) && b.remove(3));
        drop(b);
        let (mut b, rec) = Buffer::open(&p, 1 << 20, 1 << 20).expect("reopen");
        assert_eq!(rec.checkpoint, Some((2, b"state".to_vec())));
        assert_eq!(rec.replay, vec![vec![3; 10], vec![4; 10]]);
        assert_eq!(batches(&mut b), vec![2, 4]);
    }

    #[test]
    fn a_checkpoint_given_in_pieces_is_read_back_whole_and_a_changing_one_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("outbox.log");
        let (mut b, _) = Buffer::open(&p, 1 << 20, 1 << 20).expect("open");
        b.push(1, true, vec![1; 10]);
        let pieces: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 1000 + usize::from(i)]).collect();
        b.checkpoint_with(1, &mut |out| pieces.iter().for_each(|p| out(p)))
            .expect("checkpoint");
        let end = b.disk_bytes();
        // A state that comes out longer the second time: no record, the first one kept.
        let mut calls = 0;
        let err = b
            .checkpoint_with(1, &mut |out| {
                calls += 1;
                out(&vec![9; 100 * calls]);
            })
            .expect_err("a changing state");
        assert!(err.to_string().contains("came out"), "{err}");
        assert_eq!(b.disk_bytes(), end, "nothing of it stays in the log");
        assert_eq!(b.checkpoint_bytes(), pieces.concat().len() as u64);
        drop(b);
        let (_, rec) = Buffer::open(&p, 1 << 20, 1 << 20).expect("reopen");
        assert_eq!(rec.checkpoint, Some((1, pieces.concat())));
        assert_eq!(rec.torn_bytes, 0);
    }

    #[test]
    fn a_checkpoint_is_due_when_the_batches_since_weigh_as_much_as_it_does() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("outbox.log");
        let (mut b, _) = Buffer::open(&p, 1 << 20, 1 << 20).expect("open");
        assert!(b.checkpoint_due(100), "none yet");
        b.push(1, true, vec![1; 10]);
        b.checkpoint(1, &[0; 300]).expect("checkpoint");
        assert!(!b.checkpoint_due(100));
        b.push(2, true, vec![2; 200]);
        b.push(3, false, vec![3; 500]); // NetFlow: not replayed, not counted
        assert!(!b.checkpoint_due(100), "200 of 300 bytes");
        b.push(4, true, vec![4; 100]);
        assert!(b.checkpoint_due(100), "300 of 300 bytes");
        assert!(!b.checkpoint_due(1000), "the floor applies");
        drop(b);
        // What a restart would replay counts the same after a reopen.
        let (b, rec) = Buffer::open(&p, 1 << 20, 1 << 20).expect("reopen");
        assert_eq!(rec.replay.len(), 2);
        assert!(b.checkpoint_due(100));
        assert_eq!(b.checkpoint_bytes(), 300);
    }

    #[test]
    fn a_full_log_compacts_then_drops_the_oldest_counting_exactly() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("outbox.log");
        let max = 1 << 16;
        let (mut b, _) = Buffer::open(&p, 0, max).expect("open");
        let rec_len = HEADER as u64 + 9 + 10_000;
        for s in 1..=20u64 {
            b.push(s, false, vec![s as u8; 10_000]);
            if s % 2 == 0 {
                b.remove(s);
            }
            assert!(b.disk_bytes() <= max, "the log stays within its bound");
        }
        let held = batches(&mut b);
        let pushed_unacked = 10;
        assert_eq!(held.len() as u64 + b.counts.dropped, pushed_unacked);
        assert!(b.counts.compactions > 0);
        assert!(held.len() as u64 * rec_len <= max);
        drop(b);
        let (mut b, _) = Buffer::open(&p, 0, max).expect("reopen");
        assert_eq!(batches(&mut b), held, "what was kept survives");
    }

    #[test]
    fn renumbering_keeps_order_and_the_log_knows_the_new_numbers() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("outbox.log");
        let (mut b, _) = Buffer::open(&p, 1 << 20, 1 << 20).expect("open");
        b.push(1, true, vec![1]);
        b.push(2, true, vec![2]);
        let n = b
            .renumber(1000, |seq, bytes| {
                Some([bytes, &seq.to_le_bytes()].concat())
            })
            .expect("renumber");
        assert_eq!(n, 2);
        assert_eq!(b.last_seq(), 1001);
        drop(b);
        let (mut b, rec) = Buffer::open(&p, 1 << 20, 1 << 20).expect("reopen");
        assert_eq!(rec.last_seq, Some(1001));
        assert_eq!(
            b.next_after(0).expect("read"),
            Some((1000, [&[1u8][..], &1000u64.to_le_bytes()].concat()))
        );
    }

    #[test]
    fn the_next_sequence_number_survives_when_everything_was_acked_and_compacted() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("outbox.log");
        let (mut b, _) = Buffer::open(&p, 1 << 20, 1 << 20).expect("open");
        b.push(41, false, vec![0; 10]);
        b.remove(41);
        b.compact().expect("compact");
        drop(b);
        let (_, rec) = Buffer::open(&p, 1 << 20, 1 << 20).expect("reopen");
        assert_eq!(rec.last_seq, Some(41));
        assert_eq!(rec.batches, 0);
    }
}
