#!/usr/bin/env python3
"""Checks of the Grafana dashboards deploy/grafana/*.json, run by
crates/podflow/tests/deploy.rs.

    dashboards.py check          structure: JSON, variables, panels, targets, datasources
    dashboards.py promql         every PromQL expression parses (promtool check rules)
    dashboards.py sdk            each dashboard survives a round trip through
                                 grafana-foundation-sdk's Dashboard model (PyPI), when it is installed
    dashboards.py query PROM_URL RANGE
                                 asks a Prometheus for every expression (variables
                                 substituted, $__range = RANGE) and prints one JSON line per
                                 expression: dashboard, panel, expression, series count

Variables are substituted as a dashboard with every variable on "All" would:
custom variables -> .*, $__rate_interval -> 1m, $__interval -> 30s, $__range -> 5m.
"""

import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
GRAFANA = os.path.join(os.path.dirname(HERE), "grafana")
NODEGRAPH = "hamedkarbasi93-nodegraphapi-datasource"
NODEGRAPH_QUERY = "from=$__from&to=$__to"
BUILTIN = {"__rate_interval": "1m", "__interval": "30s", "__range": "5m"}

failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL " + msg, file=sys.stderr)


def dashboards():
    for path in sorted(glob.glob(os.path.join(GRAFANA, "*.json"))):
        with open(path) as f:
            try:
                yield os.path.basename(path), json.load(f)
            except json.JSONDecodeError as e:
                fail(f"{os.path.basename(path)}: not JSON: {e}")


def panels(dash):
    for p in dash.get("panels", []):
        yield p
        yield from p.get("panels", [])  # inside collapsed rows


def variables(dash):
    return {v["name"]: v for v in dash.get("templating", {}).get("list", [])}


def substitute(expr, dash, builtin=BUILTIN):
    names = variables(dash)

    def rep(m):
        name = m.group(1) or m.group(2)
        if name in builtin:
            return builtin[name]
        if name in names:
            return ".*"
        raise KeyError(name)

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", rep, expr)


def expressions(dash):
    """(panel title, refId, expr) for every Prometheus target."""
    for p in panels(dash):
        for t in p.get("targets", []):
            if "expr" in t:
                yield p.get("title", ""), t.get("refId", ""), t["expr"]


def cmd_check():
    uids = {}
    names = []
    for name, dash in dashboards():
        names.append(name)
        where = name
        for key in ("uid", "title", "panels", "templating", "schemaVersion", "time"):
            if key not in dash:
                fail(f"{where}: no {key}")
        if dash.get("uid") in uids:
            fail(f"{where}: uid {dash.get('uid')} also in {uids[dash['uid']]}")
        uids[dash.get("uid")] = name
        if "podflow" not in dash.get("tags", []):
            fail(f"{where}: not tagged podflow (the dashboards link to each other by tag)")
        vars_ = variables(dash)
        ds = vars_.get("datasource")
        if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
            fail(f"{where}: no `datasource` variable of type datasource, query prometheus")
        ids = set()
        for p in panels(dash):
            title = p.get("title", "?")
            pw = f"{where}: panel {title!r}"
            if p.get("type") == "row":
                continue
            if p.get("id") in ids:
                fail(f"{pw}: duplicate id {p.get('id')}")
            ids.add(p.get("id"))
            if not {"h", "w", "x", "y"} <= set(p.get("gridPos", {})):
                fail(f"{pw}: no gridPos")
            if p["gridPos"]["x"] + p["gridPos"]["w"] > 24:
                fail(f"{pw}: wider than the grid")
            pds = p.get("datasource", {})
            targets = p.get("targets", [])
            if not targets:
                fail(f"{pw}: no target")
            refs = [t.get("refId") for t in targets]
            if len(set(refs)) != len(refs) or None in refs:
                fail(f"{pw}: refIds {refs}")
            if pds.get("type") == NODEGRAPH:
                if vars_.get(pds.get("uid", "").strip("${}"), {}).get("query") != NODEGRAPH:
                    fail(f"{pw}: its datasource {pds} is not a variable of type {NODEGRAPH}")
                for t in targets:
                    if t.get("queryText") != NODEGRAPH_QUERY:
                        fail(f"{pw}: Node Graph query string {t.get('queryText')!r}, want {NODEGRAPH_QUERY!r}")
                continue
            if pds != {"type": "prometheus", "uid": "${datasource}"}:
                fail(f"{pw}: datasource {pds}, want the $datasource variable")
            for t in targets:
                if not t.get("expr", "").strip():
                    fail(f"{pw}: target {t.get('refId')} has no expression")
                if t.get("datasource", pds) != pds:
                    fail(f"{pw}: target {t.get('refId')} names another datasource")
                try:
                    substitute(t.get("expr", ""), dash)
                except KeyError as e:
                    fail(f"{pw}: target {t.get('refId')} uses an undefined variable ${e.args[0]}")
        for v in vars_.values():
            if v.get("type") == "query":
                if v.get("datasource") != {"type": "prometheus", "uid": "${datasource}"}:
                    fail(f"{where}: variable {v['name']} does not query $datasource")
                try:
                    substitute(v["definition"], dash)
                except KeyError as e:
                    fail(f"{where}: variable {v['name']} uses an undefined variable ${e.args[0]}")
        print(f"{name}: {len(ids)} panels, {sum(1 for _ in expressions(dash))} expressions")
    for want in ("overview", "services", "netflow", "health", "probes", "service-map"):
        if f"podflow-{want}.json" not in names:
            fail(f"no deploy/grafana/podflow-{want}.json")
    if not any(
        p.get("type") == "nodeGraph" for _, d in dashboards() for p in panels(d)
    ):
        fail("no Node Graph panel in any dashboard")


def cmd_promql():
    """promtool parses PromQL without a server: each expression becomes a recording rule."""
    rules = []
    index = []
    for name, dash in dashboards():
        for title, ref, expr in expressions(dash):
            rules.append({"record": f"dashboard_expr_{len(rules)}", "expr": substitute(expr, dash)})
            index.append(f"{name}: {title} ({ref})")
        for v in variables(dash).values():
            if v.get("type") == "query":
                m = re.match(r"label_values\((.*),\s*\w+\)$", v["definition"])
                if not m:
                    fail(f"{name}: variable {v['name']}: {v['definition']!r} is not label_values(selector, label)")
                    continue
                rules.append({"record": f"dashboard_expr_{len(rules)}", "expr": substitute(m.group(1), dash)})
                index.append(f"{name}: variable {v['name']}")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        json.dump({"groups": [{"name": "dashboards", "rules": rules}]}, f)
        path = f.name
    try:
        out = subprocess.run(["promtool", "check", "rules", path], capture_output=True, text=True)
    finally:
        os.unlink(path)
    if out.returncode != 0:
        text = out.stdout + out.stderr
        for m in re.finditer(r"group \"dashboards\", rule (\d+),.*", text):
            n = int(m.group(1)) - 1
            fail(f"{index[n] if 0 <= n < len(index) else '?'}: {m.group(0)}")
        fail(f"promtool check rules:\n{text}")
    else:
        print(f"promtool parsed {len(rules)} expressions")


def cmd_sdk():
    try:
        from grafana_foundation_sdk.cog.encoder import JSONEncoder
        from grafana_foundation_sdk.models import dashboard as model
    except ImportError:
        print("SKIPPED dashboards sdk: grafana-foundation-sdk is not installed (pip install grafana-foundation-sdk)")
        sys.exit(3)
    for name, dash in dashboards():
        try:
            d = model.Dashboard.from_json(dash)
            back = json.loads(json.dumps(d, cls=JSONEncoder))
        except Exception as e:  # the model refuses what it cannot read
            fail(f"{name}: grafana-foundation-sdk cannot read it: {type(e).__name__}: {e}")
            continue
        lost = sorted(k for k in dash if k not in back and k not in ("__inputs", "__requires"))
        if lost:
            fail(f"{name}: keys the dashboard model does not know: {lost}")
        for p in dash.get("panels", []):
            bp = next((x for x in back.get("panels", []) if x.get("id") == p.get("id")), None)
            if bp is None:
                fail(f"{name}: panel {p.get('title')!r} lost in the round trip")
                continue
            lost = sorted(k for k in p if k not in bp)
            if lost:
                fail(f"{name}: panel {p.get('title')!r}: keys the panel model does not know: {lost}")
        bvars = {v.get("name"): v for v in back.get("templating", {}).get("list", [])}
        for v in dash.get("templating", {}).get("list", []):
            # `definition` is what Grafana's editor writes for a query variable's text;
            # the SDK's model does not carry it.
            lost = sorted(k for k in v if k not in bvars.get(v["name"], {}) and k != "definition")
            if lost:
                fail(f"{name}: variable {v['name']}: keys the variable model does not know: {lost}")
        print(f"{name}: read by grafana-foundation-sdk's Dashboard model")


def cmd_query(prom, rng):
    builtin = dict(BUILTIN, __range=rng)
    for name, dash in dashboards():
        for title, ref, expr in expressions(dash):
            q = substitute(expr, dash, builtin)
            url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": q})
            try:
                with urllib.request.urlopen(url, timeout=30) as r:
                    body = json.load(r)
                n = len(body["data"]["result"])
                err = None
            except Exception as e:
                n, err = 0, str(e)
            print(json.dumps({"dashboard": name, "panel": title, "ref": ref, "expr": q, "series": n, "error": err}))


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "check":
        cmd_check()
    elif cmd == "promql":
        cmd_promql()
    elif cmd == "sdk":
        cmd_sdk()
    elif cmd == "query" and len(sys.argv) == 4:
        cmd_query(sys.argv[2], sys.argv[3])
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    if failures:
        print(f"{len(failures)} failure(s)", file=sys.stderr)
        sys.exit(1)
