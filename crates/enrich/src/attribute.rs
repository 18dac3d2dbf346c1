//! Attribution of one observation: both ends, the Service, SNAT, the class and the cost.

use std::net::IpAddr;
use std::sync::Arc;

use podflow_inventory::IpIndex;
use podflow_model::{Attribution, Class, Name, NodeMeta, Observation, Place, Side};

use crate::prefix::Cidr;

use crate::cloud::CloudRanges;
use crate::config::{EnrichConfig, KnownNetworks};
use crate::error::EnrichError;
use crate::prices::PriceTable;
use crate::zones;

/// Turns observations into attributions; immutable, shared by all workers.
#[derive(Clone, Debug)]
pub struct Attributor {
    ranges: CloudRanges,
    networks: KnownNetworks,
    prices: PriceTable,
    cloud: Option<Name>,
    region: Option<Name>,
}

/// The cluster's own cloud and region, as seen from one observer.
#[derive(Clone, Copy, Debug, Default)]
pub struct Home<'a> {
    /// Cloud (`aws`, `gcp`, `azure`).
    pub cloud: Option<&'a str>,
    /// Region.
    pub region: Option<&'a str>,
}

impl Attributor {
    /// An attributor from the config (user CIDR rules, cloud, region), loaded cloud
    /// ranges and a price table; `origin` names the config file in errors.
    pub fn new(
        cfg: &EnrichConfig,
        origin: &str,
        ranges: CloudRanges,
        prices: PriceTable,
    ) -> Result<Attributor, EnrichError> {
        Ok(Attributor {
            ranges,
            networks: KnownNetworks::build(&cfg.networks, origin)?,
            prices,
            cloud: cfg.cloud.as_deref().map(Into::into),
            region: cfg.region.as_deref().map(Into::into),
        })
    }

    /// The cloud ranges in use.
    pub fn ranges(&self) -> &CloudRanges {
        &self.ranges
    }

    /// The price table in use.
    pub fn prices(&self) -> &PriceTable {
        &self.prices
    }

    /// What an address outside the index is: a user network, a cloud range, the internet,
    /// or unknown (private addresses nobody claimed).
    #[inline]
    pub fn resolve_external(&self, ip: IpAddr) -> Place {
        if let Some(n) = self.networks.lookup(ip) {
            return Place::KnownNetwork(n.clone());
        }
        if let Some(c) = self.ranges.lookup(ip) {
            return Place::CloudRange(c.clone());
        }
        if is_public(ip) {
            Place::Internet
        } else {
            Place::Unknown
        }
    }

    /// The networks a flow with no end in the cluster is summed under (docs/netflow.md,
    /// "Traffic with no end in the cluster"): for each end, the cloud prefix that
    /// classified it, else its /24 (IPv4) or /48 (IPv6). `None` when an end is in the
    /// cluster — a pod, a node, a Service (dialled or resolved), a user network — whose
    /// flows keep their addresses.
    pub fn outside_networks(&self, a: &Attribution) -> Option<(Cidr, Cidr)> {
        if a.service.is_some() {
            return None;
        }
        Some((
            self.network(a.local.ip, &a.local.place)?,
            self.network(a.remote.ip, &a.remote.place)?,
        ))
    }

    /// The network of an end outside the cluster (see [`Attributor::outside_networks`]).
    fn network(&self, ip: IpAddr, place: &Place) -> Option<Cidr> {
        match place {
            Place::CloudRange(_) => self
                .ranges
                .lookup_cidr(ip)
                .map(|(c, _)| c)
                .or_else(|| block_of(ip)),
            Place::Internet | Place::Unknown => block_of(ip),
            Place::Pod(_) | Place::Node(_) | Place::Service(_) | Place::KnownNetwork(_) => None,
        }
    }

    /// What `ip` (with `port` on it) was at `t_ns`: the index first, then the rest.
    #[inline]
    pub fn resolve(
        &self,
        idx: &IpIndex,
        observer: Option<&Arc<NodeMeta>>,
        ip: IpAddr,
        port: u16,
        t_ns: u64,
    ) -> Place {
        if let Some(p) = idx.place(ip, port, t_ns) {
            return p;
        }
        if ip.is_loopback()
            && let Some(n) = observer
        {
            return Place::Node(n.clone());
        }
        self.resolve_external(ip)
    }

    /// The cluster's cloud and region for an observer: its node's, else the config's.
    pub fn home<'a>(&'a self, observer: Option<&'a Arc<NodeMeta>>) -> Home<'a> {
        Home {
            cloud: observer
                .and_then(|n| n.cloud.as_deref())
                .or(self.cloud.as_deref()),
            region: observer
                .and_then(|n| n.region.as_deref())
                .or(self.region.as_deref()),
        }
    }

    /// Attributes one observation seen by node `observer`; `now_ns` stands in for the
    /// time when the kernel gave none.
    ///
    /// The time used to resolve addresses is the connection's start when known (a
    /// connection belongs to the pods that held the addresses when it began), else now.
    pub fn attribute(
        &self,
        obs: &Observation,
        observer: &str,
        idx: &IpIndex,
        now_ns: u64,
    ) -> Attribution {
        let t = if obs.start_ns != 0 {
            obs.start_ns
        } else {
            now_ns
        };
        let obs_node = idx.node(observer);
        let o = obs.orient(|ip| idx.is_on_node(ip, observer, t) || ip.is_loopback());
        let (local_port, remote_port) = if o.local_initiated {
            (0, o.responder_port)
        } else {
            (o.responder_port, 0)
        };
        let local = Side {
            ip: o.local,
            place: self.resolve(idx, obs_node, o.local, local_port, t),
        };
        let remote = Side {
            ip: o.remote,
            place: self.resolve(idx, obs_node, o.remote, remote_port, t),
        };
        let service = match o.service {
            Some((ip, port)) if obs.proto.has_ports() || ip != obs.reply.src => {
                idx.service(ip, port)
            }
            _ => None,
        };
        // For ICMP the tuple's "ports" are the echo id and type/code, which differ between
        // directions without any NAT: compare addresses only.
        let snat = if obs.proto.has_ports() {
            obs.is_snat()
        } else {
            obs.orig.src != obs.reply.dst
        };
        let snat = snat.then(|| Side {
            ip: obs.reply.dst,
            place: self.resolve(idx, obs_node, obs.reply.dst, 0, t),
        });
        let home = self.home(obs_node);
        let class = self.classify(&local.place, &remote.place, remote.ip, obs_node, home);
        let in_region_service =
            class == Class::IntraVpc && matches!(remote.place, Place::CloudRange(_));
        let cost_usd = self.prices.cost_in(
            home.cloud,
            home.region,
            class,
            in_region_service,
            o.out.bytes,
            o.inbound.bytes,
        );
        let (initiator, responder) = if o.local_initiated {
            (&local, &remote)
        } else {
            (&remote, &local)
        };
        let service_zone = zones::service_zone(idx, service.as_ref(), initiator, responder);
        Attribution {
            local,
            remote,
            service,
            service_zone,
            local_initiated: o.local_initiated,
            responder_port: o.responder_port,
            snat,
            class,
            bytes_out: o.out.bytes,
            bytes_in: o.inbound.bytes,
            cost_usd,
        }
    }

    /// The class of a connection between `local` and `remote` (at `remote_ip`), seen by
    /// `observer` in `home`.
    ///
    /// Cluster ends compare nodes, then zones, then regions; a missing zone label gives
    /// UNKNOWN rather than a guess. A user rule's class wins; otherwise its zone/region
    /// are compared like a node's, and it is INTRA_VPC. A cloud range of the home cloud is
    /// INTRA_VPC in the home region (kubenetmon's INTRA_REGION), INTER_REGION in another
    /// region, PUBLIC_INTERNET when global; other clouds and the internet are
    /// PUBLIC_INTERNET. Unclaimed private addresses are INTRA_VPC; link-local and
    /// loopback addresses (metadata services, node-local DNS) are INTRA_NODE.
    pub fn classify(
        &self,
        local: &Place,
        remote: &Place,
        remote_ip: IpAddr,
        observer: Option<&Arc<NodeMeta>>,
        home: Home<'_>,
    ) -> Class {
        let local_node = local.node().or(observer);
        let local_zone = local_node.and_then(|n| n.zone.as_deref());
        let local_region = local_node.and_then(|n| n.region.as_deref()).or(home.region);
        let by_zone = |zone: Option<&str>, region: Option<&str>, unknown: Class| {
            let other_region = matches!((local_region, region), (Some(a), Some(b)) if a != b);
            match (local_zone, zone) {
                _ if other_region => Class::InterRegion,
                (Some(a), Some(b)) if a == b => Class::IntraZone,
                (Some(_), Some(_)) => Class::InterZone,
                _ => unknown,
            }
        };
        match remote {
            Place::Pod(_) | Place::Node(_) => {
                let rn = remote.node();
                match (local_node, rn) {
                    (Some(a), Some(b)) if a.name == b.name => Class::IntraNode,
                    (_, Some(b)) => by_zone(b.zone.as_deref(), b.region.as_deref(), Class::Unknown),
                    _ => Class::Unknown,
                }
            }
            Place::Service(_) => Class::Unknown,
            Place::KnownNetwork(k) => k.class.unwrap_or_else(|| {
                by_zone(k.zone.as_deref(), k.region.as_deref(), Class::IntraVpc)
            }),
            Place::CloudRange(c) => {
                if home.cloud != Some(&*c.cloud) {
                    Class::PublicInternet
                } else if local_region == Some(&*c.region) {
                    Class::IntraVpc
                } else if c.region.eq_ignore_ascii_case("global") {
                    Class::PublicInternet
                } else {
                    Class::InterRegion
                }
            }
            Place::Internet => Class::PublicInternet,
            Place::Unknown => {
                if is_node_local(remote_ip) {
                    Class::IntraNode
                } else if is_public(remote_ip) {
                    Class::Unknown
                } else {
                    Class::IntraVpc
                }
            }
        }
    }
}

/// The /24 of an IPv4 address (IPv4-mapped ones too), the /48 of an IPv6 one.
fn block_of(ip: IpAddr) -> Option<Cidr> {
    match ip {
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => Cidr::new(IpAddr::V4(v4), 24).ok(),
            None => Cidr::new(ip, 48).ok(),
        },
        IpAddr::V4(_) => Cidr::new(ip, 24).ok(),
    }
}

fn is_node_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_loopback() || a.is_link_local(),
        IpAddr::V6(a) => a.is_loopback() || a.is_unicast_link_local(),
    }
}

/// Whether an address is routable on the internet (not private, CGNAT, loopback,
/// link-local, documentation-reserved or multicast).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            !(a.is_private()
                || a.is_loopback()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_broadcast()
                || a.is_multicast()
                || (o[0] == 100 && (o[1] & 0xc0) == 64))
        }
        IpAddr::V6(a) => {
            if let Some(v4) = a.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = a.segments()[0];
            !(a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || a.is_unicast_link_local()
                || (s & 0xfe00) == 0xfc00)
        }
    }
}
