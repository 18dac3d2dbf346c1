//! Every metric podflow exposes, defined in one place ([`METRICS`]), the counters each
//! part of a role publishes into a [`Registry`], and their Prometheus text rendering.
//! docs/metrics.md is checked against [`METRICS`] by a test.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};

use podflow_conntrack::{Features, SourceStats};
use podflow_model::{FlowTotals, Protocol};
use podflow_netflow::ListenerStats;
use podflow_pipeline::MetricDef;
use podflow_pipeline::exposition::{header, one, sample};
use podflow_pipeline::histograms::ServiceHistograms;
use podflow_pipeline::service_zone_metrics::{ServiceZoneMetrics, ServiceZoneMetricsConfig};
use podflow_pipeline::workload_metrics::{WorkloadMetrics, WorkloadMetricsConfig};

use crate::health::Health;

macro_rules! defs {
    ($($id:ident = $name:literal, $kind:literal, $help:literal, [$($l:literal),*];)*) => {
        $(#[allow(missing_docs)] pub const $id: MetricDef = MetricDef { name: $name, kind: $kind, help: $help, labels: &[$($l),*] };)*
        /// Every metric podflow exposes.
        pub const METRICS: &[MetricDef] = &[$($id),*];
    };
}

defs! {
    BUILD_INFO = "podflow_build_info", "gauge", "Always 1; the version of this podflow.", ["version"];
    CT_ACCOUNTING = "podflow_conntrack_accounting_enabled", "gauge", "1 if net.netfilter.nf_conntrack_acct is on in the observed namespace; 0 means no byte or packet counters.", [];
    CT_TIMESTAMPS = "podflow_conntrack_timestamps_enabled", "gauge", "1 if net.netfilter.nf_conntrack_timestamp is on; 0 means no connection start/stop times.", [];
    CT_DUMPS = "podflow_conntrack_dumps_total", "counter", "Full conntrack table dumps completed.", [];
    CT_DUMP_ENTRIES = "podflow_conntrack_dump_entries_total", "counter", "Entries read by table dumps.", [];
    CT_DUMPS_INTERRUPTED = "podflow_conntrack_dumps_interrupted_total", "counter", "Dumps the kernel flagged as interrupted because the table changed meanwhile.", [];
    CT_DUMP_SECONDS = "podflow_conntrack_dump_seconds_total", "counter", "Time spent dumping the table.", [];
    CT_LAST_DUMP = "podflow_conntrack_last_dump_seconds", "gauge", "Duration of the last table dump.", [];
    CT_EVENTS = "podflow_conntrack_events_total", "counter", "Conntrack events received, by type (new, update, destroy); update only with --first-reply.", ["type"];
    CT_UPDATES_IGNORED = "podflow_conntrack_update_events_ignored_total", "counter", "UPDATE events that were not a connection's first reply podflow could measure (later TCP state changes, connections replied to before podflow saw them).", [];
    CT_FIRST_REPLIES = "podflow_conntrack_first_replies_total", "counter", "Connections whose time to first reply was measured and reported (--first-reply).", [];
    CT_OVERFLOWS = "podflow_conntrack_event_overflows_total", "counter", "Event socket overflows (ENOBUFS): events were lost and a dump recovered live connections.", [];
    CT_DECODE_ERRORS = "podflow_conntrack_decode_errors_total", "counter", "Netlink messages that could not be decoded and were skipped.", [];
    CT_UNKNOWN_ATTRS = "podflow_conntrack_unknown_attributes_total", "counter", "Unknown conntrack attributes skipped (newer kernel).", [];
    CT_TABLE_ENTRIES = "podflow_conntrack_table_entries", "gauge", "Entries in the observed conntrack table now (net.netfilter.nf_conntrack_count, read every 5 s).", [];
    CT_TABLE_MAX = "podflow_conntrack_table_max", "gauge", "Size of the observed conntrack table (net.netfilter.nf_conntrack_max); new connections are dropped by the kernel when it is full.", [];
    CT_TRACKED = "podflow_conntrack_tracked_connections", "gauge", "Connections whose last reported counters podflow remembers.", [];
    CT_RESETS = "podflow_conntrack_resets_total", "counter", "Connections whose counters went backwards (zeroed by another tool).", [];
    CT_VANISHED = "podflow_conntrack_vanished_total", "counter", "Connections gone without a DESTROY event (lost to an overflow); bytes after their last dump are lost.", [];
    CT_ID_REUSED = "podflow_conntrack_id_reused_total", "counter", "Conntrack ids seen again with another start time.", [];
    CT_DESTROY_UNKNOWN = "podflow_conntrack_destroy_unknown_total", "counter", "DESTROY events of connections podflow had not seen (reported whole).", [];
    CT_BASELINED = "podflow_conntrack_baselined_total", "counter", "Connections that predate podflow: only bytes after the first dump are counted.", [];
    CT_CLOSED_WHILE_DOWN = "podflow_conntrack_closed_while_down_total", "counter", "Connections remembered from the checkpoint at start that the first dump found gone: they closed while no agent ran, and their bytes since the last report before the stop are lost.", [];
    CT_DUMP_INTERVAL = "podflow_conntrack_dump_interval_seconds", "gauge", "The dump interval in force: --interval, or longer when --dump-cpu-budget stretches it.", [];
    CT_DUMP_CPU = "podflow_conntrack_dump_cpu_seconds_total", "counter", "CPU time (user and system) spent in table dumps, the kernel's work included.", [];
    CT_OBSERVATIONS = "podflow_conntrack_observations_total", "counter", "Observations (per-connection deltas) produced by the conntrack source.", [];
    QUEUE_WAITS = "podflow_pipeline_queue_full_total", "counter", "Times the source waited because the pipeline queue was full (back-pressure, nothing dropped).", [];
    AGG_KEYS = "podflow_aggregator_keys", "gauge", "Flow keys held by the aggregator for open intervals.", [];
    NF_FLOWS_HELD = "podflow_netflow_flows_held", "gauge", "Distinct NetFlow/IPFIX keys (exporter, protocol, initiator, responder, responder port; a reply record is put its connection's way) summed for open intervals, waiting for attribution when the interval closes (bounded by --max-keys; beyond, records are attributed one by one).", [];
    NF_PER_NETWORK = "podflow_netflow_flows_summed_per_network_total", "counter", "NetFlow/IPFIX keys (exporter, protocol, initiator, responder, responder port, interval) with no end in the cluster, stored summed per network instead of per address (off with --netflow-keep-addresses).", [];
    AGG_OVERFLOW = "podflow_aggregator_overflow_observations_total", "counter", "Observations summed into a per-protocol overflow key because the key limit was reached.", [];
    STORE_ROWS = "podflow_store_rows_written_total", "counter", "Rows written to the store.", [];
    STORE_ERRORS = "podflow_store_write_errors_total", "counter", "Failed store writes (the rows are kept and the same write is tried again).", [];
    STORE_SECONDS = "podflow_store_write_seconds_total", "counter", "Time spent writing to the store.", [];
    STORE_PENDING = "podflow_store_rows_pending", "gauge", "Rows waiting to be written (closed intervals not yet durable).", [];
    HTTP_REJECTED = "podflow_http_requests_rejected_total", "counter", "HTTP API requests refused, by reason: unauthorized (missing or wrong bearer token, 401), busy (too many queries at once or no lane free before the time limit, 503), timeout (query stopped at --query-timeout, 504), wal (the embedded store's write-ahead log over its limit, 503 until a checkpoint resets it), probe_rate (POST /api/v1/probe over its rate limit, 429 with Retry-After).", ["reason"];
    HTTP_STORE_ERRORS = "podflow_http_store_errors_total", "counter", "HTTP API queries the store failed (answered 500 with a request id; the log has the details).", [];
    HTTP_WAL_BYTES = "podflow_store_wal_bytes", "gauge", "Size of the embedded store's write-ahead log as of the last API query, bytes (grows while overlapping readers keep checkpoints from resetting it).", [];
    FLOW_BYTES = "podflow_flow_bytes_total", "counter", "L3 bytes of observed connections, by protocol and direction (out = local to remote).", ["proto", "direction"];
    FLOW_PACKETS = "podflow_flow_packets_total", "counter", "Packets of observed connections, by protocol and direction.", ["proto", "direction"];
    CONNS_OPENED = "podflow_connections_opened_total", "counter", "Connections that started while observed, by protocol.", ["proto"];
    CONNS_CLOSED = "podflow_connections_closed_total", "counter", "Connections that ended while observed, by protocol.", ["proto"];
    WL_BYTES = "podflow_workload_bytes_total", "counter", "L3 bytes in both directions between a source (initiator) and a destination (responder), by the allowed labels (see docs/metrics.md).", ["src_namespace", "src_workload", "src_kind", "src_zone", "dst_namespace", "dst_workload", "dst_kind", "dst_zone", "class"];
    WL_CONNS = "podflow_workload_connections_total", "counter", "Connections opened between a source and a destination, by the allowed labels.", ["src_namespace", "src_workload", "src_kind", "src_zone", "dst_namespace", "dst_workload", "dst_kind", "dst_zone", "class"];
    WL_COST = "podflow_workload_cost_usd_total", "counter", "Price of the bytes between a source and a destination in USD, by the allowed labels.", ["src_namespace", "src_workload", "src_kind", "src_zone", "dst_namespace", "dst_workload", "dst_kind", "dst_zone", "class"];
    SRV_BATCHES = "podflow_server_batches_total", "counter", "Agent batches received, by outcome (applied, duplicate, in_flight, busy: refused for now because the write backlog is full, rejected: refused for good).", ["outcome"];
    SRV_OBSERVATIONS = "podflow_server_observations_total", "counter", "Observations received from agents and counted, by kind: live, or replayed (observed more than two intervals before they arrived: an agent catching up after an outage).", ["kind"];
    OVER_BOUND = "podflow_observations_over_bound_total", "counter", "Observations (and NetFlow records) rejected because they would take a row's counter past the bound of a row per interval (2^40 bytes or 2^36 packets in one direction): a corrupt or hostile counter; the log names the source. Kept out of every row, so sums cannot overflow.", [];
    LATE_BYTES = "podflow_late_bytes_total", "counter", "Bytes of rows whose interval had closed more than two intervals before they arrived (replays after an outage): stored in their own interval, kept out of the podflow_flow_* and podflow_workload_* counters so a recovery does not look like a traffic spike.", [];
    SRV_CHUNKS_HELD = "podflow_server_chunks_held", "gauge", "Chunks found written or being written at start (a restart between a store write and its marks) held until their agents have replayed every batch of them, so they are cut again under the same token (docs/reliability.md).", [];
    SRV_RECUT_LATE = "podflow_server_recut_late_batches_total", "counter", "Batches of a held chunk that came back after the chunk was written without them (its agents moved past them, or 10 minutes passed): acknowledged as duplicates, not counted (their first copy may or may not have landed).", [];
    SRV_ACKS_DROPPED = "podflow_server_acks_dropped_total", "counter", "Acks that could not be queued to their connection (closed or full); the agent's replay is acked as a duplicate.", [];
    SRV_LAST_SEEN = "podflow_server_agent_last_seen_timestamp_seconds", "gauge", "When each agent's last batch arrived at this server, Unix seconds (one series per agent id, at most 10,000).", ["agent"];
    SRV_PROBE_ROWS = "podflow_server_probe_rows_total", "counter", "Probe rows (an interval of one probe kind between two nodes) written to the probe store, by outcome: written; refused (a row about another node than the agent's own, or malformed); dropped (the writer's queue was full or the write failed).", ["outcome"];
    SRV_CONNECTIONS = "podflow_server_agent_connections", "gauge", "Agent streams open now.", [];
    SRV_AUTH_INFO = "podflow_server_agent_auth_info", "gauge", "1, labelled with how agents authenticate (mode: kubernetes, tokens, mtls, shared-token, none) and whether their transport is encrypted (transport: tls, plaintext); none or plaintext on a non-loopback address only with an --insecure-* flag.", ["mode", "transport"];
    SRV_REFUSED = "podflow_server_agent_refusals_total", "counter", "Agent streams or batches refused, by reason: unauthenticated (no, wrong or expired credentials), not_its_node (a batch, header or probe row for another node than the one the credentials name), seq_window (a sequence number beyond the window ahead of the agent's mark: it would silence the agent's later batches), too_many_agents (a new agent id beyond 10,000 agents in all or 16 on its node: every agent's mark is kept for good).", ["reason"];
    TLS_RELOADS = "podflow_tls_reloads_total", "counter", "Certificates (and client CA) taken into use after their files changed, per listener (http, grpc), without a restart.", ["listener"];
    TLS_RELOAD_ERRORS = "podflow_tls_reload_errors_total", "counter", "Changed TLS files that did not load (half written, key and certificate not matching): the previous certificates stay in force, per listener.", ["listener"];
    SRV_RATE_WAITS = "podflow_server_agent_rate_limited_batches_total", "counter", "Agent batches that waited because their node sent more than --agent-rate-limit MiB/s (read later: the agent's stream stalls and it keeps its batches, nothing is lost).", [];
    SRV_RATE_WAIT_S = "podflow_server_agent_rate_limited_seconds_total", "counter", "Time agents' streams waited for their node's rate limit, summed over streams.", [];
    SRV_ADDR_CLAIMS = "podflow_server_address_claims", "gauge", "Addresses agents report as their node's that the inventory does not confirm, by state: disputed (claimed by two nodes, or the inventory gives it another node: given to none), unconfirmed (the agent's node is in the inventory without it: ClusterIPs, CNI gateways, node-local DNS; the inventory wins).", ["state"];
    AG_SENT = "podflow_agent_batches_sent_total", "counter", "Batches sent to the server (replays included).", [];
    AG_ACKED = "podflow_agent_batches_acked_total", "counter", "Batches the server acknowledged as durable.", [];
    AG_REJECTED = "podflow_agent_batches_rejected_total", "counter", "Batches the server refused as invalid (dropped, with the reason logged).", [];
    AG_BUFFERED = "podflow_agent_buffered_batches", "gauge", "Batches waiting for an ack (all of them in the buffer's log on disk unless the disk refused them).", [];
    AG_BUFFERED_BYTES = "podflow_agent_buffered_bytes", "gauge", "Bytes of the buffer, by place: memory (batches held in memory), spill (the log file on disk, acknowledged records included until compaction).", ["place"];
    AG_DROPPED = "podflow_agent_batches_dropped_total", "counter", "Batches dropped, never delivered: the buffer's log reached --buffer-spill after compaction, or the disk refused writes and memory reached --buffer-memory (oldest first).", [];
    AG_RETRIED = "podflow_agent_batches_retried_total", "counter", "Refusals the server said were not final (busy, or a newer protocol than it speaks): the batches were kept and sent again later.", [];
    AG_RENUMBERED = "podflow_agent_batches_renumbered_total", "counter", "Batches given new sequence numbers because the server's durable mark for this agent was ahead of the data directory's (a wiped disk, a reused node name).", [];
    AG_RECOVERED = "podflow_agent_batches_recovered_total", "counter", "Unacknowledged batches read back from the buffer's log at start (they survived a restart).", [];
    AG_DISK_ERRORS = "podflow_agent_buffer_disk_errors_total", "counter", "Writes to the buffer's log the disk refused (full, read-only); the batch was kept in memory only.", [];
    AG_TORN = "podflow_agent_buffer_torn_tails_total", "counter", "Torn tails (a record cut short or failing its checksum) cut from the buffer's log at start.", [];
    AG_COMPACTIONS = "podflow_agent_buffer_compactions_total", "counter", "Rewrites of the buffer's log to free the space of acknowledged batches.", [];
    AG_CHECKPOINTS = "podflow_agent_checkpoints_total", "counter", "Conntrack tracker checkpoints written to the buffer's log (after the first dump, then whenever the batches since the last one weigh as much as it does, and at shutdown).", [];
    AG_CHECKPOINT_ERRORS = "podflow_agent_checkpoint_errors_total", "counter", "Tracker checkpoints the disk refused (tried again after the next dump).", [];
    AG_CHECKPOINT_BYTES = "podflow_agent_checkpoint_bytes", "gauge", "Size of the latest tracker checkpoint in the buffer's log.", [];
    AG_RESTORED = "podflow_agent_restored_connections", "gauge", "Connections the tracker remembered at start from the buffer's checkpoint and the batches after it (0: a fresh start, whose first dump is a baseline).", [];
    AG_RECONNECTS = "podflow_agent_reconnects_total", "counter", "Connections to the server opened after the first.", [];
    AG_CONNECTED = "podflow_agent_connected", "gauge", "1 while a stream to the server is open.", [];
    NF_DATAGRAMS = "podflow_netflow_datagrams_total", "counter", "NetFlow/IPFIX datagrams received.", [];
    NF_BYTES = "podflow_netflow_bytes_total", "counter", "NetFlow/IPFIX datagram bytes (UDP payload) received.", [];
    NF_RECORDS = "podflow_netflow_records_total", "counter", "Flow records decoded and turned into observations.", [];
    NF_KERNEL_DROPS = "podflow_netflow_kernel_drops_total", "counter", "Datagrams the kernel dropped because the listener's receive buffer was full.", [];
    NF_TRUNCATED = "podflow_netflow_truncated_total", "counter", "Datagrams longer than the receive buffer, skipped.", [];
    NF_RECEIVE_ERRORS = "podflow_netflow_receive_errors_total", "counter", "Failed receive calls.", [];
    NF_DECODE_ERRORS = "podflow_netflow_decode_errors_total", "counter", "Datagrams that failed to decode, by reason (records before the error are kept).", ["reason"];
    NF_TEMPLATES = "podflow_netflow_templates_total", "counter", "Templates and options templates received.", [];
    NF_SEQ_LOST = "podflow_netflow_sequence_lost_total", "counter", "Export sequence gaps: records (v5, IPFIX) or datagrams (v9) the exporter sent that never arrived.", [];
    NF_ENTERPRISE = "podflow_netflow_enterprise_fields_skipped_total", "counter", "Enterprise-specific fields skipped.", [];
    NF_PENDING_DROPPED = "podflow_netflow_pending_sets_dropped_total", "counter", "Data sets held for a template that never came in time, dropped.", [];
    NF_ALLOW_ALL = "podflow_netflow_allow_all", "gauge", "1 when datagrams from every source address are decoded (no --netflow-allow), 0 with an allow-list.", [];
    NF_DENIED = "podflow_netflow_denied_datagrams_total", "counter", "Datagrams from source addresses outside --netflow-allow, dropped before decoding.", [];
    NF_TEMPLATES_CACHED = "podflow_netflow_cached_templates", "gauge", "Templates held now over all exporters (bounded: 16,384 in total, 1024 per exporter address).", [];
    NF_DOMAINS = "podflow_netflow_tracked_domains", "gauge", "(exporter, version, domain) entries tracked now (bounded: 4096).", [];
    NF_TEMPLATES_EXPIRED = "podflow_netflow_templates_expired_total", "counter", "Templates dropped because they were not refreshed for 30 minutes, or with their domain after an hour without a datagram.", [];
    NF_TEMPLATES_EVICTED = "podflow_netflow_templates_evicted_total", "counter", "Templates evicted to stay within a bound, by reason: exporter_limit (that exporter's least recently announced), total_limit (any exporter's least recently announced), domain_limit (dropped with their domain); data for them is held until they are announced again.", ["reason"];
    NF_DOMAINS_FORGOTTEN = "podflow_netflow_domains_forgotten_total", "counter", "(exporter, version, domain) entries forgotten with their templates, sequence and sampling state, by reason: idle (an hour without a datagram), limit (the table was full: least recently heard first). Their counts stay in the totals.", ["reason"];
    NF_EXP_RECORDS = "podflow_netflow_exporter_records_total", "counter", "Records per exporter and domain (only with --netflow-exporter-labels: the exporter address is a label).", ["exporter", "domain", "version"];
    NF_EXP_SEQ_LOST = "podflow_netflow_exporter_sequence_lost_total", "counter", "Sequence loss per exporter and domain (only with --netflow-exporter-labels).", ["exporter", "domain", "version"];
    SVC_DURATION = "podflow_service_connection_duration_seconds", "histogram", "Duration of closed connections through each Service (DNAT), from conntrack's start/stop timestamps; at most 500 Services, the rest under `other`.", ["service_namespace", "service"];
    SVC_FIRST_REPLY = "podflow_service_first_reply_seconds", "histogram", "Time from a connection's first packet to its first reply packet, per Service (DNAT), as conntrack on this node saw them (--first-reply); at most 500 Services, the rest under `other`.", ["service_namespace", "service"];
    SVC_CROSS_ZONE = "podflow_service_cross_zone_bytes_total", "counter", "L3 bytes in both directions of connections through each Service (dialled, or headless) that crossed zones, counted once; the --metrics-top-k Services with the most per interval keep their names, the rest are summed under namespace and service `other`.", ["namespace", "service"];
    SVC_AVOIDABLE = "podflow_service_avoidable_cross_zone_bytes_total", "counter", "The part of podflow_service_cross_zone_bytes_total that crossed zones while a Ready backend of the Service was in the client's zone: what topology-aware routing (PreferClose) would have kept in the zone, at most (docs/attribution.md).", ["namespace", "service"];
    SVC_AVOIDABLE_COST = "podflow_service_avoidable_cross_zone_cost_usd_total", "counter", "Price in USD of podflow_service_avoidable_cross_zone_bytes_total.", ["namespace", "service"];
    SVC_ZONE_SERIES = "podflow_service_zone_series", "gauge", "Live per-Service cross-zone series (bounded by --metrics-top-k).", [];
    WL_SERIES = "podflow_workload_series", "gauge", "Live workload series (bounded by --metrics-top-k).", [];
    WL_FOLDED = "podflow_workload_folded_total", "counter", "Interval series folded into `other` by the top-K bound.", [];
}

fn version_label(v: podflow_netflow::Version) -> &'static str {
    match v {
        podflow_netflow::Version::V5 => "v5",
        podflow_netflow::Version::V9 => "v9",
        podflow_netflow::Version::Ipfix => "ipfix",
        podflow_netflow::Version::Unknown(_) => "unknown",
    }
}

/// The protocol label values (bounded: everything else is `other`).
const PROTOS: [&str; 6] = ["tcp", "udp", "icmp", "icmpv6", "sctp", "other"];

fn proto_index(p: Protocol) -> usize {
    match p {
        Protocol::TCP => 0,
        Protocol::UDP => 1,
        Protocol::ICMP => 2,
        Protocol::ICMPV6 => 3,
        Protocol::SCTP => 4,
        _ => 5,
    }
}

fn g(a: &AtomicU64) -> u64 {
    a.load(Relaxed)
}

/// Flow totals per protocol class.
#[derive(Debug, Default)]
struct ProtoTotals {
    bytes_out: AtomicU64,
    bytes_in: AtomicU64,
    packets_out: AtomicU64,
    packets_in: AtomicU64,
    opened: AtomicU64,
    closed: AtomicU64,
}

/// Counters of the agent role.
#[derive(Debug, Default)]
pub struct AgentStats {
    /// Batches sent.
    pub sent: AtomicU64,
    /// Batches acked.
    pub acked: AtomicU64,
    /// Batches rejected by the server.
    pub rejected: AtomicU64,
    /// Batches waiting.
    pub buffered: AtomicU64,
    /// Bytes waiting in memory.
    pub buffered_mem_bytes: AtomicU64,
    /// Bytes waiting in the spill file.
    pub buffered_spill_bytes: AtomicU64,
    /// Batches dropped (buffer full).
    pub dropped: AtomicU64,
    /// Reconnects.
    pub reconnects: AtomicU64,
    /// Connected now.
    pub connected: AtomicU64,
    /// Refusals the server said were not final (the batches were kept).
    pub retried: AtomicU64,
    /// Batches renumbered because the server's mark was ahead of this data directory.
    pub renumbered: AtomicU64,
    /// Unacknowledged batches read back from the buffer's log at start.
    pub recovered: AtomicU64,
    /// Writes to the buffer's log the disk refused (kept in memory instead).
    pub disk_errors: AtomicU64,
    /// Torn tails cut from the buffer's log at start.
    pub torn: AtomicU64,
    /// Rewrites of the buffer's log to free space.
    pub compactions: AtomicU64,
    /// Tracker checkpoints written.
    pub checkpoints: AtomicU64,
    /// Tracker checkpoints the disk refused.
    pub checkpoint_errors: AtomicU64,
    /// Size of the latest checkpoint, bytes.
    pub checkpoint_bytes: AtomicU64,
    /// Connections restored at start.
    pub restored_connections: AtomicU64,
    /// 1 when the last write to the buffer's log failed (readiness).
    pub disk_errors_recent: AtomicU64,
}

/// Counters of the pipeline between a source and the store.
#[derive(Debug, Default)]
pub struct PipelineStats {
    /// Times the source waited on a full queue.
    pub queue_waits: AtomicU64,
    /// Aggregator keys.
    pub agg_keys: AtomicU64,
    /// Aggregator overflow.
    pub agg_overflow: AtomicU64,
    /// NetFlow flows summed, waiting for their interval to close.
    pub netflow_flows_held: AtomicU64,
    /// NetFlow flows stored per network (no end in the cluster).
    pub netflow_summed_per_network: AtomicU64,
    /// Rows written.
    pub store_rows: AtomicU64,
    /// Failed writes.
    pub store_errors: AtomicU64,
    /// Write time, ns.
    pub store_ns: AtomicU64,
    /// Rows waiting to be written.
    pub store_pending: AtomicU64,
    /// Entries in the observed conntrack table (`nf_conntrack_count`), read every 5 s.
    pub ct_table_entries: AtomicU64,
    /// Its size (`nf_conntrack_max`).
    pub ct_table_max: AtomicU64,
    /// Bytes of rows that arrived late (replays), kept out of the live series.
    pub late_bytes: AtomicU64,
    /// Store writes failed since the last one that succeeded (readiness).
    pub store_errors_in_a_row: AtomicU64,
    /// Observations rejected for passing the bound of a row per interval.
    pub rows_rejected: AtomicU64,
}

/// What became of an agent's batch at the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Counted; acknowledged once durable.
    Applied,
    /// Already durable: acknowledged, not counted.
    Duplicate,
    /// Received before, not yet durable: acknowledged with the first copy.
    InFlight,
    /// Refused for now (write backlog full); the agent keeps it.
    Busy,
    /// Refused for good (malformed).
    Rejected,
}

impl Outcome {
    /// Every outcome, in label order.
    pub const ALL: [Outcome; 5] = [
        Outcome::Applied,
        Outcome::Duplicate,
        Outcome::InFlight,
        Outcome::Busy,
        Outcome::Rejected,
    ];

    /// The `outcome` label value.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Duplicate => "duplicate",
            Outcome::InFlight => "in_flight",
            Outcome::Busy => "busy",
            Outcome::Rejected => "rejected",
        }
    }
}

/// Counters of the server role's intake.
#[derive(Debug, Default)]
pub struct ServerStats {
    batches: [AtomicU64; Outcome::ALL.len()],
    /// Observations received from agents and counted, observed recently.
    pub observations: AtomicU64,
    /// Observations counted that were observed long before they arrived (replays).
    pub observations_replayed: AtomicU64,
    /// Acks that could not be queued to their connection.
    pub acks_dropped: AtomicU64,
    /// Chunks held for a re-cut.
    pub chunks_held: AtomicU64,
    /// Batches of a re-cut chunk that came back too late.
    pub recut_late: AtomicU64,
    /// Agent streams open now.
    pub connections: AtomicU64,
    /// Probe rows written to the probe store.
    pub probe_rows: AtomicU64,
    /// Probe rows refused (another node's, malformed).
    pub probe_rows_refused: AtomicU64,
    /// Probe rows dropped: the probe store's writer queue was full or the write failed.
    pub probe_rows_dropped: AtomicU64,
    /// How agents authenticate and whether their transport is TLS, once serving.
    pub auth: OnceLock<(&'static str, bool)>,
    /// Refusals, by [`Refusal`].
    refused: [AtomicU64; Refusal::ALL.len()],
    /// Batches that waited for their node's rate limit.
    pub rate_limited: AtomicU64,
    /// Time streams waited for their node's rate limit, ns.
    pub rate_limited_ns: AtomicU64,
    /// Address claims the inventory does not confirm: (disputed, unconfirmed).
    pub address_claims: (AtomicU64, AtomicU64),
    /// When each agent's last batch arrived, Unix seconds (at most [`MAX_AGENTS_SEEN`]).
    pub last_seen: Mutex<std::collections::BTreeMap<String, i64>>,
}

/// Why the server refused an agent's stream or batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No, wrong or expired credentials.
    Unauthenticated,
    /// A batch, header or probe row for another node than the credentials name.
    NotItsNode,
    /// A sequence number too far ahead of the agent's mark.
    SeqWindow,
    /// A new agent id beyond the ledger's bounds (in all, or on its node).
    TooManyAgents,
}

impl Refusal {
    /// Every reason, in label order.
    pub const ALL: [Refusal; 4] = [
        Refusal::Unauthenticated,
        Refusal::NotItsNode,
        Refusal::SeqWindow,
        Refusal::TooManyAgents,
    ];

    /// The `reason` label value.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Unauthenticated => "unauthenticated",
            Refusal::NotItsNode => "not_its_node",
            Refusal::SeqWindow => "seq_window",
            Refusal::TooManyAgents => "too_many_agents",
        }
    }
}

/// Agents whose last-seen time `/metrics` shows (the rest are counted only).
pub const MAX_AGENTS_SEEN: usize = 10_000;

impl ServerStats {
    /// Counts one batch with outcome `o`.
    pub fn batch(&self, o: Outcome) {
        self.batches[o as usize].fetch_add(1, Relaxed);
    }

    /// Notes that `agent` sent a batch at `now` (Unix seconds).
    pub fn seen(&self, agent: &str, now: i64) {
        if let Ok(mut m) = self.last_seen.lock() {
            if let Some(t) = m.get_mut(agent) {
                *t = now;
            } else if m.len() < MAX_AGENTS_SEEN {
                m.insert(agent.to_string(), now);
            }
        }
    }

    /// Batches with outcome `o` so far.
    pub fn batches(&self, o: Outcome) -> u64 {
        g(&self.batches[o as usize])
    }

    /// Counts one refusal.
    pub fn refuse(&self, why: Refusal) {
        self.refused[why as usize].fetch_add(1, Relaxed);
    }

    /// Refusals for `why` so far.
    pub fn refusals(&self, why: Refusal) -> u64 {
        g(&self.refused[why as usize])
    }
}

/// Where every part of a role publishes what `/metrics` and `/ready` show.
#[derive(Default)]
pub struct Registry {
    /// Conntrack source counters, once a source is open.
    pub conntrack: OnceLock<(Arc<SourceStats>, Features)>,
    /// The NetFlow listener's counters, and whether per-exporter series are wanted.
    pub netflow: OnceLock<(Arc<ListenerStats>, bool)>,
    /// Agent role counters, when this process is an agent.
    pub agent: OnceLock<Arc<AgentStats>>,
    /// Pipeline and store counters.
    pub pipeline: PipelineStats,
    /// Server intake counters.
    pub server: ServerStats,
    /// Connection durations and times to first reply per Service.
    pub service_histograms: Mutex<ServiceHistograms>,
    /// Workload-level series (none in an agent).
    pub workloads: Mutex<Option<WorkloadMetrics>>,
    /// Cross-zone bytes per Service (none in an agent).
    pub service_zones: Mutex<Option<ServiceZoneMetrics>>,
    /// What the role waits for before it is ready.
    pub health: Health,
    /// Families other parts render themselves (the probes'), at each scrape.
    families: Mutex<Vec<Family>>,
    flows: [ProtoTotals; 6],
}

/// A part that renders families of its own into the exposition.
type Family = Box<dyn Fn(&mut String) + Send + Sync>;

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("pipeline", &self.pipeline)
            .field("server", &self.server)
            .field("health", &self.health)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// Adds families rendered by `render` at every scrape (their definitions are listed
    /// in docs/metrics.md with the others).
    pub fn add_families(&self, render: impl Fn(&mut String) + Send + Sync + 'static) {
        if let Ok(mut f) = self.families.lock() {
            f.push(Box::new(render));
        }
    }

    /// A registry whose workload series are bounded by `metrics`.
    pub fn new(metrics: &WorkloadMetricsConfig) -> Arc<Registry> {
        let r = Registry::default();
        if let Ok(mut w) = r.workloads.lock() {
            *w = Some(WorkloadMetrics::new(metrics.clone()));
        }
        if let Ok(mut s) = r.service_zones.lock() {
            *s = Some(ServiceZoneMetrics::new(ServiceZoneMetricsConfig {
                top_k: metrics.top_k,
                expire_s: metrics.expire_s,
                count_once: metrics.count_once,
            }));
        }
        Arc::new(r)
    }

    /// Counts a row's traffic into the flow totals.
    pub fn add_flow(&self, proto: Protocol, t: &FlowTotals) {
        let p = &self.flows[proto_index(proto)];
        p.bytes_out.fetch_add(t.bytes_out, Relaxed);
        p.bytes_in.fetch_add(t.bytes_in, Relaxed);
        p.packets_out.fetch_add(t.packets_out, Relaxed);
        p.packets_in.fetch_add(t.packets_in, Relaxed);
        p.opened.fetch_add(t.opened, Relaxed);
        p.closed.fetch_add(t.closed, Relaxed);
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 << 10);
        header(&mut out, &BUILD_INFO);
        sample(
            &mut out,
            &BUILD_INFO,
            &[("version", env!("CARGO_PKG_VERSION"))],
            1,
        );
        self.render_conntrack(&mut out);
        self.render_pipeline(&mut out);
        self.render_flows(&mut out);
        self.render_server(&mut out);
        self.render_netflow(&mut out);
        self.render_histograms(&mut out);
        self.render_agent(&mut out);
        self.render_workloads(&mut out);
        render_http(&mut out);
        if let Ok(f) = self.families.lock() {
            for render in f.iter() {
                render(&mut out);
            }
        }
        out
    }

    fn render_conntrack(&self, out: &mut String) {
        let Some((s, f)) = self.conntrack.get() else {
            return;
        };
        one(out, &CT_ACCOUNTING, u8::from(f.accounting));
        one(out, &CT_TIMESTAMPS, u8::from(f.timestamps));
        one(out, &CT_DUMPS, g(&s.dumps));
        one(out, &CT_DUMP_ENTRIES, g(&s.dump_entries));
        one(out, &CT_DUMPS_INTERRUPTED, g(&s.dumps_interrupted));
        one(out, &CT_DUMP_SECONDS, g(&s.dump_ns) as f64 / 1e9);
        one(out, &CT_LAST_DUMP, g(&s.last_dump_ns) as f64 / 1e9);
        header(out, &CT_EVENTS);
        for (t, v) in [
            ("new", &s.events_new),
            ("update", &s.events_update),
            ("destroy", &s.events_destroy),
        ] {
            sample(out, &CT_EVENTS, &[("type", t)], g(v));
        }
        one(out, &CT_UPDATES_IGNORED, g(&s.updates_ignored));
        one(out, &CT_FIRST_REPLIES, g(&s.first_replies));
        one(out, &CT_OVERFLOWS, g(&s.event_overflows));
        one(out, &CT_DECODE_ERRORS, g(&s.decode_errors));
        one(out, &CT_UNKNOWN_ATTRS, g(&s.unknown_attributes));
        one(out, &CT_TABLE_ENTRIES, g(&self.pipeline.ct_table_entries));
        one(out, &CT_TABLE_MAX, g(&self.pipeline.ct_table_max));
        one(out, &CT_TRACKED, g(&s.tracked));
        one(out, &CT_RESETS, g(&s.counter_resets));
        one(out, &CT_VANISHED, g(&s.vanished));
        one(out, &CT_ID_REUSED, g(&s.id_reused));
        one(out, &CT_DESTROY_UNKNOWN, g(&s.destroy_unknown));
        one(out, &CT_BASELINED, g(&s.baselined));
        one(out, &CT_CLOSED_WHILE_DOWN, g(&s.closed_while_down));
        one(out, &CT_DUMP_INTERVAL, g(&s.dump_interval_ns) as f64 / 1e9);
        one(out, &CT_DUMP_CPU, g(&s.dump_cpu_ns) as f64 / 1e9);
        one(out, &CT_OBSERVATIONS, g(&s.observations));
    }

    fn render_pipeline(&self, out: &mut String) {
        let p = &self.pipeline;
        one(out, &QUEUE_WAITS, g(&p.queue_waits));
        one(out, &AGG_KEYS, g(&p.agg_keys));
        one(out, &NF_FLOWS_HELD, g(&p.netflow_flows_held));
        one(out, &NF_PER_NETWORK, g(&p.netflow_summed_per_network));
        one(out, &AGG_OVERFLOW, g(&p.agg_overflow));
        one(out, &STORE_ROWS, g(&p.store_rows));
        one(out, &STORE_ERRORS, g(&p.store_errors));
        one(out, &STORE_SECONDS, g(&p.store_ns) as f64 / 1e9);
        one(out, &STORE_PENDING, g(&p.store_pending));
        one(out, &LATE_BYTES, g(&p.late_bytes));
        one(out, &OVER_BOUND, g(&p.rows_rejected));
    }

    fn render_flows(&self, out: &mut String) {
        type Pick = fn(&ProtoTotals) -> (u64, u64);
        let both: [(&MetricDef, Pick); 2] = [
            (&FLOW_BYTES, |p| (g(&p.bytes_out), g(&p.bytes_in))),
            (&FLOW_PACKETS, |p| (g(&p.packets_out), g(&p.packets_in))),
        ];
        for (def, pick) in both {
            header(out, def);
            for (p, name) in self.flows.iter().zip(PROTOS) {
                let (o, i) = pick(p);
                sample(out, def, &[("proto", name), ("direction", "out")], o);
                sample(out, def, &[("proto", name), ("direction", "in")], i);
            }
        }
        type Count = fn(&ProtoTotals) -> u64;
        let conns: [(&MetricDef, Count); 2] = [
            (&CONNS_OPENED, |p| g(&p.opened)),
            (&CONNS_CLOSED, |p| g(&p.closed)),
        ];
        for (def, pick) in conns {
            header(out, def);
            for (p, name) in self.flows.iter().zip(PROTOS) {
                sample(out, def, &[("proto", name)], pick(p));
            }
        }
    }

    fn render_server(&self, out: &mut String) {
        let s = &self.server;
        header(out, &SRV_BATCHES);
        for o in Outcome::ALL {
            sample(out, &SRV_BATCHES, &[("outcome", o.label())], s.batches(o));
        }
        header(out, &SRV_OBSERVATIONS);
        sample(
            out,
            &SRV_OBSERVATIONS,
            &[("kind", "live")],
            g(&s.observations),
        );
        sample(
            out,
            &SRV_OBSERVATIONS,
            &[("kind", "replayed")],
            g(&s.observations_replayed),
        );
        one(out, &SRV_ACKS_DROPPED, g(&s.acks_dropped));
        one(out, &SRV_CHUNKS_HELD, g(&s.chunks_held));
        one(out, &SRV_RECUT_LATE, g(&s.recut_late));
        one(out, &SRV_CONNECTIONS, g(&s.connections));
        if let Some((mode, tls)) = s.auth.get() {
            header(out, &SRV_AUTH_INFO);
            let transport = if *tls { "tls" } else { "plaintext" };
            sample(
                out,
                &SRV_AUTH_INFO,
                &[("mode", mode), ("transport", transport)],
                1,
            );
        }
        one(out, &SRV_RATE_WAITS, g(&s.rate_limited));
        one(out, &SRV_RATE_WAIT_S, g(&s.rate_limited_ns) as f64 / 1e9);
        header(out, &SRV_REFUSED);
        for why in Refusal::ALL {
            sample(
                out,
                &SRV_REFUSED,
                &[("reason", why.label())],
                s.refusals(why),
            );
        }
        header(out, &SRV_ADDR_CLAIMS);
        sample(
            out,
            &SRV_ADDR_CLAIMS,
            &[("state", "disputed")],
            g(&s.address_claims.0),
        );
        sample(
            out,
            &SRV_ADDR_CLAIMS,
            &[("state", "unconfirmed")],
            g(&s.address_claims.1),
        );
        header(out, &SRV_PROBE_ROWS);
        for (o, v) in [
            ("written", &s.probe_rows),
            ("refused", &s.probe_rows_refused),
            ("dropped", &s.probe_rows_dropped),
        ] {
            sample(out, &SRV_PROBE_ROWS, &[("outcome", o)], g(v));
        }
        header(out, &SRV_LAST_SEEN);
        if let Ok(m) = s.last_seen.lock() {
            for (agent, t) in m.iter() {
                sample(out, &SRV_LAST_SEEN, &[("agent", agent)], t);
            }
        }
    }

    fn render_netflow(&self, out: &mut String) {
        let Some((nf, per_exporter)) = self.netflow.get() else {
            return;
        };
        let n = nf.snapshot();
        one(out, &NF_DATAGRAMS, n.datagrams);
        one(out, &NF_BYTES, n.bytes);
        one(out, &NF_RECORDS, n.records);
        one(out, &NF_KERNEL_DROPS, n.kernel_drops);
        one(out, &NF_TRUNCATED, n.truncated);
        one(out, &NF_RECEIVE_ERRORS, n.receive_errors);
        header(out, &NF_DECODE_ERRORS);
        for r in podflow_netflow::ErrorReason::ALL {
            sample(
                out,
                &NF_DECODE_ERRORS,
                &[("reason", r.as_str())],
                n.decode_errors.get(r),
            );
        }
        let mut exporters = nf.exporters();
        exporters.sort_by_key(|(k, _)| (k.exporter, k.domain));
        // Forgotten domains included, so the counters never go backwards.
        let total = nf.totals();
        one(
            out,
            &NF_TEMPLATES,
            total.templates + total.options_templates,
        );
        one(out, &NF_SEQ_LOST, total.sequence_lost);
        one(out, &NF_ENTERPRISE, total.enterprise_fields_skipped);
        one(out, &NF_PENDING_DROPPED, total.pending_sets_dropped);
        one(out, &NF_ALLOW_ALL, u64::from(n.allow_any));
        one(out, &NF_DENIED, n.denied);
        one(out, &NF_TEMPLATES_CACHED, n.templates_cached);
        one(out, &NF_DOMAINS, n.domains_tracked);
        one(out, &NF_TEMPLATES_EXPIRED, total.templates_expired);
        header(out, &NF_TEMPLATES_EVICTED);
        for (reason, v) in [
            ("exporter_limit", total.templates_evicted_exporter_limit),
            ("total_limit", total.templates_evicted_total_limit),
            ("domain_limit", total.templates_evicted_domain_limit),
        ] {
            sample(out, &NF_TEMPLATES_EVICTED, &[("reason", reason)], v);
        }
        header(out, &NF_DOMAINS_FORGOTTEN);
        for (reason, v) in [
            ("idle", total.domains_expired),
            ("limit", total.domains_evicted),
        ] {
            sample(out, &NF_DOMAINS_FORGOTTEN, &[("reason", reason)], v);
        }
        if !*per_exporter {
            return;
        }
        type Pick = fn(&podflow_netflow::Stats) -> u64;
        let families: [(&MetricDef, Pick); 2] = [
            (&NF_EXP_RECORDS, |s| s.records),
            (&NF_EXP_SEQ_LOST, |s| s.sequence_lost),
        ];
        for (def, pick) in families {
            header(out, def);
            for (k, s) in &exporters {
                let (e, d) = (k.exporter.ip().to_string(), k.domain.to_string());
                let labels = [
                    ("exporter", e.as_str()),
                    ("domain", d.as_str()),
                    ("version", version_label(k.version)),
                ];
                sample(out, def, &labels, pick(s));
            }
        }
    }

    fn render_histograms(&self, out: &mut String) {
        if let Ok(h) = self.service_histograms.lock() {
            header(out, &SVC_DURATION);
            h.duration.render(out, SVC_DURATION.name);
            header(out, &SVC_FIRST_REPLY);
            h.first_reply.render(out, SVC_FIRST_REPLY.name);
        }
    }

    fn render_agent(&self, out: &mut String) {
        let Some(a) = self.agent.get() else {
            return;
        };
        one(out, &AG_SENT, g(&a.sent));
        one(out, &AG_ACKED, g(&a.acked));
        one(out, &AG_REJECTED, g(&a.rejected));
        one(out, &AG_BUFFERED, g(&a.buffered));
        header(out, &AG_BUFFERED_BYTES);
        sample(
            out,
            &AG_BUFFERED_BYTES,
            &[("place", "memory")],
            g(&a.buffered_mem_bytes),
        );
        sample(
            out,
            &AG_BUFFERED_BYTES,
            &[("place", "spill")],
            g(&a.buffered_spill_bytes),
        );
        one(out, &AG_DROPPED, g(&a.dropped));
        one(out, &AG_RECONNECTS, g(&a.reconnects));
        one(out, &AG_CONNECTED, g(&a.connected));
        one(out, &AG_RETRIED, g(&a.retried));
        one(out, &AG_RENUMBERED, g(&a.renumbered));
        one(out, &AG_RECOVERED, g(&a.recovered));
        one(out, &AG_DISK_ERRORS, g(&a.disk_errors));
        one(out, &AG_TORN, g(&a.torn));
        one(out, &AG_COMPACTIONS, g(&a.compactions));
        one(out, &AG_CHECKPOINTS, g(&a.checkpoints));
        one(out, &AG_CHECKPOINT_ERRORS, g(&a.checkpoint_errors));
        one(out, &AG_CHECKPOINT_BYTES, g(&a.checkpoint_bytes));
        one(out, &AG_RESTORED, g(&a.restored_connections));
    }

    fn render_workloads(&self, out: &mut String) {
        if let Ok(w) = self.workloads.lock()
            && let Some(w) = w.as_ref()
        {
            one(out, &WL_SERIES, w.len());
            one(out, &WL_FOLDED, w.folded);
            w.render(out, [&WL_BYTES, &WL_CONNS, &WL_COST]);
        }
        if let Ok(s) = self.service_zones.lock()
            && let Some(s) = s.as_ref()
        {
            one(out, &SVC_ZONE_SERIES, s.len());
            s.render(out, [&SVC_CROSS_ZONE, &SVC_AVOIDABLE, &SVC_AVOIDABLE_COST]);
        }
    }
}

impl podflow_api::Exposition for Registry {
    fn metrics(&self) -> String {
        self.render()
    }

    fn ready(&self) -> Result<(), String> {
        self.health.ready()
    }
}

/// The HTTP API's counters (process-wide, [`podflow_api::STATS`]).
fn render_http(out: &mut String) {
    let s = &podflow_api::STATS;
    header(out, &HTTP_REJECTED);
    for (reason, v) in [
        ("unauthorized", &s.unauthorized),
        ("busy", &s.busy),
        ("timeout", &s.timed_out),
        ("wal", &s.wal_paused),
        ("probe_rate", &s.probe_rate_limited),
    ] {
        sample(out, &HTTP_REJECTED, &[("reason", reason)], v.load(Relaxed));
    }
    one(out, &HTTP_STORE_ERRORS, s.store_errors.load(Relaxed));
    one(out, &HTTP_WAL_BYTES, s.wal_bytes.load(Relaxed));
    let listeners = [
        ("http", &crate::tls::HTTP_RELOADS),
        ("grpc", &crate::tls::GRPC_RELOADS),
    ];
    header(out, &TLS_RELOADS);
    for (l, s) in listeners {
        sample(
            out,
            &TLS_RELOADS,
            &[("listener", l)],
            s.reloads.load(Relaxed),
        );
    }
    header(out, &TLS_RELOAD_ERRORS);
    for (l, s) in listeners {
        sample(
            out,
            &TLS_RELOAD_ERRORS,
            &[("listener", l)],
            s.errors.load(Relaxed),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rendered_family_is_defined_once_and_counters_end_in_total() {
        let t = Registry::default();
        t.add_flow(
            Protocol::TCP,
            &FlowTotals {
                bytes_out: 5,
                bytes_in: 7,
                ..Default::default()
            },
        );
        let text = t.render();
        assert!(text.contains("podflow_flow_bytes_total{proto=\"tcp\",direction=\"out\"} 5"));
        assert!(text.contains("podflow_flow_bytes_total{proto=\"tcp\",direction=\"in\"} 7"));
        let mut names: Vec<_> = METRICS.iter().map(|m| m.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), METRICS.len());
        for m in METRICS {
            assert_eq!(
                m.kind == "counter",
                m.name.ends_with("_total"),
                "{}",
                m.name
            );
        }
    }
}

#[cfg(test)]
mod docs {
    /// The reference table of docs/metrics.md, rendered from [`super::METRICS`].
    fn table() -> String {
        let mut out = String::from("| metric | type | labels | meaning |\n|---|---|---|---|\n");
        for m in super::METRICS {
            let labels = if m.labels.is_empty() {
                "—".to_string()
            } else {
                m.labels.join(", ")
            };
            out.push_str(&format!(
                "| `{}` | {} | {} | {} |\n",
                m.name, m.kind, labels, m.help
            ));
        }
        out
    }

    /// docs/metrics.md's table is exactly the metrics defined here (`UPDATE_DOCS=1 cargo
    /// test -p podflow-role docs` rewrites it).
    #[test]
    fn every_metric_is_documented() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/metrics.md");
        let doc = std::fs::read_to_string(path).expect("docs/metrics.md");
        let start = doc.find("| metric | type |").expect("the table's header");
        let end = doc[start..]
            .find("\n\n")
            .map_or(doc.len(), |e| start + e + 1);
        let want = table();
        if std::env::var_os("UPDATE_DOCS").is_some() {
            let new = format!("{}{}{}", &doc[..start], want, &doc[end..]);
            std::fs::write(path, new).expect("write docs/metrics.md");
            return;
        }
        assert!(
            doc[start..end] == want,
            "docs/metrics.md's table and METRICS differ: run UPDATE_DOCS=1 cargo test -p podflow-role docs"
        );
    }
}
