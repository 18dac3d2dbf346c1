//! The real kube-rs watcher against the fake API server of the tests
//! (`podflow_testkit::kubeapi`, on 127.0.0.1) that speaks the Kubernetes wire protocol
//! with objects in Kubernetes' own JSON: list (`?limit=500`), watch streams with
//! resourceVersion and bookmarks, a dropped connection, and a 410 Gone that forces a
//! relist.
//!
//! Run with: cargo test -p podflow-inventory --features kube,k8s-openapi/latest

use std::net::IpAddr;
use std::time::Duration;

use podflow_inventory::kube::{KubeSource, run};
use podflow_inventory::{IndexConfig, SharedIndex, now_ns};
use podflow_model::Place;
use podflow_testkit::kubeapi::{FakeKube, Gone, node, pod};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const PODS: &str = "/api/v1/pods";

/// Pod `name` of namespace shop on n1, with managed fields (stripped before caching).
fn shop_pod(name: &str, ip: &str) -> Value {
    let mut p = pod("shop", name, "n1", ip, None, "2025-01-10T08:00:00Z");
    p["metadata"]["managedFields"] = json!([{
        "apiVersion": "v1",
        "fieldsType": "FieldsV1",
        "fieldsV1": {"f:metadata": {"f:labels": {}}},
        "manager": "kubectl",
        "operation": "Update",
        "time": "2025-01-10T08:00:00Z"
    }]);
    p
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
    let fake = FakeKube::start(
        0,
        vec![
            node("n1", "10.0.0.10", "us-east-1a"),
            shop_pod("a", "10.8.0.1"),
        ],
    )
    .expect("fake API server");
    let url = format!("http://127.0.0.1:{}", fake.port())
        .parse()
        .expect("url");
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
    let listed_rv = "102"; // the node and pod a, after 100

    // b arrives on the watch; a bookmark moves the pods' watch past a change of another
    // kind (rv 104); then the connection drops: the re-watch resumes from the bookmark.
    eventually("the first pod watch", || !fake.watches(PODS).is_empty()).await;
    fake.apply(shop_pod("b", "10.8.0.2"));
    eventually("pod b from the watch", || source.pods.len() == 2).await;
    fake.apply(node("n2", "10.0.0.11", "us-east-1b"));
    fake.bookmark();
    tokio::time::sleep(Duration::from_millis(300)).await;
    fake.drop_watches();
    eventually("the re-watch", || fake.watches(PODS).len() >= 2).await;

    // The history is lost meanwhile a is deleted and c created: 410, then a relist.
    fake.expire(Gone::Event, |c| {
        c.delete("Pod", "shop", "a");
        c.apply(shop_pod("c", "10.8.0.3"));
    });
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
    assert_eq!((inv.pods.len(), inv.nodes.len(), inv.skipped), (2, 2, 0));

    eventually("a watch after the relist", || fake.watches(PODS).len() >= 3).await;
    let log = fake.log();
    let pods: Vec<&String> = log.iter().filter(|l| l.starts_with(PODS)).collect();
    let has = |i: usize, parts: &[&str]| {
        pods.get(i)
            .is_some_and(|l| parts.iter().all(|p| l.contains(p)))
    };
    assert!(
        has(0, &["limit=500"]) && !pods[0].contains("watch=true"),
        "{pods:#?}"
    );
    let first_watch = format!("resourceVersion={listed_rv}");
    assert!(
        has(
            1,
            &[
                "watch=true",
                "allowWatchBookmarks=true",
                &first_watch,
                "timeoutSeconds=290"
            ]
        ),
        "{pods:#?}"
    );
    assert!(
        has(2, &["watch=true", "resourceVersion=104"]),
        "re-watch from the bookmark: {pods:#?}"
    );
    assert!(
        has(3, &["limit=500"]) && !pods[3].contains("watch=true"),
        "relist after 410: {pods:#?}"
    );
    assert!(has(4, &["watch=true", "resourceVersion=106"]), "{pods:#?}");
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
}
