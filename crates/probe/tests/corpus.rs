//! Replays every saved fuzz input (seeds and any crash copied there) through the
//! decoders: `cargo test` keeps what the fuzzer found fixed.

use podflow_probe::dns::{QType, decode_answer};
use podflow_probe::{icmp, wire};

fn inputs(dir: &str) -> Vec<(String, Vec<u8>)> {
    let path = format!("{}/fuzz/seeds/{dir}", env!("CARGO_MANIFEST_DIR"));
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(&path)
        .expect("seed folder")
        .map(|e| {
            let p = e.expect("entry").path();
            (p.display().to_string(), std::fs::read(&p).expect("seed"))
        })
        .collect();
    v.sort();
    v
}

#[test]
fn wire_seeds() {
    let seeds = inputs("wire");
    assert!(seeds.len() >= 3);
    for (name, b) in &seeds {
        let r = wire::decode(b);
        if name.contains("request") || name.contains("reply-") {
            assert!(r.is_ok(), "{name}: {r:?}");
        }
        let mut c = b.clone();
        let _ = wire::reply_in_place(&mut c, 1, 2);
        let _ = icmp::echo_reply(b, false, false);
    }
}

#[test]
fn dns_seeds() {
    let seeds = inputs("dns");
    assert!(!seeds.is_empty());
    for (name, b) in &seeds {
        let r = decode_answer(b, 0xbeef, "example.com", QType::A);
        assert!(r.is_ok(), "{name}: {r:?}");
    }
}
