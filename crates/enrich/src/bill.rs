//! The bill of a range, computed when it is queried: bytes summed per calendar month
//! (UTC) and price key — (cloud, region, class or INTRA_REGION, direction) — charged
//! through the price table's free allowances and volume tiers, continuing the volume the
//! operator says was used elsewhere that month; NAT gateway and endpoint processing on
//! top; and showback, which charges every namespace or workload the month's blended
//! rate (the month's tiered total over its bytes, per price key) so that the parts sum
//! to the bill. docs/attribution.md states the rule.
//!
//! Pure: the store's sums come in as [`Usage`] and [`Processed`], the time as an
//! argument.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use serde::Serialize;

use crate::config::EnrichConfig;
use crate::error::EnrichError;
use crate::month::Month;
use crate::plan::{Plan, RuleKind};
use crate::prices::{BYTES_PER_GB, Direction, PriceKey, PriceTable, Schedule};

/// Where a piece of a month lies relative to the queried range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    /// From the month's start to the range's start.
    Before,
    /// Inside the range.
    InRange,
    /// From the range's end to the month's end.
    After,
}

/// One piece of a month to read from the store: `[from, to)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// The month.
    pub month: Month,
    /// Where it lies.
    pub part: Part,
    /// Start, Unix seconds (inclusive).
    pub from: i64,
    /// End (exclusive).
    pub to: i64,
}

/// The pieces to read for a range: every month it overlaps, whole (a month's tiers need
/// its whole volume), cut where the range starts and ends.
pub fn pieces(from: i64, to: i64) -> Vec<Piece> {
    let mut out = Vec::new();
    for month in Month::overlapping(from, to) {
        let (ms, me) = (month.start(), month.end());
        let cuts = [
            (Part::Before, ms, from.clamp(ms, me)),
            (Part::InRange, from.clamp(ms, me), to.clamp(ms, me)),
            (Part::After, to.clamp(ms, me), me),
        ];
        for (part, a, b) in cuts {
            if a < b {
                out.push(Piece {
                    month,
                    part,
                    from: a,
                    to: b,
                });
            }
        }
    }
    out
}

/// Bytes of one group of rows in one piece of a month, as the store sums them.
#[derive(Clone, Debug, PartialEq)]
pub struct Usage {
    /// The month.
    pub month: Month,
    /// Where in it.
    pub part: Part,
    /// The local end's cloud (`""`: unknown, the config's `cloud:` is taken).
    pub cloud: String,
    /// The local end's region (`""`: unknown, the config's `region:` is taken).
    pub region: String,
    /// The price key.
    pub key: PriceKey,
    /// Who the bytes are charged to (the showback key; empty for the bill alone).
    pub owner: Vec<String>,
    /// Bytes local → remote.
    pub bytes_out: u64,
    /// Bytes remote → local.
    pub bytes_in: u64,
    /// The rows' stored `cost_usd` (first-tier list estimate), summed.
    pub estimate_usd: f64,
}

/// Bytes of rows that a NAT gateway or an endpoint may have processed, with the address
/// that decides it.
#[derive(Clone, Debug, PartialEq)]
pub struct Processed {
    /// The month.
    pub month: Month,
    /// Where in it.
    pub part: Part,
    /// The price key.
    pub key: PriceKey,
    /// The local address (checked against the NAT gateways' subnets).
    pub local: Option<IpAddr>,
    /// The remote address (checked against the endpoints' addresses).
    pub remote: Option<IpAddr>,
    /// The remote end's name (the cloud service, e.g. `S3`).
    pub remote_name: String,
    /// Who the bytes are charged to.
    pub owner: Vec<String>,
    /// Bytes both ways.
    pub bytes: u64,
}

/// What one tier charged.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TierCharge {
    /// Where the tier starts in the month's volume, GB.
    pub from_gb: f64,
    /// Where it ends (`None`: no end).
    pub to_gb: Option<f64>,
    /// USD per GB.
    pub price: f64,
    /// GB of this line charged in it (the free allowance excluded).
    pub gb: f64,
    /// USD.
    pub usd: f64,
}

/// What a volume costs after a prior volume.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Charge {
    /// GB of the free allowance this volume used.
    pub allowance_used_gb: f64,
    /// The tiers it reached, in order.
    pub tiers: Vec<TierCharge>,
    /// USD.
    pub usd: f64,
}

/// Charges `gb` of volume that starts `prior_gb` into the month: the part below the
/// schedule's free allowance is free, the rest at the rate of the tier it falls in.
pub fn charge(s: &Schedule, prior_gb: f64, gb: f64) -> Charge {
    let (start, end) = (prior_gb.max(0.0), prior_gb.max(0.0) + gb.max(0.0));
    let overlap = |a: f64, b: f64| (end.min(b) - start.max(a)).max(0.0);
    let allowance_used_gb = overlap(0.0, s.free_gb);
    let mut tiers = Vec::new();
    let mut usd = 0.0;
    let mut lo = 0.0;
    for t in &s.tiers {
        let hi = t.up_to_gb.unwrap_or(f64::INFINITY);
        // Within the tier, minus what the allowance covers there.
        let free_here = {
            let (a, b) = (start.max(lo), end.min(hi));
            if b > a {
                (b.min(s.free_gb) - a).max(0.0)
            } else {
                0.0
            }
        };
        let charged = overlap(lo, hi) - free_here;
        if charged > 0.0 {
            let cost = charged * t.price;
            usd += cost;
            tiers.push(TierCharge {
                from_gb: lo,
                to_gb: t.up_to_gb,
                price: t.price,
                gb: charged,
                usd: cost,
            });
        }
        lo = hi;
    }
    Charge {
        allowance_used_gb,
        tiers,
        usd,
    }
}

/// One line of a month's bill: a price key's volume and what it cost.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BillLine {
    /// Cloud (`""`: unknown, priced with the table's `default`).
    pub cloud: String,
    /// Region (`""`: unknown).
    pub region: String,
    /// Class or INTRA_REGION.
    pub key: PriceKey,
    /// `out` or `in`.
    pub direction: Direction,
    /// Bytes.
    pub bytes: u64,
    /// The same in GB (2^30 bytes).
    pub gb: f64,
    /// GB used elsewhere before the cluster's (the operator's `prior_usage`).
    pub prior_gb: f64,
    /// The month's free allowance, GB.
    pub free_gb: f64,
    /// GB of it the cluster's bytes used.
    pub allowance_used_gb: f64,
    /// What each tier charged.
    pub tiers: Vec<TierCharge>,
    /// USD.
    pub usd: f64,
    /// `usd / gb`: the rate showback charges these bytes at.
    pub blended_usd_per_gb: f64,
    /// The same bytes at the first-tier rate (the stored estimate's rule).
    pub first_tier_usd: f64,
}

/// What one NAT gateway or endpoint charged for one price key in a month.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProcessingLine {
    /// The gateway's or endpoint's name.
    pub name: String,
    /// `nat_gateway` or `endpoint`.
    pub kind: RuleKind,
    /// The price key of the traffic.
    pub key: PriceKey,
    /// Bytes processed, both ways.
    pub bytes: u64,
    /// GB.
    pub gb: f64,
    /// USD per GB.
    pub usd_per_gb: f64,
    /// USD.
    pub usd: f64,
}

/// In-region cloud-service traffic that went through a NAT gateway: processing a
/// gateway endpoint would not charge.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AvoidableLine {
    /// The NAT gateway.
    pub gateway: String,
    /// The cloud service (`S3`, `DYNAMODB`, ...; empty when the range names none).
    pub service: String,
    /// Bytes, both ways.
    pub bytes: u64,
    /// GB.
    pub gb: f64,
    /// The processing charge, USD.
    pub usd: f64,
    /// The service has a gateway endpoint (AWS S3 and DynamoDB), which is free: all of
    /// `usd` is avoidable. Otherwise an interface endpoint charges less than the NAT
    /// gateway but not nothing.
    pub gateway_endpoint: bool,
}

/// One month's bill.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MonthBill {
    /// `YYYY-MM`.
    pub month: Month,
    /// First second, Unix seconds.
    pub start: i64,
    /// First second of the next month.
    pub end: i64,
    /// Bytes of every line.
    pub bytes: u64,
    /// Data transfer, USD (the lines).
    pub transfer_usd: f64,
    /// NAT gateway and endpoint processing, USD.
    pub processing_usd: f64,
    /// Everything.
    pub total_usd: f64,
    /// The rows' stored first-tier estimates summed (`cost_usd` of the other views).
    pub estimate_usd: f64,
    /// Per price key.
    pub lines: Vec<BillLine>,
    /// Per NAT gateway or endpoint and price key.
    pub processing: Vec<ProcessingLine>,
    /// In-region cloud-service traffic through a NAT gateway.
    pub avoidable: Vec<AvoidableLine>,
}

/// One namespace's, workload's or label value's share.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ShowbackRow {
    /// The values of the `by` columns.
    pub key: Vec<String>,
    /// Bytes both ways in the range.
    pub bytes: u64,
    /// Bytes local → remote.
    pub bytes_out: u64,
    /// Bytes remote → local.
    pub bytes_in: u64,
    /// Data transfer at each month's blended rates, USD.
    pub transfer_usd: f64,
    /// NAT gateway and endpoint processing, USD.
    pub processing_usd: f64,
    /// Both.
    pub cost_usd: f64,
    /// Its part of the total cost (0 when the total is 0).
    pub share: f64,
    /// The rows' stored first-tier estimates summed.
    pub estimate_usd: f64,
}

/// The sums of every showback row.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ShowbackTotals {
    /// Bytes both ways.
    pub bytes: u64,
    /// Bytes local → remote.
    pub bytes_out: u64,
    /// Bytes remote → local.
    pub bytes_in: u64,
    /// Data transfer, USD.
    pub transfer_usd: f64,
    /// Processing, USD.
    pub processing_usd: f64,
    /// Both.
    pub cost_usd: f64,
    /// Stored first-tier estimates.
    pub estimate_usd: f64,
}

/// The month of the range's end, so far, and where it is heading.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MonthToDate {
    /// `YYYY-MM`.
    pub month: Month,
    /// Its first second.
    pub from: i64,
    /// Where "so far" ends: the range's end or now, whichever is first.
    pub to: i64,
    /// `(to - from)` over the month's length.
    pub elapsed_fraction: f64,
    /// The month's bill from its first day to `to`, USD.
    pub cost_usd: f64,
    /// Every price key's volume so far divided by `elapsed_fraction`, priced through the
    /// tiers, plus processing divided by it: the month's bill if traffic goes on at the
    /// same rate.
    pub projected_usd: f64,
}

/// A month the range touches: its whole bill and how much of it the range holds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MonthShare {
    /// `YYYY-MM`.
    pub month: Month,
    /// The whole month's bill (to now), USD.
    pub bill_usd: f64,
    /// The range's part, USD (what the rows sum to in this month).
    pub in_range_usd: f64,
}

/// Cost per namespace, workload or label value over a range.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Showback {
    /// Start, Unix seconds.
    pub from: i64,
    /// End.
    pub to: i64,
    /// The key's columns.
    pub by: Vec<String>,
    /// Largest cost first.
    pub rows: Vec<ShowbackRow>,
    /// The rows summed.
    pub totals: ShowbackTotals,
    /// The months the range touches.
    pub months: Vec<MonthShare>,
    /// The range's last month so far and its projection.
    pub month_to_date: MonthToDate,
}

type LineKey = (String, String, PriceKey, Direction);

/// A month's volumes, before pricing.
#[derive(Clone, Debug, Default)]
struct Volumes {
    lines: BTreeMap<LineKey, u64>,
    estimate_usd: f64,
    /// (rule index, key) → bytes.
    processed: BTreeMap<(usize, PriceKey), u64>,
    /// (NAT rule index, service) → bytes.
    avoidable: BTreeMap<(usize, String), u64>,
}

impl Volumes {
    fn scaled(&self, f: f64) -> Volumes {
        let s = |b: u64| (b as f64 * f).round() as u64;
        Volumes {
            lines: self.lines.iter().map(|(k, b)| (k.clone(), s(*b))).collect(),
            estimate_usd: self.estimate_usd * f,
            processed: self.processed.iter().map(|(k, b)| (*k, s(*b))).collect(),
            avoidable: self
                .avoidable
                .iter()
                .map(|(k, b)| (k.clone(), s(*b)))
                .collect(),
        }
    }
}

/// Bills ranges: the price table, the billing plan, the cluster's cloud and region.
#[derive(Clone, Debug)]
pub struct Biller {
    prices: PriceTable,
    plan: Plan,
    cloud: Option<String>,
    region: Option<String>,
}

impl Default for Biller {
    /// The embedded prices, no prior usage, no NAT gateway or endpoint.
    fn default() -> Biller {
        Biller {
            prices: PriceTable::defaults(),
            plan: Plan::default(),
            cloud: None,
            region: None,
        }
    }
}

fn gb(bytes: u64) -> f64 {
    bytes as f64 / BYTES_PER_GB
}

impl Biller {
    /// A biller from a price table and the config (its `billing` section, `cloud` and
    /// `region`); `origin` names the config in errors.
    pub fn new(
        prices: PriceTable,
        cfg: &EnrichConfig,
        origin: &str,
    ) -> Result<Biller, EnrichError> {
        Ok(Biller {
            prices,
            plan: Plan::build(&cfg.billing, origin)?,
            cloud: cfg.cloud.clone(),
            region: cfg.region.clone(),
        })
    }

    /// The price table.
    pub fn prices(&self) -> &PriceTable {
        &self.prices
    }

    /// The billing plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The cloud and region a row is billed in: its local end's, else the config's.
    fn place(&self, cloud: &str, region: &str) -> (String, String) {
        let pick = |v: &str, fallback: &Option<String>| {
            if v.is_empty() {
                fallback.clone().unwrap_or_default()
            } else {
                v.to_string()
            }
        };
        (pick(cloud, &self.cloud), pick(region, &self.region))
    }

    /// What processes a row, if anything.
    fn rule_of(&self, p: &Processed) -> Option<usize> {
        let by_nat = p.local.and_then(|ip| self.plan.nat_for(ip, p.key));
        let by_endpoint = p.remote.and_then(|ip| self.plan.endpoint_for(ip, p.key));
        by_nat.or(by_endpoint).map(|r| r.index)
    }

    fn volumes(
        &self,
        month: Month,
        usage: &[Usage],
        processed: &[Processed],
        parts: &[Part],
    ) -> Volumes {
        let mut v = Volumes::default();
        for u in usage
            .iter()
            .filter(|u| u.month == month && parts.contains(&u.part))
        {
            let (cloud, region) = self.place(&u.cloud, &u.region);
            for (d, b) in [(Direction::Out, u.bytes_out), (Direction::In, u.bytes_in)] {
                if b > 0 {
                    let e = v
                        .lines
                        .entry((cloud.clone(), region.clone(), u.key, d))
                        .or_default();
                    *e = e.saturating_add(b);
                }
            }
            v.estimate_usd += u.estimate_usd;
        }
        for p in processed
            .iter()
            .filter(|p| p.month == month && parts.contains(&p.part))
        {
            let Some(rule) = self.rule_of(p) else {
                continue;
            };
            let e = v.processed.entry((rule, p.key)).or_default();
            *e = e.saturating_add(p.bytes);
            if p.key == PriceKey::IntraRegion
                && self.plan.rules()[rule].kind == RuleKind::NatGateway
            {
                let e = v
                    .avoidable
                    .entry((rule, p.remote_name.clone()))
                    .or_default();
                *e = e.saturating_add(p.bytes);
            }
        }
        v
    }

    fn price(&self, month: Month, v: &Volumes) -> MonthBill {
        let mut lines = Vec::new();
        for ((cloud, region, key, d), bytes) in &v.lines {
            let opt = |s: &str| (!s.is_empty()).then_some(s.to_string());
            let (c, r) = (opt(cloud), opt(region));
            let s = self.prices.schedule(c.as_deref(), r.as_deref(), *key, *d);
            let prior_gb = self.plan.prior_gb(month, cloud, region, *key, *d);
            let g = gb(*bytes);
            let ch = charge(&s, prior_gb, g);
            let first = s.tiers.first().map_or(0.0, |t| t.price);
            lines.push(BillLine {
                cloud: cloud.clone(),
                region: region.clone(),
                key: *key,
                direction: *d,
                bytes: *bytes,
                gb: g,
                prior_gb,
                free_gb: s.free_gb,
                allowance_used_gb: ch.allowance_used_gb,
                blended_usd_per_gb: if g > 0.0 { ch.usd / g } else { 0.0 },
                usd: ch.usd,
                tiers: ch.tiers,
                first_tier_usd: g * first,
            });
        }
        let rules = self.plan.rules();
        let processing: Vec<ProcessingLine> = v
            .processed
            .iter()
            .map(|((rule, key), bytes)| {
                let r = &rules[*rule];
                ProcessingLine {
                    name: r.name.clone(),
                    kind: r.kind,
                    key: *key,
                    bytes: *bytes,
                    gb: gb(*bytes),
                    usd_per_gb: r.usd_per_gb,
                    usd: gb(*bytes) * r.usd_per_gb,
                }
            })
            .collect();
        let avoidable = v
            .avoidable
            .iter()
            .map(|((rule, service), bytes)| {
                let r = &rules[*rule];
                AvoidableLine {
                    gateway: r.name.clone(),
                    service: service.clone(),
                    bytes: *bytes,
                    gb: gb(*bytes),
                    usd: gb(*bytes) * r.usd_per_gb,
                    gateway_endpoint: ["S3", "DYNAMODB"]
                        .iter()
                        .any(|s| s.eq_ignore_ascii_case(service)),
                }
            })
            .collect();
        let transfer_usd: f64 = lines.iter().map(|l| l.usd).sum();
        let processing_usd: f64 = processing.iter().map(|p| p.usd).sum();
        MonthBill {
            month,
            start: month.start(),
            end: month.end(),
            bytes: lines.iter().fold(0u64, |a, l| a.saturating_add(l.bytes)),
            transfer_usd,
            processing_usd,
            total_usd: transfer_usd + processing_usd,
            estimate_usd: v.estimate_usd,
            lines,
            processing,
            avoidable,
        }
    }

    /// The bill of one month from the pieces of it in `parts`.
    pub fn month_bill(
        &self,
        month: Month,
        usage: &[Usage],
        processed: &[Processed],
        parts: &[Part],
    ) -> MonthBill {
        self.price(month, &self.volumes(month, usage, processed, parts))
    }

    /// The whole bill of every month in `months`, in order.
    pub fn bills(
        &self,
        months: &[Month],
        usage: &[Usage],
        processed: &[Processed],
    ) -> Vec<MonthBill> {
        let all = [Part::Before, Part::InRange, Part::After];
        months
            .iter()
            .map(|m| self.month_bill(*m, usage, processed, &all))
            .collect()
    }

    /// Showback over `[from, to)` by the `by` columns of the usage's owners: each owner's
    /// bytes in the range at its months' blended rates plus its processing; the month of
    /// the range's end so far (to `min(to, now)`) and its projection.
    pub fn showback(
        &self,
        by: Vec<String>,
        usage: &[Usage],
        processed: &[Processed],
        (from, to): (i64, i64),
        now: i64,
    ) -> Showback {
        let months = Month::overlapping(from, to);
        let bills = self.bills(&months, usage, processed);
        // Rates per byte, per month and line.
        let mut rate: HashMap<(Month, &str, &str, PriceKey, Direction), f64> = HashMap::new();
        for b in &bills {
            for l in &b.lines {
                if l.bytes > 0 {
                    rate.insert(
                        (b.month, &l.cloud, &l.region, l.key, l.direction),
                        l.usd / l.bytes as f64,
                    );
                }
            }
        }
        #[derive(Default)]
        struct Acc {
            bytes_out: u64,
            bytes_in: u64,
            transfer: f64,
            processing: f64,
            estimate: f64,
        }
        let mut acc: BTreeMap<Vec<String>, Acc> = BTreeMap::new();
        let mut in_range: BTreeMap<Month, f64> = BTreeMap::new();
        for u in usage.iter().filter(|u| u.part == Part::InRange) {
            let (cloud, region) = self.place(&u.cloud, &u.region);
            let mut usd = 0.0;
            for (d, b) in [(Direction::Out, u.bytes_out), (Direction::In, u.bytes_in)] {
                if b > 0 {
                    let r = rate
                        .get(&(u.month, cloud.as_str(), region.as_str(), u.key, d))
                        .copied()
                        .unwrap_or(0.0);
                    usd += b as f64 * r;
                }
            }
            let a = acc.entry(u.owner.clone()).or_default();
            a.bytes_out = a.bytes_out.saturating_add(u.bytes_out);
            a.bytes_in = a.bytes_in.saturating_add(u.bytes_in);
            a.transfer += usd;
            a.estimate += u.estimate_usd;
            *in_range.entry(u.month).or_default() += usd;
        }
        let rules = self.plan.rules();
        for p in processed.iter().filter(|p| p.part == Part::InRange) {
            let Some(rule) = self.rule_of(p) else {
                continue;
            };
            let usd = gb(p.bytes) * rules[rule].usd_per_gb;
            acc.entry(p.owner.clone()).or_default().processing += usd;
            *in_range.entry(p.month).or_default() += usd;
        }
        let mut rows: Vec<ShowbackRow> = acc
            .into_iter()
            .map(|(key, a)| ShowbackRow {
                key,
                bytes: a.bytes_out.saturating_add(a.bytes_in),
                bytes_out: a.bytes_out,
                bytes_in: a.bytes_in,
                transfer_usd: a.transfer,
                processing_usd: a.processing,
                cost_usd: a.transfer + a.processing,
                share: 0.0,
                estimate_usd: a.estimate,
            })
            .collect();
        rows.sort_by(|a, b| {
            b.cost_usd
                .total_cmp(&a.cost_usd)
                .then(b.bytes.cmp(&a.bytes))
                .then(a.key.cmp(&b.key))
        });
        let mut totals = ShowbackTotals::default();
        for r in &rows {
            totals.bytes = totals.bytes.saturating_add(r.bytes);
            totals.bytes_out = totals.bytes_out.saturating_add(r.bytes_out);
            totals.bytes_in = totals.bytes_in.saturating_add(r.bytes_in);
            totals.transfer_usd += r.transfer_usd;
            totals.processing_usd += r.processing_usd;
            totals.cost_usd += r.cost_usd;
            totals.estimate_usd += r.estimate_usd;
        }
        for r in &mut rows {
            r.share = if totals.cost_usd > 0.0 {
                r.cost_usd / totals.cost_usd
            } else {
                0.0
            };
        }
        let months_out = bills
            .iter()
            .map(|b| MonthShare {
                month: b.month,
                bill_usd: b.total_usd,
                in_range_usd: in_range.get(&b.month).copied().unwrap_or(0.0),
            })
            .collect();
        Showback {
            from,
            to,
            by,
            rows,
            totals,
            months: months_out,
            month_to_date: self.month_to_date(usage, processed, from, to, now),
        }
    }

    /// The month of the range's end, from its first day to `min(to, now)` (the pieces
    /// before and in the range), and its linear projection to the month's end.
    pub fn month_to_date(
        &self,
        usage: &[Usage],
        processed: &[Processed],
        from: i64,
        to: i64,
        now: i64,
    ) -> MonthToDate {
        let end = to.min(now).max(from.saturating_add(1));
        let month = Month::of(end - 1);
        let so_far = end.min(month.end());
        let v = self.volumes(month, usage, processed, &[Part::Before, Part::InRange]);
        let elapsed = ((so_far - month.start()) as f64 / month.seconds() as f64).clamp(0.0, 1.0);
        let cost = self.price(month, &v).total_usd;
        let projected = if elapsed >= 1.0 {
            cost
        } else if elapsed > 0.0 {
            self.price(month, &v.scaled(1.0 / elapsed)).total_usd
        } else {
            0.0
        };
        MonthToDate {
            month,
            from: month.start(),
            to: so_far,
            elapsed_fraction: elapsed,
            cost_usd: cost,
            projected_usd: projected,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podflow_model::Class;

    const TB: u64 = 1 << 40;
    const GB: u64 = 1 << 30;

    fn month(s: &str) -> Month {
        Month::parse(s).expect("month")
    }

    fn biller(config: &str) -> Biller {
        let cfg = EnrichConfig::from_yaml(config, "test.yaml").expect("config");
        Biller::new(PriceTable::defaults(), &cfg, "test.yaml").expect("biller")
    }

    fn internet(m: &str, part: Part, owner: &str, bytes_out: u64) -> Usage {
        Usage {
            month: month(m),
            part,
            cloud: "aws".into(),
            region: "us-east-1".into(),
            key: PriceKey::Class(Class::PublicInternet),
            owner: vec![owner.into()],
            bytes_out,
            bytes_in: 0,
            estimate_usd: bytes_out as f64 / BYTES_PER_GB * 0.09,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6 * b.abs().max(1.0)
    }

    #[test]
    fn a_volume_is_charged_through_the_allowance_and_the_tiers() {
        let p = PriceTable::defaults();
        let s = p.schedule(
            Some("aws"),
            Some("us-east-1"),
            PriceKey::Class(Class::PublicInternet),
            Direction::Out,
        );
        // 200,000 GB from zero: 100 free, 10,140 at 0.09, 40,960 at 0.085, 102,400 at
        // 0.07, 46,400 at 0.05.
        let c = charge(&s, 0.0, 200_000.0);
        assert_eq!(c.allowance_used_gb, 100.0);
        let gbs: Vec<f64> = c.tiers.iter().map(|t| t.gb).collect();
        assert_eq!(gbs, [10_140.0, 40_960.0, 102_400.0, 46_400.0]);
        assert!(
            close(c.usd, 912.6 + 3_481.6 + 7_168.0 + 2_320.0),
            "{}",
            c.usd
        );
        // Inside one tier after a prior volume: no allowance left, one rate.
        let c = charge(&s, 20_000.0, 1_000.0);
        assert_eq!(c.allowance_used_gb, 0.0);
        assert!(close(c.usd, 85.0), "{}", c.usd);
        // Less than the allowance: free.
        let c = charge(&s, 0.0, 60.0);
        assert_eq!((c.allowance_used_gb, c.usd), (60.0, 0.0));
        assert!(c.tiers.is_empty());
        // A flat price (INTER_ZONE) has no tier boundary and nothing free.
        let flat = p.schedule(
            Some("aws"),
            None,
            PriceKey::Class(Class::InterZone),
            Direction::In,
        );
        assert!(close(charge(&flat, 1e6, 1_024.0).usd, 10.24));
    }

    #[test]
    fn tiers_restart_each_month_and_continue_the_prior_volume() {
        // 5 TB used elsewhere in January; the cluster sends 12 TB in January, 3 TB in
        // February.
        let b = biller(
            "billing:\n  prior_usage:\n    - {cloud: aws, class: PUBLIC_INTERNET, month: 2025-01, gb: 5120}\n",
        );
        let usage = [
            internet("2025-01", Part::InRange, "shop", 12 * TB),
            internet("2025-02", Part::InRange, "shop", 3 * TB),
        ];
        let bills = b.bills(&[month("2025-01"), month("2025-02")], &usage, &[]);
        // January: [5,120, 17,408) GB. The allowance went to the prior volume;
        // 5,120 GB at 0.09 = 460.80 to 10 TB, then 7,168 GB at 0.085 = 609.28.
        let jan = &bills[0];
        assert_eq!(jan.lines.len(), 1);
        let l = &jan.lines[0];
        assert_eq!(
            (l.prior_gb, l.allowance_used_gb, l.gb),
            (5_120.0, 0.0, 12_288.0)
        );
        assert_eq!(l.tiers.len(), 2);
        assert!(
            close(l.tiers[0].usd, 460.8) && close(l.tiers[1].usd, 609.28),
            "{l:?}"
        );
        assert!(close(jan.total_usd, 1_070.08), "{}", jan.total_usd);
        // The stored first-tier estimate says 12,288 × 0.09.
        assert!(close(jan.estimate_usd, 1_105.92));
        assert!(close(l.first_tier_usd, 1_105.92));
        // February starts over: 100 GB free, 2,972 GB at 0.09.
        let feb = &bills[1];
        assert_eq!(feb.lines[0].prior_gb, 0.0);
        assert_eq!(feb.lines[0].allowance_used_gb, 100.0);
        assert!(close(feb.total_usd, 267.48), "{}", feb.total_usd);

        // A prior volume without a month applies to every month.
        let every = biller(
            "billing:\n  prior_usage:\n    - {cloud: aws, class: PUBLIC_INTERNET, gb: 5120}\n",
        );
        let feb = &every.bills(&[month("2025-02")], &usage, &[])[0];
        assert!(close(feb.total_usd, 3_072.0 * 0.09), "{}", feb.total_usd);
        // Another region or direction is not shifted.
        let other = biller(
            "billing:\n  prior_usage:\n    - {cloud: aws, region: eu-west-1, class: PUBLIC_INTERNET, gb: 5120}\n    - {cloud: aws, class: PUBLIC_INTERNET, direction: in, gb: 5120}\n",
        );
        let feb = &other.bills(&[month("2025-02")], &usage, &[])[0];
        assert!(close(feb.total_usd, 267.48), "{}", feb.total_usd);
    }

    #[test]
    fn allowances_are_used_once_per_month() {
        let b = biller("cloud: azure\nregion: eastus\n");
        let az = |gb: u64, owner: &str| Usage {
            cloud: String::new(),
            region: String::new(),
            ..internet("2025-03", Part::InRange, owner, gb * GB)
        };
        // 50 GB: all free (Azure's first 100 GB).
        let bill = b.month_bill(month("2025-03"), &[az(50, "a")], &[], &[Part::InRange]);
        assert_eq!(
            bill.lines[0].cloud, "azure",
            "the config's cloud for unknown rows"
        );
        assert_eq!(bill.lines[0].allowance_used_gb, 50.0);
        assert_eq!(bill.total_usd, 0.0);
        // 150 GB from two owners: 100 free, 50 at 0.087; shared at the blended rate.
        let usage = [az(50, "a"), az(100, "b")];
        let bill = b.month_bill(month("2025-03"), &usage, &[], &[Part::InRange]);
        assert!(close(bill.total_usd, 4.35), "{}", bill.total_usd);
        let m = month("2025-03");
        let sb = b.showback(
            vec!["namespace".into()],
            &usage,
            &[],
            (m.start(), m.end()),
            m.end(),
        );
        assert_eq!(sb.rows[0].key, ["b"]);
        assert!(
            close(sb.rows[0].cost_usd, 2.9) && close(sb.rows[1].cost_usd, 1.45),
            "{sb:?}"
        );
        assert!(close(sb.totals.cost_usd, 4.35));
    }

    #[test]
    fn showback_parts_sum_to_the_bill_at_the_blended_rate() {
        let b = biller(
            "billing:\n  prior_usage:\n    - {cloud: aws, class: PUBLIC_INTERNET, month: 2025-01, gb: 5120}\n",
        );
        let inter_zone = |m: &str, owner: &str| Usage {
            key: PriceKey::Class(Class::InterZone),
            bytes_in: TB,
            ..internet(m, Part::InRange, owner, TB)
        };
        let usage = [
            internet("2025-01", Part::InRange, "shop", 8 * TB),
            internet("2025-01", Part::InRange, "batch", 4 * TB),
            internet("2025-02", Part::InRange, "shop", 3 * TB),
            inter_zone("2025-01", "batch"),
        ];
        let (jan, feb) = (month("2025-01"), month("2025-02"));
        let range = (jan.start(), feb.end());
        let sb = b.showback(vec!["namespace".into()], &usage, &[], range, feb.end() + 1);
        let bills = b.bills(&[jan, feb], &usage, &[]);
        let bill_total: f64 = bills.iter().map(|b| b.total_usd).sum();
        // January 1,070.08 of internet egress (see above) + 20.48 cross-AZ both ways;
        // February 267.48.
        assert!(close(bill_total, 1_070.08 + 20.48 + 267.48), "{bill_total}");
        assert!(close(sb.totals.cost_usd, bill_total), "{:?}", sb.totals);
        // January's blended internet rate is 1,070.08 / 12,288 GB: shop's 8 TB are 2/3 of
        // it, not the 8 TB at whichever tier they happened to fall in.
        let by = |k: &str| sb.rows.iter().find(|r| r.key == [k]).expect("row");
        assert!(
            close(by("shop").cost_usd, 1_070.08 * 2.0 / 3.0 + 267.48),
            "{sb:?}"
        );
        assert!(
            close(by("batch").cost_usd, 1_070.08 / 3.0 + 20.48),
            "{sb:?}"
        );
        assert_eq!(by("batch").bytes, 6 * TB);
        let shares: f64 = sb.rows.iter().map(|r| r.share).sum();
        assert!(close(shares, 1.0));
        assert!(close(sb.months[0].in_range_usd, sb.months[0].bill_usd));

        // A range covering the second half of January only: the rows it holds at the
        // whole month's blended rate.
        let usage = [
            internet("2025-01", Part::Before, "shop", 8 * TB),
            internet("2025-01", Part::InRange, "batch", 4 * TB),
        ];
        let mid = jan.start() + 15 * 86_400;
        let sb = b.showback(
            vec!["namespace".into()],
            &usage,
            &[],
            (mid, jan.end()),
            feb.end(),
        );
        assert_eq!(sb.rows.len(), 1);
        assert!(close(sb.rows[0].cost_usd, 1_070.08 / 3.0), "{sb:?}");
        assert!(close(sb.months[0].bill_usd, 1_070.08));
    }

    #[test]
    fn month_to_date_and_the_linear_projection() {
        let b = biller("");
        let jan = month("2025-01");
        // Half of January gone (15.5 of 31 days), 1 TB out to the internet so far.
        let now = jan.start() + 31 * 86_400 / 2;
        let usage = [internet("2025-01", Part::InRange, "shop", TB)];
        let m = b.month_to_date(&usage, &[], jan.start() - 86_400, now + 3_600, now);
        assert_eq!((m.month, m.from, m.to), (jan, jan.start(), now));
        assert_eq!(m.elapsed_fraction, 0.5);
        // 1,024 GB: 100 free, 924 at 0.09; projected 2,048 GB: 1,948 at 0.09.
        assert!(close(m.cost_usd, 83.16), "{m:?}");
        assert!(close(m.projected_usd, 175.32), "{m:?}");
        // A month that is over projects to itself.
        let m = b.month_to_date(&usage, &[], jan.start(), jan.end(), jan.end() + 10);
        assert_eq!(m.elapsed_fraction, 1.0);
        assert!(close(m.projected_usd, m.cost_usd));
    }

    #[test]
    fn nat_gateways_charge_their_subnets_for_their_classes_only() {
        let b = biller(
            "billing:\n  nat_gateways:\n    - {name: nat-a, subnets: [10.0.0.0/19], classes: [PUBLIC_INTERNET, INTRA_REGION], usd_per_gb: 0.045}\n  endpoints:\n    - {name: vpce-sqs, addresses: [10.0.200.0/24], usd_per_gb: 0.01}\n",
        );
        let m = month("2025-01");
        let p =
            |local: &str, remote: Option<&str>, key: PriceKey, service: &str, gb: u64| Processed {
                month: m,
                part: Part::InRange,
                key,
                local: Some(local.parse().expect("ip")),
                remote: remote.map(|r| r.parse().expect("ip")),
                remote_name: service.into(),
                owner: vec!["shop".into()],
                bytes: gb * GB,
            };
        let internet = PriceKey::Class(Class::PublicInternet);
        let processed = [
            // In the subnet, a class it carries: 10 GB (both directions summed) × 0.045.
            p("10.0.1.5", None, internet, "", 10),
            // In the subnet, a class it does not carry.
            p("10.0.1.5", None, PriceKey::Class(Class::InterZone), "", 10),
            // Outside the subnet.
            p("10.1.0.5", None, internet, "", 10),
            // In-region S3 through the gateway: charged and avoidable.
            p("10.0.2.9", None, PriceKey::IntraRegion, "S3", 100),
            // To the endpoint's addresses (INTRA_VPC, its default class): 0.01 per GB.
            p(
                "10.5.0.1",
                Some("10.0.200.7"),
                PriceKey::Class(Class::IntraVpc),
                "",
                100,
            ),
        ];
        let bill = b.month_bill(m, &[], &processed, &[Part::InRange]);
        let lines: Vec<(&str, &str, u64)> = bill
            .processing
            .iter()
            .map(|l| (l.name.as_str(), l.key.as_str(), l.bytes / GB))
            .collect();
        assert_eq!(
            lines,
            [
                ("nat-a", "PUBLIC_INTERNET", 10),
                ("nat-a", "INTRA_REGION", 100),
                ("vpce-sqs", "INTRA_VPC", 100)
            ]
        );
        assert!(close(bill.processing_usd, 0.45 + 4.5 + 1.0), "{bill:?}");
        assert_eq!(bill.avoidable.len(), 1);
        let a = &bill.avoidable[0];
        assert_eq!((a.gateway.as_str(), a.service.as_str()), ("nat-a", "S3"));
        assert!(a.gateway_endpoint && close(a.usd, 4.5));
        let sb = b.showback(
            vec!["namespace".into()],
            &[],
            &processed,
            (m.start(), m.end()),
            m.end(),
        );
        assert!(close(sb.totals.processing_usd, 5.95), "{sb:?}");
        assert!(close(sb.totals.cost_usd, bill.total_usd));
    }

    #[test]
    fn a_region_with_its_own_entry_is_billed_by_it() {
        let prices = PriceTable::from_yaml(
            "clouds:\n  aws:\n    PUBLIC_INTERNET: {out: 0.09}\n\
             regions:\n  aws:\n    sa-east-1:\n      PUBLIC_INTERNET:\n        tiers: {out: [{up_to_gb: 10240, price: 0.15}, {price: 0.138}]}\n",
            "p.yaml",
        )
        .expect("prices");
        let b = Biller::new(prices, &EnrichConfig::default(), "c").expect("biller");
        let usage = [
            Usage {
                region: "sa-east-1".into(),
                ..internet("2025-01", Part::InRange, "a", 20 * TB)
            },
            internet("2025-01", Part::InRange, "b", TB),
        ];
        let bill = b.month_bill(month("2025-01"), &usage, &[], &[Part::InRange]);
        let usd: Vec<(&str, f64)> = bill
            .lines
            .iter()
            .map(|l| (l.region.as_str(), l.usd))
            .collect();
        // sa-east-1: 10,240 GB at 0.15 + 10,240 at 0.138; us-east-1: flat 0.09.
        assert_eq!(usd.len(), 2);
        assert_eq!((usd[0].0, usd[1].0), ("sa-east-1", "us-east-1"));
        assert!(close(usd[0].1, 1_536.0 + 1_413.12), "{usd:?}");
        assert!(close(usd[1].1, 92.16), "{usd:?}");
    }

    #[test]
    fn a_range_is_read_as_whole_months_cut_at_its_ends() {
        let (jan, feb) = (month("2025-01"), month("2025-02"));
        let from = jan.start() + 100;
        let to = feb.start() + 50;
        let p: Vec<(Part, i64, i64)> = pieces(from, to)
            .into_iter()
            .map(|p| (p.part, p.from, p.to))
            .collect();
        assert_eq!(
            p,
            [
                (Part::Before, jan.start(), from),
                (Part::InRange, from, jan.end()),
                (Part::InRange, feb.start(), to),
                (Part::After, to, feb.end()),
            ]
        );
        assert_eq!(pieces(jan.start(), jan.end()).len(), 1);
    }
}
