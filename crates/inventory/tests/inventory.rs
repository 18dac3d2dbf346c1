//! Inventory files in Kubernetes' own formats, the IP index and the file reloader.

use std::net::IpAddr;
use std::path::PathBuf;

use podflow_inventory::{
    FileInventory, IndexConfig, Inventory, InventoryError, InventoryTracker, IpIndex, PodPhase,
    parse_provider_id, parse_rfc3339_ns,
};
use podflow_model::{Place, ServiceVia};

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test ip")
}

fn ts(s: &str) -> u64 {
    parse_rfc3339_ns(s).expect("test time")
}

fn list() -> Inventory {
    Inventory::load(&data("kubectl-list.yaml")).expect("kubectl list parses")
}

fn index() -> IpIndex {
    IpIndex::build(&list(), &[], &IndexConfig::default())
}

fn pod_name(p: Option<Place>) -> Option<String> {
    match p {
        Some(Place::Pod(p)) => Some(format!("{}/{}", p.namespace, p.name)),
        Some(other) => Some(format!("<{}>", other.kind_str())),
        None => None,
    }
}

const T: &str = "2025-01-10T09:30:00Z";

#[test]
fn kubectl_list_yaml_parses_as_is() {
    let inv = list();
    assert_eq!(inv.pods.len(), 4);
    assert_eq!(inv.nodes.len(), 2);
    assert_eq!(inv.services.len(), 3);
    assert_eq!(inv.slices.len(), 1);
    assert_eq!(inv.controllers.len(), 2);
    assert_eq!(inv.skipped, 0);
    let web = &inv.pods[0];
    assert_eq!(web.name, "web-7d9f8b6c5d-x2x9q");
    assert_eq!(web.phase, PodPhase::Running);
    assert_eq!(web.ips, vec![ip("10.0.1.100"), ip("fd00:10::100")]);
    assert_eq!(web.ports[0].port, 8080);
    assert_eq!(web.node_name.as_deref(), Some("ip-10-0-1-10.ec2.internal"));
    assert_eq!(web.created_ns, Some(ts("2025-01-10T08:00:00Z")));
    assert!(web.owners[0].controller);
    assert_eq!(inv.pods[1].phase, PodPhase::Succeeded);
    assert!(inv.pods[2].host_network);
    assert_eq!(inv.pods[2].ports[0].host_port, Some(9100));
    assert_eq!(inv.pods[3].deletion_ns, Some(ts("2025-01-10T10:00:30Z")));
    // Hostname and InternalDNS entries are not addresses.
    assert_eq!(inv.nodes[0].addresses.len(), 3);
    let web_svc = &inv.services[0];
    assert_eq!(
        web_svc.cluster_ips,
        vec![ip("172.20.0.10"), ip("fd00:20::10")]
    );
    assert_eq!(
        web_svc
            .selector
            .get("app.kubernetes.io/name")
            .map(String::as_str),
        Some("web")
    );
    let front = &inv.services[1];
    assert_eq!(front.kind, "LoadBalancer");
    assert_eq!(front.lb_ips, vec![ip("198.51.100.7")]);
    assert_eq!(front.ports[0].node_port, Some(30443));
    assert!(
        inv.services[2].cluster_ips.is_empty(),
        "headless has no ClusterIP"
    );
    assert_eq!(inv.slices[0].service.as_deref(), Some("web"));
}

#[test]
fn multi_document_yaml_and_json_lists_parse() {
    let inv = Inventory::load(&data("multi-doc.yaml")).expect("multi-doc parses");
    assert_eq!((inv.nodes.len(), inv.pods.len(), inv.skipped), (1, 1, 1));
    assert_eq!(inv.pods[0].ips, vec![ip("10.4.0.5")]);
    let idx = IpIndex::build(&inv, &[], &IndexConfig::default());
    let n = idx.node("n1").expect("node");
    assert_eq!(n.cloud.as_deref(), Some("gcp"));
    assert_eq!(n.instance.as_deref(), Some("gke-pool-1-abcd"));
    assert_eq!(n.zone.as_deref(), Some("europe-west1-b"));

    let inv = Inventory::load(&data("list.json")).expect("json list parses");
    assert_eq!(inv.pods[0].ips, vec![ip("fd00:1::5")]);
    let idx = IpIndex::build(&inv, &[], &IndexConfig::default());
    let n = idx.node("aks-pool-0").expect("node");
    assert_eq!(n.cloud.as_deref(), Some("azure"));
    assert_eq!(n.instance.as_deref(), Some("aks-pool-123_0"));
    assert_eq!(
        pod_name(idx.place(ip("fd00:1::5"), 0, 0)),
        Some("default/v6".into())
    );

    // JSON of the same objects as one document each, concatenated.
    let text = r#"{"kind":"Pod","metadata":{"name":"a","namespace":"x"},"status":{"podIP":"10.9.0.1"}}
{"kind":"Pod","metadata":{"name":"b","namespace":"x"},"status":{"podIP":"10.9.0.2"}}"#;
    let inv = Inventory::parse(text, "stream.json").expect("json stream");
    assert_eq!(inv.pods.len(), 2);
}

#[test]
fn index_resolves_pods_nodes_services() {
    let idx = index();
    let t = ts(T);
    assert_eq!(
        pod_name(idx.place(ip("10.0.1.100"), 0, t)),
        Some("shop/web-7d9f8b6c5d-x2x9q".into())
    );
    assert_eq!(
        pod_name(idx.place(ip("fd00:10::100"), 0, t)),
        Some("shop/web-7d9f8b6c5d-x2x9q".into())
    );
    // The hostNetwork pod owns its declared port on the node address; other ports are the node.
    assert_eq!(
        pod_name(idx.place(ip("10.0.1.10"), 9100, t)),
        Some("monitoring/node-exporter-abcde".into())
    );
    assert_eq!(
        pod_name(idx.place(ip("10.0.1.10"), 22, t)),
        Some("<node>".into())
    );
    assert_eq!(
        pod_name(idx.place(ip("fd00:10::10"), 0, t)),
        Some("<node>".into())
    );
    assert_eq!(
        pod_name(idx.place(ip("172.20.0.10"), 80, t)),
        Some("<service>".into())
    );
    assert_eq!(pod_name(idx.place(ip("10.99.0.1"), 80, t)), None);

    let s = idx
        .service(ip("fd00:20::10"), 80)
        .expect("dual-stack ClusterIP");
    assert_eq!((&*s.meta.name, s.via), ("web", ServiceVia::ClusterIp));
    let s = idx
        .service(ip("10.0.2.10"), 30443)
        .expect("NodePort on any node");
    assert_eq!((&*s.meta.name, s.via), ("front", ServiceVia::NodePort));
    let s = idx.service(ip("198.51.100.7"), 443).expect("LB ingress");
    assert_eq!(s.via, ServiceVia::LoadBalancer);
    assert!(
        idx.service(ip("10.0.1.100"), 30443).is_none(),
        "NodePorts live on node addresses only"
    );

    assert!(idx.is_on_node(ip("10.0.1.100"), "ip-10-0-1-10.ec2.internal", t));
    assert!(idx.is_on_node(ip("54.80.1.10"), "ip-10-0-1-10.ec2.internal", t));
    assert!(!idx.is_on_node(ip("10.0.2.100"), "ip-10-0-1-10.ec2.internal", t));
    let stats = idx.stats();
    assert_eq!((stats.pods, stats.nodes, stats.services), (4, 2, 3));
}

#[test]
fn workloads_zones_and_apps_are_named() {
    let idx = index();
    let t = ts(T);
    let pod = |a: &str| match idx.place(ip(a), 0, t) {
        Some(Place::Pod(p)) => p,
        other => panic!("{a}: expected a pod, got {other:?}"),
    };
    let web = pod("10.0.1.100");
    assert_eq!((&*web.workload_kind, &*web.workload), ("Deployment", "web"));
    assert_eq!(web.app.as_deref(), Some("web"));
    let node = web.node.as_ref().expect("node");
    assert_eq!(node.zone.as_deref(), Some("us-east-1a"));
    assert_eq!(node.instance.as_deref(), Some("i-0a1b2c3d4e5f60001"));
    // ReplicaSet not in the file: the Deployment name comes from the pod-template-hash.
    let api = pod("10.0.2.100");
    assert_eq!((&*api.workload_kind, &*api.workload), ("Deployment", "api"));
    assert_eq!(api.app.as_deref(), Some("api"));
    // failure-domain.beta labels are the fallback.
    let n2 = api.node.as_ref().expect("node");
    assert_eq!(
        (n2.zone.as_deref(), n2.region.as_deref()),
        (Some("us-east-1b"), Some("us-east-1"))
    );
    let report = pod("10.0.1.101");
    assert_eq!(
        (&*report.workload_kind, &*report.workload),
        ("CronJob", "report")
    );
    match idx.place(ip("10.0.1.10"), 9100, t) {
        Some(Place::Pod(p)) => {
            assert_eq!(
                (&*p.workload_kind, &*p.workload),
                ("DaemonSet", "node-exporter")
            );
            assert_eq!(p.app.as_deref(), Some("node-exporter"));
            assert!(p.host_network);
        }
        other => panic!("expected the hostNetwork pod, got {other:?}"),
    }
}

#[test]
fn a_running_pod_wins_over_a_completed_one_with_the_same_ip() {
    let mut inv = list();
    let mut new = inv.pods[0].clone();
    new.name = "web-7d9f8b6c5d-new01".into();
    new.uid = "new".into();
    new.ips = vec![ip("10.0.1.101")];
    new.created_ns = Some(ts("2025-01-10T09:20:00Z"));
    inv.pods.push(new);
    let idx = IpIndex::build(&inv, &[], &IndexConfig::default());
    assert_eq!(
        pod_name(idx.place(ip("10.0.1.101"), 0, ts(T))),
        Some("shop/web-7d9f8b6c5d-new01".into())
    );
    // Before the new pod existed, the address was the job's.
    assert_eq!(
        pod_name(idx.place(ip("10.0.1.101"), 0, ts("2025-01-10T09:10:00Z"))),
        Some("shop/report-28934560-7hk2p".into())
    );
}

#[test]
fn deleted_pods_stay_resolvable_for_the_grace_period() {
    let mut tracker = InventoryTracker::new(IndexConfig::default());
    let t0 = ts(T);
    tracker.update(list(), t0);
    let mut without = list();
    without.pods.retain(|p| p.name != "web-7d9f8b6c5d-x2x9q");
    let idx = tracker.update(without.clone(), t0 + 10_000_000_000);
    assert_eq!(tracker.tombstones().len(), 1);
    let within = t0 + 100_000_000_000;
    let after = t0 + 131_000_000_000;
    assert_eq!(
        pod_name(idx.place(ip("10.0.1.100"), 0, within)),
        Some("shop/web-7d9f8b6c5d-x2x9q".into())
    );
    assert_eq!(pod_name(idx.place(ip("10.0.1.100"), 0, after)), None);
    // Tombstones expire from the tracker on a later update.
    tracker.update(without, after);
    assert!(tracker.tombstones().is_empty());
    // A terminating pod resolves until deletionTimestamp + grace.
    let idx = IpIndex::build(&list(), &[], &IndexConfig::default());
    let del = ts("2025-01-10T10:00:30Z");
    assert!(
        idx.place(ip("10.0.2.100"), 0, del + 119_000_000_000)
            .is_some()
    );
    assert!(
        idx.place(ip("10.0.2.100"), 0, del + 121_000_000_000)
            .is_none()
    );
}

#[test]
fn errors_name_file_object_and_field() {
    let text =
        "kind: Pod\nmetadata: {name: p, namespace: ns}\nstatus:\n  podIPs:\n  - ip: 10.0.0.300\n";
    let err = Inventory::parse(text, "inv.yaml").expect_err("bad ip");
    assert_eq!(
        err.to_string(),
        "inv.yaml: Pod ns/p: status.podIPs[0].ip: \"10.0.0.300\" is not an IP address"
    );
    let err = Inventory::parse("kind: Pod\nmetadata: [\n", "inv.yaml").expect_err("syntax");
    assert!(matches!(err, InventoryError::Yaml { .. }));
    assert!(err.to_string().starts_with("inv.yaml: "), "{err}");
    assert!(err.to_string().contains("line"), "{err}");
    let err =
        Inventory::parse("{\"kind\": \"Pod\",\n \"metadata\": 5}", "inv.json").expect_err("type");
    assert!(err.to_string().contains("line 2"), "{err}");
    let text =
        "kind: Service\nmetadata: {name: s, namespace: ns}\nspec:\n  ports:\n  - port: 70000\n";
    let err = Inventory::parse(text, "inv.yaml").expect_err("bad port");
    assert_eq!(
        err.to_string(),
        "inv.yaml: Service ns/s: spec.ports[0].port: 70000 is not a port"
    );
    let err = Inventory::load(&data("absent.yaml")).expect_err("missing");
    assert!(
        err.to_string().contains("absent.yaml: cannot read"),
        "{err}"
    );
}

#[test]
fn provider_ids_name_cloud_and_instance() {
    let p = |s: &str| {
        let (c, i) = parse_provider_id(s);
        (c.map(|c| c.to_string()), i.map(|i| i.to_string()))
    };
    assert_eq!(
        p("aws:///us-east-1a/i-0abc"),
        (Some("aws".into()), Some("i-0abc".into()))
    );
    assert_eq!(
        p("gce://proj/us-central1-a/node-1"),
        (Some("gcp".into()), Some("node-1".into()))
    );
    assert_eq!(
        p(
            "azure:///subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm-1"
        ),
        (Some("azure".into()), Some("vm-1".into()))
    );
    assert_eq!(
        p("kind://docker/kind/kind-worker"),
        (Some("kind".into()), Some("kind-worker".into()))
    );
    assert_eq!(p("garbage"), (None, None));
}

#[test]
fn the_file_is_reloaded_when_it_changes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("inv.yaml");
    std::fs::write(
        &path,
        "kind: Pod\nmetadata: {name: a, namespace: x, uid: ua}\nstatus: {podIP: 10.9.0.1}\n",
    )
    .expect("write");
    let mut src = FileInventory::new(&path, IndexConfig::default());
    let idx = src
        .poll(1_000)
        .expect("first read")
        .expect("first read builds an index");
    assert_eq!(
        pod_name(idx.place(ip("10.9.0.1"), 0, 1_000)),
        Some("x/a".into())
    );
    assert!(src.poll(2_000).expect("unchanged").is_none());
    std::fs::write(
        &path,
        "kind: Pod\nmetadata: {name: bb, namespace: x, uid: ub}\nstatus: {podIP: 10.9.0.2}\n",
    )
    .expect("rewrite");
    let idx = src
        .poll(3_000)
        .expect("reload")
        .expect("changed size means a new index");
    assert_eq!(
        pod_name(idx.place(ip("10.9.0.2"), 0, 3_000)),
        Some("x/bb".into())
    );
    // The pod that left the file is a tombstone.
    assert_eq!(
        pod_name(idx.place(ip("10.9.0.1"), 0, 3_000)),
        Some("x/a".into())
    );
    std::fs::write(&path, "kind: Pod\nmetadata: [broken\n").expect("break");
    assert!(src.poll(4_000).is_err());
    assert!(
        src.poll(5_000)
            .expect("same broken version is not re-read")
            .is_none()
    );
}

/// What probes and cost insights read: a node leaving (deletion timestamp or the
/// autoscaler's taint) and its Ready condition; an endpoint's zone and readiness; a
/// Service's traffic distribution and topology mode.
#[test]
fn leaving_nodes_endpoint_zones_and_traffic_distribution_are_read() {
    let text = r#"
apiVersion: v1
kind: List
items:
- kind: Node
  metadata: {name: a}
  status: {conditions: [{type: Ready, status: "True"}]}
- kind: Node
  metadata: {name: b, deletionTimestamp: "2026-12-02T10:00:00Z"}
  status: {conditions: [{type: Ready, status: "False"}]}
- kind: Node
  metadata: {name: c}
  spec: {taints: [{key: ToBeDeletedByClusterAutoscaler, effect: NoSchedule}]}
- kind: Service
  metadata: {name: db, namespace: shop, annotations: {service.kubernetes.io/topology-mode: Auto}}
  spec: {clusterIP: 10.96.0.9, trafficDistribution: PreferClose, ports: [{port: 5432}]}
- kind: EndpointSlice
  metadata: {name: db-x, namespace: shop, labels: {kubernetes.io/service-name: db}}
  endpoints:
  - {addresses: [10.1.0.5], zone: zone-a, conditions: {ready: true}}
  - {addresses: [10.2.0.5], zone: zone-b, conditions: {ready: false}}
  - {addresses: [10.3.0.5]}
"#;
    let inv = Inventory::parse(text, "test").expect("parses");
    let node = |n: &str| inv.nodes.iter().find(|x| x.name == n).expect("node");
    assert_eq!((node("a").leaving, node("a").ready), (false, Some(true)));
    assert_eq!((node("b").leaving, node("b").ready), (true, Some(false)));
    assert_eq!((node("c").leaving, node("c").ready), (true, None));
    let svc = &inv.services[0];
    assert_eq!(svc.traffic_distribution.as_deref(), Some("PreferClose"));
    assert_eq!(svc.topology_mode.as_deref(), Some("Auto"));
    let eps: Vec<(Option<&str>, bool)> = inv.slices[0]
        .endpoints
        .iter()
        .map(|e| (e.zone.as_deref(), e.ready))
        .collect();
    assert_eq!(
        eps,
        [
            (Some("zone-a"), true),
            (Some("zone-b"), false),
            (None, true)
        ]
    );
}

#[test]
fn a_non_ascii_time_zone_is_refused_with_an_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("inv.yaml");
    let good = "kind: Pod\nmetadata: {name: a, namespace: x, uid: ua, creationTimestamp: \"2025-01-10T08:00:00Z\"}\nstatus: {podIP: 10.9.0.1}\n";
    std::fs::write(&path, good).expect("write");
    let mut src = FileInventory::new(&path, IndexConfig::default());
    src.poll(1_000).expect("first read").expect("an index");
    // A zone of six bytes starting with a two-byte character: the old parser sliced
    // `&tz[..1]` through the middle of "é" and panicked, ending the process on a reload.
    let bad = "kind: Pod\nmetadata: {name: a, namespace: x, uid: ua, creationTimestamp: \"2025-01-10T08:00:00é:00:\"}\nstatus: {podIP: 10.9.0.1}\n";
    std::fs::write(&path, bad).expect("rewrite");
    let err = src.poll(2_000).expect_err("refused");
    assert_eq!(
        err.to_string(),
        format!(
            "{}: Pod x/a: metadata.creationTimestamp: \"2025-01-10T08:00:00é:00:\" is not an RFC 3339 time: the zone must be Z or +HH:MM / -HH:MM",
            path.display()
        )
    );
    // JSON the same way, and a deletionTimestamp too.
    let json = "{\"kind\": \"Pod\", \"metadata\": {\"name\": \"b\", \"namespace\": \"x\", \"deletionTimestamp\": \"2025-01-10T08:00:00+0é:0\"}}";
    let err = Inventory::parse(json, "inv.json").expect_err("refused");
    assert_eq!(
        err.to_string(),
        "inv.json: Pod x/b: metadata.deletionTimestamp: \"2025-01-10T08:00:00+0é:0\" is not an RFC 3339 time: the zone must be Z or +HH:MM / -HH:MM"
    );
    // The last good index stays in force: the pod is still known.
    assert_eq!(
        pod_name(src.tracker().build().place(ip("10.9.0.1"), 0, 2_000)),
        Some("x/a".into())
    );
}

/// `n` pods as `kubectl get pods -o yaml` writes them (labels, owners, ports, conditions).
fn kubectl_pods_yaml(n: usize) -> String {
    let mut s = String::from("apiVersion: v1\nkind: List\nitems:\n");
    for i in 0..n {
        let (a, b) = (i / 250, i % 250);
        s.push_str(&format!(
            "- apiVersion: v1\n  kind: Pod\n  metadata:\n    name: web-{i}\n    namespace: shop\n    uid: u-{i}\n    creationTimestamp: \"2025-01-10T08:00:00Z\"\n    labels:\n      app.kubernetes.io/name: web\n      pod-template-hash: 7d9f8b6c5d\n    ownerReferences:\n    - apiVersion: apps/v1\n      kind: ReplicaSet\n      name: web-7d9f8b6c5d\n      uid: rs-1\n      controller: true\n  spec:\n    nodeName: node-{a}\n    containers:\n    - name: web\n      image: web:1\n      ports:\n      - containerPort: 8080\n        name: http\n        protocol: TCP\n  status:\n    phase: Running\n    podIP: 10.{a}.{b}.1\n    podIPs:\n    - ip: 10.{a}.{b}.1\n    conditions:\n    - type: Ready\n      status: \"True\"\n"
        ));
    }
    s
}

#[test]
fn a_large_clusters_kubectl_output_parses_past_the_yaml_parsers_default_budget() {
    let text = kubectl_pods_yaml(20_000);
    // The parser's fixed defaults refuse it: a large cluster is not an attack.
    let fixed = serde_saphyr::from_multiple_with_options::<serde::de::IgnoredAny>(
        &text,
        serde_saphyr::Options::default(),
    );
    assert!(
        fixed.is_err(),
        "the default budget should refuse 20,000 pods"
    );
    let inv = Inventory::parse(&text, "big.yaml").expect("20,000 pods parse");
    assert_eq!(inv.pods.len(), 20_000);
    assert_eq!(inv.pods[19_999].ips, vec![ip("10.79.249.1")]);
}

#[test]
fn a_yaml_alias_bomb_is_refused_quickly_with_the_files_name() {
    // Ten levels of ten aliases each: 10^10 scalars if expanded, in under 1 KB of text,
    // under a field the parser skips (so only the expansion itself can stop it).
    let mut text =
        String::from("kind: Pod\nmetadata: {name: a, namespace: x}\nextra:\n  l0: &l0 \"x\"\n");
    for level in 1..=10 {
        let refs = vec![format!("*l{}", level - 1); 10].join(", ");
        text.push_str(&format!("  l{level}: &l{level} [{refs}]\n"));
    }
    let started = std::time::Instant::now();
    let err = Inventory::parse(&text, "bomb.yaml").expect_err("refused");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(matches!(err, InventoryError::Yaml { .. }), "{err}");
    assert!(err.to_string().starts_with("bomb.yaml: "), "{err}");
}
