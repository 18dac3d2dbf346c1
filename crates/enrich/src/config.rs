//! The enrich section of the pipeline config: the cluster's cloud and region, app label
//! keys and user CIDR rules.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use podflow_model::{Class, NetworkKind, NetworkMeta};
use serde::Deserialize;

use crate::error::EnrichError;
use crate::plan::{BillingConfig, Plan};
use crate::prefix::{Cidr, PrefixTable};

/// Enrichment settings (YAML, unknown keys refused).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnrichConfig {
    /// The cluster's cloud (`aws`, `gcp`, `azure`) when nodes carry no providerID.
    pub cloud: Option<String>,
    /// The cluster's region when nodes carry no region label.
    pub region: Option<String>,
    /// Label keys that name a pod's app, first present wins.
    pub app_labels: Vec<String>,
    /// User CIDR rules, checked before the cloud ranges (longest prefix wins among them).
    pub networks: Vec<NetworkRule>,
    /// What the query-time bill needs beyond the price table: volume used elsewhere this
    /// month, NAT gateways and endpoints (docs/attribution.md, "Cost").
    pub billing: BillingConfig,
}

impl Default for EnrichConfig {
    fn default() -> Self {
        EnrichConfig {
            cloud: None,
            region: None,
            app_labels: vec![
                "app.kubernetes.io/name".into(),
                "app".into(),
                "k8s-app".into(),
            ],
            networks: Vec::new(),
            billing: BillingConfig::default(),
        }
    }
}

/// A user CIDR rule: a named network (VPC, NAT gateway, on-prem, peering).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkRule {
    /// Name shown as the remote side.
    pub name: String,
    /// The network's CIDRs (IPv4 or IPv6, no host bits).
    pub cidrs: Vec<String>,
    /// What kind of network it is (`vpc`, `nat_gateway`, `on_prem`, `peering`, `other`).
    #[serde(default)]
    pub kind: NetworkKind,
    /// Forces the class of connections to this network (`INTRA_VPC`, `PUBLIC_INTERNET`...).
    #[serde(default)]
    pub class: Option<Class>,
    /// Zone of the network, so that zone-aware classes work for it.
    #[serde(default)]
    pub zone: Option<String>,
    /// Region of the network (a peered VPC in another region is INTER_REGION).
    #[serde(default)]
    pub region: Option<String>,
    /// Free-form labels carried to the rows.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl EnrichConfig {
    /// Parses YAML (or JSON); `origin` names the file in errors.
    pub fn from_yaml(text: &str, origin: &str) -> Result<EnrichConfig, EnrichError> {
        let cfg: EnrichConfig =
            serde_saphyr::from_str(text).map_err(|e| EnrichError::yaml(origin, e))?;
        // Validate now so a bad CIDR stops startup with its place named.
        KnownNetworks::build(&cfg.networks, origin)?;
        Plan::build(&cfg.billing, origin)?;
        Ok(cfg)
    }
}

/// User CIDR rules ready for lookups.
#[derive(Clone, Debug, Default)]
pub struct KnownNetworks {
    table: PrefixTable<Arc<NetworkMeta>>,
}

impl KnownNetworks {
    /// Builds the table; errors name `networks[i].cidrs[j]` in `origin`.
    pub fn build(rules: &[NetworkRule], origin: &str) -> Result<KnownNetworks, EnrichError> {
        let mut b = PrefixTable::builder();
        for (i, r) in rules.iter().enumerate() {
            if r.name.is_empty() {
                return Err(EnrichError::field(
                    origin,
                    format!("networks[{i}].name"),
                    "empty",
                ));
            }
            let meta = Arc::new(NetworkMeta {
                name: r.name.as_str().into(),
                kind: r.kind,
                labels: r
                    .labels
                    .iter()
                    .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
                    .collect(),
                class: r.class,
                zone: r.zone.as_deref().map(Into::into),
                region: r.region.as_deref().map(Into::into),
            });
            for (j, c) in r.cidrs.iter().enumerate() {
                let cidr: Cidr = c.parse().map_err(|e| {
                    EnrichError::field(
                        origin,
                        format!("networks[{i}] ({}).cidrs[{j}]", r.name),
                        format!("{c:?}: {e}"),
                    )
                })?;
                // Earlier rules win on an identical CIDR: rank by reverse position.
                b.insert(cidr, -(i as i32), meta.clone());
            }
        }
        Ok(KnownNetworks { table: b.build() })
    }

    /// The most specific rule containing `ip`.
    #[inline]
    pub fn lookup(&self, ip: IpAddr) -> Option<&Arc<NetworkMeta>> {
        self.table.lookup(ip)
    }

    /// Number of distinct CIDRs.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether there is no rule.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}
