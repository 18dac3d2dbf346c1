//! The agent's buffer of unacknowledged batches: memory first, then a spill file, both
//! bounded; when both are full the oldest batches are dropped (counted).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

#[derive(Debug)]
enum Loc {
    Mem(Vec<u8>),
    Spill { offset: u64, len: u32 },
}

/// Unacked batches by sequence number.
#[derive(Debug)]
pub struct Buffer {
    entries: BTreeMap<u64, Loc>,
    mem_bytes: usize,
    max_mem: usize,
    spill_path: PathBuf,
    spill: Option<File>,
    spill_end: u64,
    spill_live: usize,
    spill_bytes: u64,
    max_spill: u64,
    /// Batches dropped because both places were full.
    pub dropped: u64,
}

impl Buffer {
    /// A buffer holding up to `max_mem` bytes in memory and `max_spill` in `spill_path`.
    pub fn new(max_mem: usize, spill_path: &Path, max_spill: u64) -> Buffer {
        Buffer {
            entries: BTreeMap::new(),
            mem_bytes: 0,
            max_mem,
            spill_path: spill_path.to_path_buf(),
            spill: None,
            spill_end: 0,
            spill_live: 0,
            spill_bytes: 0,
            max_spill,
            dropped: 0,
        }
    }

    /// Batches held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes in memory.
    pub fn mem_bytes(&self) -> usize {
        self.mem_bytes
    }

    /// Bytes of live batches in the spill file.
    pub fn spill_bytes(&self) -> u64 {
        self.spill_bytes
    }

    fn drop_oldest(&mut self) -> bool {
        let Some((&seq, _)) = self.entries.iter().next() else {
            return false;
        };
        self.remove(seq);
        self.dropped += 1;
        true
    }

    /// Adds batch `seq`. Memory while it fits and nothing is spilled (order is kept), else
    /// the spill file; the oldest batches make room when both are full.
    pub fn push(&mut self, seq: u64, bytes: Vec<u8>) -> std::io::Result<()> {
        if self.spill_live == 0 && self.mem_bytes + bytes.len() <= self.max_mem {
            self.mem_bytes += bytes.len();
            self.entries.insert(seq, Loc::Mem(bytes));
            return Ok(());
        }
        while self.spill_bytes + bytes.len() as u64 > self.max_spill {
            if !self.drop_oldest() {
                self.dropped += 1;
                return Ok(());
            }
            // Dropping may have emptied the spill file: memory may fit again.
            if self.spill_live == 0 && self.mem_bytes + bytes.len() <= self.max_mem {
                self.mem_bytes += bytes.len();
                self.entries.insert(seq, Loc::Mem(bytes));
                return Ok(());
            }
        }
        if self.spill.is_none() {
            self.spill = Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .read(true)
                    .write(true)
                    .open(&self.spill_path)?,
            );
            self.spill_end = 0;
        }
        let f = self
            .spill
            .as_mut()
            .ok_or_else(|| std::io::Error::other("spill file"))?;
        f.seek(SeekFrom::Start(self.spill_end))?;
        f.write_all(&bytes)?;
        let len = u32::try_from(bytes.len()).map_err(std::io::Error::other)?;
        self.entries.insert(
            seq,
            Loc::Spill {
                offset: self.spill_end,
                len,
            },
        );
        self.spill_end += u64::from(len);
        self.spill_live += 1;
        self.spill_bytes += u64::from(len);
        Ok(())
    }

    /// Forgets batch `seq` (acked). Returns whether it was held.
    pub fn remove(&mut self, seq: u64) -> bool {
        match self.entries.remove(&seq) {
            Some(Loc::Mem(b)) => {
                self.mem_bytes -= b.len();
                true
            }
            Some(Loc::Spill { len, .. }) => {
                self.spill_live -= 1;
                self.spill_bytes -= u64::from(len);
                if self.spill_live == 0 {
                    // Everything spilled is acked: start the file over.
                    self.spill = None;
                    let _ = std::fs::remove_file(&self.spill_path);
                    self.spill_end = 0;
                }
                true
            }
            None => false,
        }
    }

    /// The first batch after `after` (in sequence order), with its bytes.
    pub fn next_after(&mut self, after: u64) -> std::io::Result<Option<(u64, Vec<u8>)>> {
        let Some((&seq, loc)) = self.entries.range(after + 1..).next() else {
            return Ok(None);
        };
        let bytes = match loc {
            Loc::Mem(b) => b.clone(),
            Loc::Spill { offset, len } => {
                let (offset, len) = (*offset, *len);
                let f = self
                    .spill
                    .as_mut()
                    .ok_or_else(|| std::io::Error::other("spill file"))?;
                f.seek(SeekFrom::Start(offset))?;
                let mut b = vec![0u8; len as usize];
                f.read_exact(&mut b)?;
                b
            }
        };
        Ok(Some((seq, bytes)))
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        if self.spill.is_some() {
            let _ = std::fs::remove_file(&self.spill_path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_then_spill_in_order_and_oldest_dropped_when_full() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("spill");
        let mut b = Buffer::new(10, &path, 12);
        b.push(1, vec![1; 6]).expect("mem");
        b.push(2, vec![2; 6])
            .expect("spills: memory would be 12 > 10");
        b.push(3, vec![3; 3]).expect("spills too: order is kept");
        assert_eq!((b.mem_bytes(), b.spill_bytes()), (6, 9));
        let got: Vec<u64> = std::iter::successors(b.next_after(0).expect("read"), |(s, _)| {
            b.next_after(*s).expect("read")
        })
        .map(|(s, _)| s)
        .collect();
        assert_eq!(got, vec![1, 2, 3]);
        assert_eq!(b.next_after(1).expect("read"), Some((2, vec![2; 6])));
        // Spill is full (9 + 6 > 12): the oldest (1, in memory) goes, then 2 (spilled).
        b.push(4, vec![4; 6]).expect("push");
        assert_eq!(b.dropped, 2);
        assert_eq!(b.next_after(0).expect("read").map(|(s, _)| s), Some(3));
        assert!(b.remove(3) && b.remove(4));
        assert!(b.is_empty());
        assert!(
            !path.exists(),
            "the spill file goes once everything in it is acked"
        );
        b.push(5, vec![5; 2]).expect("memory again");
        assert_eq!(b.mem_bytes(), 2);
    }
}
