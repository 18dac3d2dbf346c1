//! Attribution + classification throughput on one core: 10k pods, 1k Services and ~50k
//! cloud prefixes generated in the providers' own formats (parsed by the real loaders).
//!
//! Run: `cargo bench -p podflow-enrich --bench attribution`. The last line is
//! `attribution_obs_per_sec=<n>`. No reference tool does this job, so the bench also
//! reports the cost of a bare index lookup as a yardstick (`ratio_to_bare_lookup`).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use podflow_enrich::{Attributor, CloudRanges, EnrichConfig, PriceTable, Provider};
use podflow_inventory::{
    ContainerPort, IndexConfig, Inventory, IpIndex, Node, OwnerRef, Pod, PodPhase, Service,
    ServicePort,
};
use podflow_model::{Counters, Observation, Protocol, Tuple};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: deterministic, good enough to spread addresses.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn public_v4(&mut self) -> Ipv4Addr {
        loop {
            let a = Ipv4Addr::from(self.next() as u32);
            let o = a.octets()[0];
            if !(o == 0 || o == 10 || o == 127 || o == 100 || o == 172 || o == 192 || o >= 224) {
                return a;
            }
        }
    }
}

fn v4_prefix(r: &mut Rng, len: u8) -> String {
    let a = u32::from(r.public_v4()) & (u32::MAX << (32 - u32::from(len)));
    format!("{}/{len}", Ipv4Addr::from(a))
}

fn v6_prefix(r: &mut Rng, len: u8) -> String {
    let hi = 0x2600_u128 << 112 | u128::from(r.next()) << 48;
    let a = hi & (u128::MAX << (128 - u32::from(len)));
    format!("{}/{len}", Ipv6Addr::from(a))
}

const AWS_REGIONS: [&str; 6] = [
    "us-east-1",
    "us-west-2",
    "eu-west-1",
    "eu-central-1",
    "ap-south-1",
    "GLOBAL",
];
const AWS_SERVICES: [&str; 6] = ["AMAZON", "EC2", "S3", "CLOUDFRONT", "DYNAMODB", "ROUTE53"];

/// Provider files in their formats: ~50k prefixes in all, like the published lists.
fn provider_files(r: &mut Rng) -> Vec<(Provider, String)> {
    let mut aws_v4 = Vec::new();
    for _ in 0..9_000 {
        let len = 12 + r.below(17) as u8;
        let p = v4_prefix(r, len);
        let region = AWS_REGIONS[r.below(6) as usize];
        let service = AWS_SERVICES[r.below(6) as usize];
        aws_v4.push(format!(
            r#"{{"ip_prefix":"{p}","region":"{region}","service":"{service}","network_border_group":"{region}"}}"#
        ));
        // AWS lists most ranges twice: under their service and under AMAZON.
        if r.below(2) == 0 {
            aws_v4.push(format!(
                r#"{{"ip_prefix":"{p}","region":"{region}","service":"AMAZON","network_border_group":"{region}"}}"#
            ));
        }
    }
    let mut aws_v6 = Vec::new();
    for _ in 0..3_000 {
        let len = 32 + r.below(33) as u8;
        let p = v6_prefix(r, len);
        let region = AWS_REGIONS[r.below(6) as usize];
        aws_v6.push(format!(
            r#"{{"ipv6_prefix":"{p}","region":"{region}","service":"EC2","network_border_group":"{region}"}}"#
        ));
    }
    let aws = format!(
        r#"{{"syncToken":"1","createDate":"2025-01-15-00-00-00","prefixes":[{}],"ipv6_prefixes":[{}]}}"#,
        aws_v4.join(","),
        aws_v6.join(",")
    );
    let mut gcp = Vec::new();
    for i in 0..1_000 {
        let p = if i % 4 == 0 {
            format!(r#""ipv6Prefix":"{}""#, v6_prefix(r, 44))
        } else {
            format!(r#""ipv4Prefix":"{}""#, {
                let len = 16 + r.below(9) as u8;
                v4_prefix(r, len)
            })
        };
        gcp.push(format!(
            r#"{{{p},"service":"Google Cloud","scope":"us-east{}"}}"#,
            1 + i % 4
        ));
    }
    let gcp = format!(
        r#"{{"syncToken":"1","creationTime":"2025-01-15T00:00:00","prefixes":[{}]}}"#,
        gcp.join(",")
    );
    let goog: Vec<String> = (0..100)
        .map(|_| {
            format!(r#"{{"ipv4Prefix":"{}"}}"#, {
                let len = 10 + r.below(10) as u8;
                v4_prefix(r, len)
            })
        })
        .collect();
    let goog = format!(
        r#"{{"syncToken":"1","creationTime":"2025-01-15T00:00:00","prefixes":[{}]}}"#,
        goog.join(",")
    );
    let mut values = Vec::new();
    for t in 0..700 {
        let region = ["eastus", "westeurope", "northeurope", "westus2"][t % 4];
        let (name, system) = match t % 7 {
            0 => (format!("AzureCloud.{region}"), ""),
            1 => (format!("Storage.{region}"), "AzureStorage"),
            _ => (format!("Svc{t}.{region}"), "AzureService"),
        };
        let prefixes: Vec<String> = (0..50)
            .map(|i| {
                if i % 5 == 0 {
                    format!("\"{}\"", {
                        let len = 48 + r.below(17) as u8;
                        v6_prefix(r, len)
                    })
                } else {
                    format!("\"{}\"", {
                        let len = 18 + r.below(11) as u8;
                        v4_prefix(r, len)
                    })
                }
            })
            .collect();
        values.push(format!(
            r#"{{"name":"{name}","id":"{name}","properties":{{"changeNumber":1,"region":"{region}","regionId":1,"platform":"Azure","systemService":"{system}","addressPrefixes":[{}],"networkFeatures":["API","NSG"]}}}}"#,
            prefixes.join(",")
        ));
    }
    let azure = format!(
        r#"{{"changeNumber":1,"cloud":"Public","values":[{}]}}"#,
        values.join(",")
    );
    vec![
        (Provider::Aws, aws),
        (Provider::Gcp, gcp),
        (Provider::Google, goog),
        (Provider::Azure, azure),
    ]
}

fn pod_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 64 + (i / 250) as u8, (i % 250) as u8, 10))
}

fn inventory() -> Inventory {
    let mut inv = Inventory::default();
    let zones = ["us-east-1a", "us-east-1b", "us-east-1c"];
    for n in 0..100 {
        inv.nodes.push(Node {
            name: format!("node-{n}"),
            addresses: vec![(
                "InternalIP".into(),
                IpAddr::V4(Ipv4Addr::new(10, 0, (n / 200) as u8, (n % 200) as u8 + 10)),
            )],
            labels: BTreeMap::from([
                ("topology.kubernetes.io/zone".into(), zones[n % 3].into()),
                ("topology.kubernetes.io/region".into(), "us-east-1".into()),
            ]),
            provider_id: Some(format!("aws:///{}/i-{n:017x}", zones[n % 3])),
            leaving: false,
            ready: Some(true),
        });
    }
    for i in 0..10_000 {
        let deploy = format!("app{}", i / 10);
        inv.pods.push(Pod {
            namespace: format!("ns{}", i % 50),
            name: format!("{deploy}-6c9f8-{i:05}"),
            uid: format!("uid-{i}"),
            phase: PodPhase::Running,
            ips: vec![pod_ip(i)],
            host_network: false,
            ports: vec![ContainerPort {
                port: 8080,
                host_port: None,
            }],
            node_name: Some(format!("node-{}", i % 100)),
            labels: BTreeMap::from([
                ("app".into(), deploy.clone()),
                ("pod-template-hash".into(), "6c9f8".into()),
            ]),
            owners: vec![OwnerRef {
                kind: "ReplicaSet".into(),
                name: format!("{deploy}-6c9f8"),
                controller: true,
            }],
            created_ns: Some(1),
            deletion_ns: None,
        });
    }
    for s in 0..1_000 {
        inv.services.push(Service {
            namespace: format!("ns{}", s % 50),
            name: format!("svc{s}"),
            kind: "ClusterIP".into(),
            cluster_ips: vec![IpAddr::V4(Ipv4Addr::new(
                172,
                20,
                (s / 250) as u8,
                (s % 250) as u8,
            ))],
            ports: vec![ServicePort {
                port: 80,
                node_port: None,
            }],
            ..Default::default()
        });
    }
    inv
}

fn tuple(src: IpAddr, sp: u16, dst: IpAddr, dp: u16) -> Tuple {
    Tuple {
        src,
        src_port: sp,
        dst,
        dst_port: dp,
    }
}

/// A mix: pod to pod 40%, ClusterIP with DNAT 30%, cloud ranges with SNAT 20%, internet 10%.
fn observations(
    r: &mut Rng,
    inv: &Inventory,
    ranges_sample: &[IpAddr],
) -> Vec<(String, Observation)> {
    let mut out = Vec::with_capacity(65_536);
    for _ in 0..65_536 {
        let a = r.below(10_000) as usize;
        let b = r.below(10_000) as usize;
        let (src, dst) = (pod_ip(a), pod_ip(b));
        let sp = 32_768 + r.below(28_000) as u16;
        let node_ip = inv.nodes[a % 100].addresses[0].1;
        let (orig, reply) = match r.below(10) {
            0..=3 => (tuple(src, sp, dst, 8080), tuple(dst, 8080, src, sp)),
            4..=6 => {
                let s = r.below(1_000) as usize;
                let vip = inv.services[s].cluster_ips[0];
                (tuple(src, sp, vip, 80), tuple(dst, 8080, src, sp))
            }
            7 | 8 => {
                let ip = ranges_sample[r.below(ranges_sample.len() as u64) as usize];
                (tuple(src, sp, ip, 443), tuple(ip, 443, node_ip, sp))
            }
            _ => {
                let ip = IpAddr::V4(r.public_v4());
                (tuple(src, sp, ip, 443), tuple(ip, 443, node_ip, sp))
            }
        };
        out.push((
            format!("node-{}", a % 100),
            Observation {
                proto: Protocol::TCP,
                orig,
                reply,
                delta_orig: Counters {
                    bytes: 1_500,
                    packets: 3,
                },
                delta_reply: Counters {
                    bytes: 9_000,
                    packets: 7,
                },
                ..Default::default()
            },
        ));
    }
    out
}

fn main() {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let files = provider_files(&mut r);
    let t = Instant::now();
    let mut b = CloudRanges::builder();
    for (p, text) in &files {
        if let Err(e) = b.add_text(*p, "generated", text) {
            eprintln!("generated provider file did not load: {e}");
            std::process::exit(1);
        }
    }
    let ranges = b.build();
    println!(
        "cloud_prefixes={} load_ms={}",
        ranges.len(),
        t.elapsed().as_millis()
    );
    // Addresses that fall into published ranges, for the cloud part of the mix.
    let mut sample = Vec::new();
    while sample.len() < 4_096 {
        let ip = IpAddr::V4(r.public_v4());
        if ranges.lookup(ip).is_some() {
            sample.push(ip);
        }
    }
    let inv = inventory();
    let t = Instant::now();
    let idx = IpIndex::build(&inv, &[], &IndexConfig::default());
    println!(
        "pods={} services={} index_build_ms={}",
        idx.stats().pods,
        idx.stats().services,
        t.elapsed().as_millis()
    );
    let attr = match Attributor::new(
        &EnrichConfig::default(),
        "default",
        ranges,
        PriceTable::defaults(),
    ) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("attributor: {e}");
            std::process::exit(1);
        }
    };
    let obs = observations(&mut r, &inv, &sample);

    // Yardstick: a bare index lookup per observation.
    let rounds = 30;
    let t = Instant::now();
    let mut hits = 0usize;
    for _ in 0..rounds {
        for (_, o) in &obs {
            hits += usize::from(idx.pod_at(black_box(o.orig.src), 0).is_some());
        }
    }
    let bare = (rounds * obs.len()) as f64 / t.elapsed().as_secs_f64();
    black_box(hits);

    // Cloud range lookups alone.
    let t = Instant::now();
    let mut found = 0usize;
    for _ in 0..rounds {
        for ip in &sample {
            found += usize::from(attr.ranges().lookup(black_box(*ip)).is_some());
        }
    }
    let ns = t.elapsed().as_nanos() as f64 / (rounds * sample.len()) as f64;
    black_box(found);
    println!("cloud_lookup_ns={ns:.1}");

    // Warm up, then measure.
    let mut classes = [0u64; 7];
    let mut cost = 0.0;
    for (observer, o) in obs.iter().take(8_192) {
        let a = attr.attribute(o, observer, &idx, 1_000);
        classes[a.class as usize] += 1;
    }
    let t = Instant::now();
    for _ in 0..rounds {
        for (observer, o) in &obs {
            let a = attr.attribute(black_box(o), observer, &idx, 1_000);
            classes[a.class as usize] += 1;
            cost += a.cost_usd;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let rate = (rounds * obs.len()) as f64 / secs;
    black_box(cost);
    println!("classes={classes:?}");
    println!("ratio_to_bare_lookup={:.3}", rate / bare);
    println!("attribution_obs_per_sec={}", rate as u64);
}
