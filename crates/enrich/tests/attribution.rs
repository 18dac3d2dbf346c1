//! The attribution table: observations against a kubectl List fixture, the cloud range
//! fixtures and user CIDR rules, with the expected sides, Service, SNAT and class.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use podflow_enrich::{Attributor, BYTES_PER_GB, CloudRanges, EnrichConfig, PriceTable};
use podflow_inventory::{IndexConfig, Inventory, InventoryTracker, IpIndex, parse_rfc3339_ns};
use podflow_model::{
    Attribution, Class, Counters, KubenetmonClass, Observation, Place, Protocol, ServiceVia, Tuple,
};

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn ts(s: &str) -> u64 {
    parse_rfc3339_ns(s).expect("test time")
}

const CONFIG: &str = r#"
cloud: aws
region: us-east-1
networks:
  - name: vpc
    cidrs: ["10.0.0.0/8"]
    kind: vpc
  - name: nat-a
    cidrs: ["10.0.9.9/32"]
    kind: nat_gateway
    zone: us-east-1a
    region: us-east-1
  - name: nat-b
    cidrs: ["10.0.9.10/32"]
    kind: nat_gateway
    zone: us-east-1b
    region: us-east-1
  - name: office
    cidrs: ["192.168.0.0/16"]
    kind: on_prem
    class: PUBLIC_INTERNET
  - name: peer-eu
    cidrs: ["172.31.0.0/16"]
    kind: peering
    region: eu-west-1
  - name: peer-east
    cidrs: ["172.30.0.0/16"]
    kind: peering
    region: us-east-1
"#;

fn attributor() -> Attributor {
    let cfg = EnrichConfig::from_yaml(CONFIG, "test config").expect("config");
    let (ranges, _) = CloudRanges::load_dir(&data("")).expect("cloud fixtures");
    Attributor::new(&cfg, "test config", ranges, PriceTable::defaults()).expect("attributor")
}

/// Now, for observations without kernel timestamps.
const NOW: &str = "2025-01-10T09:30:00Z";
/// When the gone-* pod left the inventory.
const DELETED: &str = "2025-01-10T09:40:00Z";

/// The fixture before and after the gone-* pod was deleted.
fn indexes() -> (IpIndex, IpIndex) {
    let inv = Inventory::load(&data("cluster.yaml")).expect("fixture parses");
    let mut tracker = InventoryTracker::new(IndexConfig::default());
    let before = tracker.update(inv.clone(), ts(NOW));
    let mut after = inv;
    after.pods.retain(|p| !p.name.starts_with("gone-"));
    let after = tracker.update(after, ts(DELETED));
    (before, after)
}

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("test socket address")
}

fn tuple(s: &str) -> Tuple {
    let (a, b) = s.split_once(" > ").expect("'src > dst'");
    let (a, b) = (sa(a), sa(b));
    Tuple {
        src: a.ip(),
        src_port: a.port(),
        dst: b.ip(),
        dst_port: b.port(),
    }
}

/// Describes a side the way the table spells it.
fn desc(p: &Place) -> String {
    match p {
        Place::Pod(p) => format!(
            "pod:{}/{}({}/{})",
            p.namespace, p.name, p.workload_kind, p.workload
        ),
        Place::Node(n) => format!("node:{}", n.name),
        Place::Service(s) => format!("svc:{}/{}", s.namespace, s.name),
        Place::KnownNetwork(k) => format!("net:{}", k.name),
        Place::CloudRange(c) => format!("cloud:{}/{}/{}", c.cloud, c.region, c.service),
        Place::Internet => "internet".into(),
        Place::Unknown => "unknown".into(),
    }
}

struct Case {
    name: &'static str,
    observer: &'static str,
    proto: Protocol,
    orig: &'static str,
    reply: &'static str,
    /// Connection start (kernel timestamp), "" when timestamps are off.
    start: &'static str,
    /// Wall clock when the observation is attributed.
    now: &'static str,
    /// Use the index built after the gone-* pod was deleted.
    after_delete: bool,
    local: &'static str,
    remote: &'static str,
    service: &'static str,
    local_initiated: bool,
    class: Class,
    snat: &'static str,
}

/// One table row; the arguments read left to right like the table.
#[allow(clippy::too_many_arguments)]
const fn c(
    name: &'static str,
    observer: &'static str,
    orig: &'static str,
    reply: &'static str,
    local: &'static str,
    remote: &'static str,
    service: &'static str,
    local_initiated: bool,
    class: Class,
) -> Case {
    Case {
        name,
        observer,
        proto: Protocol::TCP,
        orig,
        reply,
        start: "",
        now: NOW,
        after_delete: false,
        local,
        remote,
        service,
        local_initiated,
        class,
        snat: "",
    }
}

const WEB1: &str = "pod:shop/web-6c9f8-aaaaa(Deployment/web)";
const WEB2: &str = "pod:shop/web-6c9f8-bbbbb(Deployment/web)";
const API1: &str = "pod:shop/api-5f6d7-ccccc(Deployment/api)";
const DB0: &str = "pod:shop/db-0(StatefulSet/db)";
const CACHE: &str = "pod:shop/cache-x7k2p(DaemonSet/cache)";
const WEST0: &str = "pod:shop/west-0(StatefulSet/west)";
const LONE: &str = "pod:default/lone(Pod/lone)";
const EXPORTER: &str = "pod:monitoring/node-exporter-q1w2e(DaemonSet/node-exporter)";
const A1: &str = "node-a1";
const A2: &str = "node-a2";
const B1: &str = "node-b1";

use Class::*;

fn cases() -> Vec<Case> {
    vec![
        // --- pod <-> pod -------------------------------------------------------------
        c(
            "same node",
            A1,
            "10.0.1.100:40000 > 10.0.1.105:6379",
            "10.0.1.105:6379 > 10.0.1.100:40000",
            WEB1,
            CACHE,
            "",
            true,
            IntraNode,
        ),
        c(
            "same node, other initiator",
            A1,
            "10.0.1.105:40000 > 10.0.1.100:8080",
            "10.0.1.100:8080 > 10.0.1.105:40000",
            CACHE,
            WEB1,
            "",
            true,
            IntraNode,
        ),
        c(
            "same zone, client side",
            A1,
            "10.0.1.100:40000 > 10.0.1.101:8080",
            "10.0.1.101:8080 > 10.0.1.100:40000",
            WEB1,
            API1,
            "",
            true,
            IntraZone,
        ),
        c(
            "same zone, server side",
            A2,
            "10.0.1.100:40000 > 10.0.1.101:8080",
            "10.0.1.101:8080 > 10.0.1.100:40000",
            API1,
            WEB1,
            "",
            false,
            IntraZone,
        ),
        c(
            "across zones, client side",
            A1,
            "10.0.1.100:40000 > 10.0.2.101:5432",
            "10.0.2.101:5432 > 10.0.1.100:40000",
            WEB1,
            DB0,
            "",
            true,
            InterZone,
        ),
        c(
            "across zones, server side",
            B1,
            "10.0.1.100:40000 > 10.0.2.101:5432",
            "10.0.2.101:5432 > 10.0.1.100:40000",
            DB0,
            WEB1,
            "",
            false,
            InterZone,
        ),
        c(
            "across regions",
            A1,
            "10.0.1.100:40000 > 10.1.1.100:8080",
            "10.1.1.100:8080 > 10.0.1.100:40000",
            WEB1,
            WEST0,
            "",
            true,
            InterRegion,
        ),
        c(
            "across regions, server side",
            "node-w1",
            "10.0.1.100:40000 > 10.1.1.100:8080",
            "10.1.1.100:8080 > 10.0.1.100:40000",
            WEST0,
            WEB1,
            "",
            false,
            InterRegion,
        ),
        c(
            "dual stack: IPv6 pod addresses",
            A1,
            "[fd00:10::100]:40000 > [fd00:20::100]:8080",
            "[fd00:20::100]:8080 > [fd00:10::100]:40000",
            WEB1,
            WEB2,
            "",
            true,
            InterZone,
        ),
        c(
            "IPv6-only pod",
            A1,
            "[fd00:10::100]:40000 > [fd00:20::200]:8080",
            "[fd00:20::200]:8080 > [fd00:10::100]:40000",
            WEB1,
            "pod:shop/v6only-0(StatefulSet/v6only)",
            "",
            true,
            InterZone,
        ),
        c(
            "node without zone labels, client",
            "node-x1",
            "10.0.3.100:40000 > 10.0.1.100:8080",
            "10.0.1.100:8080 > 10.0.3.100:40000",
            LONE,
            WEB1,
            "",
            true,
            Unknown,
        ),
        c(
            "node without zone labels, server",
            A1,
            "10.0.1.100:40000 > 10.0.3.100:8080",
            "10.0.3.100:8080 > 10.0.1.100:40000",
            WEB1,
            LONE,
            "",
            true,
            Unknown,
        ),
        c(
            "forwarded: neither end on the observer",
            A1,
            "10.1.1.100:40000 > 10.0.2.101:5432",
            "10.0.2.101:5432 > 10.1.1.100:40000",
            WEST0,
            DB0,
            "",
            true,
            InterRegion,
        ),
        Case {
            proto: Protocol::ICMP,
            ..c(
                "ICMP echo across zones",
                A1,
                "10.0.1.100:7 > 10.0.2.100:2048",
                "10.0.2.100:7 > 10.0.1.100:0",
                WEB1,
                WEB2,
                "",
                true,
                InterZone,
            )
        },
        Case {
            proto: Protocol::UDP,
            ..c(
                "UDP across zones",
                B1,
                "10.0.2.100:53000 > 10.0.1.105:53",
                "10.0.1.105:53 > 10.0.2.100:53000",
                WEB2,
                CACHE,
                "",
                true,
                InterZone,
            )
        },
        // --- Services ----------------------------------------------------------------
        c(
            "ClusterIP to a backend in another zone",
            A1,
            "10.0.1.100:40000 > 172.20.0.10:80",
            "10.0.2.100:8080 > 10.0.1.100:40000",
            WEB1,
            WEB2,
            "shop/web:clusterip",
            true,
            InterZone,
        ),
        c(
            "ClusterIP to a backend on the same node",
            A1,
            "10.0.1.105:40000 > 172.20.0.10:80",
            "10.0.1.100:8080 > 10.0.1.105:40000",
            CACHE,
            WEB1,
            "shop/web:clusterip",
            true,
            IntraNode,
        ),
        c(
            "ClusterIP seen on the backend's node",
            B1,
            "10.0.1.100:40000 > 172.20.0.10:80",
            "10.0.2.100:8080 > 10.0.1.100:40000",
            WEB2,
            WEB1,
            "shop/web:clusterip",
            false,
            InterZone,
        ),
        c(
            "ClusterIP from another zone's pod",
            A2,
            "10.0.1.101:40000 > 172.20.0.10:80",
            "10.0.1.100:8080 > 10.0.1.101:40000",
            API1,
            WEB1,
            "shop/web:clusterip",
            true,
            IntraZone,
        ),
        c(
            "IPv6 ClusterIP",
            A1,
            "[fd00:10::100]:40000 > [fd00:96::10]:80",
            "[fd00:20::100]:8080 > [fd00:10::100]:40000",
            WEB1,
            WEB2,
            "shop/web:clusterip",
            true,
            InterZone,
        ),
        c(
            "NodePort from a pod",
            A1,
            "10.0.1.100:40000 > 10.0.2.10:30443",
            "10.0.2.100:8080 > 10.0.1.100:40000",
            WEB1,
            WEB2,
            "shop/front:nodeport",
            true,
            InterZone,
        ),
        c(
            "NodePort from the internet, local backend",
            A2,
            "1.2.3.4:50000 > 10.0.1.11:30080",
            "10.0.1.101:8080 > 1.2.3.4:50000",
            API1,
            "internet",
            "shop/api:nodeport",
            false,
            PublicInternet,
        ),
        Case {
            snat: "node:node-b1",
            ..c(
                "NodePort from the internet, forwarded and SNATed",
                B1,
                "1.2.3.4:50000 > 10.0.2.10:30080",
                "10.0.1.101:8080 > 10.0.2.10:61000",
                API1,
                "internet",
                "shop/api:nodeport",
                false,
                PublicInternet,
            )
        },
        c(
            "LoadBalancer IP intercepted by kube-proxy",
            A1,
            "10.0.1.100:40000 > 198.51.100.7:443",
            "10.0.2.100:8080 > 10.0.1.100:40000",
            WEB1,
            WEB2,
            "shop/front:loadbalancer",
            true,
            InterZone,
        ),
        c(
            "LoadBalancer IP without DNAT",
            A1,
            "10.0.1.100:40000 > 198.51.100.7:443",
            "198.51.100.7:443 > 10.0.1.100:40000",
            WEB1,
            "svc:shop/front",
            "",
            true,
            Unknown,
        ),
        c(
            "selector-less Service to a manual endpoint",
            A1,
            "10.0.1.100:40000 > 172.20.0.13:5432",
            "10.60.0.5:5432 > 10.0.1.100:40000",
            WEB1,
            "svc:shop/ext-db",
            "shop/ext-db:clusterip",
            true,
            Unknown,
        ),
        // --- host network and nodes --------------------------------------------------
        c(
            "hostNetwork pod by its declared port",
            A1,
            "10.0.1.100:40000 > 10.0.1.10:9100",
            "10.0.1.10:9100 > 10.0.1.100:40000",
            WEB1,
            EXPORTER,
            "",
            true,
            IntraNode,
        ),
        c(
            "hostNetwork pod from another node",
            A2,
            "10.0.1.101:40000 > 10.0.1.10:9100",
            "10.0.1.10:9100 > 10.0.1.101:40000",
            API1,
            EXPORTER,
            "",
            true,
            IntraZone,
        ),
        c(
            "hostNetwork pod seen on its node",
            A1,
            "10.0.1.101:40000 > 10.0.1.10:9100",
            "10.0.1.10:9100 > 10.0.1.101:40000",
            EXPORTER,
            API1,
            "",
            false,
            IntraZone,
        ),
        c(
            "node address, undeclared port",
            A1,
            "10.0.1.100:40000 > 10.0.1.10:10250",
            "10.0.1.10:10250 > 10.0.1.100:40000",
            WEB1,
            "node:node-a1",
            "",
            true,
            IntraNode,
        ),
        c(
            "kubelet probe from the node",
            A1,
            "10.0.1.10:50000 > 10.0.1.100:8080",
            "10.0.1.100:8080 > 10.0.1.10:50000",
            "node:node-a1",
            WEB1,
            "",
            true,
            IntraNode,
        ),
        c(
            "node to node across zones",
            A1,
            "10.0.1.10:50000 > 10.0.2.10:10250",
            "10.0.2.10:10250 > 10.0.1.10:50000",
            "node:node-a1",
            "node:node-b1",
            "",
            true,
            InterZone,
        ),
        c(
            "node to node over IPv6",
            B1,
            "[fd00:10::a1]:50000 > [fd00:20::b1]:10250",
            "[fd00:20::b1]:10250 > [fd00:10::a1]:50000",
            "node:node-b1",
            "node:node-a1",
            "",
            false,
            InterZone,
        ),
        c(
            "node to node, same zone, beta labels",
            A2,
            "10.0.1.11:50000 > 10.0.1.10:10250",
            "10.0.1.10:10250 > 10.0.1.11:50000",
            "node:node-a2",
            "node:node-a1",
            "",
            true,
            IntraZone,
        ),
        c(
            "loopback on the node",
            A1,
            "127.0.0.1:40000 > 127.0.0.1:10248",
            "127.0.0.1:10248 > 127.0.0.1:40000",
            "node:node-a1",
            "node:node-a1",
            "",
            true,
            IntraNode,
        ),
        c(
            "instance metadata (link-local)",
            A1,
            "10.0.1.100:40000 > 169.254.169.254:80",
            "169.254.169.254:80 > 10.0.1.100:40000",
            WEB1,
            "unknown",
            "",
            true,
            IntraNode,
        ),
        // --- time: reuse, completion, deletion --------------------------------------
        c(
            "IP reused: the Running pod wins over the Completed one",
            A1,
            "10.0.1.100:40000 > 10.0.2.102:8080",
            "10.0.2.102:8080 > 10.0.1.100:40000",
            WEB1,
            "pod:shop/worker-7b8c9-ddddd(Deployment/worker)",
            "",
            true,
            InterZone,
        ),
        Case {
            start: "2025-01-10T08:30:00Z",
            ..c(
                "IP reused: a connection that began before the new pod",
                A1,
                "10.0.1.100:40000 > 10.0.2.102:8080",
                "10.0.2.102:8080 > 10.0.1.100:40000",
                WEB1,
                "pod:shop/report-28934560-abcde(CronJob/report)",
                "",
                true,
                InterZone,
            )
        },
        c(
            "a Failed pod still holding its IP",
            A1,
            "10.0.1.100:40000 > 10.0.1.103:8080",
            "10.0.1.103:8080 > 10.0.1.100:40000",
            WEB1,
            "pod:shop/old-0(StatefulSet/old)",
            "",
            true,
            IntraNode,
        ),
        Case {
            after_delete: true,
            now: "2025-01-10T09:41:00Z",
            ..c(
                "deleted pod within the grace period",
                A1,
                "10.0.1.100:40000 > 10.0.1.150:8080",
                "10.0.1.150:8080 > 10.0.1.100:40000",
                WEB1,
                "pod:shop/gone-8d7e6-eeeee(Deployment/gone)",
                "",
                true,
                IntraNode,
            )
        },
        Case {
            after_delete: true,
            now: "2025-01-10T09:45:00Z",
            ..c(
                "deleted pod after the grace period",
                A1,
                "10.0.1.100:40000 > 10.0.1.150:8080",
                "10.0.1.150:8080 > 10.0.1.100:40000",
                WEB1,
                "net:vpc",
                "",
                true,
                IntraVpc,
            )
        },
        Case {
            after_delete: true,
            now: "2025-01-10T09:50:00Z",
            start: "2025-01-10T09:39:00Z",
            ..c(
                "deleted pod, late flow of a connection it started",
                A1,
                "10.0.1.100:40000 > 10.0.1.150:8080",
                "10.0.1.150:8080 > 10.0.1.100:40000",
                WEB1,
                "pod:shop/gone-8d7e6-eeeee(Deployment/gone)",
                "",
                true,
                IntraNode,
            )
        },
        Case {
            now: "2025-01-10T10:01:00Z",
            ..c(
                "terminating pod before deletionTimestamp + grace",
                A1,
                "10.0.1.100:40000 > 10.0.1.104:8080",
                "10.0.1.104:8080 > 10.0.1.100:40000",
                WEB1,
                "pod:shop/term-0(StatefulSet/term)",
                "",
                true,
                IntraNode,
            )
        },
        Case {
            now: "2025-01-10T10:03:00Z",
            ..c(
                "terminating pod after deletionTimestamp + grace",
                A1,
                "10.0.1.100:40000 > 10.0.1.104:8080",
                "10.0.1.104:8080 > 10.0.1.100:40000",
                WEB1,
                "net:vpc",
                "",
                true,
                IntraVpc,
            )
        },
        // --- SNAT and the outside world ----------------------------------------------
        Case {
            snat: "node:node-a1",
            ..c(
                "internet, SNAT to the node IP",
                A1,
                "10.0.1.100:40000 > 1.1.1.1:443",
                "1.1.1.1:443 > 10.0.1.10:61000",
                WEB1,
                "internet",
                "",
                true,
                PublicInternet,
            )
        },
        c(
            "internet over IPv6, no SNAT",
            A1,
            "[fd00:10::100]:40000 > [2606:4700::1111]:443",
            "[2606:4700::1111]:443 > [fd00:10::100]:40000",
            WEB1,
            "internet",
            "",
            true,
            PublicInternet,
        ),
        Case {
            snat: "net:nat-a",
            ..c(
                "SNAT to a NAT gateway address",
                A1,
                "10.0.1.100:40000 > 1.1.1.1:443",
                "1.1.1.1:443 > 10.0.9.9:1024",
                WEB1,
                "internet",
                "",
                true,
                PublicInternet,
            )
        },
        c(
            "inbound from the internet to a node",
            A1,
            "1.2.3.4:50000 > 10.0.1.10:22",
            "10.0.1.10:22 > 1.2.3.4:50000",
            "node:node-a1",
            "internet",
            "",
            false,
            PublicInternet,
        ),
        Case {
            snat: "node:node-a1",
            ..c(
                "S3 in-region",
                A1,
                "10.0.1.100:40000 > 52.216.10.1:443",
                "52.216.10.1:443 > 10.0.1.10:61001",
                WEB1,
                "cloud:aws/us-east-1/S3",
                "",
                true,
                IntraVpc,
            )
        },
        Case {
            snat: "node:node-a1",
            ..c(
                "S3 cross-region",
                A1,
                "10.0.1.100:40000 > 52.218.1.1:443",
                "52.218.1.1:443 > 10.0.1.10:61002",
                WEB1,
                "cloud:aws/eu-west-1/S3",
                "",
                true,
                InterRegion,
            )
        },
        c(
            "S3 us-east-1 from the us-west-2 node",
            "node-w1",
            "10.1.1.100:40000 > 52.216.10.1:443",
            "52.216.10.1:443 > 10.1.1.100:40000",
            WEST0,
            "cloud:aws/us-east-1/S3",
            "",
            true,
            InterRegion,
        ),
        c(
            "S3 over IPv6",
            A1,
            "[fd00:10::100]:40000 > [2600:1fa0:8001::1]:443",
            "[2600:1fa0:8001::1]:443 > [fd00:10::100]:40000",
            WEB1,
            "cloud:aws/us-east-1/S3",
            "",
            true,
            IntraVpc,
        ),
        c(
            "DynamoDB in-region (longer prefix inside AMAZON)",
            A1,
            "10.0.1.100:40000 > 3.5.0.9:443",
            "3.5.0.9:443 > 10.0.1.100:40000",
            WEB1,
            "cloud:aws/us-east-1/DYNAMODB",
            "",
            true,
            IntraVpc,
        ),
        c(
            "AMAZON beats EC2 on the same prefix",
            A1,
            "10.0.1.100:40000 > 3.81.2.3:443",
            "3.81.2.3:443 > 10.0.1.100:40000",
            WEB1,
            "cloud:aws/us-east-1/AMAZON",
            "",
            true,
            IntraVpc,
        ),
        c(
            "EC2 in another region",
            A1,
            "10.0.1.100:40000 > 18.185.0.1:443",
            "18.185.0.1:443 > 10.0.1.100:40000",
            WEB1,
            "cloud:aws/eu-central-1/EC2",
            "",
            true,
            InterRegion,
        ),
        c(
            "CloudFront (GLOBAL)",
            A1,
            "10.0.1.100:40000 > 13.33.0.1:443",
            "13.33.0.1:443 > 10.0.1.100:40000",
            WEB1,
            "cloud:aws/GLOBAL/CLOUDFRONT",
            "",
            true,
            PublicInternet,
        ),
        c(
            "another cloud: GCP",
            A1,
            "10.0.1.100:40000 > 34.75.0.1:443",
            "34.75.0.1:443 > 10.0.1.100:40000",
            WEB1,
            "cloud:gcp/us-east1/Google Cloud",
            "",
            true,
            PublicInternet,
        ),
        Case {
            proto: Protocol::UDP,
            ..c(
                "another cloud: Google DNS",
                A1,
                "10.0.1.100:40000 > 8.8.8.8:53",
                "8.8.8.8:53 > 10.0.1.100:40000",
                WEB1,
                "cloud:gcp/global/Google",
                "",
                true,
                PublicInternet,
            )
        },
        c(
            "another cloud: Azure storage",
            A1,
            "10.0.1.100:40000 > 20.60.1.1:443",
            "20.60.1.1:443 > 10.0.1.100:40000",
            WEB1,
            "cloud:azure/eastus/AzureStorage",
            "",
            true,
            PublicInternet,
        ),
        // --- user CIDR rules ---------------------------------------------------------
        c(
            "NAT gateway in the same zone",
            A1,
            "10.0.1.100:40000 > 10.0.9.9:443",
            "10.0.9.9:443 > 10.0.1.100:40000",
            WEB1,
            "net:nat-a",
            "",
            true,
            IntraZone,
        ),
        c(
            "NAT gateway in another zone",
            A1,
            "10.0.1.100:40000 > 10.0.9.10:443",
            "10.0.9.10:443 > 10.0.1.100:40000",
            WEB1,
            "net:nat-b",
            "",
            true,
            InterZone,
        ),
        c(
            "on-prem with a class override",
            A1,
            "10.0.1.100:40000 > 192.168.5.5:443",
            "192.168.5.5:443 > 10.0.1.100:40000",
            WEB1,
            "net:office",
            "",
            true,
            PublicInternet,
        ),
        c(
            "peering in another region",
            A1,
            "10.0.1.100:40000 > 172.31.0.5:443",
            "172.31.0.5:443 > 10.0.1.100:40000",
            WEB1,
            "net:peer-eu",
            "",
            true,
            InterRegion,
        ),
        c(
            "peering in the same region",
            A1,
            "10.0.1.100:40000 > 172.30.0.5:443",
            "172.30.0.5:443 > 10.0.1.100:40000",
            WEB1,
            "net:peer-east",
            "",
            true,
            IntraVpc,
        ),
        c(
            "VPC address outside the cluster",
            A1,
            "10.0.1.100:40000 > 10.200.0.5:443",
            "10.200.0.5:443 > 10.0.1.100:40000",
            WEB1,
            "net:vpc",
            "",
            true,
            IntraVpc,
        ),
        c(
            "private address no rule claims (CGNAT)",
            A1,
            "10.0.1.100:40000 > 100.64.0.5:443",
            "100.64.0.5:443 > 10.0.1.100:40000",
            WEB1,
            "unknown",
            "",
            true,
            IntraVpc,
        ),
        c(
            "inbound from on-prem",
            A1,
            "192.168.5.5:50000 > 10.0.1.100:8080",
            "10.0.1.100:8080 > 192.168.5.5:50000",
            WEB1,
            "net:office",
            "",
            false,
            PublicInternet,
        ),
    ]
}

fn service_desc(a: &Attribution) -> String {
    a.service.as_ref().map_or_else(String::new, |s| {
        let via = match s.via {
            ServiceVia::ClusterIp => "clusterip",
            ServiceVia::NodePort => "nodeport",
            ServiceVia::LoadBalancer => "loadbalancer",
            ServiceVia::ExternalIp => "externalip",
        };
        format!("{}/{}:{via}", s.meta.namespace, s.meta.name)
    })
}

fn observe(case: &Case) -> Observation {
    Observation {
        proto: case.proto,
        orig: tuple(case.orig),
        reply: tuple(case.reply),
        delta_orig: Counters {
            bytes: 1_000,
            packets: 10,
        },
        delta_reply: Counters {
            bytes: 3_000,
            packets: 12,
        },
        start_ns: if case.start.is_empty() {
            0
        } else {
            ts(case.start)
        },
        ..Default::default()
    }
}

#[test]
fn attribution_table() {
    let attr = attributor();
    let (before, after) = indexes();
    let cases = cases();
    assert!(cases.len() >= 50, "{} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let idx = if case.after_delete { &after } else { &before };
        let a = attr.attribute(&observe(case), case.observer, idx, ts(case.now));
        let got = (
            desc(&a.local.place),
            desc(&a.remote.place),
            service_desc(&a),
            a.local_initiated,
            a.class,
            a.snat.as_ref().map_or_else(String::new, |s| desc(&s.place)),
        );
        let want = (
            case.local.to_string(),
            case.remote.to_string(),
            case.service.to_string(),
            case.local_initiated,
            case.class,
            case.snat.to_string(),
        );
        if got != want {
            failures.push(format!("{}:\n   got {got:?}\n  want {want:?}", case.name));
        }
        // Bytes follow the orientation: out is what the local side sent.
        let (out, inb) = if a.local_initiated {
            (1_000, 3_000)
        } else {
            (3_000, 1_000)
        };
        assert_eq!((a.bytes_out, a.bytes_in), (out, inb), "{}", case.name);
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn sides_carry_namespace_workload_app_zone_and_instance() {
    let attr = attributor();
    let (idx, _) = indexes();
    let case = c(
        "",
        A1,
        "10.0.1.100:40000 > 172.20.0.10:80",
        "10.0.2.100:8080 > 10.0.1.100:40000",
        "",
        "",
        "",
        true,
        InterZone,
    );
    let a = attr.attribute(&observe(&case), A1, &idx, ts(NOW));
    let l = &a.local.place;
    let r = &a.remote.place;
    assert_eq!(l.namespace().map(|s| &**s), Some("shop"));
    assert_eq!(l.app().map(|s| &**s), Some("web"));
    assert_eq!(l.zone().map(|s| &**s), Some("us-east-1a"));
    assert_eq!(r.zone().map(|s| &**s), Some("us-east-1b"));
    assert_eq!(r.region().map(|s| &**s), Some("us-east-1"));
    assert_eq!(r.cloud().map(|s| &**s), Some("aws"));
    assert_eq!(r.node().and_then(|n| n.instance.as_deref()), Some("i-0b1"));
    assert_eq!(a.responder_port, 8080);
    assert_eq!(
        a.initiator().ip,
        "10.0.1.100".parse::<IpAddr>().expect("ip")
    );
    assert_eq!(
        a.responder().ip,
        "10.0.2.100".parse::<IpAddr>().expect("ip")
    );
    // app: app.kubernetes.io/name, then app, then k8s-app.
    let app_of = |ip: &str| match idx.place(ip.parse().expect("ip"), 0, ts(NOW)) {
        Some(Place::Pod(p)) => p.app.as_deref().map(str::to_string),
        other => panic!("{ip}: {other:?}"),
    };
    assert_eq!(app_of("10.0.1.101").as_deref(), Some("api"));
    assert_eq!(app_of("10.0.2.101").as_deref(), Some("db"));
    assert_eq!(app_of("10.1.1.100"), None);
}

#[test]
fn costs_follow_the_price_table() {
    let attr = attributor();
    let (idx, _) = indexes();
    let gb = BYTES_PER_GB as u64;
    let run = |orig: &'static str, reply: &'static str| {
        let case = c("", A1, orig, reply, "", "", "", true, Unknown);
        let mut o = observe(&case);
        o.delta_orig.bytes = gb;
        o.delta_reply.bytes = 2 * gb;
        attr.attribute(&o, A1, &idx, ts(NOW))
    };
    // Cross-AZ on AWS: 0.01 each way.
    let a = run(
        "10.0.1.100:40000 > 10.0.2.101:5432",
        "10.0.2.101:5432 > 10.0.1.100:40000",
    );
    assert!((a.cost_usd - 0.03).abs() < 1e-9, "{}", a.cost_usd);
    // Internet egress: 0.09 out, ingress free.
    let a = run(
        "10.0.1.100:40000 > 1.1.1.1:443",
        "1.1.1.1:443 > 10.0.1.10:61000",
    );
    assert!((a.cost_usd - 0.09).abs() < 1e-9, "{}", a.cost_usd);
    // S3 in-region: free, and kubenetmon calls it INTRA_REGION.
    let a = run(
        "10.0.1.100:40000 > 52.216.10.1:443",
        "52.216.10.1:443 > 10.0.1.10:61001",
    );
    assert_eq!(a.cost_usd, 0.0);
    assert_eq!(a.kubenetmon_class(), KubenetmonClass::IntraRegion);
    // S3 in another region: 0.02 out.
    let a = run(
        "10.0.1.100:40000 > 52.218.1.1:443",
        "52.218.1.1:443 > 10.0.1.10:61002",
    );
    assert!((a.cost_usd - 0.02).abs() < 1e-9, "{}", a.cost_usd);
    assert_eq!(a.kubenetmon_class(), KubenetmonClass::InterRegion);
    // Same node: free, INTRA_VPC for kubenetmon.
    let a = run(
        "10.0.1.100:40000 > 10.0.1.105:6379",
        "10.0.1.105:6379 > 10.0.1.100:40000",
    );
    assert_eq!(a.cost_usd, 0.0);
    assert_eq!(a.kubenetmon_class(), KubenetmonClass::IntraVpc);
    let a = run(
        "10.0.1.100:40000 > 34.75.0.1:443",
        "34.75.0.1:443 > 10.0.1.100:40000",
    );
    assert_eq!(a.kubenetmon_class(), KubenetmonClass::PublicInternet);
}

/// Flows seen by an exporter outside the cluster: the networks they are summed under
/// when neither end is in the cluster, none when one end is.
#[test]
fn outside_flows_get_their_networks() {
    let at = attributor();
    let (idx, _) = indexes();
    let nets = |orig: &str| {
        let t = tuple(orig);
        let obs = Observation {
            proto: Protocol::TCP,
            orig: t,
            reply: t.reversed(),
            ..Default::default()
        };
        let a = at.attribute(&obs, "192.0.2.7/0", &idx, ts(NOW));
        at.outside_networks(&a)
            .map(|(l, r)| format!("{l} {r}"))
            .unwrap_or_else(|| "kept".into())
    };
    // Internet to internet: the /24s; unclaimed private space too.
    assert_eq!(nets("8.8.8.8:5000 > 1.1.1.1:53"), "8.8.8.0/24 1.1.1.0/24");
    assert_eq!(
        nets("100.64.3.4:5000 > 203.0.113.77:443"),
        "100.64.3.0/24 203.0.113.0/24"
    );
    // A cloud range: the published prefix that classified it.
    assert_eq!(
        nets("8.8.8.8:5000 > 52.216.10.1:443"),
        "8.8.8.0/24 52.216.0.0/15"
    );
    // IPv6: the /48, and the cloud's IPv6 prefix.
    assert_eq!(
        nets("[2001:db8:1:2::5]:5000 > [2600:1fa0:8001::1]:443"),
        "2001:db8:1::/48 2600:1fa0:8000::/39"
    );
    // An end in the cluster (a pod, a node, a user network): the addresses are kept.
    assert_eq!(nets("10.0.1.100:40000 > 8.8.8.8:443"), "kept");
    assert_eq!(nets("8.8.8.8:5000 > 192.168.1.1:22"), "kept");
    assert_eq!(nets("10.0.9.9:5000 > 8.8.8.8:443"), "kept");
}
