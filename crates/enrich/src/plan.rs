//! The `billing` section of the config: volume already used elsewhere this month (it
//! shifts where the cluster's bytes fall in the tiers), and the NAT gateways and
//! private/VPC endpoints that charge per GB they process.

use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::EnrichError;
use crate::month::Month;
use crate::prefix::{Cidr, PrefixTable};
use crate::prices::{Direction, PriceKey};

/// The billing section (YAML, unknown keys refused).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BillingConfig {
    /// Volume the same account or billing family used elsewhere in the month (other
    /// clusters, other services): the cluster's bytes continue the tiers after it.
    pub prior_usage: Vec<PriorUsage>,
    /// Subnets whose traffic leaves through a NAT gateway.
    pub nat_gateways: Vec<NatGateway>,
    /// Private/VPC (interface) endpoints, by their addresses.
    pub endpoints: Vec<Endpoint>,
}

/// Volume already used this month, for one price key and direction.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriorUsage {
    /// Cloud (`aws`, `gcp`, `azure`, or a name of the price table).
    pub cloud: String,
    /// Region; absent: every region (right for a single-region cluster).
    #[serde(default)]
    pub region: Option<String>,
    /// Price key: a class or `INTRA_REGION`.
    pub class: String,
    /// `out` (the default) or `in`.
    #[serde(default)]
    pub direction: Direction,
    /// `YYYY-MM`; absent: every month.
    #[serde(default)]
    pub month: Option<String>,
    /// GB (2^30 bytes).
    pub gb: f64,
}

/// A NAT gateway: the subnets that leave through it and what it charges.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatGateway {
    /// Its name in the bill.
    pub name: String,
    /// The subnets (CIDRs) whose traffic goes through it: a row is processed when its
    /// local address is in one (with overlay networks, name the pod CIDRs too).
    pub subnets: Vec<String>,
    /// Price keys whose traffic it carries; default `[PUBLIC_INTERNET, INTRA_REGION]`.
    #[serde(default)]
    pub classes: Vec<String>,
    /// USD per GB processed, both directions.
    pub usd_per_gb: f64,
}

/// A private/VPC endpoint: its addresses and what it charges.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// Its name in the bill.
    pub name: String,
    /// Its network interfaces' addresses (CIDRs): a row is processed when its remote
    /// address is in one.
    pub addresses: Vec<String>,
    /// Price keys of the traffic to it; default `[INTRA_VPC]`.
    #[serde(default)]
    pub classes: Vec<String>,
    /// USD per GB processed, both directions.
    pub usd_per_gb: f64,
}

/// What processes a row: a NAT gateway (matched on the local address) or an endpoint
/// (on the remote address).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    /// A NAT gateway.
    NatGateway,
    /// A private/VPC endpoint.
    Endpoint,
}

/// One NAT gateway or endpoint, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// Its position among the rules (NAT gateways first, then endpoints).
    pub index: usize,
    /// Its name.
    pub name: String,
    /// What it is.
    pub kind: RuleKind,
    /// The price keys it applies to.
    pub keys: Vec<PriceKey>,
    /// USD per GB, both directions.
    pub usd_per_gb: f64,
}

#[derive(Clone, Debug, PartialEq)]
struct Prior {
    cloud: String,
    region: Option<String>,
    key: PriceKey,
    direction: Direction,
    month: Option<Month>,
    gb: f64,
}

/// The billing section, checked and ready for lookups.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    prior: Vec<Prior>,
    rules: Vec<Arc<Rule>>,
    nat: PrefixTable<Arc<Rule>>,
    endpoints: PrefixTable<Arc<Rule>>,
}

fn keys(
    origin: &str,
    at: &str,
    given: &[String],
    default: &[PriceKey],
) -> Result<Vec<PriceKey>, EnrichError> {
    if given.is_empty() {
        return Ok(default.to_vec());
    }
    given
        .iter()
        .enumerate()
        .map(|(j, c)| {
            PriceKey::parse(c).ok_or_else(|| {
                EnrichError::field(
                    origin,
                    format!("{at}.classes[{j}]"),
                    format!("{c:?} is not a class or INTRA_REGION"),
                )
            })
        })
        .collect()
}

fn usd(origin: &str, at: &str, v: f64) -> Result<f64, EnrichError> {
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(EnrichError::field(
            origin,
            format!("{at}.usd_per_gb"),
            format!("{v} is not a price (finite, >= 0)"),
        ))
    }
}

/// One list of rules as the config gives them: its name, kind, default keys and
/// entries (name, CIDRs, classes, price).
type RuleList<'a> = (
    &'static str,
    RuleKind,
    &'static [PriceKey],
    Vec<(&'a str, &'a [String], &'a [String], f64)>,
);

impl Plan {
    /// Checks the section; errors name `billing.<list>[i].<field>` in `origin`.
    pub fn build(cfg: &BillingConfig, origin: &str) -> Result<Plan, EnrichError> {
        let mut prior = Vec::new();
        for (i, p) in cfg.prior_usage.iter().enumerate() {
            let at = format!("billing.prior_usage[{i}]");
            let key = PriceKey::parse(&p.class).ok_or_else(|| {
                EnrichError::field(
                    origin,
                    format!("{at}.class"),
                    format!("{:?} is not a class or INTRA_REGION", p.class),
                )
            })?;
            if !(p.gb.is_finite() && p.gb >= 0.0) {
                return Err(EnrichError::field(
                    origin,
                    format!("{at}.gb"),
                    format!("{} is not a volume (finite GB, >= 0)", p.gb),
                ));
            }
            let month = match &p.month {
                None => None,
                Some(m) => Some(Month::parse(m).ok_or_else(|| {
                    EnrichError::field(
                        origin,
                        format!("{at}.month"),
                        format!("{m:?} is not YYYY-MM"),
                    )
                })?),
            };
            if p.cloud.is_empty() {
                return Err(EnrichError::field(origin, format!("{at}.cloud"), "empty"));
            }
            prior.push(Prior {
                cloud: p.cloud.clone(),
                region: p.region.clone(),
                key,
                direction: p.direction,
                month,
                gb: p.gb,
            });
        }
        let mut rules = Vec::new();
        let (mut nat, mut endpoints) = (PrefixTable::builder(), PrefixTable::builder());
        let lists: [RuleList<'_>; 2] = [
            (
                "nat_gateways",
                RuleKind::NatGateway,
                &[
                    PriceKey::Class(podflow_model::Class::PublicInternet),
                    PriceKey::IntraRegion,
                ],
                cfg.nat_gateways
                    .iter()
                    .map(|g| {
                        (
                            g.name.as_str(),
                            &g.subnets[..],
                            &g.classes[..],
                            g.usd_per_gb,
                        )
                    })
                    .collect(),
            ),
            (
                "endpoints",
                RuleKind::Endpoint,
                &[PriceKey::Class(podflow_model::Class::IntraVpc)],
                cfg.endpoints
                    .iter()
                    .map(|e| {
                        (
                            e.name.as_str(),
                            &e.addresses[..],
                            &e.classes[..],
                            e.usd_per_gb,
                        )
                    })
                    .collect(),
            ),
        ];
        for (list, kind, default, entries) in lists {
            let cidr_field = match kind {
                RuleKind::NatGateway => "subnets",
                RuleKind::Endpoint => "addresses",
            };
            for (i, (name, cidrs, classes, price)) in entries.into_iter().enumerate() {
                let at = format!("billing.{list}[{i}]");
                if name.is_empty() {
                    return Err(EnrichError::field(origin, format!("{at}.name"), "empty"));
                }
                if cidrs.is_empty() {
                    return Err(EnrichError::field(
                        origin,
                        format!("{at} ({name}).{cidr_field}"),
                        "empty: name at least one CIDR",
                    ));
                }
                let rule = Arc::new(Rule {
                    index: rules.len(),
                    name: name.to_string(),
                    kind,
                    keys: keys(origin, &at, classes, default)?,
                    usd_per_gb: usd(origin, &at, price)?,
                });
                for (j, c) in cidrs.iter().enumerate() {
                    let cidr: Cidr = c.parse().map_err(|e| {
                        EnrichError::field(
                            origin,
                            format!("{at} ({name}).{cidr_field}[{j}]"),
                            format!("{c:?}: {e}"),
                        )
                    })?;
                    // Earlier rules win on an identical CIDR.
                    let table = match kind {
                        RuleKind::NatGateway => &mut nat,
                        RuleKind::Endpoint => &mut endpoints,
                    };
                    table.insert(cidr, -(rule.index as i32), Arc::clone(&rule));
                }
                rules.push(rule);
            }
        }
        Ok(Plan {
            prior,
            rules,
            nat: nat.build(),
            endpoints: endpoints.build(),
        })
    }

    /// GB already used in `month` for a key and direction in a cloud and region.
    pub fn prior_gb(
        &self,
        month: Month,
        cloud: &str,
        region: &str,
        key: PriceKey,
        direction: Direction,
    ) -> f64 {
        self.prior
            .iter()
            .filter(|p| {
                p.cloud == cloud
                    && p.key == key
                    && p.direction == direction
                    && p.region.as_deref().is_none_or(|r| r == region)
                    && p.month.is_none_or(|m| m == month)
            })
            .map(|p| p.gb)
            .sum()
    }

    /// Every NAT gateway and endpoint, NAT gateways first.
    pub fn rules(&self) -> &[Arc<Rule>] {
        &self.rules
    }

    /// The NAT gateway (most specific subnet) whose subnets hold `local`, if it carries
    /// `key`.
    pub fn nat_for(&self, local: IpAddr, key: PriceKey) -> Option<&Arc<Rule>> {
        self.nat.lookup(local).filter(|r| r.keys.contains(&key))
    }

    /// The endpoint (most specific address range) holding `remote`, if it carries `key`.
    pub fn endpoint_for(&self, remote: IpAddr, key: PriceKey) -> Option<&Arc<Rule>> {
        self.endpoints
            .lookup(remote)
            .filter(|r| r.keys.contains(&key))
    }

    /// The price keys any NAT gateway carries (the rows to read with their local
    /// addresses).
    pub fn nat_keys(&self) -> Vec<PriceKey> {
        self.keys_of(RuleKind::NatGateway)
    }

    /// The price keys any endpoint carries (the rows to read with their remote addresses).
    pub fn endpoint_keys(&self) -> Vec<PriceKey> {
        self.keys_of(RuleKind::Endpoint)
    }

    fn keys_of(&self, kind: RuleKind) -> Vec<PriceKey> {
        let mut k: Vec<PriceKey> = self
            .rules
            .iter()
            .filter(|r| r.kind == kind)
            .flat_map(|r| r.keys.iter().copied())
            .collect();
        k.sort();
        k.dedup();
        k
    }
}
