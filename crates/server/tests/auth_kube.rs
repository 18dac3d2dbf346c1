//! Agents authenticated by their pods' projected service-account tokens, checked with
//! the real kube-rs client against a fake API server on 127.0.0.1 answering TokenReviews
//! in Kubernetes' own JSON: the token's node claim binds the agent, a token naming only
//! its pod is bound to the pod's node from the inventory, other accounts and invalid
//! tokens are refused, and reviews are cached (an API outage does not lock agents out).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use common::{batch, bearer, config, free, metrics, push, value};
use podflow_server::{AgentAuth, InventorySource, serve};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Fake {
    reviews: AtomicUsize,
    down: AtomicBool,
}

/// `POST /apis/authentication.k8s.io/v1/tokenreviews`, as the API server answers it.
async fn review(State(f): State<Arc<Fake>>, body: Bytes) -> (StatusCode, String) {
    if f.down.load(SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "{}".into());
    }
    f.reviews.fetch_add(1, SeqCst);
    let req: Value = serde_json::from_slice(&body).unwrap_or_default();
    let token = req["spec"]["token"].as_str().unwrap_or_default();
    let audiences = req["spec"]["audiences"].clone();
    let sa = |ns: &str, name: &str, extra: Value| {
        json!({"authenticated": true, "audiences": audiences,
               "user": {"username": format!("system:serviceaccount:{ns}:{name}"),
                        "uid": "u-1", "groups": ["system:serviceaccounts"], "extra": extra}})
    };
    let status = match token {
        "tok-a" => sa(
            "podflow",
            "podflow-agent",
            json!({"authentication.kubernetes.io/node-name": ["node-a"],
                   "authentication.kubernetes.io/pod-name": ["podflow-agent-x1"]}),
        ),
        "tok-p" => sa(
            "podflow",
            "podflow-agent",
            json!({"authentication.kubernetes.io/pod-name": ["podflow-agent-p1"]}),
        ),
        "tok-default" => sa(
            "default",
            "default",
            json!({"authentication.kubernetes.io/node-name": ["node-a"]}),
        ),
        _ => json!({"authenticated": false, "error": "invalid bearer token"}),
    };
    let out = json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
                     "metadata": {"creationTimestamp": null},
                     "spec": req["spec"], "status": status});
    (StatusCode::CREATED, out.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_tokens_are_reviewed_bound_to_the_node_and_cached() {
    let fake = Arc::new(Fake::default());
    let app = Router::new()
        .route(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            axum::routing::post(review),
        )
        .with_state(Arc::clone(&fake));
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("bind");
    let api = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let kubeconfig = d.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{api}\nusers:\n- name: podflow-server\n  user:\n    token: server-token\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: podflow-server\ncurrent-context: fake\n"
        ),
    )
    .expect("kubeconfig");
    // The inventory places the pod of the token without a node claim.
    let inventory = d.join("inventory.yaml");
    std::fs::write(
        &inventory,
        "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: podflow-agent-p1, namespace: podflow, uid: p1}\n  spec: {nodeName: node-p, containers: [{name: agent, image: podflow}]}\n  status: {phase: Running, podIP: 10.9.0.5, podIPs: [{ip: 10.9.0.5}]}\n",
    )
    .expect("inventory");
    let grpc = free();
    let mut cfg = config(
        d,
        grpc,
        AgentAuth::Kubernetes {
            audience: "podflow".into(),
            service_account: "podflow/podflow-agent".into(),
            kubeconfig: Some(kubeconfig),
        },
        None,
    );
    cfg.enrich.inventory = InventorySource::File(inventory);
    let http = cfg.listen;
    let stop = CancellationToken::new();
    let server = tokio::spawn(serve(cfg, stop.clone()));
    metrics(http).await;
    let ep = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", grpc.port()))
        .expect("url")
        .connect_timeout(Duration::from_secs(5));

    assert_eq!(
        push(&ep, &[bearer("tok-a")], batch("node-a", "node-a", 1)).await,
        Ok(1)
    );
    let forged = push(&ep, &[bearer("tok-a")], batch("node-b", "node-b", 2)).await;
    assert!(
        forged.is_err(),
        "node-a's token writing as node-b: {forged:?}"
    );
    assert_eq!(
        push(&ep, &[bearer("tok-p")], batch("node-p", "node-p", 1)).await,
        Ok(1),
        "a token naming only its pod is bound to the pod's node"
    );
    let not_p = push(&ep, &[bearer("tok-p")], batch("node-a", "node-a", 3)).await;
    assert!(not_p.is_err(), "{not_p:?}");
    let other_sa = push(&ep, &[bearer("tok-default")], batch("node-a", "node-a", 3)).await;
    assert!(
        other_sa
            .as_ref()
            .is_err_and(|e| e.contains("system:serviceaccount:podflow:podflow-agent")),
        "another service account: {other_sa:?}"
    );
    let invalid = push(&ep, &[bearer("forged")], batch("node-a", "node-a", 3)).await;
    assert!(
        invalid
            .as_ref()
            .is_err_and(|e| e.contains("invalid bearer token")),
        "{invalid:?}"
    );
    let none = push(&ep, &[], batch("node-a", "node-a", 3)).await;
    assert!(none.is_err(), "{none:?}");

    // Reviews are cached: the API server goes away and reviewed tokens still get in; an
    // unseen one cannot.
    let before = fake.reviews.load(SeqCst);
    fake.down.store(true, SeqCst);
    assert_eq!(
        push(&ep, &[bearer("tok-a")], batch("node-a", "node-a", 4)).await,
        Ok(4)
    );
    let unseen = push(&ep, &[bearer("tok-new")], batch("node-a", "node-a", 5)).await;
    assert!(
        unseen.as_ref().is_err_and(|e| e.contains("cannot review")),
        "{unseen:?}"
    );
    assert_eq!(fake.reviews.load(SeqCst), before, "no review while cached");

    let m = metrics(http).await;
    assert_eq!(
        value(
            &m,
            "podflow_server_agent_refusals_total{reason=\"unauthenticated\"}"
        ),
        4.0,
        "{m}"
    );
    assert_eq!(
        value(
            &m,
            "podflow_server_agent_refusals_total{reason=\"not_its_node\"}"
        ),
        2.0
    );
    assert_eq!(
        value(
            &m,
            "podflow_server_agent_auth_info{mode=\"kubernetes\",transport=\"plaintext\"}"
        ),
        1.0
    );
    stop.cancel();
    server.await.expect("join").expect("server");
}
