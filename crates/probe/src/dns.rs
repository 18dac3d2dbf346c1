//! A DNS query for one A or AAAA name, and the decoder of its answer (pure, RFC 1035).
//!
//! Only what a probe needs: one question, recursion desired; the answer's id, QR bit,
//! question and rcode are checked, A/AAAA records collected, everything else skipped.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::error::DnsError;

/// The most addresses kept from one answer.
pub const MAX_ADDRS: usize = 16;

/// Record type asked for.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum QType {
    /// IPv4 address (1).
    A,
    /// IPv6 address (28).
    Aaaa,
}

impl QType {
    /// The wire value.
    pub fn code(self) -> u16 {
        match self {
            QType::A => 1,
            QType::Aaaa => 28,
        }
    }
}

/// Response codes worth a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rcode {
    /// 0: no error.
    NoError,
    /// 2: the server failed.
    ServFail,
    /// 3: the name does not exist.
    NxDomain,
    /// 5: the server refused.
    Refused,
    /// Any other code.
    Other(u8),
}

impl Rcode {
    fn of(v: u8) -> Rcode {
        match v {
            0 => Rcode::NoError,
            2 => Rcode::ServFail,
            3 => Rcode::NxDomain,
            5 => Rcode::Refused,
            o => Rcode::Other(o),
        }
    }
}

impl std::fmt::Display for Rcode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rcode::NoError => f.write_str("NOERROR"),
            Rcode::ServFail => f.write_str("SERVFAIL"),
            Rcode::NxDomain => f.write_str("NXDOMAIN"),
            Rcode::Refused => f.write_str("REFUSED"),
            Rcode::Other(c) => write!(f, "rcode {c}"),
        }
    }
}

/// A decoded answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The response code.
    pub rcode: Rcode,
    /// The TC bit: the answer did not fit (the probe still counts what came).
    pub truncated: bool,
    /// Addresses of the type asked for (at most [`MAX_ADDRS`]).
    pub addrs: Vec<IpAddr>,
}

/// Writes a query for `name` (dots between labels, an optional final dot).
pub fn encode_query(id: u16, name: &str, qtype: QType, out: &mut Vec<u8>) -> Result<(), DnsError> {
    let bad = |why| DnsError::BadName {
        name: name.to_string(),
        why,
    };
    out.clear();
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[0x01, 0x00]); // RD
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // 1 question
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() {
        return Err(bad("empty name"));
    }
    let mut total = 1;
    for label in trimmed.split('.') {
        if label.is_empty() {
            return Err(bad("empty label"));
        }
        if label.len() > 63 {
            return Err(bad("label longer than 63 bytes"));
        }
        total += label.len() + 1;
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    if total > 255 {
        return Err(bad("name longer than 255 bytes"));
    }
    out.push(0);
    out.extend_from_slice(&qtype.code().to_be_bytes());
    out.extend_from_slice(&[0, 1]); // IN
    Ok(())
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DnsError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len());
        let Some(end) = end else {
            return Err(DnsError::Truncated {
                len: self.b.len(),
                at: self.at,
                what,
            });
        };
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, DnsError> {
        let s = self.take(2, what)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }

    /// Reads a (possibly compressed) name, lower-cased, labels joined by dots.
    fn name(&mut self, out: &mut Vec<u8>) -> Result<(), DnsError> {
        let start = self.at;
        let mut pos = self.at;
        let mut jumped = false;
        out.clear();
        // Each pointer must go strictly backwards: no loops, at most len jumps.
        let mut limit = pos;
        loop {
            let Some(&len) = self.b.get(pos) else {
                return Err(DnsError::Truncated {
                    len: self.b.len(),
                    at: pos,
                    what: "name",
                });
            };
            match len & 0xc0 {
                0x00 => {
                    pos += 1;
                    if len == 0 {
                        break;
                    }
                    let end = pos + len as usize;
                    let Some(label) = self.b.get(pos..end) else {
                        return Err(DnsError::Truncated {
                            len: self.b.len(),
                            at: pos,
                            what: "label",
                        });
                    };
                    if !out.is_empty() {
                        out.push(b'.');
                    }
                    out.extend(label.iter().map(u8::to_ascii_lowercase));
                    if out.len() > 255 {
                        return Err(DnsError::Name {
                            at: start,
                            why: "longer than 255 bytes",
                        });
                    }
                    pos = end;
                }
                0xc0 => {
                    let Some(&lo) = self.b.get(pos + 1) else {
                        return Err(DnsError::Truncated {
                            len: self.b.len(),
                            at: pos,
                            what: "name pointer",
                        });
                    };
                    let target = (((len & 0x3f) as usize) << 8) | lo as usize;
                    if target >= limit {
                        return Err(DnsError::Name {
                            at: start,
                            why: "compression pointer does not point backwards",
                        });
                    }
                    if !jumped {
                        self.at = pos + 2;
                        jumped = true;
                    }
                    limit = target;
                    pos = target;
                }
                _ => {
                    return Err(DnsError::Name {
                        at: start,
                        why: "reserved label type",
                    });
                }
            }
        }
        if !jumped {
            self.at = pos;
        }
        Ok(())
    }
}

/// Decodes the answer to the query `(id, name, qtype)`; never panics.
pub fn decode_answer(b: &[u8], id: u16, name: &str, qtype: QType) -> Result<Answer, DnsError> {
    let mut r = Reader { b, at: 0 };
    let got = r.u16("header")?;
    let flags = r.u16("header")?;
    let qd = r.u16("header")?;
    let an = r.u16("header")?;
    r.take(4, "header")?;
    if got != id {
        return Err(DnsError::Id { got, want: id });
    }
    if flags & 0x8000 == 0 {
        return Err(DnsError::NotResponse);
    }
    let rcode = Rcode::of((flags & 0x000f) as u8);
    let truncated = flags & 0x0200 != 0;
    let want = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let mut buf = Vec::with_capacity(64);
    // Servers echo the question (RFC 1035 4.1.2); an answer without it is not ours.
    if qd != 1 {
        return Err(DnsError::Question);
    }
    r.name(&mut buf)?;
    let qt = r.u16("question")?;
    let qc = r.u16("question")?;
    if buf != want.as_bytes() || qt != qtype.code() || qc != 1 {
        return Err(DnsError::Question);
    }
    let mut addrs = Vec::new();
    for _ in 0..an {
        r.name(&mut buf)?;
        let ty = r.u16("record")?;
        let class = r.u16("record")?;
        r.take(4, "record ttl")?;
        let len = r.u16("record")? as usize;
        let data = r.take(len, "record data")?;
        if class != 1 || ty != qtype.code() || addrs.len() >= MAX_ADDRS {
            continue; // CNAMEs and the rest are skipped
        }
        match (qtype, data.len()) {
            (QType::A, 4) => addrs.push(IpAddr::V4(Ipv4Addr::new(
                data[0], data[1], data[2], data[3],
            ))),
            (QType::Aaaa, 16) => {
                let mut a = [0u8; 16];
                a.copy_from_slice(data);
                addrs.push(IpAddr::V6(Ipv6Addr::from(a)));
            }
            _ => {}
        }
    }
    Ok(Answer {
        rcode,
        truncated,
        addrs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The query for `example.com A`, id 0xbeef.
    const QUERY: &[u8] = &[
        0xbe, 0xef, // id
        0x01, 0x00, // flags: RD
        0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // 1 question
        7, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 3, b'c', b'o', b'm', 0, // name
        0x00, 0x01, // type A
        0x00, 0x01, // class IN
    ];

    /// An answer: the question, a CNAME (skipped) and an A record through a pointer.
    fn answer() -> Vec<u8> {
        let mut b = QUERY.to_vec();
        b[2] = 0x81; // QR, RD
        b[3] = 0x80; // RA, rcode 0
        b[7] = 2; // 2 answers
        b.extend_from_slice(&[
            0xc0, 0x0c, // name: pointer to offset 12 (example.com)
            0x00, 0x05, 0x00, 0x01, // CNAME IN
            0, 0, 0, 60, // ttl
            0x00, 0x02, 0xc0, 0x0c, // rdata: pointer (skipped)
            0xc0, 0x0c, // name
            0x00, 0x01, 0x00, 0x01, // A IN
            0, 0, 0, 60, // ttl
            0x00, 0x04, 93, 184, 216, 34, // 93.184.216.34
        ]);
        b
    }

    #[test]
    fn encodes_annotated_query() {
        let mut b = Vec::new();
        encode_query(0xbeef, "example.com.", QType::A, &mut b).expect("valid name");
        assert_eq!(b, QUERY);
    }

    #[test]
    fn decodes_answer_through_pointers() {
        let a = decode_answer(&answer(), 0xbeef, "Example.COM", QType::A).expect("answer");
        assert_eq!(a.rcode, Rcode::NoError);
        assert_eq!(a.addrs, vec![IpAddr::V4(Ipv4Addr::new(93, 184, 216, 34))]);
    }

    #[test]
    fn checks_id_qr_question_rcode() {
        let b = answer();
        assert_eq!(
            decode_answer(&b, 1, "example.com", QType::A),
            Err(DnsError::Id {
                got: 0xbeef,
                want: 1
            })
        );
        assert_eq!(
            decode_answer(QUERY, 0xbeef, "example.com", QType::A),
            Err(DnsError::NotResponse)
        );
        assert_eq!(
            decode_answer(&b, 0xbeef, "example.org", QType::A),
            Err(DnsError::Question)
        );
        assert_eq!(
            decode_answer(&b, 0xbeef, "example.com", QType::Aaaa),
            Err(DnsError::Question)
        );
        let mut nx = b.clone();
        nx[3] = 0x83;
        nx[7] = 0;
        let a = decode_answer(&nx[..QUERY.len()], 0xbeef, "example.com", QType::A).expect("nx");
        assert_eq!((a.rcode, a.addrs.len()), (Rcode::NxDomain, 0));
        assert!(matches!(
            decode_answer(&b[..b.len() - 2], 0xbeef, "example.com", QType::A),
            Err(DnsError::Truncated { .. })
        ));
    }

    #[test]
    fn pointer_loops_are_rejected() {
        let mut b = answer();
        let at = QUERY.len(); // first answer's name
        b[at + 1] = at as u8; // points at itself
        assert!(matches!(
            decode_answer(&b, 0xbeef, "example.com", QType::A),
            Err(DnsError::Name { .. })
        ));
    }

    #[test]
    fn bad_names_are_refused() {
        let mut b = Vec::new();
        assert!(encode_query(1, "", QType::A, &mut b).is_err());
        assert!(encode_query(1, "a..b", QType::A, &mut b).is_err());
        assert!(encode_query(1, &"x".repeat(64), QType::A, &mut b).is_err());
        assert!(encode_query(1, &["abc"; 70].join("."), QType::A, &mut b).is_err());
    }

    proptest! {
        #[test]
        fn never_panics(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_answer(&b, 0xbeef, "example.com", QType::A);
        }

        #[test]
        fn never_panics_after_valid_header(tail in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut b = answer()[..QUERY.len()].to_vec();
            b[2] = 0x81;
            b[7] = 5;
            b.extend_from_slice(&tail);
            let _ = decode_answer(&b, 0xbeef, "example.com", QType::A);
        }

        #[test]
        fn query_round_trips_as_question(labels in proptest::collection::vec("[a-z0-9-]{1,20}", 1..5), aaaa: bool) {
            let name = labels.join(".");
            let q = if aaaa { QType::Aaaa } else { QType::A };
            let mut b = Vec::new();
            encode_query(42, &name, q, &mut b).expect("valid");
            b[2] |= 0x80;
            let a = decode_answer(&b, 42, &name, q).expect("own question");
            prop_assert!(a.addrs.is_empty());
        }
    }
}
