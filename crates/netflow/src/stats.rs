//! Plain counters per (exporter, version, domain); the server turns them into metrics.

use std::net::SocketAddr;

use crate::error::{ErrorCounts, Version};

/// Identifies one exporter's observation domain (IPFIX), source id (v9) or engine (v5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainKey {
    /// The datagrams' source.
    pub exporter: SocketAddr,
    /// The protocol version: v9 and IPFIX streams from one exporter are separate.
    pub version: Version,
    /// Observation domain, source id, or v5 engine type << 8 | engine id.
    pub domain: u32,
}

/// Counters for one [`DomainKey`]; monotonic, never reset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams whose header decoded.
    pub datagrams: u64,
    /// Flow records decoded (options records excluded).
    pub records: u64,
    /// Templates received (refreshes of an identical template included).
    pub templates: u64,
    /// Options templates received (refreshes included).
    pub options_templates: u64,
    /// Options data records decoded (sampling, system init time).
    pub options_records: u64,
    /// Templates removed by an IPFIX withdrawal.
    pub templates_withdrawn: u64,
    /// Templates dropped because they were not refreshed in time (or their domain went idle).
    pub templates_expired: u64,
    /// Templates evicted because their exporter reached its own bound
    /// ([`crate::DecoderConfig::max_templates_per_exporter`]): its least recently announced one went.
    pub templates_evicted_exporter_limit: u64,
    /// Templates evicted because the cache reached its total bound
    /// ([`crate::DecoderConfig::max_templates`]): the least recently announced one of any exporter went.
    pub templates_evicted_total_limit: u64,
    /// Templates dropped with their domain when the domain table was full.
    pub templates_evicted_domain_limit: u64,
    /// Domains forgotten after [`crate::DecoderConfig::domain_idle_secs`] without a datagram
    /// (their counters stay in the totals).
    pub domains_expired: u64,
    /// Domains forgotten because the domain table reached [`crate::DecoderConfig::max_domains`]
    /// (the least recently heard ones; their counters stay in the totals).
    pub domains_evicted: u64,
    /// Sequence-number gaps: lost records (v5, IPFIX) or lost datagrams (v9).
    pub sequence_lost: u64,
    /// Sequence numbers that went backwards or jumped too far (reorder, exporter restart): no loss counted.
    pub sequence_resets: u64,
    /// Decode errors by reason.
    pub errors: ErrorCounts,
    /// Enterprise-specific fields skipped (one per field per record).
    pub enterprise_fields_skipped: u64,
    /// Data sets held because their template had not arrived yet.
    pub pending_sets_held: u64,
    /// Held data sets dropped (buffer full, too old, or too big to hold).
    pub pending_sets_dropped: u64,
    /// Records decoded from held data sets once their template arrived.
    pub pending_records_decoded: u64,
}

impl Stats {
    /// Adds every counter of `other` (sums over domains or threads).
    pub fn merge(&mut self, other: &Stats) {
        self.datagrams += other.datagrams;
        self.records += other.records;
        self.templates += other.templates;
        self.options_templates += other.options_templates;
        self.options_records += other.options_records;
        self.templates_withdrawn += other.templates_withdrawn;
        self.templates_expired += other.templates_expired;
        self.templates_evicted_exporter_limit += other.templates_evicted_exporter_limit;
        self.templates_evicted_total_limit += other.templates_evicted_total_limit;
        self.templates_evicted_domain_limit += other.templates_evicted_domain_limit;
        self.domains_expired += other.domains_expired;
        self.domains_evicted += other.domains_evicted;
        self.sequence_lost += other.sequence_lost;
        self.sequence_resets += other.sequence_resets;
        self.errors.merge(&other.errors);
        self.enterprise_fields_skipped += other.enterprise_fields_skipped;
        self.pending_sets_held += other.pending_sets_held;
        self.pending_sets_dropped += other.pending_sets_dropped;
        self.pending_records_decoded += other.pending_records_decoded;
    }
}
