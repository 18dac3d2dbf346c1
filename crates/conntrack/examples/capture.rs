//! Captures real kernel ctnetlink messages into tests/data: builds a namespace pair,
//! subscribes to NEW/DESTROY events, drives a TCP exchange over IPv4 and a UDP exchange
//! over IPv6, dumps the table, deletes the entries, and writes the raw datagrams plus
//! what conntrack-tools printed at the same moments.
//!
//! `sudo cargo run -p podflow-conntrack --example capture -- crates/conntrack/tests/data`

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use podflow_conntrack::socket_recv::Recv;
use podflow_conntrack::{CtSocket, encode};
use podflow_testkit::{Pair, connect, exchange, serve};

fn drain(sock: &CtSocket, out: &mut Vec<u8>, wait: Duration) {
    let mut buf = vec![0u8; 64 << 10];
    while let Ok(Recv::Data(n)) = sock.recv(&mut buf, Some(wait), "capture") {
        out.extend_from_slice(&buf[..n]);
    }
}

fn main() {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "crates/conntrack/tests/data".into()),
    );
    if !podflow_testkit::can_run("capture") {
        std::process::exit(1);
    }
    let pair = Pair::new("cap").expect("namespaces");
    serve(&pair, 7001);
    let (events, dump_sock) = pair.a.run(|| {
        (
            CtSocket::open(0b101, 1 << 20, "events").expect("event socket"),
            CtSocket::open(0, 1 << 20, "dump").expect("dump socket"),
        )
    });
    let mut c = connect(&pair, Pair::B4, 7001);
    exchange(&mut c, 1000, 2000);
    let udp_port = pair.a.run(|| {
        let s = UdpSocket::bind("[::]:0").expect("bind");
        s.send_to(
            &[5u8; 100],
            SocketAddr::new(Pair::B6.parse().expect("ip"), 7002),
        )
        .expect("send");
        s.local_addr().expect("addr").port()
    });
    std::thread::sleep(Duration::from_millis(200));
    let listing = pair
        .a
        .sh("conntrack -L -o extended,id 2>/dev/null")
        .expect("conntrack -L");
    let mut dump = Vec::new();
    dump_sock
        .send(&encode::dump_request(1), "dump")
        .expect("dump request");
    let mut buf = vec![0u8; 64 << 10];
    while let Ok(Recv::Data(n)) = dump_sock.recv(&mut buf, None, "dump") {
        dump.extend_from_slice(&buf[..n]);
        if podflow_conntrack::nl::Messages::new(&buf[..n])
            .flatten()
            .any(|(h, _)| h.kind == podflow_conntrack::nl::NLMSG_DONE)
        {
            break;
        }
    }
    drop(c);
    pair.a
        .sh("conntrack -D >/dev/null 2>&1 || true")
        .expect("delete");
    let mut ev = Vec::new();
    drain(&events, &mut ev, Duration::from_millis(300));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("dump-tcp4-udp6.bin"), &dump).expect("write dump");
    std::fs::write(dir.join("events-tcp4-udp6.bin"), &ev).expect("write events");
    std::fs::write(dir.join("dump-tcp4-udp6.conntrack-L.txt"), &listing).expect("write listing");
    println!(
        "udp client port {udp_port}; wrote {} dump bytes, {} event bytes\n{listing}",
        dump.len(),
        ev.len()
    );
}
