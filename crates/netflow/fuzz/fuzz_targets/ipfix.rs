//! Fuzzes the decoder with datagrams whose version field says 10.
#![no_main]

use libfuzzer_sys::fuzz_target;
use podflow_netflow::Decoder;

fuzz_target!(|data: &[u8]| {
    let mut pkt = Vec::with_capacity(data.len() + 2);
    pkt.extend_from_slice(&10u16.to_be_bytes());
    pkt.extend_from_slice(data.get(2..).unwrap_or_default());
    let exporter = "127.0.0.1:2055".parse().expect("constant address");
    let mut d = Decoder::default();
    let mut out = Vec::new();
    // Twice: the first pass installs templates, the second decodes data with them.
    let _ = d.decode(exporter, &pkt, 0, &mut out);
    let _ = d.decode(exporter, &pkt, 1, &mut out);
    d.expire(10_000);
});
