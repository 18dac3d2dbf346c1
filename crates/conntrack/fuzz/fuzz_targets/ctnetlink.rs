//! Arbitrary bytes as a netlink datagram from the kernel: framing, decoding and the
//! tracker must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use podflow_conntrack::Tracker;
use podflow_conntrack::decode::{CtEvent, DecodeStats, decode_entry, event_of};
use podflow_conntrack::nl::Messages;

fuzz_target!(|data: &[u8]| {
    let mut stats = DecodeStats::default();
    let mut t = Tracker::new(0);
    t.begin_dump();
    for (h, p) in Messages::new(data).flatten() {
        let Ok(e) = decode_entry(p, &mut stats) else { continue };
        match event_of(&h) {
            Some(CtEvent::New) => t.on_new(&e, &mut |_| {}),
            Some(CtEvent::Destroy) => t.on_destroy(&e, &mut |_| {}),
            _ => t.on_dump(&e, &mut |_| {}),
        }
    }
    t.end_dump();
});
