#!/usr/bin/env python3
"""Writes deploy/prometheus/tests/*.yaml, the promtool unit tests of the alert rules.

Each case's input series, evaluation time, expected labels and expected value are
written here by hand; the expected annotations are the rules file's own templates filled
with those labels and that value (Prometheus's humanize functions re-implemented below),
so a reworded annotation needs no hand edit of the tests. promtool then checks that the
alerts really fire with exactly those labels, values and texts:

    python3 deploy/tests/rule_tests.py && (cd deploy/prometheus/tests && promtool test rules *.yaml)
"""
import os, re

import yaml

DEPLOY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RULES = yaml.safe_load(open(os.path.join(DEPLOY, 'prometheus', 'podflow-rules.yaml')))
ANN = {r['alert']: r for r in RULES['groups'][0]['rules']}
OUT = os.path.join(DEPLOY, 'prometheus', 'tests')

def g4(v):
    s = '%.4g' % v
    return s
def humanize(v):
    if abs(v) >= 1:
        p = ''
        for x in ['k','M','G','T','P','E','Z','Y']:
            if abs(v) < 1000: break
            p = x; v /= 1000
        return g4(v) + p
    if v == 0: return g4(v)
    p = ''
    for x in ['m','u','n','p','f','a','z','y']:
        if abs(v) >= 1: break
        p = x; v *= 1000
    return g4(v) + p
def humanize1024(v):
    if abs(v) <= 1: return g4(v)
    p = ''
    for x in ['ki','Mi','Gi','Ti','Pi','Ei','Zi','Yi']:
        if abs(v) < 1024: break
        p = x; v /= 1024
    return g4(v) + p
def humanizePercentage(v): return g4(v*100) + '%'
def humanizeDuration(v):
    d = int(v); s = d % 60; m = (d//60) % 60; h = (d//3600) % 24; days = d//86400
    if days: return f'{days}d {h}h {m}m {s}s'
    if h: return f'{h}h {m}m {s}s'
    if m: return f'{m}m {s}s'
    return g4(v) + 's'
FN = dict(humanize=humanize, humanize1024=humanize1024, humanizePercentage=humanizePercentage, humanizeDuration=humanizeDuration)

def fill(t, labels, value):
    def rep(m):
        e = m.group(1).strip()
        if e.startswith('$labels.'): return labels[e[len('$labels.'):]]
        if e == '$value': return g4(value)
        mm = re.match(r'\$value \| (\w+)$', e)
        if mm: return FN[mm.group(1)](value)
        raise ValueError(e)
    return re.sub(r'\{\{(.*?)\}\}', rep, t)

def exp(alert, labels, value=None):
    r = ANN[alert]
    l = dict(labels); l['severity'] = r['labels']['severity']
    return {'exp_labels': l, 'exp_annotations': {k: fill(v, labels, value) for k, v in r['annotations'].items()}}

def case(name, series, alert, at, fires=None):
    """fires: list of (labels, value) expected; [] = quiet."""
    return {'name': name, 'interval': '1m', 'input_series': [{'series': s, 'values': v} for s, v in series],
            'alert_rule_test': [{'eval_time': at, 'alertname': alert,
                                 'exp_alerts': [exp(alert, l, v) for l, v in (fires or [])]}]}

A = 'instance="10.0.0.1:9469",node="node-a"'
AL = {'instance': '10.0.0.1:9469', 'node': 'node-a'}
S = 'instance="10.1.0.5:9469"'
SL = {'instance': '10.1.0.5:9469'}
MiB = 1048576

def counter_burst(metric):  # 0 for 10 minutes, then 5 more: increase[10m] at 15m is 5
    return (metric, '0x10 5x9')

files = {}
files['agents.yaml'] = [
    case('an agent stops reporting: fires for it alone',
         [('podflow_server_agent_last_seen_timestamp_seconds{agent="node-a",instance="10.1.0.5:9469"}', '60x30'),
          ('podflow_server_agent_last_seen_timestamp_seconds{agent="node-b",instance="10.1.0.5:9469"}', '0+60x30')],
         'PodflowAgentNotReporting', '15m', [({'agent': 'node-a'}, 840)]),
    case('agents report every minute: quiet',
         [('podflow_server_agent_last_seen_timestamp_seconds{agent="node-b",instance="10.1.0.5:9469"}', '0+60x30')],
         'PodflowAgentNotReporting', '15m', []),
    case('disconnected for 15 minutes: fires',
         [(f'podflow_agent_connected{{{A}}}', '0x20')], 'PodflowAgentDisconnected', '15m', [(AL, None)]),
    case('disconnected for 5 minutes (a server restart): quiet',
         [(f'podflow_agent_connected{{{A}}}', '1x10 0x10')], 'PodflowAgentDisconnected', '15m', []),
    case('no server series: fires',
         [('up{job="something-else"}', '1x20')], 'PodflowServerAbsent', '15m', [({}, None)]),
    case('a server is scraped: quiet',
         [(f'podflow_server_agent_connections{{{S}}}', '3x20')], 'PodflowServerAbsent', '15m', []),
    case('an agent drops batches: fires',
         [counter_burst(f'podflow_agent_batches_dropped_total{{{A}}}')], 'PodflowAgentBatchesDropped', '15m', [(AL, 5)]),
    case('no batch dropped: quiet',
         [(f'podflow_agent_batches_dropped_total{{{A}}}', '3x20')], 'PodflowAgentBatchesDropped', '15m', []),
    case('the server rejects batches: fires',
         [counter_burst(f'podflow_server_batches_total{{outcome="rejected",{S}}}'),
          (f'podflow_server_batches_total{{outcome="applied",{S}}}', '0+100x20')],
         'PodflowBatchesRejected', '15m', [(dict(SL, outcome='rejected'), 5)]),
    case('batches applied, none rejected: quiet',
         [(f'podflow_server_batches_total{{outcome="rejected",{S}}}', '2x20'),
          (f'podflow_server_batches_total{{outcome="applied",{S}}}', '0+100x20')],
         'PodflowBatchesRejected', '15m', []),
]
files['conntrack.yaml'] = [
    case('connections vanish after an overflow: fires',
         [counter_burst(f'podflow_conntrack_vanished_total{{{A}}}')], 'PodflowConntrackEventsLost', '15m', [(AL, 5)]),
    case('overflows recovered by the dump, nothing vanished: quiet',
         [(f'podflow_conntrack_event_overflows_total{{{A}}}', '0+1x20'), (f'podflow_conntrack_vanished_total{{{A}}}', '0x20')],
         'PodflowConntrackEventsLost', '15m', []),
    case('accounting off for 20 minutes: fires',
         [(f'podflow_conntrack_accounting_enabled{{{A}}}', '0x30')], 'PodflowConntrackAccountingOff', '20m', [(AL, None)]),
    case('accounting on: quiet',
         [(f'podflow_conntrack_accounting_enabled{{{A}}}', '1x30')], 'PodflowConntrackAccountingOff', '20m', []),
    case('table 92% full: fires',
         [(f'podflow_conntrack_table_entries{{{A}}}', '240000x20'), (f'podflow_conntrack_table_max{{{A}}}', '262144x20')],
         'PodflowConntrackTableNearlyFull', '15m', [(AL, 240000 / 262144)]),
    case('table 38% full: quiet',
         [(f'podflow_conntrack_table_entries{{{A}}}', '100000x20'), (f'podflow_conntrack_table_max{{{A}}}', '262144x20')],
         'PodflowConntrackTableNearlyFull', '15m', []),
    case('flow keys over the limit for 25 minutes: fires',
         [(f'podflow_aggregator_overflow_observations_total{{{S}}}', '0+100x30')], 'PodflowKeyLimitReached', '25m', [(SL, None)]),
    case('the overflow stopped 20 minutes ago: quiet',
         [(f'podflow_aggregator_overflow_observations_total{{{S}}}', '0+100x5 500x25')], 'PodflowKeyLimitReached', '25m', []),
    case('the kernel drops NetFlow datagrams: fires',
         [counter_burst(f'podflow_netflow_kernel_drops_total{{{S}}}')], 'PodflowNetflowDatagramsDropped', '15m', [(SL, 5)]),
    case('datagrams received, none dropped: quiet',
         [(f'podflow_netflow_kernel_drops_total{{{S}}}', '0x20'), (f'podflow_netflow_datagrams_total{{{S}}}', '0+1000x20')],
         'PodflowNetflowDatagramsDropped', '15m', []),
]
files['store.yaml'] = [
    case('store writes fail for 10 minutes: fires',
         [(f'podflow_store_write_errors_total{{{S}}}', '0+1x20')], 'PodflowStoreWriteErrors', '15m', [(SL, None)]),
    case('one failed write 15 minutes ago: quiet',
         [(f'podflow_store_write_errors_total{{{S}}}', '0 1x20')], 'PodflowStoreWriteErrors', '20m', []),
    case('5000 rows pending for 15 minutes: fires',
         [(f'podflow_store_rows_pending{{{S}}}', '5000x30')], 'PodflowStoreBacklog', '15m', [(SL, 5000)]),
    case('the backlog drained: quiet',
         [(f'podflow_store_rows_pending{{{S}}}', '5000x5 0x25')], 'PodflowStoreBacklog', '15m', []),
    case('busy for 10 minutes: fires',
         [(f'podflow_server_batches_total{{outcome="busy",{S}}}', '0+1x30')], 'PodflowServerBusy', '25m', [(SL, 10)]),
    case('a busy burst that ended: quiet',
         [(f'podflow_server_batches_total{{outcome="busy",{S}}}', '0+1x5 5x25')], 'PodflowServerBusy', '25m', []),
]

def ramp(first_slope_per_min, first_minutes, second_slope_per_min, second_minutes):
    end = first_slope_per_min * first_minutes
    return f'0+{first_slope_per_min}x{first_minutes} {end + second_slope_per_min}+{second_slope_per_min}x{second_minutes - 1}'

W = 'src_namespace="shop",src_workload="web",dst_namespace="shop",dst_workload="db"'
files['traffic.yaml'] = [
    case('cross-zone traffic 4x the same hour yesterday: fires',
         [(f'podflow_workload_bytes_total{{class="INTER_ZONE",{W}}}', ramp(60 * MiB, 1440, 240 * MiB, 120))],
         'PodflowCrossZoneTrafficAboveBaseline', '1530m', [({}, 4 * MiB)]),
    case('cross-zone traffic as yesterday: quiet',
         [(f'podflow_workload_bytes_total{{class="INTER_ZONE",{W}}}', f'0+{60 * MiB}x1560')],
         'PodflowCrossZoneTrafficAboveBaseline', '1530m', []),
    case('cross-zone traffic 4x yesterday but under the 1 MiB/s floor: quiet',
         [(f'podflow_workload_bytes_total{{class="INTER_ZONE",{W}}}', ramp(6 * MiB, 1440, 24 * MiB, 120))],
         'PodflowCrossZoneTrafficAboveBaseline', '1530m', []),
    case('traffic cost 4x the same hour yesterday: fires',
         [(f'podflow_workload_cost_usd_total{{class="PUBLIC_INTERNET",{W}}}', ramp(1, 1440, 4, 120))],
         'PodflowTrafficCostAboveBaseline', '1530m', [({}, 240)]),
    case('traffic cost as yesterday: quiet',
         [(f'podflow_workload_cost_usd_total{{class="PUBLIC_INTERNET",{W}}}', '0+4x1560')],
         'PodflowTrafficCostAboveBaseline', '1530m', []),
    case('internet traffic 8x its 6-hour average: fires',
         [(f'podflow_workload_bytes_total{{class="PUBLIC_INTERNET",{W}}}', ramp(60 * MiB, 420, 480 * MiB, 40))],
         'PodflowInternetTrafficSpike', '445m', [({}, 8 * MiB)]),
    case('steady internet traffic: quiet',
         [(f'podflow_workload_bytes_total{{class="PUBLIC_INTERNET",{W}}}', f'0+{480 * MiB}x460')],
         'PodflowInternetTrafficSpike', '445m', []),
]

def probe(t, result, src, dst, values, inst='10.0.0.1:9469'):
    return (f'podflow_probe_results_total{{type="{t}",result="{result}",src_zone="{src}",dst_zone="{dst}",instance="{inst}"}}', values)

files['probes.yaml'] = [
    case('half the TCP probes from zone a to zone b fail: fires (and not for a -> a)',
         [probe('tcp', 'ok', 'a', 'b', '0+10x20'), probe('tcp', 'timeout', 'a', 'b', '0+10x20'),
          probe('tcp', 'ok', 'a', 'a', '0+10x20'), probe('tcp', 'timeout', 'a', 'a', '0+10x20'),
          probe('tcp', 'ok', 'b', 'a', '0+10x20', '10.0.0.2:9469'), probe('tcp', 'timeout', 'b', 'a', '0x20', '10.0.0.2:9469')],
         'PodflowProbeInterZoneFailures', '15m', [({'src_zone': 'a', 'dst_zone': 'b'}, 0.5)]),
    case('TCP failures inside one zone only: quiet',
         [probe('tcp', 'ok', 'a', 'a', '0+10x20'), probe('tcp', 'timeout', 'a', 'a', '0+10x20'),
          probe('tcp', 'ok', 'a', 'b', '0+10x20')],
         'PodflowProbeInterZoneFailures', '15m', []),
    case('10% of UDP probe packets lost from a to b: fires',
         [('podflow_probe_packets_sent_total{src_zone="a",dst_zone="b",instance="10.0.0.1:9469"}', '0+10x20'),
          ('podflow_probe_packets_lost_total{src_zone="a",dst_zone="b",instance="10.0.0.1:9469"}', '0+1x20')],
         'PodflowProbeLossHigh', '15m', [({'src_zone': 'a', 'dst_zone': 'b'}, 0.1)]),
    case('no UDP probe packet lost: quiet',
         [('podflow_probe_packets_sent_total{src_zone="a",dst_zone="b",instance="10.0.0.1:9469"}', '0+10x20'),
          ('podflow_probe_packets_lost_total{src_zone="a",dst_zone="b",instance="10.0.0.1:9469"}', '0x20')],
         'PodflowProbeLossHigh', '15m', []),
    case('probes from a to b stop: fires for that pair alone',
         [probe('tcp', 'ok', 'a', 'b', '0+10x30 _x40'), probe('tcp', 'ok', 'b', 'a', '0+10x70', '10.0.0.2:9469')],
         'PodflowProbePairSilent', '55m', [({'src_zone': 'a', 'dst_zone': 'b'}, None)]),
    case('probes keep coming: quiet',
         [probe('tcp', 'ok', 'a', 'b', '0+10x70'), probe('tcp', 'ok', 'b', 'a', '0+10x70', '10.0.0.2:9469')],
         'PodflowProbePairSilent', '55m', []),
    case('10% of DNS probes fail in zone a: fires',
         [probe('dns', 'ok', 'a', '', '0+9x20'), probe('dns', 'nxdomain', 'a', '', '0+1x20'),
          probe('dns', 'ok', 'b', '', '0+10x20', '10.0.0.2:9469')],
         'PodflowProbeDnsFailures', '15m', [({'src_zone': 'a'}, 0.1)]),
    case('DNS probes answer: quiet',
         [probe('dns', 'ok', 'a', '', '0+10x20')],
         'PodflowProbeDnsFailures', '15m', []),
]

class D(yaml.SafeDumper): pass
os.makedirs(OUT, exist_ok=True)
for name, tests in files.items():
    doc = {'rule_files': ['../podflow-rules.yaml'], 'evaluation_interval': '1m', 'tests': tests}
    with open(os.path.join(OUT, name), 'w') as f:
        f.write(f'# promtool test rules: every alert of ../podflow-rules.yaml once firing, once quiet.\n'
                f'# Written by deploy/tests/rule_tests.py (edit the cases there). Run: promtool test rules *.yaml\n')
        yaml.dump(doc, f, Dumper=D, sort_keys=False, width=120)
covered = {t['alert_rule_test'][0]['alertname'] for ts in files.values() for t in ts}
missing = set(ANN) - covered
if missing:
    raise SystemExit(f'alerts without tests: {sorted(missing)}')
print('wrote', ', '.join(files))
