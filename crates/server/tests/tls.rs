//! The agent <-> server link with TLS, client certificates and a bearer token: the right
//! credentials get acks; a missing client certificate or a wrong token gets nothing in.
//! Certificates are made by `openssl` in a temp dir.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use podflow_proto::{IngestClient, ObservationBatch, VERSION, observation_pb};
use podflow_server::{ServerConfig, ServerTls, serve};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

fn openssl(dir: &Path, args: &[&str]) {
    let st = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        st.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&st.stderr)
    );
}

/// A CA, a server certificate for `localhost`, and a client certificate.
fn pki(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=podflow test CA",
        ],
    );
    for (name, ext) in [
        (
            "server",
            "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth",
        ),
        ("client", "extendedKeyUsage=clientAuth"),
    ] {
        std::fs::write(dir.join(format!("{name}.ext")), ext).expect("ext");
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
    }
}

fn free() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
}

fn batch(seq: u64) -> ObservationBatch {
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
        agent_id: "a".into(),
        seq,
        node: "n".into(),
        observed_at_ms: 1_800_000_000_000,
        observations: vec![observation_pb(&o)],
        local_addrs: vec![],
        probes: vec![],
    }
}

/// Pushes one batch; `Ok(seq)` when acked.
async fn push(ep: Endpoint, token: Option<&str>) -> Result<u64, String> {
    let ch = ep.connect().await.map_err(|e| format!("connect: {e}"))?;
    let mut client = IngestClient::new(ch);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(batch(1)).await.map_err(|e| e.to_string())?;
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Some(t) = token {
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().map_err(|_| "header")?,
        );
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
    ack.map_err(|e| format!("stream: {e}"))?
        .map(|a| a.seq)
        .ok_or_else(|| "closed".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates_and_a_token() {
    if Command::new("openssl").arg("version").output().is_err() {
        podflow_testkit::skip("tls", "openssl is not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    pki(d);
    let grpc = free();
    let cfg = ServerConfig {
        listen: free(),
        grpc_listen: grpc,
        data_dir: d.join("data"),
        interval: Duration::from_secs(1),
        retention: Duration::from_secs(86400),
        max_keys: 1000,
        enrich: Default::default(),
        metrics: Default::default(),
        tls: Some(ServerTls {
            cert: d.join("server.pem"),
            key: d.join("server.key"),
            client_ca: Some(d.join("ca.pem")),
        }),
        token: Some("s3cret".into()),
        netflow_listen: Vec::new(),
        netflow_exporter_labels: false,
        clickhouse: None,
    };
    let stop = CancellationToken::new();
    let server = tokio::spawn(serve(cfg, stop.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let read = |f: &str| std::fs::read(d.join(f)).expect("pem");
    let url = format!("https://localhost:{}", grpc.port());
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")))
        .domain_name("localhost");
    let with_cert = tls
        .clone()
        .identity(Identity::from_pem(read("client.pem"), read("client.key")));
    let ep = |t: ClientTlsConfig| {
        Endpoint::from_shared(url.clone())
            .expect("url")
            .connect_timeout(Duration::from_secs(5))
            .tls_config(t)
            .expect("tls")
    };

    assert_eq!(
        push(ep(with_cert.clone()), Some("s3cret")).await,
        Ok(1),
        "the right certificate and token are acked"
    );
    let no_cert = push(ep(tls), Some("s3cret")).await;
    assert!(
        no_cert.is_err(),
        "no client certificate: refused ({no_cert:?})"
    );
    let bad_token = push(ep(with_cert.clone()), Some("guess")).await;
    assert!(
        bad_token
            .as_ref()
            .is_err_and(|e| e.contains("bearer token")),
        "{bad_token:?}"
    );
    let plaintext = push(
        Endpoint::from_shared(format!("http://127.0.0.1:{}", grpc.port())).expect("url"),
        Some("s3cret"),
    )
    .await;
    assert!(plaintext.is_err(), "plaintext refused ({plaintext:?})");
    stop.cancel();
    server.await.expect("join").expect("server");
}
