//! The real kube-rs watcher against a fake API server on 127.0.0.1 that speaks the
//! Kubernetes wire protocol with objects in Kubernetes' own JSON: list (`?limit=500`),
//! watch streams with resourceVersion and bookmarks, a dropped connection, and a
//! 410 Gone that forces a relist.
//!
//! Run with: cargo test -p podflow-inventory --features kube,k8s-openapi/latest

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::Response;
use podflow_inventory::kube::{KubeSource, run};
use podflow_inventory::{IndexConfig, SharedIndex, now_ns};
use podflow_model::Place;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Fake {
    /// Every request as `path?query`.
    log: Vec<String>,
    pod_lists: usize,
    pod_watches: usize,
}

type Shared = Arc<Mutex<Fake>>;

fn pod(name: &str, ip: &str, rv: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "shop",
            "uid": format!("uid-{name}"),
            "resourceVersion": rv,
            "creationTimestamp": "2025-01-10T08:00:00Z",
            "labels": {"app": name},
            "managedFields": [{
                "apiVersion": "v1",
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:metadata": {"f:labels": {}}},
                "manager": "kubectl",
                "operation": "Update",
                "time": "2025-01-10T08:00:00Z"
            }]
        },
        "spec": {"nodeName": "n1", "containers": [{"name": "main", "image": "nginx"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    })
}

fn node() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": "n1",
            "resourceVersion": "7",
            "labels": {
                "topology.kubernetes.io/zone": "us-east-1a",
                "topology.kubernetes.io/region": "us-east-1"
            }
        },
        "spec": {"providerID": "aws:///us-east-1a/i-0123"},
        "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.10"}]}
    })
}

fn list(kind: &str, api_version: &str, rv: &str, items: Vec<Value>) -> Value {
    json!({
        "apiVersion": api_version,
        "kind": format!("{kind}List"),
        "metadata": {"resourceVersion": rv},
        "items": items
    })
}

fn json_response(v: &Value) -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(v.to_string()))
        .expect("response")
}

fn line(v: Value) -> Result<Bytes, std::io::Error> {
    Ok(Bytes::from(format!("{v}\n")))
}

/// A watch that stays open and sends nothing (until the client goes away).
fn idle_watch() -> Response {
    let body = Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>());
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .expect("response")
}

async fn handle(State(st): State<Shared>, uri: Uri) -> Response {
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or("").to_string();
    let watch = query.split('&').any(|p| p == "watch=true");
    let mut fake = st.lock().expect("lock");
    fake.log.push(format!("{path}?{query}"));
    let (kind, api_version) = match path.as_str() {
        "/api/v1/pods" => ("Pod", "v1"),
        "/api/v1/nodes" => ("Node", "v1"),
        "/api/v1/services" => ("Service", "v1"),
        "/apis/discovery.k8s.io/v1/endpointslices" => ("EndpointSlice", "discovery.k8s.io/v1"),
        "/apis/apps/v1/replicasets" => ("ReplicaSet", "apps/v1"),
        "/apis/batch/v1/jobs" => ("Job", "batch/v1"),
        _ => {
            return Response::builder()
                .status(StatusCode::NOT_FOUND)
                .body(Body::from("{}"))
                .expect("response");
        }
    };
    if kind != "Pod" {
        return if watch {
            idle_watch()
        } else {
            let items = if kind == "Node" { vec![node()] } else { vec![] };
            json_response(&list(kind, api_version, "7", items))
        };
    }
    if !watch {
        fake.pod_lists += 1;
        return if fake.pod_lists == 1 {
            json_response(&list("Pod", "v1", "100", vec![pod("a", "10.8.0.1", "90")]))
        } else {
            // After the relist: a is gone, b (seen on the watch) and c (missed) are there.
            json_response(&list(
                "Pod",
                "v1",
                "200",
                vec![pod("b", "10.8.0.2", "101"), pod("c", "10.8.0.3", "150")],
            ))
        };
    }
    fake.pod_watches += 1;
    match fake.pod_watches {
        1 => {
            // An event, a bookmark, then the connection drops mid-stream.
            let events = vec![
                line(json!({"type": "ADDED", "object": pod("b", "10.8.0.2", "101")})),
                line(json!({"type": "BOOKMARK", "object": {
                    "kind": "Pod", "apiVersion": "v1",
                    "metadata": {"resourceVersion": "105"}
                }})),
            ];
            // Let the client read them before the connection is cut (a reset would
            // discard what is still in the server's buffers).
            let drop = futures::stream::once(async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "dropped",
                ))
            });
            Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from_stream(futures::StreamExt::chain(
                    futures::stream::iter(events),
                    drop,
                )))
                .expect("response")
        }
        2 => {
            // The resourceVersion is too old: 410 Gone as a watch ERROR event.
            let gone = json!({"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure",
                "message": "too old resource version: 105 (180)",
                "reason": "Expired", "code": 410
            }});
            json_response(&gone)
        }
        _ => idle_watch(),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test ip")
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..300 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_lists_watches_follows_bookmarks_and_relists_on_410() {
    let st: Shared = Arc::default();
    let app = Router::new().fallback(handle).with_state(st.clone());
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("bind 127.0.0.1");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let url = format!("http://{addr}").parse().expect("url");
    let client = kube::Client::try_from(kube::Config::new(url)).expect("client");
    let cancel = CancellationToken::new();
    let source = KubeSource::start(&client, &cancel);
    let shared = SharedIndex::default();
    let (ready_tx, mut ready_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(run(
        source.clone(),
        IndexConfig::default(),
        shared.clone(),
        ready_tx,
        Duration::from_millis(20),
        cancel.clone(),
    ));

    tokio::time::timeout(Duration::from_secs(15), ready_rx.wait_for(|r| *r))
        .await
        .expect("ready within 15 s")
        .expect("ready sender alive");
    let now = now_ns();
    let name = |ip_s: &str, t: u64| match shared.load().place(ip(ip_s), 0, t) {
        Some(Place::Pod(p)) => Some(p.name.to_string()),
        _ => None,
    };
    assert_eq!(
        name("10.8.0.1", now).as_deref(),
        Some("a"),
        "pod a from the first list"
    );
    match shared.load().place(ip("10.0.0.10"), 0, now) {
        Some(Place::Node(n)) => assert_eq!(n.zone.as_deref(), Some("us-east-1a")),
        other => panic!("node expected, got {other:?}"),
    }

    // The relist after 410 brings c; a leaves the stores.
    eventually("pod c after the relist", || {
        name("10.8.0.3", now_ns()).is_some()
    })
    .await;
    eventually("pod a gone from the store", || source.pods.len() == 2).await;
    let idx = shared.load();
    assert_eq!(name("10.8.0.2", now_ns()).as_deref(), Some("b"));
    // a is a tombstone: resolvable within the grace period, not after it.
    assert!(idx.place(ip("10.8.0.1"), 0, now_ns()).is_some());
    assert!(
        idx.place(ip("10.8.0.1"), 0, now_ns() + 121_000_000_000)
            .is_none()
    );
    // Managed fields were stripped before caching.
    assert!(
        source
            .pods
            .state()
            .iter()
            .all(|p| p.metadata.managed_fields.is_none())
    );
    let inv = source.inventory();
    assert_eq!((inv.pods.len(), inv.nodes.len(), inv.skipped), (2, 1, 0));

    let log = st.lock().expect("lock").log.clone();
    let pods: Vec<&String> = log
        .iter()
        .filter(|l| l.starts_with("/api/v1/pods?"))
        .collect();
    let has = |i: usize, parts: &[&str]| {
        pods.get(i)
            .is_some_and(|l| parts.iter().all(|p| l.contains(p)))
    };
    assert!(
        has(0, &["limit=500"]) && !pods[0].contains("watch=true"),
        "{pods:#?}"
    );
    assert!(
        has(
            1,
            &[
                "watch=true",
                "allowWatchBookmarks=true",
                "resourceVersion=100",
                "timeoutSeconds=290"
            ]
        ),
        "{pods:#?}"
    );
    assert!(
        has(2, &["watch=true", "resourceVersion=105"]),
        "re-watch from the bookmark: {pods:#?}"
    );
    assert!(
        has(3, &["limit=500"]) && !pods[3].contains("watch=true"),
        "relist after 410: {pods:#?}"
    );
    assert!(has(4, &["watch=true", "resourceVersion=200"]), "{pods:#?}");
    for kind in ["nodes", "services", "endpointslices", "replicasets", "jobs"] {
        assert!(
            log.iter()
                .any(|l| l.contains(kind) && l.contains("limit=500")),
            "{kind} listed"
        );
    }

    cancel.cancel();
    task.await
        .expect("join")
        .expect("run ends cleanly on cancel");
    server.abort();
}
