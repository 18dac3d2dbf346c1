//! Replays every saved input under tests/data/corpus/ (fuzz finds and seeds) through
//! the decoder: none may panic. `PODFLOW_WRITE_CORPUS=1` (re)writes the seed files.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use podflow_netflow::Decoder;
use podflow_netflow::encode::{IPFIX_IPV4_18, Message, V5Flow, V5Header, V9_IPV4_18, Value, v5};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let rec = |i: u64| {
        let mut v = vec![
            Value::Ip(IpAddr::from([10, 0, 0, i as u8])),
            Value::Ip(IpAddr::from([10, 0, 1, i as u8])),
        ];
        v.extend((0..16).map(|k| Value::U(k + i)));
        v
    };
    let mut m9 = Message::v9(5000, 1_700_000_000, 1, 1);
    m9.template(256, &V9_IPV4_18)
        .data(256, &V9_IPV4_18, &[rec(1), rec(2)]);
    let mut mx = Message::ipfix(1_700_000_000, 0, 1);
    mx.template(256, &IPFIX_IPV4_18)
        .data(256, &IPFIX_IPV4_18, &[rec(1), rec(2)]);
    let f = V5Flow {
        src: [10, 0, 0, 1].into(),
        dst: [10, 0, 0, 2].into(),
        input: 1,
        output: 2,
        packets: 3,
        bytes: 300,
        first: 4000,
        last: 4500,
        src_port: 1234,
        dst_port: 80,
        tcp_flags: 0x1b,
        proto: 6,
    };
    let h = V5Header {
        sys_uptime: 5000,
        unix_secs: 1_700_000_000,
        ..Default::default()
    };
    vec![
        ("v5/seed-two-flows", v5(&h, &[f, f])),
        ("v9/seed-template-and-data", m9.build()),
        ("ipfix/seed-template-and-data", mx.build()),
    ]
}

#[test]
fn replay_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/corpus");
    if std::env::var_os("PODFLOW_WRITE_CORPUS").is_some() {
        for (name, bytes) in seeds() {
            let p = dir.join(name);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(&p, bytes).expect("write seed");
        }
    }
    let mut all = Vec::new();
    files(&dir, &mut all);
    all.sort();
    if all.is_empty() {
        eprintln!("NOTE: no corpus under {}: nothing replayed", dir.display());
        return;
    }
    let exporter: SocketAddr = "127.0.0.1:2055".parse().expect("addr");
    let mut shared = Decoder::default();
    let mut decoded = 0;
    for p in &all {
        let bytes = std::fs::read(p).expect("read corpus file");
        let mut out = Vec::new();
        // Twice on a fresh decoder (templates first, then data), and on one shared
        // decoder that has seen every earlier file.
        let mut fresh = Decoder::default();
        let _ = fresh.decode(exporter, &bytes, 0, &mut out);
        let _ = fresh.decode(exporter, &bytes, 1, &mut out);
        let _ = shared.decode(exporter, &bytes, 2, &mut out);
        decoded += 1;
    }
    assert_eq!(decoded, all.len());
    // The seeds are valid: each yields its two records on first sight.
    for (name, _) in seeds() {
        let p = dir.join(name);
        if let Ok(bytes) = std::fs::read(&p) {
            let mut out = Vec::new();
            let n = Decoder::default().decode(exporter, &bytes, 0, &mut out);
            assert_eq!(n, Ok(2), "{}", p.display());
        }
    }
}
