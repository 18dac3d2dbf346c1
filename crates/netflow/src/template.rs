//! Templates compiled into a field plan, and the per-record decode loop over it.
//!
//! The plan maps each template field to an [`Op`] once, when the template arrives,
//! so decoding a record is a tight loop over a small slice with no lookups and no
//! allocation.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Field length marking an IPFIX variable-length field (RFC 7011 §7).
pub(crate) const VARLEN: u16 = 0xFFFF;

/// What to do with one field of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Skip,
    Bytes,
    Packets,
    Proto,
    TcpFlags,
    SrcPort,
    DstPort,
    SrcV4,
    DstV4,
    SrcV6,
    DstV6,
    InIf,
    OutIf,
    StartUptime,
    EndUptime,
    StartSecs,
    EndSecs,
    StartMs,
    EndMs,
    StartNtp,
    EndNtp,
    /// pmacct's 16-byte flowStart/EndMicroseconds (`nfprobe_tstamp_usec`): a Unix
    /// `struct timeval` of two big-endian u64s, seconds then microseconds, where
    /// RFC 7011 has 8-byte NTP time. Decoded to ns since the epoch.
    StartTimeval,
    EndTimeval,
    StartDeltaUs,
    EndDeltaUs,
    SysInitMs,
    Direction,
    EndReason,
    IcmpTypeCode,
    SamplerId,
    SamplingInterval,
    SamplerRandomInterval,
    PacketInterval,
    PacketSpace,
}

/// One template field: its op and its length (or [`VARLEN`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Field {
    pub op: Op,
    pub len: u16,
}

/// A field as the template declared it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FieldSpec {
    pub id: u16,
    pub len: u16,
    pub enterprise: Option<u32>,
    /// A v9 options scope field: its type numbers are not information elements.
    pub v9_scope: bool,
}

/// A compiled template.
#[derive(Clone, Debug)]
pub(crate) struct Template {
    pub fields: Vec<Field>,
    /// Smallest possible record (a variable-length field counts its 1-byte prefix).
    pub min_len: usize,
    /// Options template: its records update sampling state instead of making flows.
    pub options: bool,
    /// Enterprise-specific fields per record (skipped).
    pub enterprise_fields: u32,
    /// The raw template record, to recognise a refresh without recompiling.
    pub raw: Vec<u8>,
    /// When it was last (re)announced, in the caller's seconds.
    pub seen: u64,
    /// With no variable-length field every record is `min_len` bytes: the fields that
    /// are not skipped, at their offsets in it ([`decode_fixed`]). None otherwise.
    pub plan: Option<Vec<Planned>>,
}

/// A field of a fixed-length template that is read: where it lies in the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Planned {
    pub op: Op,
    /// Offset in the record (a record lies in one set: below 2^16 bytes).
    pub off: u16,
    pub len: u16,
}

fn op_for(id: u16, len: u16) -> Op {
    let int = (1..=8).contains(&len);
    let op = match id {
        1 => Op::Bytes,
        2 => Op::Packets,
        // Totals stand in for deltas only when the deltas are absent (see compile).
        85 => Op::Bytes,
        86 => Op::Packets,
        4 => Op::Proto,
        6 => Op::TcpFlags,
        7 => Op::SrcPort,
        11 => Op::DstPort,
        8 if len == 4 => return Op::SrcV4,
        12 if len == 4 => return Op::DstV4,
        27 if len == 16 => return Op::SrcV6,
        28 if len == 16 => return Op::DstV6,
        10 => Op::InIf,
        14 => Op::OutIf,
        22 => Op::StartUptime,
        21 => Op::EndUptime,
        150 => Op::StartSecs,
        151 => Op::EndSecs,
        152 => Op::StartMs,
        153 => Op::EndMs,
        154 | 156 if len == 8 => return Op::StartNtp,
        155 | 157 if len == 8 => return Op::EndNtp,
        154 if len == 16 => return Op::StartTimeval,
        155 if len == 16 => return Op::EndTimeval,
        158 => Op::StartDeltaUs,
        159 => Op::EndDeltaUs,
        160 => Op::SysInitMs,
        61 => Op::Direction,
        136 => Op::EndReason,
        32 | 139 => Op::IcmpTypeCode,
        48 | 302 => Op::SamplerId,
        34 => Op::SamplingInterval,
        50 => Op::SamplerRandomInterval,
        305 => Op::PacketInterval,
        306 => Op::PacketSpace,
        _ => Op::Skip,
    };
    if int { op } else { Op::Skip }
}

impl Template {
    /// Compiles declared fields into a plan; `None` when no record could have a length.
    pub fn compile(specs: &[FieldSpec], options: bool, raw: &[u8], seen: u64) -> Option<Template> {
        let mut fields = Vec::with_capacity(specs.len());
        let mut min_len = 0usize;
        let mut enterprise_fields = 0;
        let has_delta_bytes = specs.iter().any(|f| f.id == 1 && f.enterprise.is_none());
        let has_delta_packets = specs.iter().any(|f| f.id == 2 && f.enterprise.is_none());
        for s in specs {
            let op = if s.enterprise.is_some() {
                enterprise_fields += 1;
                Op::Skip
            } else if s.v9_scope {
                Op::Skip
            } else {
                match (s.id, op_for(s.id, s.len)) {
                    (85, _) if has_delta_bytes => Op::Skip,
                    (86, _) if has_delta_packets => Op::Skip,
                    (_, op) => op,
                }
            };
            min_len += if s.len == VARLEN {
                1
            } else {
                usize::from(s.len)
            };
            fields.push(Field { op, len: s.len });
        }
        // A record longer than 2^16 bytes cannot lie in a set: such a template keeps
        // the general decode (which finds it past the set), never a plan.
        let fixed = fields.iter().all(|f| f.len != VARLEN) && min_len <= usize::from(u16::MAX);
        let plan = fixed.then(|| {
            let mut off = 0u16;
            let mut plan = Vec::new();
            for f in &fields {
                if f.op != Op::Skip {
                    plan.push(Planned {
                        op: f.op,
                        off,
                        len: f.len,
                    });
                }
                // min_len (the sum of the lengths) fits in a u16.
                off = off.saturating_add(f.len);
            }
            plan
        });
        (min_len > 0).then(|| Template {
            fields,
            min_len,
            options,
            enterprise_fields,
            raw: raw.to_vec(),
            seen,
            plan,
        })
    }
}

/// The values of one record, before they are put in context (times, sampling).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Raw {
    pub bytes: u64,
    pub packets: u64,
    pub proto: u8,
    pub tcp_flags: u16,
    pub src_port: u16,
    pub dst_port: u16,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub in_if: u32,
    pub out_if: u32,
    pub start: (Op, u64),
    pub end: (Op, u64),
    pub sys_init_ms: u64,
    pub direction: Option<u8>,
    pub end_reason: Option<u8>,
    pub icmp: Option<u16>,
    pub sampler_id: Option<u64>,
    pub sampling_interval: u64,
    pub random_interval: u64,
    pub packet_interval: u64,
    pub packet_space: u64,
}

impl Default for Raw {
    fn default() -> Self {
        let unspecified = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        Raw {
            bytes: 0,
            packets: 0,
            proto: 0,
            tcp_flags: 0,
            src_port: 0,
            dst_port: 0,
            src: unspecified,
            dst: unspecified,
            in_if: 0,
            out_if: 0,
            start: (Op::Skip, 0),
            end: (Op::Skip, 0),
            sys_init_ms: 0,
            direction: None,
            end_reason: None,
            icmp: None,
            sampler_id: None,
            sampling_interval: 0,
            random_interval: 0,
            packet_interval: 0,
            packet_space: 0,
        }
    }
}

/// Big-endian unsigned integer of 1 to 8 bytes (IPFIX reduced-size encoding).
#[inline(always)]
fn be(b: &[u8]) -> u64 {
    match *b {
        [a] => u64::from(a),
        [a, b] => u64::from(u16::from_be_bytes([a, b])),
        [a, b, c, d] => u64::from(u32::from_be_bytes([a, b, c, d])),
        [a, b, c, d, e, f, g, h] => u64::from_be_bytes([a, b, c, d, e, f, g, h]),
        _ => b.iter().fold(0u64, |acc, x| acc << 8 | u64::from(*x)),
    }
}

/// ns since the epoch from pmacct's 16-byte timeval (see [`Op::StartTimeval`]).
fn timeval_ns(v: &[u8]) -> u64 {
    let (secs, usecs) = v.split_at(8);
    be(secs)
        .saturating_mul(1_000_000_000)
        .saturating_add(be(usecs).saturating_mul(1000))
}

/// Decodes one record starting at `*pos` in `set` and advances `*pos` past it.
///
/// Returns the index of the field that ran past the set on failure.
#[inline]
pub(crate) fn decode_record(
    fields: &[Field],
    set: &[u8],
    pos: &mut usize,
    raw: &mut Raw,
) -> Result<(), usize> {
    let mut p = *pos;
    for (i, f) in fields.iter().enumerate() {
        let len = if f.len == VARLEN {
            // RFC 7011 §7: one length byte, or 255 then a two-byte length.
            let first = *set.get(p).ok_or(i)?;
            if first == 255 {
                let l = set.get(p + 1..p + 3).ok_or(i)?;
                p += 3;
                usize::from(u16::from_be_bytes([l[0], l[1]]))
            } else {
                p += 1;
                usize::from(first)
            }
        } else {
            usize::from(f.len)
        };
        let v = set.get(p..p + len).ok_or(i)?;
        p += len;
        apply(f.op, v, raw);
    }
    *pos = p;
    Ok(())
}

/// Decodes one record of a fixed-length template: `rec` is exactly `min_len` bytes and
/// only the planned fields are read (the offsets were checked when the template was
/// compiled; a field that would not fit is skipped, it cannot panic).
#[inline]
pub(crate) fn decode_fixed(plan: &[Planned], rec: &[u8], raw: &mut Raw) {
    for p in plan {
        let off = usize::from(p.off);
        if let Some(v) = rec.get(off..off + usize::from(p.len)) {
            apply(p.op, v, raw);
        }
    }
}

/// What field value `v` sets in the record.
#[inline(always)]
fn apply(op: Op, v: &[u8], raw: &mut Raw) {
    match op {
        Op::Skip => {}
        Op::Bytes => raw.bytes = be(v),
        Op::Packets => raw.packets = be(v),
        Op::Proto => raw.proto = be(v) as u8,
        Op::TcpFlags => raw.tcp_flags = be(v) as u16,
        Op::SrcPort => raw.src_port = be(v) as u16,
        Op::DstPort => raw.dst_port = be(v) as u16,
        Op::SrcV4 | Op::DstV4 => {
            let a = IpAddr::V4(Ipv4Addr::from(be(v) as u32));
            if op == Op::SrcV4 {
                raw.src = a
            } else {
                raw.dst = a
            }
        }
        Op::SrcV6 | Op::DstV6 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(v);
            let a = IpAddr::V6(Ipv6Addr::from(o));
            if op == Op::SrcV6 {
                raw.src = a
            } else {
                raw.dst = a
            }
        }
        Op::InIf => raw.in_if = be(v) as u32,
        Op::OutIf => raw.out_if = be(v) as u32,
        Op::StartUptime | Op::StartSecs | Op::StartMs | Op::StartNtp | Op::StartDeltaUs => {
            raw.start = (op, be(v))
        }
        Op::EndUptime | Op::EndSecs | Op::EndMs | Op::EndNtp | Op::EndDeltaUs => {
            raw.end = (op, be(v))
        }
        Op::StartTimeval => raw.start = (op, timeval_ns(v)),
        Op::EndTimeval => raw.end = (op, timeval_ns(v)),
        Op::SysInitMs => raw.sys_init_ms = be(v),
        Op::Direction => raw.direction = Some(be(v) as u8),
        Op::EndReason => raw.end_reason = Some(be(v) as u8),
        Op::IcmpTypeCode => raw.icmp = Some(be(v) as u16),
        Op::SamplerId => raw.sampler_id = Some(be(v)),
        Op::SamplingInterval => raw.sampling_interval = be(v),
        Op::SamplerRandomInterval => raw.random_interval = be(v),
        Op::PacketInterval => raw.packet_interval = be(v),
        Op::PacketSpace => raw.packet_space = be(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: u16, len: u16) -> FieldSpec {
        FieldSpec {
            id,
            len,
            enterprise: None,
            v9_scope: false,
        }
    }

    #[test]
    fn reduced_size_and_odd_lengths_decode_big_endian() {
        assert_eq!(be(&[0x01, 0x02, 0x03]), 0x010203);
        assert_eq!(be(&[0xff; 8]), u64::MAX);
        assert_eq!(be(&[7]), 7);
    }

    #[test]
    fn addresses_of_the_wrong_length_are_skipped_and_totals_yield_to_deltas() {
        let t = Template::compile(
            &[spec(8, 3), spec(1, 4), spec(85, 8), spec(2, 9)],
            false,
            &[],
            0,
        )
        .expect("template");
        let ops: Vec<Op> = t.fields.iter().map(|f| f.op).collect();
        assert_eq!(ops, vec![Op::Skip, Op::Bytes, Op::Skip, Op::Skip]);
        assert_eq!(t.min_len, 3 + 4 + 8 + 9);
    }

    #[test]
    fn pmacct_16_byte_microsecond_times_are_timevals() {
        // flowEndMicroseconds (155) and flowStartMicroseconds (154) as pmacctd's
        // nfprobe sends them with nfprobe_tstamp_usec (v9 and IPFIX alike); 16 bytes,
        // not RFC 7011's 8-byte NTP time. From tests/data/pmacctd_sampled_v9.pcap.
        let t = Template::compile(&[spec(155, 16), spec(154, 16)], false, &[], 0).expect("t");
        #[rustfmt::skip]
        let set = [
            0x00, 0x00, 0x00, 0x00, 0x6b, 0x07, 0x15, 0x2f, // end: 1795626287 s (Unix)
            0x00, 0x00, 0x00, 0x00, 0x00, 0x09, 0xb3, 0x8d, //      635789 µs
            0x00, 0x00, 0x00, 0x00, 0x6b, 0x07, 0x15, 0x2f, // start: 1795626287 s
            0x00, 0x00, 0x00, 0x00, 0x00, 0x09, 0xa7, 0xcb, //        632779 µs
        ];
        let mut raw = Raw::default();
        let mut pos = 0;
        decode_record(&t.fields, &set, &mut pos, &mut raw).expect("fits");
        assert_eq!(pos, 32);
        assert_eq!(raw.end, (Op::EndTimeval, 1_795_626_287_635_789_000));
        assert_eq!(raw.start, (Op::StartTimeval, 1_795_626_287_632_779_000));
        // Other lengths of the time elements are not guessed at.
        for (id, len) in [(154, 12), (156, 16), (157, 16), (155, 4)] {
            let t = Template::compile(&[spec(id, len)], false, &[], 0).expect("t");
            assert_eq!(t.fields[0].op, Op::Skip, "{id}/{len}");
        }
    }

    #[test]
    fn empty_templates_are_refused() {
        assert!(Template::compile(&[spec(1, 0)], false, &[], 0).is_none());
    }

    #[test]
    fn varlen_field_with_three_byte_length_is_skipped_whole() {
        let t = Template::compile(&[spec(82, VARLEN), spec(4, 1)], false, &[], 0).expect("t");
        let mut set = vec![255, 0x01, 0x00];
        set.extend(std::iter::repeat_n(b'x', 256));
        set.push(17);
        let mut raw = Raw::default();
        let mut pos = 0;
        decode_record(&t.fields, &set, &mut pos, &mut raw).expect("fits");
        assert_eq!(pos, set.len());
        assert_eq!(raw.proto, 17);
        let mut pos = 0;
        assert_eq!(
            decode_record(&t.fields, &set[..100], &mut pos, &mut raw),
            Err(0)
        );
    }

    #[test]
    fn a_record_longer_than_a_set_gets_no_plan_and_offsets_fit_the_plan() {
        // 5 × 20,000 bytes: no set (at most 65,535 bytes) holds such a record.
        let long: Vec<FieldSpec> = (0..5).map(|_| spec(1, 20_000)).collect();
        let t = Template::compile(&long, false, &[], 0).expect("template");
        assert_eq!(t.min_len, 100_000);
        assert!(t.plan.is_none(), "the general decode finds it past the set");
        let t = Template::compile(&[spec(8, 4), spec(82, 65_000), spec(4, 1)], false, &[], 0)
            .expect("template");
        let plan = t.plan.expect("fixed");
        assert_eq!(
            plan.iter()
                .map(|p| (p.op, p.off, p.len))
                .collect::<Vec<_>>(),
            vec![(Op::SrcV4, 0, 4), (Op::Proto, 65_004, 1)]
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// A fixed-length template's plan reads every record as the field loop does.
        #[test]
        fn the_fixed_plan_decodes_like_the_field_loop(
            fields in proptest::collection::vec(
                (proptest::sample::select(vec![1u16, 2, 4, 6, 7, 8, 10, 11, 12, 14, 21, 22,
                    27, 28, 32, 34, 48, 61, 85, 136, 150, 152, 154, 155, 160, 200, 305]),
                 proptest::sample::select(vec![1u16, 2, 3, 4, 8, 16])),
                1..24),
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
        ) {
            let specs: Vec<FieldSpec> = fields.iter().map(|&(id, len)| spec(id, len)).collect();
            let t = Template::compile(&specs, false, &[], 0).expect("template");
            let plan = t.plan.as_deref().expect("a fixed template has a plan");
            let mut pos = 0;
            while bytes.len() - pos >= t.min_len {
                let (mut a, mut b) = (Raw::default(), Raw::default());
                let mut p = pos;
                proptest::prop_assert!(decode_record(&t.fields, &bytes, &mut p, &mut a).is_ok());
                decode_fixed(plan, &bytes[pos..pos + t.min_len], &mut b);
                proptest::prop_assert_eq!(a, b);
                proptest::prop_assert_eq!(p, pos + t.min_len);
                pos = p;
            }
        }
    }
}
