//! Arbitrary bytes as a probe datagram: decoding, answering in place and reading an
//! ICMP echo reply must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use podflow_probe::{icmp, wire};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = wire::decode(data) {
        let _ = wire::rtt_ns(p.t1_ns, p.t2_ns, p.t3_ns, p.t1_ns.wrapping_add(1));
    }
    let mut b = data.to_vec();
    let _ = wire::reply_in_place(&mut b, 1, 2);
    let _ = icmp::echo_reply(data, false, true);
    let _ = icmp::echo_reply(data, true, false);
    let _ = icmp::echo_sent(data);
});
