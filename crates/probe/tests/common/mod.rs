//! Namespaces for the probe tests: nodes joined by veth links, responders running in
//! them, torn down on drop (also when a test panics).
#![allow(dead_code)]

use std::net::IpAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use podflow_probe::responder::{Ports, Responder, ResponderConfig, ResponderCounters};
use podflow_testkit::Netns;
use tokio_util::sync::CancellationToken;

/// The responders' ports in these tests (each in its own namespace).
pub const PORTS: Ports = Ports {
    udp: 29470,
    tcp: 29471,
    http: 29472,
};

static LINK: AtomicU32 = AtomicU32::new(0);

/// Joins `a` and `b` with a veth pair: `a_ip/24` on a's end, `b_ip/24` on b's. Returns
/// the two interface names.
pub fn link(a: &Netns, b: &Netns, a_ip: &str, b_ip: &str) -> (String, String) {
    let n = LINK.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id() % 10000;
    let (va, vb) = (format!("pfpa{n}x{pid}"), format!("pfpb{n}x{pid}"));
    let ok = Command::new("ip")
        .args([
            "link",
            "add",
            &va,
            "netns",
            a.name(),
            "type",
            "veth",
            "peer",
            "name",
            &vb,
            "netns",
            b.name(),
        ])
        .status()
        .expect("ip link add");
    assert!(ok.success(), "ip link add {va} {vb}");
    a.sh(&format!(
        "ip addr add {a_ip}/24 dev {va} && ip link set {va} up"
    ))
    .expect("addr a");
    b.sh(&format!(
        "ip addr add {b_ip}/24 dev {vb} && ip link set {vb} up"
    ))
    .expect("addr b");
    (va, vb)
}

/// A responder running on its own thread (and runtime) inside a namespace.
pub struct Remote {
    pub ports: Ports,
    pub counters: Arc<ResponderCounters>,
    stop: CancellationToken,
    thread: Option<JoinHandle<()>>,
}

impl Remote {
    /// Starts a responder bound to `bind` in `ns` on [`PORTS`].
    pub fn start(ns: &Netns, bind: &str) -> Remote {
        let bind: IpAddr = bind.parse().expect("addr");
        let stop = CancellationToken::new();
        let (tx, rx) = mpsc::channel();
        let s2 = stop.clone();
        let thread = ns.spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let cfg = ResponderConfig {
                    bind,
                    ports: PORTS,
                    ..ResponderConfig::default()
                };
                let r = Responder::start(&cfg, s2.clone()).expect("responder");
                tx.send((r.ports(), r.counters())).expect("ports");
                s2.cancelled().await;
                r.stop().await;
            });
        });
        let (ports, counters) = rx.recv().expect("responder started");
        Remote {
            ports,
            counters,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops it (its sockets close).
    pub fn stop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Median of a sample (ns).
pub fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// The 99.9% two-sided bound of a binomial count (normal approximation).
pub fn binomial_bounds(n: u64, p: f64) -> (u64, u64) {
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    let z = 3.29;
    (
        ((mean - z * sd).floor().max(0.0)) as u64,
        (mean + z * sd).ceil() as u64,
    )
}
