//! A stand-alone probe node for the benchmark (scripts/bench-probe.sh) and for trying
//! the probes by hand, until the agent runs them.
//!
//!     probe_node responder --bind 10.96.0.2 [--seconds 60]
//!     probe_node prober --bind 10.96.0.1 --peers peers.txt [--seconds 60]
//!         [--interval-ms 5000] [--full-mesh-max 50] [--metrics FILE] [--kconmon PREFIX]
//!         [--udp-spacing-ms N] [--icmp-every N] [--http-every N]
//!
//! `peers.txt`: one peer a line, `node zone address`. The prober prints one summary
//! line at the end; with `--metrics` it writes the Prometheus text there.

use std::net::IpAddr;
use std::time::Duration;

use podflow_probe::{
    Me, Mesh, MeshConfig, Metrics, MetricsConfig, Outcome, Peer, ProbeConfig, Responder,
    ResponderConfig, TopologyConfig,
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn num(args: &[String], name: &str, default: u64) -> u64 {
    arg(args, name).map_or(default, |s| {
        s.parse()
            .unwrap_or_else(|_| fail(&format!("{name}: not a number")))
    })
}

fn fail(msg: &str) -> ! {
    eprintln!("probe_node: {msg}");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).cloned().unwrap_or_default();
    let bind: IpAddr = arg(&args, "--bind")
        .unwrap_or_else(|| fail("--bind ADDRESS is required"))
        .parse()
        .unwrap_or_else(|_| fail("--bind: not an IP address"));
    let seconds: u64 = arg(&args, "--seconds").map_or(60, |s| {
        s.parse()
            .unwrap_or_else(|_| fail("--seconds: not a number"))
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(&format!("runtime: {e}")));
    match mode.as_str() {
        "responder" => rt.block_on(responder(bind, seconds)),
        "prober" => rt.block_on(prober(&args, bind, seconds)),
        _ => fail("usage: probe_node responder|prober --bind ADDRESS ..."),
    }
}

async fn responder(bind: IpAddr, seconds: u64) {
    let cfg = ResponderConfig {
        bind,
        ..ResponderConfig::default()
    };
    let r =
        Responder::start(&cfg, CancellationToken::new()).unwrap_or_else(|e| fail(&e.to_string()));
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let s = r.stats();
    println!(
        "responder {bind}: udp {}/{} tcp {} http {} malformed {}",
        s.udp.answered,
        s.udp.received,
        s.tcp.answered,
        s.http.answered,
        s.udp.malformed + s.http.malformed
    );
}

async fn prober(args: &[String], bind: IpAddr, seconds: u64) {
    let file = arg(args, "--peers").unwrap_or_else(|| fail("--peers FILE is required"));
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| fail(&format!("{file}: {e}")));
    let peers: Vec<Peer> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let [node, zone, addr] = w[..] else {
                fail(&format!("{file}: want `node zone address`, got {l:?}"))
            };
            let addr: IpAddr = addr
                .parse()
                .unwrap_or_else(|_| fail(&format!("{file}: bad address {addr}")));
            Peer::new(node, zone, vec![addr])
        })
        .collect();
    let cfg = MeshConfig {
        me: Me {
            node: "prober".into(),
            zone: "zone-0".into(),
        },
        probe: ProbeConfig {
            bind: Some(bind),
            udp_spacing_ms: num(
                args,
                "--udp-spacing-ms",
                ProbeConfig::default().udp_spacing_ms,
            ),
            ..ProbeConfig::default()
        },
        icmp_every: num(
            args,
            "--icmp-every",
            MeshConfig::default().icmp_every.into(),
        ) as u32,
        http_every: num(
            args,
            "--http-every",
            MeshConfig::default().http_every.into(),
        ) as u32,
        interval_ms: arg(args, "--interval-ms").map_or(5000, |s| s.parse().unwrap_or(5000)),
        topology: TopologyConfig {
            full_mesh_max: arg(args, "--full-mesh-max").map_or(50, |s| s.parse().unwrap_or(50)),
            ..TopologyConfig::default()
        },
        ..MeshConfig::default()
    };
    let mut metrics = Metrics::new(MetricsConfig {
        kconmon_prefix: arg(args, "--kconmon"),
        ..MetricsConfig::default()
    });
    let (_ptx, prx) = watch::channel(peers);
    let (tx, mut rx) = mpsc::channel(4096);
    let cancel = CancellationToken::new();
    let mesh = Mesh::start(cfg, prx, tx, cancel.clone());
    let end = tokio::time::Instant::now() + Duration::from_secs(seconds);
    let (mut n, mut failed) = (0u64, 0u64);
    while let Ok(Some(r)) = tokio::time::timeout_at(end, rx.recv()).await {
        n += 1;
        failed += u64::from(r.outcome == Outcome::Fail);
        metrics.observe(&r);
    }
    let stats = mesh.stats();
    cancel.cancel();
    mesh.join().await;
    if let Some(path) = arg(args, "--metrics") {
        let mut out = String::new();
        metrics.render(&mut out, None, Some(&stats.runner()));
        std::fs::write(&path, out).unwrap_or_else(|e| fail(&format!("{path}: {e}")));
    }
    println!(
        "prober: {n} results, {failed} failed, {} dropped, {} overruns, {} peers",
        stats.results_dropped, stats.rounds_overrun, stats.peers
    );
}
