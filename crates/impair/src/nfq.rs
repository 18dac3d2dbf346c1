//! The little of nfnetlink_queue a delayer needs (linux/netfilter/nfnetlink_queue.h):
//! bind a queue, read packet ids, send verdicts. Message building and parsing are
//! pure; netlink headers are host-endian, nfnetlink attributes big-endian.

const NFNL_SUBSYS_QUEUE: u16 = 3;
const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_VERDICT: u16 = 1;
const NFQNL_MSG_CONFIG: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLMSG_ERROR: u16 = 2;

const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQA_CFG_MASK: u16 = 4;
const NFQA_CFG_FLAGS: u16 = 5;
const NFQNL_CFG_CMD_BIND: u8 = 1;
const NFQNL_CFG_CMD_UNBIND: u8 = 2;
const NFQNL_COPY_META: u8 = 1;
const NFQA_CFG_F_FAIL_OPEN: u32 = 1;
const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;

/// NF_ACCEPT.
pub const NF_ACCEPT: u32 = 1;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Builds one nfnetlink message for queue `queue` with `attrs` (type, payload).
fn message(msg: u16, flags: u16, seq: u32, queue: u16, attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut b = vec![0u8; 16];
    b.extend_from_slice(&[0, 0]); // nfgenmsg: family AF_UNSPEC, version 0
    b.extend_from_slice(&queue.to_be_bytes()); // res_id
    for (ty, payload) in attrs {
        let len = 4 + payload.len();
        b.extend_from_slice(&(len as u16).to_ne_bytes());
        b.extend_from_slice(&ty.to_ne_bytes());
        b.extend_from_slice(payload);
        b.resize(align4(b.len()), 0);
    }
    let total = b.len() as u32;
    b[0..4].copy_from_slice(&total.to_ne_bytes());
    b[4..6].copy_from_slice(&((NFNL_SUBSYS_QUEUE << 8) | msg).to_ne_bytes());
    b[6..8].copy_from_slice(&flags.to_ne_bytes());
    b[8..12].copy_from_slice(&seq.to_ne_bytes());
    b
}

/// Bind to queue `queue` (acked).
pub fn bind(seq: u32, queue: u16) -> Vec<u8> {
    message(
        NFQNL_MSG_CONFIG,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        queue,
        &[(NFQA_CFG_CMD, &[NFQNL_CFG_CMD_BIND, 0, 0, 0])],
    )
}

/// Unbind from queue `queue` (acked).
pub fn unbind(seq: u32, queue: u16) -> Vec<u8> {
    message(
        NFQNL_MSG_CONFIG,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        queue,
        &[(NFQA_CFG_CMD, &[NFQNL_CFG_CMD_UNBIND, 0, 0, 0])],
    )
}

/// Metadata only (no payload copies), at most `maxlen` packets held by the kernel,
/// and fail-open: when the queue is full the kernel accepts instead of dropping.
pub fn params(seq: u32, queue: u16, maxlen: u32) -> Vec<u8> {
    let mut p = [0u8; 5];
    p[4] = NFQNL_COPY_META;
    let fail_open = NFQA_CFG_F_FAIL_OPEN.to_be_bytes();
    message(
        NFQNL_MSG_CONFIG,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        queue,
        &[
            (NFQA_CFG_PARAMS, &p),
            (NFQA_CFG_QUEUE_MAXLEN, &maxlen.to_be_bytes()),
            (NFQA_CFG_MASK, &fail_open),
            (NFQA_CFG_FLAGS, &fail_open),
        ],
    )
}

/// The verdict `verdict` for packet `id`.
pub fn verdict(queue: u16, id: u32, verdict: u32) -> Vec<u8> {
    let mut v = [0u8; 8];
    v[..4].copy_from_slice(&verdict.to_be_bytes());
    v[4..].copy_from_slice(&id.to_be_bytes());
    message(
        NFQNL_MSG_VERDICT,
        NLM_F_REQUEST,
        0,
        queue,
        &[(NFQA_VERDICT_HDR, &v)],
    )
}

/// What one netlink message from the kernel said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A queued packet's id.
    Packet(u32),
    /// An ack (0) or error (negative errno) for request `seq`.
    Ack { seq: u32, errno: i32 },
    /// Anything else.
    Other,
}

/// Splits a datagram from the kernel into events; stops at the first malformed header.
pub fn parse(mut b: &[u8], out: &mut Vec<Event>) {
    while b.len() >= 16 {
        let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if len < 16 || len > b.len() {
            return;
        }
        let ty = u16::from_ne_bytes([b[4], b[5]]);
        let seq = u32::from_ne_bytes([b[8], b[9], b[10], b[11]]);
        let body = &b[16..len];
        let ev = if ty == NLMSG_ERROR && body.len() >= 4 {
            Event::Ack {
                seq,
                errno: i32::from_ne_bytes([body[0], body[1], body[2], body[3]]),
            }
        } else if ty == ((NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET) && body.len() >= 4 {
            packet_id(&body[4..]).map_or(Event::Other, Event::Packet)
        } else {
            Event::Other
        };
        out.push(ev);
        b = &b[align4(len).min(b.len())..];
    }
}

fn packet_id(mut attrs: &[u8]) -> Option<u32> {
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let ty = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if ty == NFQA_PACKET_HDR && len >= 8 {
            return Some(u32::from_be_bytes([attrs[4], attrs[5], attrs[6], attrs[7]]));
        }
        attrs = &attrs[align4(len).min(attrs.len())..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_bytes() {
        let m = verdict(7, 0x01020304, NF_ACCEPT);
        assert_eq!(m.len(), 16 + 4 + 12);
        assert_eq!(u32::from_ne_bytes([m[0], m[1], m[2], m[3]]), 32);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), 0x0301); // queue subsystem, verdict
        assert_eq!(&m[16..20], &[0, 0, 0, 7]); // AF_UNSPEC, v0, queue 7 big-endian
        assert_eq!(u16::from_ne_bytes([m[20], m[21]]), 12); // attr length
        assert_eq!(u16::from_ne_bytes([m[22], m[23]]), NFQA_VERDICT_HDR);
        assert_eq!(&m[24..32], &[0, 0, 0, 1, 1, 2, 3, 4]); // NF_ACCEPT, id
    }

    #[test]
    fn parses_packets_and_acks() {
        // A packet message: header, nfgenmsg, NFQA_PACKET_HDR {id 9, proto 0x0800, hook 3}.
        let mut pkt = message(
            NFQNL_MSG_PACKET,
            0,
            0,
            1,
            &[(NFQA_PACKET_HDR, &[0, 0, 0, 9, 8, 0, 3])],
        );
        let mut ack = vec![0u8; 16 + 4 + 16];
        ack[0..4].copy_from_slice(&36u32.to_ne_bytes());
        ack[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        ack[8..12].copy_from_slice(&5u32.to_ne_bytes());
        pkt.extend_from_slice(&ack);
        let mut ev = Vec::new();
        parse(&pkt, &mut ev);
        assert_eq!(ev, vec![Event::Packet(9), Event::Ack { seq: 5, errno: 0 }]);
        // Garbage and cut messages never panic.
        for n in 0..pkt.len() {
            parse(&pkt[..n], &mut Vec::new());
        }
        parse(&[0xff; 40], &mut Vec::new());
    }
}
