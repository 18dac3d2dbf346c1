//! Price table: USD per GB per cloud and connection class, optionally per region, with
//! free allowances and volume tiers per month.
//!
//! A class entry's `out` and `in` are the first-tier list rates every stored row is
//! estimated at (`cost_usd`); `free_gb` and `tiers` are what the query-time bill
//! ([`crate::bill`]) applies to a month's volume. A file with neither (the format before
//! tiers) still parses and means the same.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use podflow_model::Class;
use serde::{Deserialize, Serialize};

use crate::error::EnrichError;

/// The embedded defaults (list prices; see PRICES.md for sources and date).
pub const DEFAULT_PRICES_YAML: &str = include_str!("../prices.default.yaml");

/// Bytes in one priced GB (providers price per GiB; see PRICES.md).
pub const BYTES_PER_GB: f64 = 1_073_741_824.0;

/// Extra key beside the [`Class`] names: a cloud service's range in the cluster's own
/// region (kubenetmon's INTRA_REGION), which clouds price apart from other INTRA_VPC.
pub const INTRA_REGION_KEY: &str = "INTRA_REGION";

const SLOTS: usize = 8;
const INTRA_REGION_SLOT: usize = 7;

/// One price: USD per GB in each direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Bytes from the local side to the remote side.
    #[serde(default)]
    pub out: f64,
    /// Bytes from the remote side to the local side.
    #[serde(default, rename = "in")]
    pub inbound: f64,
}

impl Price {
    /// The rate of one direction.
    pub fn of(&self, d: Direction) -> f64 {
        match d {
            Direction::Out => self.out,
            Direction::In => self.inbound,
        }
    }
}

/// A direction of bytes, seen from the local (cluster) end.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Local → remote.
    #[default]
    Out,
    /// Remote → local.
    In,
}

impl Direction {
    /// Both, `out` first.
    pub const BOTH: [Direction; 2] = [Direction::Out, Direction::In];

    /// `out` or `in`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Out => "out",
            Direction::In => "in",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a row is priced as: its class, or INTRA_REGION for an INTRA_VPC row whose remote
/// end is a cloud service's range in the cluster's own region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PriceKey {
    /// A class.
    Class(Class),
    /// A cloud service in the cluster's region (S3, DynamoDB, ...).
    IntraRegion,
}

impl PriceKey {
    /// The key of a row of `class`; `in_region_cloud_service` selects INTRA_REGION for
    /// INTRA_VPC.
    pub fn of(class: Class, in_region_cloud_service: bool) -> PriceKey {
        if in_region_cloud_service && class == Class::IntraVpc {
            PriceKey::IntraRegion
        } else {
            PriceKey::Class(class)
        }
    }

    /// The spelling in price files and answers (`PUBLIC_INTERNET`, `INTRA_REGION`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            PriceKey::Class(c) => c.as_str(),
            PriceKey::IntraRegion => INTRA_REGION_KEY,
        }
    }

    /// Parses a class name or `INTRA_REGION` (case-insensitive).
    pub fn parse(s: &str) -> Option<PriceKey> {
        if s.eq_ignore_ascii_case(INTRA_REGION_KEY) {
            Some(PriceKey::IntraRegion)
        } else {
            Class::parse(s).map(PriceKey::Class)
        }
    }

    /// The class its rows carry (INTRA_VPC for INTRA_REGION).
    pub fn class(self) -> Class {
        match self {
            PriceKey::Class(c) => c,
            PriceKey::IntraRegion => Class::IntraVpc,
        }
    }

    fn slot(self) -> usize {
        match self {
            PriceKey::Class(c) => c as usize,
            PriceKey::IntraRegion => INTRA_REGION_SLOT,
        }
    }
}

impl fmt::Display for PriceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for PriceKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One volume tier: the rate up to a cumulative monthly volume.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Tier {
    /// The month's cumulative volume (GB) where this tier ends; `None`: no end.
    pub up_to_gb: Option<f64>,
    /// USD per GB within the tier.
    pub price: f64,
}

/// How one price key and direction is charged over a month: the first `free_gb` of the
/// month's volume are free, the rest at the rate of the tier each GB falls in. The free
/// volume counts toward the tier boundaries (as the providers' price lists state them:
/// AWS's "first 10 TB" includes the free 100 GB).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Schedule {
    /// Free GB per month.
    pub free_gb: f64,
    /// The tiers, ascending; the last has no end.
    pub tiers: Vec<Tier>,
}

impl Schedule {
    /// One rate for any volume, nothing free.
    pub fn flat(price: f64) -> Schedule {
        Schedule {
            free_gb: 0.0,
            tiers: vec![Tier {
                up_to_gb: None,
                price,
            }],
        }
    }
}

/// A class entry: the first-tier rates and, per direction, the month's schedule when the
/// file gives tiers or an allowance.
#[derive(Clone, Debug, Default, PartialEq)]
struct Entry {
    price: Price,
    /// Out, in: `None` = flat at `price`, nothing free.
    schedules: [Option<Schedule>; 2],
}

impl Entry {
    fn schedule(&self, d: Direction) -> Schedule {
        self.schedules[d.index()]
            .clone()
            .unwrap_or_else(|| Schedule::flat(self.price.of(d)))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PerDirection<T> {
    #[serde(default)]
    out: Option<T>,
    #[serde(default, rename = "in")]
    inbound: Option<T>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TierFile {
    #[serde(default)]
    up_to_gb: Option<f64>,
    price: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryFile {
    #[serde(default)]
    out: Option<f64>,
    #[serde(default, rename = "in")]
    inbound: Option<f64>,
    #[serde(default)]
    free_gb: Option<PerDirection<f64>>,
    #[serde(default)]
    tiers: Option<PerDirection<Vec<TierFile>>>,
}

type ClassEntries = BTreeMap<String, EntryFile>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceFile {
    #[serde(default)]
    source: String,
    #[serde(default)]
    as_of: String,
    clouds: BTreeMap<String, ClassEntries>,
    /// Per cloud, per region: class entries that replace the cloud's in that region.
    #[serde(default)]
    regions: BTreeMap<String, BTreeMap<String, ClassEntries>>,
}

/// Prices per cloud and class (and region where the file overrides one), looked up per
/// observation and per bill line.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PriceTable {
    /// Where the prices come from.
    pub source: String,
    /// The date they were valid on.
    pub as_of: String,
    clouds: Vec<(String, [Entry; SLOTS])>,
    /// (cloud, region) → entries that replace the cloud's.
    regions: Vec<RegionEntries>,
}

/// (cloud, region) and the entries it replaces.
type RegionEntries = ((String, String), [Option<Entry>; SLOTS]);

fn check_price(origin: &str, field: &str, v: f64) -> Result<f64, EnrichError> {
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(EnrichError::field(
            origin,
            field,
            format!("{v} is not a price (finite, >= 0)"),
        ))
    }
}

fn slot_of(origin: &str, at: &str, key: &str) -> Result<usize, EnrichError> {
    PriceKey::parse(key).map(PriceKey::slot).ok_or_else(|| {
        EnrichError::field(
            origin,
            format!("{at}.{key}"),
            "not a class (INTRA_NODE, INTRA_ZONE, INTER_ZONE, INTER_REGION, INTRA_VPC, PUBLIC_INTERNET, UNKNOWN, INTRA_REGION)",
        )
    })
}

fn schedule(
    origin: &str,
    (free_at, tiers_at): (&str, &str),
    first: f64,
    free: Option<f64>,
    tiers: Option<Vec<TierFile>>,
) -> Result<Option<Schedule>, EnrichError> {
    if free.is_none() && tiers.is_none() {
        return Ok(None);
    }
    let free_gb = match free {
        Some(v) if v.is_finite() && v >= 0.0 => v,
        Some(v) => {
            return Err(EnrichError::field(
                origin,
                free_at,
                format!("{v} is not a volume (finite GB, >= 0)"),
            ));
        }
        None => 0.0,
    };
    let tiers = match tiers {
        None => vec![Tier {
            up_to_gb: None,
            price: first,
        }],
        Some(t) if t.is_empty() => {
            return Err(EnrichError::field(
                origin,
                tiers_at,
                "empty: give at least one tier (the last without up_to_gb)",
            ));
        }
        Some(t) => {
            let n = t.len();
            let mut prev = 0.0;
            let mut out = Vec::with_capacity(n);
            for (i, tier) in t.into_iter().enumerate() {
                let f = format!("{tiers_at}[{i}]");
                let price = check_price(origin, &format!("{f}.price"), tier.price)?;
                match (tier.up_to_gb, i + 1 == n) {
                    (Some(_), true) => {
                        return Err(EnrichError::field(
                            origin,
                            format!("{f}.up_to_gb"),
                            "the last tier has no end: leave up_to_gb out (it covers the rest of the month's volume)",
                        ));
                    }
                    (None, false) => {
                        return Err(EnrichError::field(
                            origin,
                            format!("{f}.up_to_gb"),
                            "missing: only the last tier goes on without an end",
                        ));
                    }
                    (Some(u), false) if !(u.is_finite() && u > prev) => {
                        return Err(EnrichError::field(
                            origin,
                            format!("{f}.up_to_gb"),
                            format!(
                                "{u} is not above the previous tier's end ({prev} GB): tiers go up"
                            ),
                        ));
                    }
                    (Some(u), false) => prev = u,
                    (None, true) => {}
                }
                out.push(Tier {
                    up_to_gb: tier.up_to_gb,
                    price,
                });
            }
            out
        }
    };
    Ok(Some(Schedule { free_gb, tiers }))
}

fn entry(origin: &str, at: &str, e: EntryFile) -> Result<Entry, EnrichError> {
    let (free_out, free_in) = match e.free_gb {
        Some(f) => (f.out, f.inbound),
        None => (None, None),
    };
    let (tiers_out, tiers_in) = match e.tiers {
        Some(t) => (t.out, t.inbound),
        None => (None, None),
    };
    let mut price = Price::default();
    let mut schedules = [None, None];
    for (d, given, free, tiers) in [
        (Direction::Out, e.out, free_out, tiers_out),
        (Direction::In, e.inbound, free_in, tiers_in),
    ] {
        let dir = d.as_str();
        let first_tier = tiers.as_ref().and_then(|t| t.first()).map(|t| {
            (
                t.price,
                check_price(origin, &format!("{at}.tiers.{dir}[0].price"), t.price),
            )
        });
        let rate = match (given, first_tier) {
            (Some(v), None) => check_price(origin, &format!("{at}.{dir}"), v)?,
            (None, None) => 0.0,
            (None, Some((_, checked))) => checked?,
            (Some(v), Some((first, checked))) => {
                let v = check_price(origin, &format!("{at}.{dir}"), v)?;
                checked?;
                if v != first {
                    return Err(EnrichError::field(
                        origin,
                        format!("{at}.{dir}"),
                        format!(
                            "{v} is not the first tier's price ({first}): `{dir}` is the first-tier rate every row is estimated at; leave it out to take the first tier's"
                        ),
                    ));
                }
                v
            }
        };
        match d {
            Direction::Out => price.out = rate,
            Direction::In => price.inbound = rate,
        }
        schedules[d.index()] = schedule(
            origin,
            (&format!("{at}.free_gb.{dir}"), &format!("{at}.tiers.{dir}")),
            rate,
            free,
            tiers,
        )?;
    }
    Ok(Entry { price, schedules })
}

impl PriceTable {
    /// The embedded list prices.
    pub fn defaults() -> PriceTable {
        // The embedded file is tested; fall back to an empty table rather than panic.
        PriceTable::from_yaml(DEFAULT_PRICES_YAML, "<embedded prices.default.yaml>")
            .unwrap_or_default()
    }

    /// Parses a price file (YAML or JSON); `origin` names it in errors.
    pub fn from_yaml(text: &str, origin: &str) -> Result<PriceTable, EnrichError> {
        let f: PriceFile =
            serde_saphyr::from_str(text).map_err(|e| EnrichError::yaml(origin, e))?;
        let mut clouds = Vec::new();
        for (cloud, classes) in f.clouds {
            let mut slots: [Entry; SLOTS] = Default::default();
            for (key, e) in classes {
                let slot = slot_of(origin, &format!("clouds.{cloud}"), &key)?;
                slots[slot] = entry(origin, &format!("clouds.{cloud}.{key}"), e)?;
            }
            clouds.push((cloud, slots));
        }
        let mut regions = Vec::new();
        for (cloud, by_region) in f.regions {
            if !clouds.iter().any(|(c, _)| *c == cloud) {
                return Err(EnrichError::field(
                    origin,
                    format!("regions.{cloud}"),
                    "not a cloud of `clouds` (a region's entries replace its cloud's)",
                ));
            }
            for (region, classes) in by_region {
                let mut slots: [Option<Entry>; SLOTS] = Default::default();
                let at = format!("regions.{cloud}.{region}");
                for (key, e) in classes {
                    let slot = slot_of(origin, &at, &key)?;
                    slots[slot] = Some(entry(origin, &format!("{at}.{key}"), e)?);
                }
                regions.push(((cloud.clone(), region), slots));
            }
        }
        Ok(PriceTable {
            source: f.source,
            as_of: f.as_of,
            clouds,
            regions,
        })
    }

    /// Reads a price file.
    pub fn load(path: &Path) -> Result<PriceTable, EnrichError> {
        let text = std::fs::read_to_string(path).map_err(|source| EnrichError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        PriceTable::from_yaml(&text, &path.display().to_string())
    }

    /// The cloud's entries (`default` when the cloud is unknown or unlisted) and its name.
    fn cloud(&self, cloud: Option<&str>) -> Option<&(String, [Entry; SLOTS])> {
        cloud
            .and_then(|c| self.clouds.iter().find(|(n, _)| n == c))
            .or_else(|| self.clouds.iter().find(|(n, _)| n == "default"))
    }

    /// The entry for a key in a cloud and region: the region's when the file gives one,
    /// else the cloud's.
    fn entry(&self, cloud: Option<&str>, region: Option<&str>, key: PriceKey) -> Option<&Entry> {
        let (name, slots) = self.cloud(cloud)?;
        let slot = key.slot();
        let regional = region.and_then(|r| {
            self.regions
                .iter()
                .find(|((c, reg), _)| c == name && reg == r)
                .and_then(|(_, s)| s[slot].as_ref())
        });
        Some(regional.unwrap_or(&slots[slot]))
    }

    /// The price for a cloud (`default` when the cloud is unknown or unlisted) and class;
    /// `in_region_cloud_service` selects the INTRA_REGION price for INTRA_VPC.
    pub fn price(&self, cloud: Option<&str>, class: Class, in_region_cloud_service: bool) -> Price {
        self.price_in(cloud, None, class, in_region_cloud_service)
    }

    /// [`price`](Self::price) in a region: the region's entry when the file gives one.
    pub fn price_in(
        &self,
        cloud: Option<&str>,
        region: Option<&str>,
        class: Class,
        in_region_cloud_service: bool,
    ) -> Price {
        self.entry(cloud, region, PriceKey::of(class, in_region_cloud_service))
            .map(|e| e.price)
            .unwrap_or_default()
    }

    /// How a month's volume of one key and direction is charged in a cloud and region.
    pub fn schedule(
        &self,
        cloud: Option<&str>,
        region: Option<&str>,
        key: PriceKey,
        d: Direction,
    ) -> Schedule {
        self.entry(cloud, region, key)
            .map(|e| e.schedule(d))
            .unwrap_or_else(|| Schedule::flat(0.0))
    }

    /// USD for the bytes of one observation (first-tier rates).
    pub fn cost(
        &self,
        cloud: Option<&str>,
        class: Class,
        in_region_cloud_service: bool,
        bytes_out: u64,
        bytes_in: u64,
    ) -> f64 {
        self.cost_in(
            cloud,
            None,
            class,
            in_region_cloud_service,
            bytes_out,
            bytes_in,
        )
    }

    /// [`cost`](Self::cost) in a region.
    pub fn cost_in(
        &self,
        cloud: Option<&str>,
        region: Option<&str>,
        class: Class,
        in_region_cloud_service: bool,
        bytes_out: u64,
        bytes_in: u64,
    ) -> f64 {
        let p = self.price_in(cloud, region, class, in_region_cloud_service);
        (bytes_out as f64 * p.out + bytes_in as f64 * p.inbound) / BYTES_PER_GB
    }

    /// The clouds listed.
    pub fn clouds(&self) -> impl Iterator<Item = &str> {
        self.clouds.iter().map(|(n, _)| n.as_str())
    }

    /// The (cloud, region) pairs with entries of their own.
    pub fn regions(&self) -> impl Iterator<Item = (&str, &str)> {
        self.regions
            .iter()
            .map(|((c, r), _)| (c.as_str(), r.as_str()))
    }
}
