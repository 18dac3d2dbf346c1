{{/*
The alert rules, tuned by prometheusRule.rules.<name>.{enabled,threshold,for,severity}.
deploy/prometheus/podflow-rules.yaml is this list rendered with the defaults (a test
renders the chart and compares), and deploy/prometheus/tests/ tests each alert.
Expressions name no job or namespace, so the same rules work with any scrape config.
*/}}

{{- define "podflow.rules.for" -}}
{{- if and .for (not (has (toString .for) (list "0" "0s" "0m"))) }}
for: {{ .for }}
{{- end }}
{{- end }}

{{- define "podflow.rules" -}}
{{- $r := .Values.prometheusRule.rules }}
{{- with $r.agentNotReporting }}{{ if .enabled }}
- alert: PodflowAgentNotReporting
  expr: (time() - max by (agent) (podflow_server_agent_last_seen_timestamp_seconds)) > {{ .threshold }}
  {{- include "podflow.rules.for" . | nindent 2 }}
  labels:
    severity: {{ .severity }}
  annotations:
    summary: podflow agent {{`{{ $labels.agent }}`}} has not reported for {{`{{ $value | humanizeDuration }}`}}
    description: >-
      No server has received a batch from agent {{`{{ $labels.agent }}`}} for more than
      {{ .threshold }} seconds. Its node's traffic is not being recorded (the agent buffers
      what it can: memory, then its spill file). A node that was removed keeps this alert
      until the server stops exporting the agent's series.
{{- end }}{{ end }}
{{- with $r.agentDisconnected }}{{ if .enabled }}
- alert: PodflowAgentDisconnected
  expr: podflow_agent_connected == 0
  {{- include "podflow.rules.for" . | nindent 2 }}
  labels:
    severity: {{ .severity }}
  annotations:
    summary: podflow agent {{`{{ $labels.instance }}`}} has no stream to the server
    description: >-
      The agent runs but cannot reach a server; it keeps its batches (memory, then the
      spill file) and drops the oldest, counted, once both are full. Check the server's
      readiness, the agents' server URL, TLS and authentication (the agent's log says why).
{{- end }}{{ end }}
{{- with $r.serverAbsent }}{{ if .enabled }}
- alert: PodflowServerAbsent
  expr: absent(podflow_server_agent_connections)
  {{- include "podflow.rules.for" . | nindent 2 }}
  labels:
    severity: {{ .severity }}
  annotations:
    summary: no podflow server is scraped
    description: >-
      Prometheus has no podflow_server_agent_connections series: the server is down, or
      not scraped (ServiceMonitor, scrape config). Agents are buffering.
{{- end }}{{ end }}
{{- with $r.agentBatchesDropped }}{{ if .enabled }}
- alert: PodflowAgentBatchesDropped
  expr: increase(podflow_agent_batches_dropped_total[10m]) > {{ .threshold }}
  {{- include "podflow.rules.for" . | nindent 2 }}
  labels:
    severity: {{ .severity }}
  annotations:
    summary: podflow agent {{`{{ $labels.instance }}`}} dropped {{`{{ $value | humanize }}`}} batches in 10 minutes
    description: >-
      The agent's buffer (memory and spill file) was full: the oldest unacknowledged
      batches were dropped and their traffic is lost. The server has been unreachable or
      too slow for long; raise agent.bufferSpillBytes to ride out longer outages.
{{- end }}{{ end }}
{{- with $r.batchesRejected }}{{ if .enabled }}
- alert: PodflowBatchesRejected
  expr: increase(podflow_server_batches_total{outcome="rejected"}[10m]) > {{ .threshold }}
  {{- include "podflow.rules.for" . | nindent 2 }}
  labels:
    severity: {{ .severity }}
  annotations:
    summary: podflow server {{`{{ $labels.instance }}`}} rejected {{`{{ $value | humanize }}`}} batches in 10 minutes
    description: >-
      The server refused batches as invalid (an agent's identity did not match its node,
      or a malformed batch); their observations are dropped. The server's log names the
      agent and the reason.
{{- end }}{{ end }}
{{- with $r.conntrackEventsLost }}{{ if .enabled }}
- alert: PodflowConntrackEventsLost
  expr: increase(podflow_conntrack_vanished_total[10m]) > {{ .threshold }}
  {{- include "podflow.rules.for" . | nindent 2 }}
  labels:
    severity: {{ .severity }}
  annotations:
    summary: podflow lost the last bytes of {{`{{ $value | humanize }}`}} connections on {{`{{ $labels.instance }}`}}
    description: >-
      The conntrack event socket overflowed and connections closed without their DESTROY
      event: the bytes after their last dump are lost. Raise agent.eventBufferBytes, and
      keep the agent unthrottled (no CPU limit).
{{- end }}{{ end }}
{{- with $r.keyLimitReached }}{{ if .enabled }}
- alert: PodflowKeyLimitReached
  expr: increase(podflow_aggregator_overflow_observations_total[10m]) > {{ .threshold }}
  {{- include "podflow.rules.for" . | nindent 2 }}
  labels:
    severity: {{ .severity }}
  annotations:
    summary: podflow on {{`{{ $labels.instance }}`}} is summing traffic into overflow rows
    description: >-
      More distinct flow keys per interval than --max-keys: the excess is counted in a
      per-protocol overflow row, without attribution. Totals stay exact; detail is lost.
{{- end }}{{ end }}
{{- with $r.storeWriteErrors }}{{ if .enabled }}
- alert: PodflowStoreWriteErrors
  expr: increase(podflow_store_write_errors_total[10m]) > {{ .threshold }}
  {{- include "podflow.rules.for" . | nindent 2 }}
  labels:
    severity: {{ .severity }}
  annotations:
    summary: podflow server {{`{{ $labels.instance }}`}} fails to write its store
    description: >-
      Store writes fail and are retried (the server withholds acks meanwhile, so agents
      buffer). The embedded store's volume may be full, or ClickHouse unreachable.
{{- end }}{{ end }}
{{- with $r.storeBacklog }}{{ if .enabled }}
- alert: PodflowStoreBacklog
  expr: podflow_store_rows_pending > {{ .threshold }}
  {{- include "podflow.rules.for" . | nindent 2 }}
  labels:
    severity: {{ .severity }}
  annotations:
    summary: podflow server {{`{{ $labels.instance }}`}} has {{`{{ $value | humanize }}`}} rows waiting to be written
    description: >-
      Rows wait for the store after failed writes; beyond 1,000,000 the server asks agents
      to pause and they keep their batches (PodflowServerBusy).
{{- end }}{{ end }}
{{- with $r.serverBusy }}{{ if .enabled }}
- alert: PodflowServerBusy
  expr: sum by (instance) (increase(podflow_server_batches_total{outcome="busy"}[10m])) > {{ .threshold }}
  {{- include "podflow.rules.for" . | nindent 2 }}
  labels:
    severity: {{ .severity }}
  annotations:
    summary: podflow server {{`{{ $labels.instance }}`}} asked agents to pause {{`{{ $value | humanize }}`}} times in 10 minutes
    description: >-
      Its write backlog is full (the store is slow or failing): agents keep their batches
      and send them again; if this lasts, their buffers fill and drop the oldest
      (podflow_agent_batches_dropped_total).
{{- end }}{{ end }}
{{- with $r.netflowDatagramsDropped }}{{ if .enabled }}
- alert: PodflowNetflowDatagramsDropped
  expr: increase(podflow_netflow_kernel_drops_total[10m]) > {{ .threshold }}
  {{- include "podflow.rules.for" . | nindent 2 }}
  labels:
    severity: {{ .severity }}
  annotations:
    summary: the kernel dropped {{`{{ $value | humanize }}`}} NetFlow datagrams for {{`{{ $labels.instance }}`}} in 10 minutes
    description: >-
      The NetFlow listener's receive buffer was full: those records are lost. The
      collector is short of CPU (no CPU limit, more CPU request) or exporters send in bursts.
{{- end }}{{ end }}
{{- with $r.conntrackAccountingOff }}{{ if .enabled }}
- alert: PodflowConntrackAccountingOff
  expr: podflow_conntrack_accounting_enabled == 0
  {{- include "podflow.rules.for" . | nindent 2 }}
  labels:
    severity: {{ .severity }}
  annotations:
    summary: conntrack accounting is off on {{`{{ $labels.instance }}`}}
    description: >-
      net.netfilter.nf_conntrack_acct is 0: podflow sees connections but no bytes on this
      node. Set it in the node image (sysctl.d) or enable agent.sysctlInit; connections
      opened before it is on carry no counters.
{{- end }}{{ end }}
{{- with $r.conntrackTableNearlyFull }}{{ if .enabled }}
- alert: PodflowConntrackTableNearlyFull
  expr: podflow_conntrack_table_entries / podflow_conntrack_table_max > {{ .threshold }}
  {{- include "podflow.rules.for" . | nindent 2 }}
  labels:
    severity: {{ .severity }}
  annotations:
    summary: conntrack table on {{`{{ $labels.instance }}`}} is {{`{{ $value | humanizePercentage }}`}} full
    description: >-
      When the table is full the kernel drops new connections ("nf_conntrack: table full,
      dropping packet") for every workload on the node, not only podflow's view of them.
      Raise net.netfilter.nf_conntrack_max or find what opens so many connections.
{{- end }}{{ end }}
{{- with $r.crossZoneAboveBaseline }}{{ if .enabled }}
- alert: PodflowCrossZoneTrafficAboveBaseline
  expr: |-
    sum(rate(podflow_workload_bytes_total{class="INTER_ZONE"}[1h]))
      > {{ .threshold }} * sum(rate(podflow_workload_bytes_total{class="INTER_ZONE"}[1h] offset 1d))
    and
    sum(rate(podflow_workload_bytes_total{class="INTER_ZONE"}[1h])) > {{ int64 .minBytesPerSecond }}
  {{- include "podflow.rules.for" . | nindent 2 }}
  labels:
    severity: {{ .severity }}
  annotations:
    summary: cross-zone traffic is {{`{{ $value | humanize1024 }}`}}B/s, over {{ .threshold }}× the same hour yesterday
    description: >-
      Bytes between zones (billed both ways on most clouds) over the last hour are above
      {{ .threshold }} times the same hour a day earlier. The overview dashboard's top
      workload pairs show who.
{{- end }}{{ end }}
{{- with $r.costAboveBaseline }}{{ if .enabled }}
- alert: PodflowTrafficCostAboveBaseline
  expr: |-
    sum(rate(podflow_workload_cost_usd_total[1h])) * 3600
      > {{ .threshold }} * sum(rate(podflow_workload_cost_usd_total[1h] offset 1d)) * 3600
    and
    sum(rate(podflow_workload_cost_usd_total[1h])) * 3600 > {{ .minUsdPerHour }}
  {{- include "podflow.rules.for" . | nindent 2 }}
  labels:
    severity: {{ .severity }}
  annotations:
    summary: network traffic costs {{`{{ $value | humanize }}`}} USD/h, over {{ .threshold }}× the same hour yesterday
    description: >-
      The price of the last hour's traffic (every class, at the price table's rates) is
      above {{ .threshold }} times the same hour a day earlier.
{{- end }}{{ end }}
{{- with $r.internetTrafficSpike }}{{ if .enabled }}
- alert: PodflowInternetTrafficSpike
  expr: |-
    sum(rate(podflow_workload_bytes_total{class="PUBLIC_INTERNET"}[10m]))
      > {{ .threshold }} * sum(rate(podflow_workload_bytes_total{class="PUBLIC_INTERNET"}[6h] offset 10m))
    and
    sum(rate(podflow_workload_bytes_total{class="PUBLIC_INTERNET"}[10m])) > {{ int64 .minBytesPerSecond }}
  {{- include "podflow.rules.for" . | nindent 2 }}
  labels:
    severity: {{ .severity }}
  annotations:
    summary: internet traffic is {{`{{ $value | humanize1024 }}`}}B/s, over {{ .threshold }}× its 6-hour average
    description: >-
      Bytes of connections with an end on the public internet (both directions) over the
      last 10 minutes are above {{ .threshold }} times their average over the 6 hours
      before.
{{- end }}{{ end }}
{{- with $r.probeInterZoneFailures }}{{ if .enabled }}
- alert: PodflowProbeInterZoneFailures
  expr: |-
    (
      sum by (src_zone, dst_zone) (rate(podflow_probe_results_total{type="tcp",result!="ok"}[5m]))
      /
      sum by (src_zone, dst_zone) (rate(podflow_probe_results_total{type="tcp"}[5m]))
    ) > {{ .threshold }}
    unless on (src_zone, dst_zone)
    label_replace(max by (src_zone) (podflow_probe_results_total{type="tcp"}), "dst_zone", "$1", "src_zone", "(.*)")
  {{- include "podflow.rules.for" . | nindent 2 }}
  labels:
    severity: {{ .severity }}
  annotations:
    summary: "{{`{{ $value | humanizePercentage }}`}} of TCP probes fail from zone {{`{{ $labels.src_zone }}`}} to zone {{`{{ $labels.dst_zone }}`}}"
    description: >-
      Agents in one zone cannot open TCP connections to agents in another: a network
      partition or a firewall between zones. Same-zone pairs are left out (the unless
      clause).
{{- end }}{{ end }}
{{- with $r.probeLossHigh }}{{ if .enabled }}
- alert: PodflowProbeLossHigh
  expr: |-
    sum by (src_zone, dst_zone) (rate(podflow_probe_packets_lost_total[5m]))
      / sum by (src_zone, dst_zone) (rate(podflow_probe_packets_sent_total[5m]))
      > {{ .threshold }}
  {{- include "podflow.rules.for" . | nindent 2 }}
  labels:
    severity: {{ .severity }}
  annotations:
    summary: "{{`{{ $value | humanizePercentage }}`}} of UDP probe packets lost from zone {{`{{ $labels.src_zone }}`}} to zone {{`{{ $labels.dst_zone }}`}}"
    description: Probe packets between agents of these zones are lost above the threshold.
{{- end }}{{ end }}
{{- with $r.probePairSilent }}{{ if .enabled }}
- alert: PodflowProbePairSilent
  expr: |-
    sum by (src_zone, dst_zone) (increase(podflow_probe_results_total[1h])) > 0
    unless on (src_zone, dst_zone)
    sum by (src_zone, dst_zone) (increase(podflow_probe_results_total[10m])) > 0
  {{- include "podflow.rules.for" . | nindent 2 }}
  labels:
    severity: {{ .severity }}
  annotations:
    summary: "no probe results from zone {{`{{ $labels.src_zone }}`}} to zone {{`{{ $labels.dst_zone }}`}} for 10 minutes"
    description: >-
      This zone pair was probed during the last hour and has reported nothing since: the
      probing agents are gone, or probes stopped. The alert clears an hour after the last
      result.
{{- end }}{{ end }}
{{- with $r.probeDnsFailures }}{{ if .enabled }}
- alert: PodflowProbeDnsFailures
  expr: |-
    sum by (src_zone) (rate(podflow_probe_results_total{type="dns",result!="ok"}[5m]))
      / sum by (src_zone) (rate(podflow_probe_results_total{type="dns"}[5m]))
      > {{ .threshold }}
  {{- include "podflow.rules.for" . | nindent 2 }}
  labels:
    severity: {{ .severity }}
  annotations:
    summary: "{{`{{ $value | humanizePercentage }}`}} of DNS probes fail in zone {{`{{ $labels.src_zone }}`}}"
    description: Name lookups from agents in this zone fail above the threshold.
{{- end }}{{ end }}
{{- end }}
