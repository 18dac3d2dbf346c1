//! The JSON answers of the API, as clients (`podflow flows`, tests) read them back.

use podflow_store::FlowSummary;
use serde::{Deserialize, Serialize};

/// One end of a row in `/api/v1/flows` (empty strings: not applicable or unknown).
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, Clone, Default)]
pub struct EndJson {
    /// `pod`, `node`, `service`, `known_network`, `cloud_range`, `internet`, `unknown`.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Pod, node, Service, network or cloud service name.
    pub name: String,
    /// Workload kind.
    pub workload_kind: String,
    /// Workload.
    pub workload: String,
    /// App.
    pub app: String,
    /// Node.
    pub node: String,
    /// Zone.
    pub zone: String,
    /// Region.
    pub region: String,
    /// Cloud.
    pub cloud: String,
}

impl From<&podflow_model::EndLabels> for EndJson {
    fn from(e: &podflow_model::EndLabels) -> Self {
        EndJson {
            kind: e.kind.to_string(),
            namespace: e.namespace.to_string(),
            name: e.name.to_string(),
            workload_kind: e.workload_kind.to_string(),
            workload: e.workload.to_string(),
            app: e.app.to_string(),
            node: e.node.to_string(),
            zone: e.zone.to_string(),
            region: e.region.to_string(),
            cloud: e.cloud.to_string(),
        }
    }
}

/// One row of `/api/v1/flows`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Clone)]
pub struct FlowJson {
    /// Node that saw the traffic.
    pub observer: String,
    /// `tcp`, `udp`, ...
    pub proto: String,
    /// Local address (`address/length` for a network: a row summed per network).
    pub local: String,
    /// Remote address (the backend after DNAT; `address/length` for a network).
    pub remote: String,
    /// Responder port.
    pub responder_port: u16,
    /// Whether the local end initiated.
    pub local_initiated: bool,
    /// Dialled `addr:port` when DNAT changed it.
    pub service: Option<String>,
    /// Bytes local → remote.
    pub bytes_out: u64,
    /// Packets local → remote.
    pub packets_out: u64,
    /// Bytes remote → local.
    pub bytes_in: u64,
    /// Packets remote → local.
    pub packets_in: u64,
    /// Connections opened.
    pub connections_opened: u64,
    /// Connections closed.
    pub connections_closed: u64,
    /// First interval start, Unix seconds.
    pub first: i64,
    /// Last interval end, Unix seconds.
    pub last: i64,
    /// Connection class (`INTRA_NODE`, `INTER_ZONE`, `PUBLIC_INTERNET`, ...).
    pub class: String,
    /// Price of the bytes, USD.
    pub cost_usd: f64,
    /// Who the local end is.
    pub local_meta: EndJson,
    /// Who the remote end is.
    pub remote_meta: EndJson,
    /// The Service dialled (`namespace/name`), when the inventory knows it.
    pub service_name: Option<String>,
}

impl From<FlowSummary> for FlowJson {
    fn from(f: FlowSummary) -> Self {
        let k = f.key;
        let t = f.totals;
        FlowJson {
            observer: f.observer,
            proto: k.proto.name().into_owned(),
            local: k.local_text(),
            remote: k.remote_text(),
            responder_port: k.responder_port,
            local_initiated: k.local_initiated,
            service: k
                .service
                .map(|(a, p)| std::net::SocketAddr::new(a, p).to_string()),
            bytes_out: t.bytes_out,
            packets_out: t.packets_out,
            bytes_in: t.bytes_in,
            packets_in: t.packets_in,
            connections_opened: t.opened,
            connections_closed: t.closed,
            first: f.first,
            last: f.last,
            class: f.labels.class.as_str().to_string(),
            cost_usd: f.cost_usd,
            local_meta: EndJson::from(&f.labels.local),
            remote_meta: EndJson::from(&f.labels.remote),
            service_name: (!f.labels.service_name.is_empty())
                .then(|| format!("{}/{}", f.labels.service_namespace, f.labels.service_name)),
        }
    }
}
