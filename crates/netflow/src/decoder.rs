//! The stateful decoder: template cache, held data sets, sampling and sequence state.

use std::collections::{BTreeSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

// foldhash, seeded per process: a few lookups per datagram, SipHash cost ≈ 2% of the
// receive path (docs/benchmarks.md). The maps are bounded (DecoderConfig).
use hashbrown::HashMap;
use podflow_model::Protocol;

use crate::error::{DecodeError, ErrorKind, Version};
use crate::record::{self, Direction, Flow, FlowRecord};
use crate::stats::{DomainKey, Stats};
use crate::template::{FieldSpec, Op, Raw, Template, decode_fixed, decode_record};

/// Seconds between the NTP epoch (1900) and the Unix epoch (1970).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;
/// Per-domain sampler table bound: an exporter cannot grow it without limit.
const MAX_SAMPLERS: usize = 1024;

/// Limits and timeouts of a [`Decoder`]. Times are in the caller's seconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecoderConfig {
    /// A template not re-announced for this long is dropped (0 = never).
    pub template_timeout_secs: u64,
    /// Most templates held over all exporters; beyond, the least recently announced
    /// template of any exporter is evicted (counted).
    pub max_templates: usize,
    /// Most templates held for one exporter address (all its ports, versions and
    /// domains); beyond, that exporter's least recently announced template is evicted.
    pub max_templates_per_exporter: usize,
    /// Most (exporter, version, domain) entries tracked (counters, sequence and sampling
    /// state); beyond, the least recently heard sixteenth is forgotten with its templates.
    pub max_domains: usize,
    /// A domain not heard from for this long is forgotten with its templates (0 = never).
    pub domain_idle_secs: u64,
    /// Most data sets held while waiting for their template.
    pub pending_max_sets: usize,
    /// Most bytes of data sets held while waiting for their template.
    pub pending_max_bytes: usize,
    /// A held data set whose template has not come after this long is dropped.
    pub pending_timeout_secs: u64,
}

impl Default for DecoderConfig {
    fn default() -> Self {
        DecoderConfig {
            // Exporters refresh templates every few minutes (softflowd: 16 packets,
            // Cisco: 30 min by default); 30 min keeps the slow ones.
            template_timeout_secs: 1800,
            max_templates: 16_384,
            // Routers announce tens of templates per line card; 1024 leaves room for many
            // domains behind one address and keeps one exporter from filling the cache.
            max_templates_per_exporter: 1024,
            // Each domain may hold up to 1024 sampler rates (16 KiB): 4096 domains bound
            // that to 64 MiB, far beyond the few hundred exporters of a large site.
            max_domains: 4096,
            // Twice the template timeout: a domain outlives its templates.
            domain_idle_secs: 3600,
            pending_max_sets: 1024,
            pending_max_bytes: 4 << 20,
            pending_timeout_secs: 120,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct TemplateKey {
    domain: DomainKey,
    id: u16,
}

/// Header values that put a record's times in context.
#[derive(Clone, Copy, Debug)]
struct Ctx {
    key: DomainKey,
    /// Header time, ns since the epoch (v5 includes unix_nsecs).
    export_ns: u64,
    /// v5/v9 header sysUptime, ms.
    sys_uptime: u32,
}

#[derive(Clone, Copy, Debug, Default)]
struct SeqState {
    /// Last sequence number and how many units that message carried (None: unknown).
    last: Option<(u32, Option<u32>)>,
    /// The exporter counts the current message's records in its sequence number
    /// (softflowd's IPFIX): expect last + this message's count.
    includes_current: bool,
}

#[derive(Clone, Debug, Default)]
struct DomainState {
    stats: Stats,
    seq: SeqState,
    /// 1-in-N rate for the whole domain (0 = none announced).
    sampling: u32,
    /// Per sampler/selector id rates.
    samplers: Vec<(u64, u32)>,
    /// IPFIX systemInitTimeMilliseconds announced in options data (0 = unknown).
    sys_init_ms: u64,
    /// When the last datagram arrived, in the caller's seconds.
    last_seen: u64,
}

#[derive(Debug)]
struct Pending {
    key: TemplateKey,
    ctx: Ctx,
    offset: usize,
    bytes: Vec<u8>,
    at: u64,
}

/// Decodes NetFlow v5, v9 and IPFIX datagrams, keeping templates and per-domain state.
///
/// Everything it keeps is bounded by count ([`DecoderConfig`]): templates per exporter
/// and in total (least recently announced evicted first), domains (least recently
/// heard forgotten first, idle ones expired), held data sets. Every eviction is counted.
#[derive(Debug, Default)]
pub struct Decoder {
    config: DecoderConfig,
    /// Each template with the stamp of its last announcement.
    templates: HashMap<TemplateKey, (Template, u64)>,
    /// Templates in the order they were last announced (stamp, key): eviction order.
    lru: BTreeSet<(u64, TemplateKey)>,
    /// The same per exporter address: its least recently announced template first.
    by_exporter: BTreeSet<(IpAddr, u64, TemplateKey)>,
    /// Templates per exporter address.
    per_exporter: HashMap<IpAddr, usize>,
    /// Increases on every announcement: a strict order even within one second.
    stamp: u64,
    domains: HashMap<DomainKey, DomainState>,
    /// Counters of forgotten domains, so totals never go backwards.
    retired: Stats,
    /// The current datagram's time.
    now: u64,
    pending: VecDeque<Pending>,
    pending_bytes: usize,
}

/// What one data set yielded, for sequence accounting.
enum SetCount {
    Known(u32),
    Unknown,
}

impl Decoder {
    /// A decoder with the given limits.
    pub fn new(config: DecoderConfig) -> Self {
        Decoder {
            config,
            ..Default::default()
        }
    }

    /// Decodes one datagram from `exporter` at time `now` (seconds), appending flows to `out`.
    ///
    /// Returns how many records were appended. Records decoded before an error stay
    /// in `out`; the error describes the first problem, and every problem is counted.
    pub fn decode(
        &mut self,
        exporter: SocketAddr,
        data: &[u8],
        now: u64,
        out: &mut Vec<FlowRecord>,
    ) -> Result<usize, DecodeError> {
        self.decode_with(exporter, data, now, |r| out.push(*r))
    }

    /// Like [`Decoder::decode`], handing each record to `sink` instead of a vector.
    pub fn decode_with<F: FnMut(&FlowRecord)>(
        &mut self,
        exporter: SocketAddr,
        data: &[u8],
        now: u64,
        sink: F,
    ) -> Result<usize, DecodeError> {
        self.run(exporter, data, now, &mut Records { sink, n: 0 })
    }

    /// Like [`Decoder::decode`], appending each record as the [`Flow`] the collector keeps
    /// (`FlowRecord::to_flow`) without making the [`FlowRecord`]. `observer` numbers the
    /// datagram's domain (exporter, version, domain) for [`Flow::observer`]: it is called
    /// once, when the datagram yields its first record (every record of a datagram is of
    /// its domain, held data sets released by it included).
    pub fn decode_flows(
        &mut self,
        exporter: SocketAddr,
        data: &[u8],
        now: u64,
        observer: impl FnMut(&DomainKey) -> u32,
        out: &mut Vec<Flow>,
    ) -> Result<usize, DecodeError> {
        let mut sink = Flows {
            out,
            observer_of: observer,
            observer: None,
            n: 0,
        };
        self.run(exporter, data, now, &mut sink)
    }

    fn run(
        &mut self,
        exporter: SocketAddr,
        data: &[u8],
        now: u64,
        sink: &mut impl Sink,
    ) -> Result<usize, DecodeError> {
        self.now = now;
        let res = match data.get(..2).map(|v| u16::from_be_bytes([v[0], v[1]])) {
            Some(5) => self.v5(exporter, data, sink),
            Some(9) => self.v9_ipfix(Version::V9, exporter, data, now, sink),
            Some(10) => self.v9_ipfix(Version::Ipfix, exporter, data, now, sink),
            Some(v) => Err((
                DomainKey {
                    exporter,
                    version: Version::Unknown(v),
                    domain: 0,
                },
                ErrorKind::UnknownVersion(v),
            )),
            None => Err((
                DomainKey {
                    exporter,
                    version: Version::Unknown(0),
                    domain: 0,
                },
                ErrorKind::ShortHeader {
                    len: data.len(),
                    need: 2,
                },
            )),
        };
        match res {
            Ok(()) => Ok(sink.emitted()),
            Err((key, kind)) => {
                // Errors from the version handlers are counted where they arise.
                if matches!(key.version, Version::Unknown(_)) {
                    self.count_err(key, kind.clone());
                }
                Err(DecodeError {
                    version: key.version,
                    exporter,
                    kind,
                })
            }
        }
    }

    /// Drops templates, idle domains and held data sets older than their timeouts.
    pub fn expire(&mut self, now: u64) {
        let timeout = self.config.template_timeout_secs;
        if timeout > 0 {
            let old: Vec<TemplateKey> = self
                .templates
                .iter()
                .filter(|(_, (t, _))| now.saturating_sub(t.seen) > timeout)
                .map(|(k, _)| *k)
                .collect();
            for k in old {
                self.remove_template(&k);
                self.stats_mut(k.domain).templates_expired += 1;
            }
        }
        let idle = self.config.domain_idle_secs;
        if idle > 0 {
            let old: Vec<DomainKey> = self
                .domains
                .iter()
                .filter(|(_, d)| now.saturating_sub(d.last_seen) > idle)
                .map(|(k, _)| *k)
                .collect();
            for k in old {
                self.retire(k, false);
            }
        }
        let pending_timeout = self.config.pending_timeout_secs;
        let mut i = 0;
        while i < self.pending.len() {
            if now.saturating_sub(self.pending[i].at) > pending_timeout {
                if let Some(p) = self.pending.remove(i) {
                    self.drop_pending(p);
                }
            } else {
                i += 1;
            }
        }
    }

    /// Counters of every domain seen so far.
    pub fn stats(&self) -> impl Iterator<Item = (&DomainKey, &Stats)> {
        self.domains.iter().map(|(k, d)| (k, &d.stats))
    }

    /// Counters of one domain.
    pub fn stats_for(&self, key: &DomainKey) -> Option<&Stats> {
        self.domains.get(key).map(|d| &d.stats)
    }

    /// Counters summed over every domain, forgotten ones included.
    pub fn total_stats(&self) -> Stats {
        let mut t = self.retired.clone();
        for d in self.domains.values() {
            t.merge(&d.stats);
        }
        t
    }

    /// Counters of the domains forgotten so far (idle or evicted), summed.
    pub fn retired_stats(&self) -> &Stats {
        &self.retired
    }

    /// Templates currently cached (data and options).
    pub fn template_count(&self) -> usize {
        self.templates.len()
    }

    /// Templates currently cached for one exporter address.
    pub fn template_count_for(&self, exporter: IpAddr) -> usize {
        self.per_exporter.get(&exporter).copied().unwrap_or(0)
    }

    /// Domains currently tracked.
    pub fn domain_count(&self) -> usize {
        self.domains.len()
    }

    /// Data sets and bytes currently held waiting for a template.
    pub fn pending(&self) -> (usize, usize) {
        (self.pending.len(), self.pending_bytes)
    }

    /// The 1-in-N rate currently applied to a domain's records without a sampler id (1 = none).
    pub fn sampling_rate(&self, key: &DomainKey) -> u32 {
        self.domains.get(key).map_or(1, |d| d.sampling.max(1))
    }

    fn v5(
        &mut self,
        exporter: SocketAddr,
        data: &[u8],
        sink: &mut impl Sink,
    ) -> Result<(), (DomainKey, ErrorKind)> {
        const HDR: usize = 24;
        const REC: usize = 48;
        let mut key = DomainKey {
            exporter,
            version: Version::V5,
            domain: 0,
        };
        let Some(h) = data.get(..HDR) else {
            let kind = ErrorKind::ShortHeader {
                len: data.len(),
                need: HDR,
            };
            self.count_err(key, kind.clone());
            return Err((key, kind));
        };
        let u16_at = |b: &[u8], o: usize| u16::from_be_bytes([b[o], b[o + 1]]);
        let u32_at = |b: &[u8], o: usize| u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let count = u16_at(h, 2);
        let sys_uptime = u32_at(h, 4);
        let export_ns =
            u64::from(u32_at(h, 8)) * 1_000_000_000 + u64::from(u32_at(h, 12) % 1_000_000_000);
        let seq = u32_at(h, 16);
        key.domain = u32::from(h[20]) << 8 | u32::from(h[21]);
        // Low 14 bits: the interval; top two: the mode (0 when some exporters set only the interval).
        let rate = u32::from(u16_at(h, 22) & 0x3fff).max(1);
        let ctx = Ctx {
            key,
            export_ns,
            sys_uptime,
        };
        let body = &data[HDR..];
        let fit = body.len() / REC;
        let n = usize::from(count).min(fit);
        let dom = self.admit(key);
        dom.stats.datagrams += 1;
        for r in body.chunks_exact(REC).take(n) {
            let proto = r[38];
            let raw_packets = u64::from(u32_at(r, 16));
            let raw_bytes = u64::from(u32_at(r, 20));
            let rec = FlowRecord {
                version: Version::V5,
                exporter,
                domain: key.domain,
                proto: Protocol(proto),
                src: IpAddr::V4(Ipv4Addr::from(u32_at(r, 0))),
                dst: IpAddr::V4(Ipv4Addr::from(u32_at(r, 4))),
                src_port: u16_at(r, 32),
                dst_port: u16_at(r, 34),
                bytes: raw_bytes.saturating_mul(u64::from(rate)),
                packets: raw_packets.saturating_mul(u64::from(rate)),
                raw_bytes,
                raw_packets,
                sampling_rate: rate,
                start_ns: uptime_ns(&ctx, u32_at(r, 24)),
                end_ns: uptime_ns(&ctx, u32_at(r, 28)),
                tcp_flags: u16::from(r[37]),
                in_if: u32::from(u16_at(r, 12)),
                out_if: u32::from(u16_at(r, 14)),
                direction: None,
                end_reason: None,
            };
            sink.record(&rec);
        }
        dom.stats.records += n as u64;
        let lost = check_seq(&mut dom.seq, seq, Some(n as u32), false, &mut dom.stats);
        dom.stats.sequence_lost += lost;
        if n < usize::from(count) {
            let kind = ErrorKind::V5Count {
                count,
                need: usize::from(count) * REC,
                len: body.len(),
            };
            self.count_err(key, kind.clone());
            return Err((key, kind));
        }
        Ok(())
    }

    fn v9_ipfix(
        &mut self,
        version: Version,
        exporter: SocketAddr,
        data: &[u8],
        now: u64,
        sink: &mut impl Sink,
    ) -> Result<(), (DomainKey, ErrorKind)> {
        let ipfix = version == Version::Ipfix;
        let hdr = if ipfix { 16 } else { 20 };
        let mut key = DomainKey {
            exporter,
            version,
            domain: 0,
        };
        let Some(h) = data.get(..hdr) else {
            let kind = ErrorKind::ShortHeader {
                len: data.len(),
                need: hdr,
            };
            self.count_err(key, kind.clone());
            return Err((key, kind));
        };
        let u32_at = |o: usize| u32::from_be_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
        let (ctx, seq, end) = if ipfix {
            key.domain = u32_at(12);
            let declared = u16::from_be_bytes([h[2], h[3]]);
            if usize::from(declared) > data.len() || usize::from(declared) < hdr {
                let kind = ErrorKind::MessageLength {
                    declared,
                    actual: data.len(),
                };
                self.count_err(key, kind.clone());
                return Err((key, kind));
            }
            let ctx = Ctx {
                key,
                export_ns: u64::from(u32_at(4)) * 1_000_000_000,
                sys_uptime: 0,
            };
            (ctx, u32_at(8), usize::from(declared))
        } else {
            key.domain = u32_at(16);
            let ctx = Ctx {
                key,
                export_ns: u64::from(u32_at(8)) * 1_000_000_000,
                sys_uptime: u32_at(4),
            };
            (ctx, u32_at(12), data.len())
        };
        self.admit(key).stats.datagrams += 1;

        let mut first_err: Option<ErrorKind> = None;
        let mut units = Some(0u32);
        let mut off = hdr;
        while end - off >= 4 {
            let set_id = u16::from_be_bytes([data[off], data[off + 1]]);
            let len = u16::from_be_bytes([data[off + 2], data[off + 3]]);
            if usize::from(len) < 4 || usize::from(len) > end - off {
                let kind = ErrorKind::SetLength {
                    set_id,
                    offset: off,
                    len,
                    remaining: end - off,
                };
                self.count_err(key, kind.clone());
                first_err.get_or_insert(kind);
                units = None;
                break;
            }
            let body = &data[off + 4..off + usize::from(len)];
            let body_off = off + 4;
            let res = match (ipfix, set_id) {
                (false, 0) => self.templates_v9(key, body, body_off, false, now, sink),
                (false, 1) => self.templates_v9(key, body, body_off, true, now, sink),
                (true, 2) => self.templates_ipfix(key, body, body_off, false, now, sink),
                (true, 3) => self.templates_ipfix(key, body, body_off, true, now, sink),
                (_, id) if id >= 256 => {
                    let tk = TemplateKey { domain: key, id };
                    match self.data_set(&ctx, tk, body, body_off, now, sink, false) {
                        Ok(SetCount::Known(c)) => {
                            units = units.map(|u| u.wrapping_add(c));
                            Ok(())
                        }
                        Ok(SetCount::Unknown) => {
                            units = None;
                            Ok(())
                        }
                        Err(e) => {
                            units = None;
                            Err(e)
                        }
                    }
                }
                // Reserved set ids: skipped, forward compatible.
                _ => Ok(()),
            };
            if let Err(e) = res {
                self.count_err(key, e.clone());
                first_err.get_or_insert(e);
            }
            off += usize::from(len);
        }
        let dom = self.admit(key);
        // v9 numbers datagrams; IPFIX numbers data records.
        let units = if ipfix { units } else { Some(1) };
        let lost = check_seq(&mut dom.seq, seq, units, ipfix, &mut dom.stats);
        dom.stats.sequence_lost += lost;
        match first_err {
            None => Ok(()),
            Some(kind) => Err((key, kind)),
        }
    }

    fn count_err(&mut self, key: DomainKey, kind: ErrorKind) {
        self.admit(key).stats.errors.add(kind.reason());
    }

    /// The state of `key`, created if new (forgetting the least recently heard domains
    /// first when the table is full), marked as heard now.
    fn admit(&mut self, key: DomainKey) -> &mut DomainState {
        if !self.domains.contains_key(&key) && self.domains.len() >= self.config.max_domains {
            // A sixteenth at a time: one scan pays for many admissions.
            let mut by_age: Vec<(u64, DomainKey)> = self
                .domains
                .iter()
                .map(|(k, d)| (d.last_seen, *k))
                .collect();
            let n = (by_age.len() / 16).max(1).min(by_age.len());
            if n > 0 && n < by_age.len() {
                by_age.select_nth_unstable(n - 1);
            }
            for (_, k) in by_age.into_iter().take(n) {
                self.retire(k, true);
            }
        }
        let now = self.now;
        let d = self.domains.entry(key).or_default();
        d.last_seen = now;
        d
    }

    /// Forgets a domain and its templates, keeping its counters in the totals.
    fn retire(&mut self, key: DomainKey, evicted: bool) {
        let Some(mut d) = self.domains.remove(&key) else {
            return;
        };
        let ip = key.exporter.ip();
        let mine: Vec<TemplateKey> = self
            .by_exporter
            .range((ip, 0, TemplateKey { domain: key, id: 0 })..)
            .take_while(|(a, _, _)| *a == ip)
            .filter(|(_, _, k)| k.domain == key)
            .map(|(_, _, k)| *k)
            .collect();
        for k in &mine {
            self.remove_template(k);
        }
        if evicted {
            d.stats.templates_evicted_domain_limit += mine.len() as u64;
            d.stats.domains_evicted += 1;
        } else {
            d.stats.templates_expired += mine.len() as u64;
            d.stats.domains_expired += 1;
        }
        self.retired.merge(&d.stats);
    }

    /// A domain's counters; a forgotten domain's go to the retired totals.
    fn stats_mut(&mut self, key: DomainKey) -> &mut Stats {
        match self.domains.get_mut(&key) {
            Some(d) => &mut d.stats,
            None => &mut self.retired,
        }
    }

    fn remove_template(&mut self, k: &TemplateKey) -> Option<Template> {
        let (t, stamp) = self.templates.remove(k)?;
        let ip = k.domain.exporter.ip();
        self.lru.remove(&(stamp, *k));
        self.by_exporter.remove(&(ip, stamp, *k));
        if let Some(n) = self.per_exporter.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_exporter.remove(&ip);
            }
        }
        Some(t)
    }

    /// Stores a template (replacing one of the same key), evicting to stay in bounds.
    fn insert_template(&mut self, k: TemplateKey, t: Template) {
        self.remove_template(&k);
        let ip = k.domain.exporter.ip();
        if self.template_count_for(ip) >= self.config.max_templates_per_exporter {
            let oldest = self
                .by_exporter
                .range((ip, 0, k)..)
                .next()
                .filter(|e| e.0 == ip)
                .map(|e| e.2);
            if let Some(old) = oldest {
                self.remove_template(&old);
                self.stats_mut(old.domain).templates_evicted_exporter_limit += 1;
            }
        }
        if self.templates.len() >= self.config.max_templates
            && let Some(&(_, old)) = self.lru.first()
        {
            self.remove_template(&old);
            self.stats_mut(old.domain).templates_evicted_total_limit += 1;
        }
        self.stamp += 1;
        let stamp = self.stamp;
        self.templates.insert(k, (t, stamp));
        self.lru.insert((stamp, k));
        self.by_exporter.insert((ip, stamp, k));
        *self.per_exporter.entry(ip).or_default() += 1;
    }

    /// A template announced again: now the most recently announced.
    fn touch_template(&mut self, k: TemplateKey, now: u64) {
        let Some((t, stamp)) = self.templates.get_mut(&k) else {
            return;
        };
        t.seen = now;
        let ip = k.domain.exporter.ip();
        self.lru.remove(&(*stamp, k));
        self.by_exporter.remove(&(ip, *stamp, k));
        self.stamp += 1;
        *stamp = self.stamp;
        self.lru.insert((self.stamp, k));
        self.by_exporter.insert((ip, self.stamp, k));
    }

    fn templates_v9(
        &mut self,
        key: DomainKey,
        body: &[u8],
        body_off: usize,
        options: bool,
        now: u64,
        sink: &mut impl Sink,
    ) -> Result<(), ErrorKind> {
        let mut p = 0;
        let head = if options { 6 } else { 4 };
        let mut specs = Vec::new();
        while body.len() - p >= head {
            let rd = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
            let id = rd(p);
            let start = p;
            if id == 0 {
                // Zero padding at the end of the set.
                break;
            }
            let bad = |why| ErrorKind::BadTemplate {
                template: id,
                offset: body_off + start,
                why,
            };
            if id < 256 {
                return Err(bad("template id below 256"));
            }
            specs.clear();
            if options {
                let scope_len = usize::from(rd(p + 2));
                let opt_len = usize::from(rd(p + 4));
                p += 6;
                if scope_len % 4 != 0 || opt_len % 4 != 0 {
                    return Err(bad("scope or option length not a multiple of 4"));
                }
                if body.len() - p < scope_len + opt_len {
                    return Err(bad("fields run past the set"));
                }
                for i in 0..(scope_len + opt_len) / 4 {
                    specs.push(FieldSpec {
                        id: rd(p),
                        len: rd(p + 2),
                        enterprise: None,
                        v9_scope: i < scope_len / 4,
                    });
                    p += 4;
                }
            } else {
                let count = usize::from(rd(p + 2));
                p += 4;
                if count == 0 {
                    return Err(bad("no fields"));
                }
                if body.len() - p < count * 4 {
                    return Err(bad("fields run past the set"));
                }
                for _ in 0..count {
                    specs.push(FieldSpec {
                        id: rd(p),
                        len: rd(p + 2),
                        enterprise: None,
                        v9_scope: false,
                    });
                    p += 4;
                }
            }
            if specs.iter().any(|s| s.len == crate::template::VARLEN) {
                return Err(bad("variable-length field in a v9 template"));
            }
            let tk = TemplateKey { domain: key, id };
            self.install(
                tk,
                &specs,
                options,
                &body[start..p],
                body_off + start,
                now,
                sink,
            )?;
        }
        Ok(())
    }

    fn templates_ipfix(
        &mut self,
        key: DomainKey,
        body: &[u8],
        body_off: usize,
        options: bool,
        now: u64,
        sink: &mut impl Sink,
    ) -> Result<(), ErrorKind> {
        let mut p = 0;
        let mut specs = Vec::new();
        while body.len() - p >= 4 {
            let rd = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
            let id = rd(p);
            let count = usize::from(rd(p + 2));
            let start = p;
            let bad = |why| ErrorKind::BadTemplate {
                template: id,
                offset: body_off + start,
                why,
            };
            if count == 0 {
                p += 4;
                self.withdraw(key, id, options);
                continue;
            }
            if id < 256 {
                return Err(bad("template id below 256"));
            }
            if options {
                if body.len() - p < 6 {
                    return Err(bad("options template header runs past the set"));
                }
                let s = usize::from(rd(p + 4));
                if s == 0 || s > count {
                    return Err(bad("scope field count is 0 or above the field count"));
                }
                p += 6;
            } else {
                p += 4;
            }
            specs.clear();
            for _ in 0..count {
                if body.len() - p < 4 {
                    return Err(bad("fields run past the set"));
                }
                let raw_id = rd(p);
                let len = rd(p + 2);
                p += 4;
                let enterprise = if raw_id & 0x8000 != 0 {
                    let e = body
                        .get(p..p + 4)
                        .ok_or_else(|| bad("enterprise number runs past the set"))?;
                    p += 4;
                    Some(u32::from_be_bytes([e[0], e[1], e[2], e[3]]))
                } else {
                    None
                };
                specs.push(FieldSpec {
                    id: raw_id & 0x7fff,
                    len,
                    enterprise,
                    v9_scope: false,
                });
            }
            let tk = TemplateKey { domain: key, id };
            self.install(
                tk,
                &specs,
                options,
                &body[start..p],
                body_off + start,
                now,
                sink,
            )?;
        }
        Ok(())
    }

    /// IPFIX withdrawal: id 2 (template set) / 3 (options set) withdraws all of that kind.
    fn withdraw(&mut self, key: DomainKey, id: u16, options: bool) {
        let mut removed = 0u64;
        if id == 2 || id == 3 {
            let ip = key.exporter.ip();
            let all: Vec<TemplateKey> = self
                .by_exporter
                .range((ip, 0, TemplateKey { domain: key, id: 0 })..)
                .take_while(|(a, _, _)| *a == ip)
                .map(|(_, _, k)| *k)
                .filter(|k| k.domain == key)
                .filter(|k| {
                    self.templates
                        .get(k)
                        .is_some_and(|(t, _)| t.options == options)
                })
                .collect();
            for k in all {
                removed += u64::from(self.remove_template(&k).is_some());
            }
        } else {
            removed += u64::from(
                self.remove_template(&TemplateKey { domain: key, id })
                    .is_some(),
            );
        }
        self.stats_mut(key).templates_withdrawn += removed;
    }

    #[allow(clippy::too_many_arguments)]
    fn install(
        &mut self,
        tk: TemplateKey,
        specs: &[FieldSpec],
        options: bool,
        raw: &[u8],
        offset: usize,
        now: u64,
        sink: &mut impl Sink,
    ) -> Result<(), ErrorKind> {
        {
            let stats = self.stats_mut(tk.domain);
            if options {
                stats.options_templates += 1;
            } else {
                stats.templates += 1;
            }
        }
        if let Some((t, _)) = self.templates.get(&tk)
            && t.options == options
            && t.raw == raw
        {
            // A refresh: keep the compiled plan.
            self.touch_template(tk, now);
            return Ok(());
        }
        let limit = self
            .config
            .max_templates
            .min(self.config.max_templates_per_exporter);
        if limit == 0 {
            return Err(ErrorKind::TooManyTemplates {
                template: tk.id,
                limit,
            });
        }
        let t = Template::compile(specs, options, raw, now).ok_or(ErrorKind::BadTemplate {
            template: tk.id,
            offset,
            why: "no field has a length",
        })?;
        self.insert_template(tk, t);
        self.release_pending(tk, now, sink)
    }

    fn release_pending(
        &mut self,
        tk: TemplateKey,
        now: u64,
        sink: &mut impl Sink,
    ) -> Result<(), ErrorKind> {
        if !self.pending.iter().any(|p| p.key == tk) {
            return Ok(());
        }
        let mut first_err = None;
        let mut i = 0;
        while i < self.pending.len() {
            if self.pending[i].key != tk {
                i += 1;
                continue;
            }
            let Some(p) = self.pending.remove(i) else {
                break;
            };
            self.pending_bytes -= p.bytes.len();
            let before = sink.emitted();
            if let Err(e) = self.data_set(&p.ctx, tk, &p.bytes, p.offset, now, sink, true) {
                first_err.get_or_insert(e);
            }
            self.stats_mut(tk.domain).pending_records_decoded += (sink.emitted() - before) as u64;
        }
        first_err.map_or(Ok(()), Err)
    }

    fn drop_pending(&mut self, p: Pending) {
        self.pending_bytes -= p.bytes.len();
        self.stats_mut(p.key.domain).pending_sets_dropped += 1;
    }

    fn hold(&mut self, key: TemplateKey, ctx: &Ctx, body: &[u8], offset: usize, now: u64) {
        let (max_bytes, max_sets) = (self.config.pending_max_bytes, self.config.pending_max_sets);
        let stats = self.stats_mut(key.domain);
        if body.len() > max_bytes || max_sets == 0 {
            stats.pending_sets_dropped += 1;
            return;
        }
        stats.pending_sets_held += 1;
        while self.pending.len() >= self.config.pending_max_sets
            || self.pending_bytes + body.len() > self.config.pending_max_bytes
        {
            match self.pending.pop_front() {
                Some(old) => self.drop_pending(old),
                None => break,
            }
        }
        self.pending_bytes += body.len();
        self.pending.push_back(Pending {
            key,
            ctx: *ctx,
            offset,
            bytes: body.to_vec(),
            at: now,
        });
    }

    /// Decodes one data set; holds it when its template is unknown (or expired).
    #[allow(clippy::too_many_arguments)]
    fn data_set(
        &mut self,
        ctx: &Ctx,
        tk: TemplateKey,
        body: &[u8],
        body_off: usize,
        now: u64,
        sink: &mut impl Sink,
        released: bool,
    ) -> Result<SetCount, ErrorKind> {
        let timeout = self.config.template_timeout_secs;
        let expired = match self.templates.get(&tk) {
            None => {
                if !released {
                    self.hold(tk, ctx, body, body_off, now);
                }
                return Ok(SetCount::Unknown);
            }
            Some((t, _)) => timeout > 0 && now.saturating_sub(t.seen) > timeout,
        };
        if expired {
            self.remove_template(&tk);
            self.stats_mut(tk.domain).templates_expired += 1;
            if !released {
                self.hold(tk, ctx, body, body_off, now);
            }
            return Ok(SetCount::Unknown);
        }
        let Some((t, _)) = self.templates.get(&tk) else {
            return Ok(SetCount::Unknown);
        };
        // Admitted at the start of this datagram (held data is released by a template
        // of its own domain).
        let dom = self.domains.entry(tk.domain).or_default();
        let mut pos = 0;
        let mut n = 0u32;
        let mut err = None;
        while body.len() - pos >= t.min_len {
            let mut raw = Raw::default();
            let at = pos;
            if let Some(plan) = &t.plan
                && let Some(rec) = body.get(pos..pos + t.min_len)
            {
                decode_fixed(plan, rec, &mut raw);
                pos += t.min_len;
            } else if let Err(field) = decode_record(&t.fields, body, &mut pos, &mut raw) {
                err = Some(ErrorKind::FieldPastRecord {
                    template: tk.id,
                    field,
                    offset: body_off + at,
                });
                break;
            }
            n += 1;
            if t.options {
                apply_options(dom, &raw);
            } else {
                sink.data(ctx, dom, &raw);
            }
        }
        if t.options {
            dom.stats.options_records += u64::from(n);
        } else {
            dom.stats.records += u64::from(n);
        }
        dom.stats.enterprise_fields_skipped += u64::from(t.enterprise_fields) * u64::from(n);
        match err {
            None => Ok(SetCount::Known(n)),
            Some(e) => Err(e),
        }
    }
}

/// A record's time in ns since the epoch from a v5/v9 sysUptime value.
fn uptime_ns(ctx: &Ctx, at_ms: u32) -> u64 {
    // Signed distance so a wrapped uptime or a slightly-future time still works.
    let age_ms = i64::from(ctx.sys_uptime.wrapping_sub(at_ms) as i32);
    let t = ctx.export_ns as i128 - i128::from(age_ms) * 1_000_000;
    t.clamp(0, i128::from(u64::MAX)) as u64
}

fn ntp_ns(v: u64) -> u64 {
    let secs = v >> 32;
    let frac = v & 0xffff_ffff;
    if secs < NTP_UNIX_OFFSET {
        return 0;
    }
    (secs - NTP_UNIX_OFFSET)
        .saturating_mul(1_000_000_000)
        .saturating_add((frac * 1_000_000_000) >> 32)
}

fn time_ns(ctx: &Ctx, init_ms: u64, (op, v): (Op, u64)) -> u64 {
    match op {
        Op::StartUptime | Op::EndUptime => {
            if ctx.key.version == Version::Ipfix {
                // IPFIX: relative to systemInitTimeMilliseconds; unknown without it.
                if init_ms == 0 {
                    0
                } else {
                    init_ms.saturating_add(v).saturating_mul(1_000_000)
                }
            } else {
                uptime_ns(ctx, v as u32)
            }
        }
        Op::StartSecs | Op::EndSecs => v.saturating_mul(1_000_000_000),
        Op::StartMs | Op::EndMs => v.saturating_mul(1_000_000),
        Op::StartNtp | Op::EndNtp => ntp_ns(v),
        // Already ns since the epoch (decode_record converted the timeval).
        Op::StartTimeval | Op::EndTimeval => v,
        Op::StartDeltaUs | Op::EndDeltaUs => ctx.export_ns.saturating_sub(v.saturating_mul(1000)),
        _ => 0,
    }
}

/// The 1-in-N rate a record or options record announces itself (0 = none).
fn own_rate(raw: &Raw) -> u32 {
    let r = if raw.sampling_interval > 0 {
        raw.sampling_interval
    } else if raw.random_interval > 0 {
        raw.random_interval
    } else {
        // Select `interval` packets, then skip `space`: 1 in (interval + space) / interval.
        raw.packet_interval
            .saturating_add(raw.packet_space)
            .checked_div(raw.packet_interval)
            .unwrap_or(0)
    };
    r.min(u64::from(u32::MAX)) as u32
}

fn apply_options(dom: &mut DomainState, raw: &Raw) {
    let rate = own_rate(raw);
    if rate > 0 {
        match raw.sampler_id {
            Some(id) => {
                if let Some(e) = dom.samplers.iter_mut().find(|(s, _)| *s == id) {
                    e.1 = rate;
                } else if dom.samplers.len() < MAX_SAMPLERS {
                    dom.samplers.push((id, rate));
                }
            }
            None => dom.sampling = rate,
        }
    }
    if raw.sys_init_ms > 0 {
        dom.sys_init_ms = raw.sys_init_ms;
    }
}

/// Where a decoder's records go: [`FlowRecord`]s ([`Decoder::decode_with`]) or the
/// listener's [`Flow`]s ([`Decoder::decode_flows`]).
trait Sink {
    /// A data record of a v9/IPFIX template, to be put in its context.
    fn data(&mut self, ctx: &Ctx, dom: &DomainState, raw: &Raw);
    /// A complete record (v5).
    fn record(&mut self, rec: &FlowRecord);
    /// How many records it has taken.
    fn emitted(&self) -> usize;
}

struct Records<F> {
    sink: F,
    n: usize,
}

impl<F: FnMut(&FlowRecord)> Sink for Records<F> {
    #[inline]
    fn data(&mut self, ctx: &Ctx, dom: &DomainState, raw: &Raw) {
        self.record(&finish(ctx, dom, raw));
    }

    #[inline]
    fn record(&mut self, rec: &FlowRecord) {
        self.n += 1;
        (self.sink)(rec);
    }

    fn emitted(&self) -> usize {
        self.n
    }
}

struct Flows<'o, O> {
    out: &'o mut Vec<Flow>,
    observer_of: O,
    /// The datagram's observer, once asked.
    observer: Option<u32>,
    n: usize,
}

impl<O: FnMut(&DomainKey) -> u32> Flows<'_, O> {
    #[inline]
    fn observer(&mut self, key: &DomainKey) -> u32 {
        match self.observer {
            Some(o) => o,
            None => *self.observer.insert((self.observer_of)(key)),
        }
    }
}

impl<O: FnMut(&DomainKey) -> u32> Sink for Flows<'_, O> {
    #[inline]
    fn data(&mut self, ctx: &Ctx, dom: &DomainState, raw: &Raw) {
        let observer = self.observer(&ctx.key);
        let (rate, init_ms) = rate_and_init(dom, raw);
        let proto = Protocol(raw.proto);
        self.n += 1;
        self.out.push(Flow {
            src: raw.src,
            dst: raw.dst,
            src_port: raw.src_port,
            dst_port: dst_port(raw, proto),
            proto,
            opened: record::opened(proto, raw.tcp_flags),
            closed: record::closed(proto, raw.tcp_flags, raw.end_reason),
            observer,
            bytes: raw.bytes.saturating_mul(u64::from(rate)),
            packets: raw.packets.saturating_mul(u64::from(rate)),
            start_ns: time_ns(ctx, init_ms, raw.start),
            end_ns: time_ns(ctx, init_ms, raw.end),
        });
    }

    #[inline]
    fn record(&mut self, rec: &FlowRecord) {
        let key = DomainKey {
            exporter: rec.exporter,
            version: rec.version,
            domain: rec.domain,
        };
        let observer = self.observer(&key);
        self.n += 1;
        self.out.push(rec.to_flow(observer));
    }

    fn emitted(&self) -> usize {
        self.n
    }
}

/// A record's 1-in-N sampling rate (at least 1: its own, its sampler's or its domain's)
/// and the IPFIX systemInitTimeMilliseconds its uptime times count from (0: unknown).
#[inline]
fn rate_and_init(dom: &DomainState, raw: &Raw) -> (u32, u64) {
    let mut rate = own_rate(raw);
    if rate == 0
        && let Some(id) = raw.sampler_id
    {
        rate = dom
            .samplers
            .iter()
            .find(|(s, _)| *s == id)
            .map_or(0, |(_, r)| *r);
    }
    if rate == 0 {
        rate = dom.sampling;
    }
    let init_ms = if raw.sys_init_ms > 0 {
        raw.sys_init_ms
    } else {
        dom.sys_init_ms
    };
    (rate.max(1), init_ms)
}

/// The destination port, or for ICMP the type and code where the record has them.
#[inline]
fn dst_port(raw: &Raw, proto: Protocol) -> u16 {
    match (raw.icmp, proto) {
        (Some(tc), Protocol::ICMP | Protocol::ICMPV6) => tc,
        _ => raw.dst_port,
    }
}

#[inline]
fn finish(ctx: &Ctx, dom: &DomainState, raw: &Raw) -> FlowRecord {
    let (rate, init_ms) = rate_and_init(dom, raw);
    let proto = Protocol(raw.proto);
    let dst_port = dst_port(raw, proto);
    FlowRecord {
        version: ctx.key.version,
        exporter: ctx.key.exporter,
        domain: ctx.key.domain,
        proto,
        src: raw.src,
        dst: raw.dst,
        src_port: raw.src_port,
        dst_port,
        bytes: raw.bytes.saturating_mul(u64::from(rate)),
        packets: raw.packets.saturating_mul(u64::from(rate)),
        raw_bytes: raw.bytes,
        raw_packets: raw.packets,
        sampling_rate: rate,
        start_ns: time_ns(ctx, init_ms, raw.start),
        end_ns: time_ns(ctx, init_ms, raw.end),
        tcp_flags: raw.tcp_flags,
        in_if: raw.in_if,
        out_if: raw.out_if,
        direction: match raw.direction {
            Some(0) => Some(Direction::Ingress),
            Some(1) => Some(Direction::Egress),
            _ => None,
        },
        end_reason: raw.end_reason,
    }
}

/// Checks a sequence number and returns how many units were lost before this message.
///
/// `units` is what this message adds to the sequence (None = unknown: the next check
/// is skipped). `may_include_current` allows the softflowd IPFIX quirk, where the
/// number already counts this message's records.
fn check_seq(
    st: &mut SeqState,
    seq: u32,
    units: Option<u32>,
    may_include_current: bool,
    stats: &mut Stats,
) -> u64 {
    let mut lost = 0;
    if let Some((last, last_units)) = st.last {
        let normal = last_units.map(|u| last.wrapping_add(u));
        let current = units.map(|u| last.wrapping_add(u));
        let expected = if st.includes_current { current } else { normal };
        if let Some(exp) = expected
            && seq != exp
        {
            if may_include_current && !st.includes_current && Some(seq) == current {
                st.includes_current = true;
            } else if st.includes_current && Some(seq) == normal {
                st.includes_current = false;
            } else {
                let gap = seq.wrapping_sub(exp);
                if gap < 1 << 30 {
                    lost = u64::from(gap);
                } else {
                    // Backwards or absurdly far: reorder or an exporter restart.
                    stats.sequence_resets += 1;
                }
            }
        }
    }
    st.last = Some((seq, units));
    lost
}
