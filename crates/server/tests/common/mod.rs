//! What the agent-link tests share: batches, a stream that pushes one, the server's
//! metrics, a loopback server config.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use podflow_proto::{IngestClient, ObservationBatch, VERSION, observation_pb};
use podflow_server::{AgentAuth, ServerConfig, ServerTls};
use tonic::transport::Endpoint;

pub fn free() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
}

pub fn batch(agent: &str, node: &str, seq: u64) -> ObservationBatch {
    let o = podflow_model::Observation {
        proto: podflow_model::Protocol::UDP,
        orig: podflow_model::Tuple {
            src: [10, 0, 0, 1].into(),
            dst: [10, 0, 0, 2].into(),
            src_port: 5000,
            dst_port: 53,
        },
        reply: podflow_model::Tuple {
            src: [10, 0, 0, 2].into(),
            dst: [10, 0, 0, 1].into(),
            src_port: 53,
            dst_port: 5000,
        },
        ..Default::default()
    };
    ObservationBatch {
        version: VERSION,
        agent_id: agent.into(),
        seq,
        node: node.into(),
        observed_at_ms: (podflow_inventory::now_ns() / 1_000_000) as i64,
        observations: vec![observation_pb(&o)],
        local_addrs: vec![],
        probes: vec![],
    }
}

/// Opens a stream with `headers` (`authorization` among them, or not), sends `b`, and
/// returns its ack: `Ok(seq)` when durable, `Err(why)` when refused.
pub async fn push(
    ep: &Endpoint,
    headers: &[(&'static str, String)],
    b: ObservationBatch,
) -> Result<u64, String> {
    let ch = ep.connect().await.map_err(|e| format!("connect: {e}"))?;
    let mut client = IngestClient::new(ch);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(b).await.map_err(|e| e.to_string())?;
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    for (k, v) in headers {
        req.metadata_mut()
            .insert(*k, v.parse().map_err(|_| "header value")?);
    }
    let mut acks = client
        .push(req)
        .await
        .map_err(|e| format!("push: {e}"))?
        .into_inner();
    let ack = tokio::time::timeout(Duration::from_secs(20), acks.message())
        .await
        .map_err(|_| "no ack".to_string())?;
    drop(tx);
    let ack = ack.map_err(|e| format!("stream: {e}"))?.ok_or("closed")?;
    if ack.error.is_empty() {
        Ok(ack.seq)
    } else {
        Err(ack.error)
    }
}

pub fn bearer(t: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {t}"))
}

/// `/metrics` of the server's HTTP listener, once it answers.
pub async fn metrics(http: SocketAddr) -> String {
    tokio::task::spawn_blocking(move || {
        for _ in 0..100 {
            if let Ok(mut s) = std::net::TcpStream::connect(http) {
                let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
                let mut body = String::new();
                let _ = s.read_to_string(&mut body);
                if body.contains("podflow_") {
                    return body;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no /metrics at {http}");
    })
    .await
    .expect("join")
}

/// The value of the series `line` starts (name and labels) in `text`.
pub fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no series {series}"))
}

pub fn config(d: &Path, grpc: SocketAddr, auth: AgentAuth, tls: Option<ServerTls>) -> ServerConfig {
    ServerConfig {
        listen: free(),
        grpc_listen: grpc,
        data_dir: d.join("data"),
        interval: Duration::from_secs(1),
        retention: Duration::from_secs(86400),
        max_keys: 1000,
        enrich: Default::default(),
        metrics: Default::default(),
        tls,
        agent_auth: auth,
        insecure_no_agent_auth: false,
        insecure_plaintext: false,
        agent_rate_limit_mib: 0,
        max_pending_rows: podflow_server::MAX_PENDING_ROWS,
        http: Default::default(),
        netflow_listen: Vec::new(),
        netflow_allow: Default::default(),
        netflow_exporter_labels: false,
        netflow_keep_addresses: false,
        clickhouse: None,
        on_demand: Default::default(),
    }
}
