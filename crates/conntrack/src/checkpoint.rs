//! The tracker's checkpoint format (pure): what a restarted agent needs to continue
//! where the last report left off.
//!
//! Version 1, little-endian:
//!
//! ```text
//! offset  size  field
//! 0       4     magic "PFCT"
//! 4       2     version = 1
//! 6       2     reserved = 0
//! 8       8     started_at_ns   the tracker's start (connections older than it, met before
//!                               its first dump, are baselines)
//! 16      8     dumps_done      full dumps completed
//! 24      8     count           connections that follow
//! 32      ...   count records, in the last dump's order:
//!                 key          8 bytes  conn_key(id, protocol, zone, original tuple)
//!                 orig bytes   varint   last reported counters (LEB128, shortest form)
//!                 orig packets varint
//!                 reply bytes  varint
//!                 reply packets varint
//!                 start_ns     varint   0 = unknown
//!                 reply state  1 byte   0 none yet, 1 pending, 2 reported or not measurable
//!                 reply_at_ns  varint   only with state 1 (never 0)
//! end-4   4     CRC-32 (IEEE, as zlib's crc32) of every byte before it
//! ```
//!
//! An idle connection with small counters takes about 20 bytes.

use podflow_model::Counters;

/// What `Tracker::checkpoint` writes per connection, and `Tracker::restore` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Remembered {
    pub key: u64,
    pub orig: Counters,
    pub reply: Counters,
    pub start_ns: u64,
    /// `REPLY_NONE`, `REPLY_PENDING` or `REPLY_DONE` as 0, 1, 2.
    pub reply_state: u8,
    /// The pending reply time (only with `reply_state` 1).
    pub reply_at_ns: u64,
}

/// The tracker-wide part of a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub started_at_ns: u64,
    pub dumps_done: u64,
}

const MAGIC: &[u8; 4] = b"PFCT";
const VERSION: u16 = 1;
const HEADER_LEN: usize = 32;
/// The smallest record: key + five one-byte varints + the state byte.
const MIN_RECORD: usize = 8 + 5 + 1;

/// What is wrong with a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// Shorter than a header and checksum.
    #[error("tracker checkpoint of {len} bytes is shorter than the {min}-byte minimum")]
    TooShort {
        /// Its length.
        len: usize,
        /// The minimum.
        min: usize,
    },
    /// Not a podflow tracker checkpoint.
    #[error("not a podflow tracker checkpoint: magic {found:02x?}, expected \"PFCT\"")]
    BadMagic {
        /// The first four bytes.
        found: [u8; 4],
    },
    /// Written by a version this build does not read.
    #[error("tracker checkpoint version {found} is not supported (this build reads {supported})")]
    UnsupportedVersion {
        /// The version in the file.
        found: u16,
        /// The version this build reads.
        supported: u16,
    },
    /// The bytes were changed after they were written.
    #[error(
        "tracker checkpoint checksum mismatch: stored {stored:#010x}, computed {computed:#010x} (corrupt or truncated)"
    )]
    Checksum {
        /// The CRC-32 in the trailer.
        stored: u32,
        /// The CRC-32 of the bytes.
        computed: u32,
    },
    /// A header field that must be zero is not.
    #[error("tracker checkpoint header: reserved field is {0:#06x}, expected 0")]
    Reserved(u16),
    /// The count cannot fit in the bytes given.
    #[error("tracker checkpoint claims {count} connections but holds only {len} bytes")]
    BadCount {
        /// The count in the header.
        count: u64,
        /// Bytes of records.
        len: usize,
    },
    /// A record ends before its last field.
    #[error("tracker checkpoint: connection {index} is cut short in its {field}")]
    Truncated {
        /// Which record (from 0).
        index: u64,
        /// Which field.
        field: &'static str,
    },
    /// A varint that is longer than 10 bytes or not in its shortest form.
    #[error("tracker checkpoint: connection {index} has a malformed {field} (varint)")]
    BadVarint {
        /// Which record.
        index: u64,
        /// Which field.
        field: &'static str,
    },
    /// An unknown reply state, or a pending reply without its time.
    #[error("tracker checkpoint: connection {index} has reply state {value} (0, 1 or 2)")]
    BadReplyState {
        /// Which record.
        index: u64,
        /// The value.
        value: u8,
    },
    /// The same connection twice.
    #[error("tracker checkpoint: connection {index} repeats key {key:#018x}")]
    DuplicateConnection {
        /// Which record.
        index: u64,
        /// Its key.
        key: u64,
    },
    /// Bytes after the last record.
    #[error("tracker checkpoint: {extra} bytes after the last connection")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
}

/// CRC-32 (IEEE, as zlib's `crc32`), fed in parts: the checkpoint's trailer, and the
/// agent's buffer log records.
#[derive(Clone, Copy, Debug)]
pub struct Crc32(u32);

impl Default for Crc32 {
    fn default() -> Self {
        Crc32(!0)
    }
}

impl Crc32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };

    /// Adds `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        let mut c = self.0;
        for &b in bytes {
            c = Self::TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
        }
        self.0 = c;
    }

    /// The checksum of everything added.
    pub fn finish(self) -> u32 {
        !self.0
    }
}

pub(crate) fn crc32(bytes: &[u8]) -> u32 {
    let mut c = Crc32::default();
    c.update(bytes);
    c.finish()
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
    index: u64,
}

impl Reader<'_> {
    fn varint(&mut self, field: &'static str) -> Result<u64, CheckpointError> {
        let mut v = 0u64;
        for n in 0..10 {
            let Some(&byte) = self.b.get(self.at) else {
                return Err(CheckpointError::Truncated {
                    index: self.index,
                    field,
                });
            };
            self.at += 1;
            let bits = u64::from(byte & 0x7f);
            // The tenth byte may only carry the top bit of a u64.
            if n == 9 && bits > 1 {
                break;
            }
            v |= bits << (7 * n);
            if byte & 0x80 == 0 {
                // Shortest form only: a last byte of 0 after others is padding.
                if n > 0 && byte == 0 {
                    break;
                }
                return Ok(v);
            }
        }
        Err(CheckpointError::BadVarint {
            index: self.index,
            field,
        })
    }

    fn fixed<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], CheckpointError> {
        let v = self
            .b
            .get(self.at..self.at + N)
            .and_then(|s| s.first_chunk::<N>())
            .copied()
            .ok_or(CheckpointError::Truncated {
                index: self.index,
                field,
            })?;
        self.at += N;
        Ok(v)
    }
}

/// Bytes of a checkpoint handed to the writer at a time (the last piece may be shorter).
pub(crate) const CHUNK: usize = 64 << 10;

/// Writes a checkpoint of the `count` connections `conns` yields (exactly that many) in
/// pieces of about [`CHUNK`] bytes: a large table's checkpoint is never whole in memory.
pub(crate) fn encode_to(
    header: &Header,
    count: usize,
    conns: impl Iterator<Item = Remembered>,
    out: &mut dyn FnMut(&[u8]),
) {
    let mut buf = Vec::with_capacity(CHUNK + 64);
    let mut crc = Crc32::default();
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&VERSION.to_le_bytes());
    buf.extend_from_slice(&0u16.to_le_bytes());
    buf.extend_from_slice(&header.started_at_ns.to_le_bytes());
    buf.extend_from_slice(&header.dumps_done.to_le_bytes());
    buf.extend_from_slice(&(count as u64).to_le_bytes());
    let mut n = 0usize;
    for c in conns {
        buf.extend_from_slice(&c.key.to_le_bytes());
        put_varint(&mut buf, c.orig.bytes);
        put_varint(&mut buf, c.orig.packets);
        put_varint(&mut buf, c.reply.bytes);
        put_varint(&mut buf, c.reply.packets);
        put_varint(&mut buf, c.start_ns);
        buf.push(c.reply_state);
        if c.reply_state == 1 {
            put_varint(&mut buf, c.reply_at_ns.max(1));
        }
        n += 1;
        if buf.len() >= CHUNK {
            crc.update(&buf);
            out(&buf);
            buf.clear();
        }
    }
    debug_assert_eq!(n, count, "a checkpoint's count is what follows it");
    crc.update(&buf);
    buf.extend_from_slice(&crc.finish().to_le_bytes());
    out(&buf);
}

/// Reads a checkpoint: the header and the connections, in order.
pub(crate) fn decode(bytes: &[u8]) -> Result<(Header, Vec<Remembered>), CheckpointError> {
    let min = HEADER_LEN + 4;
    if bytes.len() < min {
        return Err(CheckpointError::TooShort {
            len: bytes.len(),
            min,
        });
    }
    let (body, trailer) = bytes.split_at(bytes.len() - 4);
    let word = |at: usize| -> [u8; 8] {
        let mut w = [0u8; 8];
        w.copy_from_slice(&body[at..at + 8]);
        w
    };
    let mut magic = [0u8; 4];
    magic.copy_from_slice(&body[..4]);
    if &magic != MAGIC {
        return Err(CheckpointError::BadMagic { found: magic });
    }
    let version = u16::from_le_bytes([body[4], body[5]]);
    if version != VERSION {
        return Err(CheckpointError::UnsupportedVersion {
            found: version,
            supported: VERSION,
        });
    }
    let stored = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    let computed = crc32(body);
    if stored != computed {
        return Err(CheckpointError::Checksum { stored, computed });
    }
    let reserved = u16::from_le_bytes([body[6], body[7]]);
    if reserved != 0 {
        return Err(CheckpointError::Reserved(reserved));
    }
    let header = Header {
        started_at_ns: u64::from_le_bytes(word(8)),
        dumps_done: u64::from_le_bytes(word(16)),
    };
    let count = u64::from_le_bytes(word(24));
    let records = body.len() - HEADER_LEN;
    if count > (records / MIN_RECORD) as u64 {
        return Err(CheckpointError::BadCount {
            count,
            len: records,
        });
    }
    let mut r = Reader {
        b: body,
        at: HEADER_LEN,
        index: 0,
    };
    let mut conns = Vec::with_capacity(count as usize);
    for index in 0..count {
        r.index = index;
        let key = u64::from_le_bytes(r.fixed::<8>("key")?);
        let orig = Counters {
            bytes: r.varint("original bytes")?,
            packets: r.varint("original packets")?,
        };
        let reply = Counters {
            bytes: r.varint("reply bytes")?,
            packets: r.varint("reply packets")?,
        };
        let start_ns = r.varint("start time")?;
        let [reply_state] = r.fixed::<1>("reply state")?;
        let reply_at_ns = match reply_state {
            0 | 2 => 0,
            1 => match r.varint("reply time")? {
                0 => {
                    return Err(CheckpointError::BadReplyState {
                        index,
                        value: reply_state,
                    });
                }
                t => t,
            },
            value => return Err(CheckpointError::BadReplyState { index, value }),
        };
        conns.push(Remembered {
            key,
            orig,
            reply,
            start_ns,
            reply_state,
            reply_at_ns,
        });
    }
    if r.at != body.len() {
        return Err(CheckpointError::TrailingBytes {
            extra: body.len() - r.at,
        });
    }
    Ok((header, conns))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(header: &Header, count: usize, conns: impl Iterator<Item = Remembered>) -> Vec<u8> {
        let mut out = Vec::new();
        encode_to(header, count, conns, &mut |b| out.extend_from_slice(b));
        out
    }

    fn one() -> Vec<u8> {
        encode(
            &Header {
                started_at_ns: 1_000,
                dumps_done: 3,
            },
            1,
            std::iter::once(Remembered {
                key: 0x0102_0304_0506_0708,
                orig: Counters {
                    bytes: 300,
                    packets: 2,
                },
                reply: Counters::default(),
                start_ns: 5,
                reply_state: 1,
                reply_at_ns: 7,
            }),
        )
    }

    #[test]
    fn crc32_is_zlibs() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn annotated_bytes() {
        let b = one();
        #[rustfmt::skip]
        let want: &[u8] = &[
            b'P', b'F', b'C', b'T', 1, 0, 0, 0,     // magic, version 1, reserved
            0xe8, 0x03, 0, 0, 0, 0, 0, 0,           // started_at_ns 1000
            3, 0, 0, 0, 0, 0, 0, 0,                 // dumps_done 3
            1, 0, 0, 0, 0, 0, 0, 0,                 // count 1
            8, 7, 6, 5, 4, 3, 2, 1,                 // key
            0xac, 0x02,                             // orig bytes 300 (varint)
            2, 0, 0,                                // orig packets 2, reply 0 / 0
            5,                                      // start_ns 5
            1, 7,                                   // pending reply at 7
        ];
        assert_eq!(&b[..b.len() - 4], want);
        assert_eq!(b.len(), want.len() + 4);
        let (h, c) = decode(&b).expect("decodes");
        assert_eq!((h.started_at_ns, h.dumps_done, c.len()), (1000, 3, 1));
        assert_eq!(c[0].orig.bytes, 300);
    }

    #[test]
    fn every_kind_of_damage_is_named() {
        let good = one();
        assert!(matches!(
            decode(&good[..10]),
            Err(CheckpointError::TooShort { len: 10, .. })
        ));
        let mut b = good.clone();
        b[0] = b'X';
        assert!(matches!(decode(&b), Err(CheckpointError::BadMagic { .. })));
        let mut b = good.clone();
        b[4] = 9;
        assert_eq!(
            decode(&b),
            Err(CheckpointError::UnsupportedVersion {
                found: 9,
                supported: 1
            })
        );
        let mut b = good.clone();
        b[40] ^= 1;
        let err = decode(&b).expect_err("flipped bit");
        assert!(matches!(err, CheckpointError::Checksum { .. }));
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
        // Cut short, with a valid checksum over what is left: the record is named.
        let mut b = good[..good.len() - 8].to_vec();
        let crc = crc32(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        assert!(matches!(decode(&b), Err(CheckpointError::BadCount { .. })));
        let rebuilt = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = good[..good.len() - 4].to_vec();
            f(&mut b);
            let crc = crc32(&b);
            b.extend_from_slice(&crc.to_le_bytes());
            decode(&b)
        };
        assert_eq!(
            rebuilt(&|b| b.truncate(b.len() - 2)),
            Err(CheckpointError::Truncated {
                index: 0,
                field: "reply state"
            })
        );
        assert_eq!(
            rebuilt(&|b| b.push(0)),
            Err(CheckpointError::TrailingBytes { extra: 1 })
        );
        assert_eq!(
            rebuilt(&|b| {
                let n = b.len();
                b[n - 2] = 3
            }),
            Err(CheckpointError::BadReplyState { index: 0, value: 3 })
        );
        assert_eq!(
            rebuilt(&|b| {
                // orig packets as a two-byte varint 0x82 0x00: not the shortest form.
                b[42] = 0x82;
                b.insert(43, 0x00);
            }),
            Err(CheckpointError::BadVarint {
                index: 0,
                field: "original packets"
            })
        );
    }
}
