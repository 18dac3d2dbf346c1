//! The attack suite of the agent <-> server link: each way an agent proves who it is
//! (client certificates, per-node tokens, Kubernetes service-account tokens through a
//! fake TokenReview API) lets the right agent in for its own node only, and refuses
//! missing, wrong, expired and foreign credentials, forged agent ids and nodes, and a
//! sequence number meant to silence an agent. Certificates are made by `openssl`.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{batch, bearer, config, free, metrics, push, value};
use podflow_server::{AgentAuth, ServerConfig, ServerTls, serve};
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

fn have_openssl(test: &str) -> bool {
    if Command::new("openssl").arg("version").output().is_err() {
        podflow_testkit::skip(test, "openssl is not installed");
        return false;
    }
    true
}

/// A CA (`<ca>.pem`) in `dir`.
fn ca(dir: &Path, ca: &str) {
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
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN=podflow test {ca}"),
        ],
    );
}

/// A certificate `<name>.pem` with subject CN `cn`, signed by `ca`, valid for `days`
/// (negative: expired).
fn cert(dir: &Path, ca: &str, name: &str, cn: &str, ext: &str, days: i32) {
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
            &format!("/CN={cn}"),
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
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            &days.to_string(),
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_bind_agents_to_their_node() {
    if !have_openssl("client_certificates_bind_agents_to_their_node") {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    ca(d, "ca");
    ca(d, "other");
    let client = "extendedKeyUsage=clientAuth";
    cert(
        d,
        "ca",
        "server",
        "server",
        "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth",
        2,
    );
    cert(d, "ca", "a", "node-a", client, 2);
    cert(d, "ca", "expired", "node-a", client, -1);
    cert(d, "other", "foreign", "node-a", client, 2);
    let grpc = free();
    let tls = ServerTls {
        cert: d.join("server.pem"),
        key: d.join("server.key"),
        client_ca: Some(d.join("ca.pem")),
    };
    let cfg = config(d, grpc, AgentAuth::Mtls, Some(tls));
    let http = cfg.listen;
    let stop = CancellationToken::new();
    let server = tokio::spawn(serve(cfg, stop.clone()));
    let read = |f: &str| std::fs::read(d.join(f)).expect("pem");
    let url = format!("https://localhost:{}", grpc.port());
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")))
        .domain_name("localhost");
    let ep = |id: Option<&str>| {
        let t = match id {
            Some(n) => tls.clone().identity(Identity::from_pem(
                read(&format!("{n}.pem")),
                read(&format!("{n}.key")),
            )),
            None => tls.clone(),
        };
        Endpoint::from_shared(url.clone())
            .expect("url")
            .connect_timeout(Duration::from_secs(5))
            .tls_config(t)
            .expect("tls")
    };
    metrics(http).await;

    let a = ep(Some("a"));
    assert_eq!(
        push(&a, &[], batch("node-a", "node-a", 1)).await,
        Ok(1),
        "its own node"
    );
    assert_eq!(
        push(&a, &[], batch("node-a/netflow", "node-a", 2)).await,
        Ok(2),
        "a suffixed agent id of its own node"
    );
    let forged_node = push(&a, &[], batch("node-a", "node-b", 3)).await;
    assert!(
        forged_node
            .as_ref()
            .is_err_and(|e| e.contains("node node-a")),
        "another node in the batch: {forged_node:?}"
    );
    let forged_agent = push(&a, &[], batch("node-b", "node-b", 3)).await;
    assert!(forged_agent.is_err(), "another agent id: {forged_agent:?}");
    let header = push(
        &a,
        &[("podflow-node", "node-b".into())],
        batch("node-a", "node-a", 4),
    )
    .await;
    assert!(
        header.as_ref().is_err_and(|e| e.contains("node node-a's")),
        "another node in the header: {header:?}"
    );
    // seq = u64::MAX would make every later batch a duplicate: refused, and the agent
    // goes on.
    let silence = push(&a, &[], batch("node-a", "node-a", u64::MAX)).await;
    assert!(
        silence.as_ref().is_err_and(|e| e.contains("ahead")),
        "{silence:?}"
    );
    assert_eq!(
        push(&a, &[], batch("node-a", "node-a", 5)).await,
        Ok(5),
        "not silenced"
    );

    for (what, e) in [
        ("no client certificate", ep(None)),
        ("an expired certificate", ep(Some("expired"))),
        ("a certificate of another CA", ep(Some("foreign"))),
    ] {
        let r = push(&e, &[], batch("node-a", "node-a", 9)).await;
        assert!(r.is_err(), "{what}: refused ({r:?})");
    }
    let plaintext = push(
        &Endpoint::from_shared(format!("http://127.0.0.1:{}", grpc.port())).expect("url"),
        &[],
        batch("node-a", "node-a", 9),
    )
    .await;
    assert!(plaintext.is_err(), "plaintext refused ({plaintext:?})");

    let m = metrics(http).await;
    let refused = |r: &str| {
        value(
            &m,
            &format!("podflow_server_agent_refusals_total{{reason=\"{r}\"}}"),
        )
    };
    assert_eq!(refused("not_its_node"), 3.0, "{m}");
    assert_eq!(refused("seq_window"), 1.0);
    assert_eq!(
        value(
            &m,
            "podflow_server_agent_auth_info{mode=\"mtls\",transport=\"tls\"}"
        ),
        1.0
    );
    assert_eq!(
        value(&m, "podflow_server_batches_total{outcome=\"applied\"}"),
        3.0
    );
    stop.cancel();
    server.await.expect("join").expect("server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_node_tokens_bind_agents_and_rotate_without_a_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let tokens = d.join("agent-tokens");
    std::fs::write(&tokens, "# node token\nnode-a tok-a-1\nnode-b tok-b-1\n").expect("tokens");
    let grpc = free();
    let cfg = config(d, grpc, AgentAuth::Tokens(tokens.clone()), None);
    let http = cfg.listen;
    let stop = CancellationToken::new();
    let server = tokio::spawn(serve(cfg, stop.clone()));
    metrics(http).await;
    let ep = Endpoint::from_shared(format!("http://127.0.0.1:{}", grpc.port()))
        .expect("url")
        .connect_timeout(Duration::from_secs(5));

    assert_eq!(
        push(&ep, &[bearer("tok-a-1")], batch("node-a", "node-a", 1)).await,
        Ok(1)
    );
    let none = push(&ep, &[], batch("node-a", "node-a", 2)).await;
    assert!(
        none.as_ref()
            .is_err_and(|e| e.contains("bearer token is required")),
        "{none:?}"
    );
    let wrong = push(&ep, &[bearer("tok-a-2")], batch("node-a", "node-a", 2)).await;
    assert!(
        wrong
            .as_ref()
            .is_err_and(|e| e.contains("unknown agent token")),
        "{wrong:?}"
    );
    let as_b = push(&ep, &[bearer("tok-a-1")], batch("node-b", "node-b", 2)).await;
    assert!(as_b.is_err(), "node-a's token writing as node-b: {as_b:?}");

    // Rotation: the new token works, the old one stops, no restart.
    std::fs::write(&tokens, "node-a tok-a-2\nnode-b tok-b-1\n# rotated\n").expect("tokens");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        push(&ep, &[bearer("tok-a-2")], batch("node-a", "node-a", 3)).await,
        Ok(3)
    );
    let old = push(&ep, &[bearer("tok-a-1")], batch("node-a", "node-a", 4)).await;
    assert!(old.is_err(), "the rotated-out token: {old:?}");

    let m = metrics(http).await;
    assert_eq!(
        value(
            &m,
            "podflow_server_agent_refusals_total{reason=\"unauthenticated\"}"
        ),
        3.0,
        "{m}"
    );
    assert_eq!(
        value(
            &m,
            "podflow_server_agent_auth_info{mode=\"tokens\",transport=\"plaintext\"}"
        ),
        1.0
    );
    stop.cancel();
    server.await.expect("join").expect("server");
}

#[test]
fn a_server_reachable_from_the_network_needs_authentication_and_tls() {
    let d = Path::new("/nonexistent");
    let wide: SocketAddr = "0.0.0.0:9470".parse().expect("addr");
    let tls = || {
        Some(ServerTls {
            cert: d.join("c"),
            key: d.join("k"),
            client_ca: Some(d.join("ca")),
        })
    };
    let check = |cfg: &ServerConfig| podflow_server::check_exposure(cfg).map_err(|e| e.to_string());
    let open = config(d, wide, AgentAuth::None, tls());
    assert!(check(&open).is_err_and(|e| e.contains("--insecure-no-agent-auth")));
    assert!(
        check(&ServerConfig {
            insecure_no_agent_auth: true,
            ..open.clone()
        })
        .is_ok()
    );
    let plain = config(d, wide, AgentAuth::Tokens(d.join("t")), None);
    assert!(check(&plain).is_err_and(|e| e.contains("--insecure-plaintext")));
    assert!(
        check(&ServerConfig {
            insecure_plaintext: true,
            ..plain
        })
        .is_ok()
    );
    assert!(check(&config(d, wide, AgentAuth::Mtls, tls())).is_ok());
    let no_ca = ServerTls {
        client_ca: None,
        ..tls().expect("tls")
    };
    assert!(check(&config(d, wide, AgentAuth::Mtls, Some(no_ca))).is_err());
    // Loopback (run, demo, tests): nothing to refuse.
    let local = "127.0.0.1:9470".parse().expect("addr");
    assert!(check(&config(d, local, AgentAuth::None, None)).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_and_the_client_ca_reload_without_a_restart() {
    if !have_openssl("certificates_and_the_client_ca_reload_without_a_restart") {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let server_ext = "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth";
    let client_ext = "extendedKeyUsage=clientAuth";
    for (ca_name, server, client) in [
        ("old", "server-old", "a-old"),
        ("new", "server-new", "a-new"),
    ] {
        ca(d, ca_name);
        cert(d, ca_name, server, "server", server_ext, 2);
        cert(d, ca_name, client, "node-a", client_ext, 2);
    }
    let copy = |from: &str, to: &str| std::fs::copy(d.join(from), d.join(to)).expect("copy");
    copy("server-old.pem", "server.pem");
    copy("server-old.key", "server.key");
    copy("old.pem", "clients.pem");
    let grpc = free();
    let tls = ServerTls {
        cert: d.join("server.pem"),
        key: d.join("server.key"),
        client_ca: Some(d.join("clients.pem")),
    };
    let cfg = config(d, grpc, AgentAuth::Mtls, Some(tls));
    let http = cfg.listen;
    let stop = CancellationToken::new();
    let server = tokio::spawn(serve(cfg, stop.clone()));
    let read = |f: &str| std::fs::read(d.join(f)).expect("pem");
    // An agent trusting `ca` and showing the certificate `id`.
    let ep = |ca: &str, id: &str| {
        let t = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&format!("{ca}.pem"))))
            .domain_name("localhost")
            .identity(Identity::from_pem(
                read(&format!("{id}.pem")),
                read(&format!("{id}.key")),
            ));
        Endpoint::from_shared(format!("https://localhost:{}", grpc.port()))
            .expect("url")
            .connect_timeout(Duration::from_secs(5))
            .tls_config(t)
            .expect("tls")
    };
    metrics(http).await;
    assert_eq!(
        push(&ep("old", "a-old"), &[], batch("node-a", "node-a", 1)).await,
        Ok(1)
    );

    // Rotation, as a Secret volume does it: new server certificate, new client CA.
    copy("server-new.pem", "server.pem");
    copy("server-new.key", "server.key");
    copy("new.pem", "clients.pem");
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(
        push(&ep("new", "a-new"), &[], batch("node-a", "node-a", 2)).await,
        Ok(2),
        "the new certificates are in force"
    );
    let old_server = push(&ep("old", "a-new"), &[], batch("node-a", "node-a", 3)).await;
    assert!(
        old_server.is_err(),
        "the old server certificate is gone: {old_server:?}"
    );
    let old_client = push(&ep("new", "a-old"), &[], batch("node-a", "node-a", 3)).await;
    assert!(
        old_client.is_err(),
        "the old client CA is gone: {old_client:?}"
    );

    // A half-written file keeps the certificates in force.
    std::fs::write(d.join("server.pem"), "-----BEGIN CERTIFICATE-----\ntrunc").expect("write");
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(
        push(&ep("new", "a-new"), &[], batch("node-a", "node-a", 4)).await,
        Ok(4),
        "still serving after a bad file"
    );
    let m = metrics(http).await;
    assert_eq!(
        value(&m, "podflow_tls_reloads_total{listener=\"grpc\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(
        value(&m, "podflow_tls_reload_errors_total{listener=\"grpc\"}"),
        1.0
    );
    stop.cancel();
    server.await.expect("join").expect("server");
}
