//! Arbitrary bytes as the answer to an `example.com A` query (id 0xbeef): the decoder
//! must never panic, whatever the pointers and counts say.
#![no_main]

use libfuzzer_sys::fuzz_target;
use podflow_probe::dns::{QType, decode_answer};

fuzz_target!(|data: &[u8]| {
    let _ = decode_answer(data, 0xbeef, "example.com", QType::A);
    let _ = decode_answer(data, 0xbeef, "example.com", QType::Aaaa);
});
