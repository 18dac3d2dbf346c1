//! Netlink and nfnetlink framing: headers, attribute iteration, constants.
//!
//! Layouts (host byte order for netlink headers, see `linux/netlink.h`):
//!
//! ```text
//! nlmsghdr  : len u32 | type u16 | flags u16 | seq u32 | pid u32      (16 bytes)
//! nfgenmsg  : family u8 | version u8 | res_id u16 (big-endian)       (4 bytes)
//! nlattr    : len u16 | type u16 (bit 15 NESTED, bit 14 NET_BYTEORDER) | value, padded to 4
//! ```

/// Netlink header length.
pub const NLMSG_HDRLEN: usize = 16;
/// nfgenmsg length.
pub const NFGEN_HDRLEN: usize = 4;

/// `NLMSG_NOOP`.
pub const NLMSG_NOOP: u16 = 1;
/// `NLMSG_ERROR`: payload is a negative errno and the request's header.
pub const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`: end of a multipart dump.
pub const NLMSG_DONE: u16 = 3;
/// `NLMSG_OVERRUN`.
pub const NLMSG_OVERRUN: u16 = 4;

/// Request flag.
pub const NLM_F_REQUEST: u16 = 0x1;
/// Part of a multipart reply.
pub const NLM_F_MULTI: u16 = 0x2;
/// Ask for an ack.
pub const NLM_F_ACK: u16 = 0x4;
/// Dump was inconsistent (the table changed during it).
pub const NLM_F_DUMP_INTR: u16 = 0x10;
/// Dump the whole table (`NLM_F_ROOT | NLM_F_MATCH`).
pub const NLM_F_DUMP: u16 = 0x300;
/// Fail if the entry exists.
pub const NLM_F_EXCL: u16 = 0x200;
/// Create the entry.
pub const NLM_F_CREATE: u16 = 0x400;

/// nfnetlink subsystem of ctnetlink.
pub const NFNL_SUBSYS_CTNETLINK: u16 = 1;
/// New entry (dump replies, NEW events, inserts).
pub const IPCTNL_MSG_CT_NEW: u16 = 0;
/// Get / dump.
pub const IPCTNL_MSG_CT_GET: u16 = 1;
/// Delete (DESTROY events).
pub const IPCTNL_MSG_CT_DELETE: u16 = 2;

/// Multicast group of NEW events (`NFNLGRP_CONNTRACK_NEW`).
pub const NFNLGRP_CONNTRACK_NEW: u32 = 1;
/// Multicast group of UPDATE events.
pub const NFNLGRP_CONNTRACK_UPDATE: u32 = 2;
/// Multicast group of DESTROY events.
pub const NFNLGRP_CONNTRACK_DESTROY: u32 = 3;

/// Attribute type flag: the attribute nests others.
pub const NLA_F_NESTED: u16 = 0x8000;
/// Attribute type flag: the value is in network byte order.
pub const NLA_F_NET_BYTEORDER: u16 = 0x4000;
/// Mask that removes both flags.
pub const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);

/// Rounds up to the netlink alignment (4).
#[inline]
pub const fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// A netlink message header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Length of the whole message, header included.
    pub len: u32,
    /// Message type (`subsys << 8 | msg` for nfnetlink).
    pub kind: u16,
    /// Flags.
    pub flags: u16,
    /// Sequence number.
    pub seq: u32,
    /// Port id of the sender (0 = kernel).
    pub pid: u32,
}

impl Header {
    /// Reads a header from the first 16 bytes; `None` if fewer.
    #[inline]
    pub fn parse(b: &[u8]) -> Option<Header> {
        let h = b.get(..NLMSG_HDRLEN)?;
        Some(Header {
            len: u32::from_ne_bytes([h[0], h[1], h[2], h[3]]),
            kind: u16::from_ne_bytes([h[4], h[5]]),
            flags: u16::from_ne_bytes([h[6], h[7]]),
            seq: u32::from_ne_bytes([h[8], h[9], h[10], h[11]]),
            pid: u32::from_ne_bytes([h[12], h[13], h[14], h[15]]),
        })
    }

    /// Appends the header to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.len.to_ne_bytes());
        out.extend_from_slice(&self.kind.to_ne_bytes());
        out.extend_from_slice(&self.flags.to_ne_bytes());
        out.extend_from_slice(&self.seq.to_ne_bytes());
        out.extend_from_slice(&self.pid.to_ne_bytes());
    }
}

/// A malformed framing: what was wrong and where.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// A message header says a length that is shorter than a header or runs past the buffer.
    BadMessageLength {
        /// Offset of the message in the buffer.
        offset: usize,
        /// The length the header claimed.
        len: u32,
        /// Bytes left in the buffer.
        available: usize,
    },
    /// An attribute's length is shorter than its header or runs past its container.
    BadAttributeLength {
        /// The attribute's type.
        kind: u16,
        /// The length it claimed.
        len: u16,
        /// Bytes left in its container.
        available: usize,
    },
}

/// Iterates over the netlink messages in one datagram.
#[derive(Debug, Clone)]
pub struct Messages<'a> {
    buf: &'a [u8],
    offset: usize,
}

impl<'a> Messages<'a> {
    /// Messages in `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Messages { buf, offset: 0 }
    }
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<(Header, &'a [u8]), FrameError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let rest = &self.buf[self.offset..];
        if rest.len() < NLMSG_HDRLEN {
            return None;
        }
        let h = Header::parse(rest)?;
        let len = h.len as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            self.offset = self.buf.len();
            return Some(Err(FrameError::BadMessageLength {
                offset: self.buf.len() - rest.len(),
                len: h.len,
                available: rest.len(),
            }));
        }
        self.offset += align(len).min(rest.len());
        Some(Ok((h, &rest[NLMSG_HDRLEN..len])))
    }
}

/// Iterates over the attributes of a message or of a nested attribute, yielding
/// `(type without flags, value)`.
#[derive(Debug, Clone)]
pub struct Attrs<'a> {
    buf: &'a [u8],
}

impl<'a> Attrs<'a> {
    /// Attributes in `buf`.
    #[inline]
    pub fn new(buf: &'a [u8]) -> Self {
        Attrs { buf }
    }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<(u16, &'a [u8]), FrameError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([self.buf[0], self.buf[1]]);
        let kind = u16::from_ne_bytes([self.buf[2], self.buf[3]]);
        let l = len as usize;
        if l < 4 || l > self.buf.len() {
            let available = self.buf.len();
            self.buf = &[];
            return Some(Err(FrameError::BadAttributeLength {
                kind: kind & NLA_TYPE_MASK,
                len,
                available,
            }));
        }
        let value = &self.buf[4..l];
        self.buf = &self.buf[align(l).min(self.buf.len())..];
        Some(Ok((kind & NLA_TYPE_MASK, value)))
    }
}

/// Appends an attribute with `value`, padded to 4.
pub fn put_attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(align(out.len()), 0);
}

/// Starts a nested attribute; finish it with [`end_nested`].
pub fn begin_nested(out: &mut Vec<u8>, kind: u16) -> usize {
    let at = out.len();
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    at
}

/// Writes the length of the nested attribute started at `at`.
pub fn end_nested(out: &mut [u8], at: usize) {
    let len = (out.len() - at) as u16;
    out[at..at + 2].copy_from_slice(&len.to_ne_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attrs_mask_flags_and_skip_padding() {
        // len=5 type=NESTED|9, value 0xAA, 3 bytes pad; len=8 type=12 value 00 00 00 07
        let buf = [5, 0, 0x09, 0x80, 0xAA, 0, 0, 0, 8, 0, 12, 0, 0, 0, 0, 7];
        let got: Vec<_> = Attrs::new(&buf).collect::<Result<_, _>>().expect("valid");
        assert_eq!(got, vec![(9, &[0xAA][..]), (12, &[0, 0, 0, 7][..])]);
    }

    #[test]
    fn attrs_report_overlong_attribute() {
        let buf = [40, 0, 3, 0, 1, 2, 3, 4];
        let got: Vec<_> = Attrs::new(&buf).collect();
        assert_eq!(
            got,
            vec![Err(FrameError::BadAttributeLength {
                kind: 3,
                len: 40,
                available: 8
            })]
        );
    }

    #[test]
    fn messages_report_bad_length_and_stop() {
        let mut buf = Vec::new();
        Header {
            len: 20,
            kind: 3,
            flags: 2,
            seq: 1,
            pid: 0,
        }
        .write(&mut buf);
        buf.extend_from_slice(&[0; 4]);
        Header {
            len: 8,
            kind: 3,
            flags: 0,
            seq: 2,
            pid: 0,
        }
        .write(&mut buf);
        let got: Vec<_> = Messages::new(&buf).collect();
        assert_eq!(got.len(), 2);
        assert!(matches!(got[0], Ok((Header { kind: 3, seq: 1, .. }, p)) if p.len() == 4));
        assert_eq!(
            got[1],
            Err(FrameError::BadMessageLength {
                offset: 20,
                len: 8,
                available: 16
            })
        );
    }
}
