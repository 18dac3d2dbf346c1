//! ICMP and ICMPv6 echo messages (pure). The payload carries the probe's own session
//! and sequence, so a reply is matched by its content, not by the identifier (which a
//! ping socket rewrites) or by whoever else is pinging.
//!
//! ```text
//! offset size field
//!  0     1    type: 8 echo request / 0 reply (IPv4), 128 / 129 (IPv6)
//!  1     1    code 0
//!  2     2    checksum (IPv4: computed here; IPv6: by the kernel)
//!  4     2    identifier
//!  6     2    sequence (low 16 bits of ours)
//!  8     4    "PFIC"
//! 12     8    session
//! 20     4    sequence
//! ```

/// Bytes of an echo request as sent.
pub const ECHO_LEN: usize = 24;
const MAGIC: &[u8; 4] = b"PFIC";

/// Builds an echo request.
pub fn echo_request(v6: bool, ident: u16, session: u64, seq: u32) -> [u8; ECHO_LEN] {
    let mut b = [0u8; ECHO_LEN];
    b[0] = if v6 { 128 } else { 8 };
    b[4..6].copy_from_slice(&ident.to_be_bytes());
    b[6..8].copy_from_slice(&(seq as u16).to_be_bytes());
    b[8..12].copy_from_slice(MAGIC);
    b[12..20].copy_from_slice(&session.to_be_bytes());
    b[20..24].copy_from_slice(&seq.to_be_bytes());
    if !v6 {
        let c = checksum(&b);
        b[2..4].copy_from_slice(&c.to_be_bytes());
    }
    b
}

/// The Internet checksum (RFC 1071).
pub fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in b.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += u32::from(w);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Reads `(session, seq)` from an echo reply. `raw_v4` says the bytes start with the
/// IPv4 header (a raw IPv4 socket); ping sockets and ICMPv6 sockets give the ICMP
/// message alone. `None` for anything that is not a reply to one of ours.
pub fn echo_reply(b: &[u8], v6: bool, raw_v4: bool) -> Option<(u64, u32)> {
    let b = if raw_v4 && !v6 {
        let ihl = usize::from(b.first()? & 0x0f) * 4;
        if b.first()? >> 4 != 4 || ihl < 20 {
            return None;
        }
        b.get(ihl..)?
    } else {
        b
    };
    let want = if v6 { 129 } else { 0 };
    if b.first() != Some(&want) || b.get(1) != Some(&0) {
        return None;
    }
    ids(b)
}

/// `(session, seq)` from the payload of an echo message of ours.
fn ids(b: &[u8]) -> Option<(u64, u32)> {
    if b.len() < ECHO_LEN || &b[8..12] != MAGIC {
        return None;
    }
    let mut s = [0u8; 8];
    s.copy_from_slice(&b[12..20]);
    Some((
        u64::from_be_bytes(s),
        u32::from_be_bytes([b[20], b[21], b[22], b[23]]),
    ))
}

/// Reads `(session, seq)` from an echo request (the copy the kernel returns with a
/// transmit timestamp).
pub fn echo_sent(b: &[u8]) -> Option<(u64, u32)> {
    if !matches!(b.first(), Some(8 | 128)) {
        return None;
    }
    ids(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn request_checksums_to_zero() {
        let b = echo_request(false, 0x1234, 9, 70_000);
        assert_eq!(checksum(&b), 0);
        assert_eq!(&b[..8], &[8, 0, b[2], b[3], 0x12, 0x34, 0x11, 0x70]);
        assert_eq!(echo_sent(&b), Some((9, 70_000)));
    }

    #[test]
    fn reply_with_and_without_ip_header() {
        let mut r = echo_request(false, 1, 5, 6);
        r[0] = 0;
        assert_eq!(echo_reply(&r, false, false), Some((5, 6)));
        let mut ip = vec![0x45u8; 1];
        ip.extend_from_slice(&[0; 19]);
        ip.extend_from_slice(&r);
        assert_eq!(echo_reply(&ip, false, true), Some((5, 6)));
        // A request (our own looped back, or someone else's) is not a reply.
        assert_eq!(
            echo_reply(&echo_request(false, 1, 5, 6), false, false),
            None
        );
        let mut r6 = echo_request(true, 1, 5, 6);
        r6[0] = 129;
        assert_eq!(echo_reply(&r6, true, false), Some((5, 6)));
    }

    proptest! {
        #[test]
        fn never_panics(b in proptest::collection::vec(any::<u8>(), 0..80), v6: bool, raw: bool) {
            let _ = echo_reply(&b, v6, raw);
            let _ = echo_sent(&b);
        }
    }
}
