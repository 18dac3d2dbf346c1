//! The files the demo's server reads: the inventory (Kubernetes List YAML, exactly what
//! `kubectl get -o yaml` prints), AWS's ip-ranges.json with the S3 prefix, and the config.

use std::path::Path;

use anyhow::Context;

use super::net::{API_PORT, NODE_PORT, NODES, PODS, REGION, S3_PREFIX, SERVICE_IP, SERVICE_PORT};

/// The inventory: nodes, the owner chain of every pod, pods, the Service and its
/// EndpointSlice.
pub fn inventory() -> String {
    let mut y = String::from("apiVersion: v1\nkind: List\nitems:\n");
    for (i, n) in NODES.iter().enumerate() {
        y.push_str(&format!(
            "- apiVersion: v1
  kind: Node
  metadata:
    name: {name}
    labels: {{topology.kubernetes.io/zone: {zone}, topology.kubernetes.io/region: {REGION}, kubernetes.io/hostname: {name}}}
  spec: {{podCIDR: \"{cidr}\", providerID: \"aws:///{zone}/i-0demo{i:012}\"}}
  status: {{addresses: [{{type: InternalIP, address: {ip}}}, {{type: Hostname, address: {name}}}]}}
",
            name = n.name(),
            zone = n.zone,
            cidr = n.pod_cidr(),
            ip = n.ip(),
        ));
    }
    // Controllers between pods and their top owners.
    y.push_str(
        "- apiVersion: apps/v1
  kind: ReplicaSet
  metadata:
    name: web-5d8f7c9b6
    namespace: shop
    ownerReferences: [{apiVersion: apps/v1, kind: Deployment, name: web, uid: d-web, controller: true}]
- apiVersion: apps/v1
  kind: ReplicaSet
  metadata:
    name: api-6b9c4d7f8
    namespace: shop
    ownerReferences: [{apiVersion: apps/v1, kind: Deployment, name: api, uid: d-api, controller: true}]
- apiVersion: batch/v1
  kind: Job
  metadata:
    name: report-29334720
    namespace: batch
    ownerReferences: [{apiVersion: batch/v1, kind: CronJob, name: report, uid: cj-report, controller: true}]
",
    );
    for (i, p) in PODS.iter().enumerate() {
        let api = match p.owner.0 {
            "Job" => "batch/v1",
            _ => "apps/v1",
        };
        y.push_str(&format!(
            "- apiVersion: v1
  kind: Pod
  metadata:
    name: {name}
    namespace: {ns}
    uid: pod-{i}
    labels: {{app: {app}}}
    ownerReferences: [{{apiVersion: {api}, kind: {ok}, name: {on}, uid: owner-{i}, controller: true}}]
  spec: {{nodeName: {node}}}
  status: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}]}}
",
            name = p.name,
            ns = p.namespace,
            app = p.app,
            ok = p.owner.0,
            on = p.owner.1,
            node = NODES[p.node].name(),
            ip = p.ip(),
        ));
    }
    y.push_str(&format!(
        "- apiVersion: v1
  kind: Service
  metadata: {{name: api, namespace: shop}}
  spec:
    type: NodePort
    clusterIP: {SERVICE_IP}
    clusterIPs: [{SERVICE_IP}]
    selector: {{app: api}}
    ports: [{{name: http, port: {SERVICE_PORT}, targetPort: {API_PORT}, nodePort: {NODE_PORT}, protocol: TCP}}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata:
    name: api-x2c9v
    namespace: shop
    labels: {{kubernetes.io/service-name: api}}
  addressType: IPv4
  ports: [{{name: http, port: {API_PORT}, protocol: TCP}}]
  endpoints:
"
    ));
    // One backend per zone, both Ready: what tells the cross-zone connections through
    // the Service apart as avoidable.
    for p in PODS.iter().filter(|p| p.app == "api") {
        y.push_str(&format!(
            "  - addresses: [{ip}]
    conditions: {{ready: true, serving: true, terminating: false}}
    nodeName: {node}
    zone: {zone}
    targetRef: {{kind: Pod, name: {name}, namespace: shop}}
",
            ip = p.ip(),
            node = NODES[p.node].name(),
            zone = NODES[p.node].zone,
            name = p.name,
        ));
    }
    y
}

/// AWS's ip-ranges.json format, with the demo's S3 prefix.
pub fn ip_ranges() -> String {
    format!(
        r#"{{"syncToken":"1","createDate":"2025-01-01-00-00-00","prefixes":[
  {{"ip_prefix":"{S3_PREFIX}","region":"{REGION}","service":"AMAZON","network_border_group":"{REGION}"}},
  {{"ip_prefix":"{S3_PREFIX}","region":"{REGION}","service":"S3","network_border_group":"{REGION}"}}],
 "ipv6_prefixes":[]}}
"#
    )
}

/// Writes the inventory, the ranges directory and the config into `dir`.
pub fn write_all(dir: &Path) -> anyhow::Result<()> {
    let w =
        |p: &Path, s: &str| std::fs::write(p, s).with_context(|| format!("write {}", p.display()));
    w(&dir.join("inventory.yaml"), &inventory())?;
    let ranges = dir.join("cloud-ranges");
    std::fs::create_dir_all(&ranges).with_context(|| format!("create {}", ranges.display()))?;
    w(&ranges.join("ip-ranges.json"), &ip_ranges())?;
    w(
        &dir.join("podflow.yaml"),
        &format!("cloud: aws\nregion: {REGION}\n"),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inventory_names_every_pod_with_its_owner_and_node() {
        let y = inventory();
        for p in &PODS {
            assert!(y.contains(&format!("name: {}\n", p.name)), "{}", p.name);
            assert!(y.contains(&format!("podIP: {}", p.ip())));
            assert!(y.contains(&format!("kind: {}, name: {}", p.owner.0, p.owner.1)));
        }
        for n in &NODES {
            assert!(y.contains(&format!("aws:///{}/i-0demo", n.zone)));
        }
        assert!(y.contains("kind: CronJob, name: report"));
        // The Service has a Ready backend in each zone.
        let inv = podflow_inventory::Inventory::parse(&y, "demo").expect("parses");
        let idx = podflow_inventory::IpIndex::build(&inv, &[], &Default::default());
        let api = idx.service_backends("shop", "api").expect("shop/api");
        let zones: Vec<&str> = api.ready_zones.iter().map(|z| &**z).collect();
        assert_eq!(zones, ["us-east-1a", "us-east-1b"]);
        assert!(!y.contains('\t'), "YAML has no tabs");
    }

    #[test]
    fn ip_ranges_is_json_with_the_s3_prefix() {
        let v: serde_json::Value = serde_json::from_str(&ip_ranges()).expect("json");
        let s3 = v["prefixes"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["service"] == "S3"))
            .expect("S3 prefix");
        assert_eq!(s3["ip_prefix"], S3_PREFIX);
        assert_eq!(s3["region"], REGION);
    }
}
