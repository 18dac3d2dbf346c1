#!/usr/bin/env python3
"""Checks of the Helm chart deploy/helm/podflow, run by crates/podflow/tests/deploy.rs.

Offline, with no cluster and no helm binary: Helm v4's own library (PyPI
helm-python-sdk) lints and renders the chart; every rendered object is validated
against Kubernetes' OpenAPI schemas (PyPI kubernetes-validate, strict: unknown fields
are errors) and custom resources against their CRDs' schemas kept in deploy/tests/crds/.

    chart.py lint            helm lint (strict) with the defaults and each ci/*-values.yaml
    chart.py validate        every object of every profile, Kubernetes 1.29-1.32 and CRDs
    chart.py golden          renders equal deploy/tests/golden/*.yaml (UPDATE_GOLDEN=1 rewrites)
    chart.py invariants      properties the chart promises (security contexts, strategies...)
    chart.py schema          values.schema.json refuses misspelt keys and bad values
    chart.py rules           the chart's PrometheusRule equals deploy/prometheus/podflow-rules.yaml
                             (UPDATE_GOLDEN=1 rewrites the plain file from the chart)

Exit status 0 when every check passed; each failure is printed with the profile and
object it concerns.
"""

import copy
import glob
import json
import os
import re
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
DEPLOY = os.path.dirname(HERE)
CHART = os.path.join(DEPLOY, "helm", "podflow")
GOLDEN = os.path.join(HERE, "golden")
CRDS = os.path.join(HERE, "crds")
RULES_FILE = os.path.join(DEPLOY, "prometheus", "podflow-rules.yaml")
KUBE_VERSIONS = ["1.29.0", "1.30.0", "1.31.0", "1.32.0"]
RELEASE, NAMESPACE = "podflow", "podflow"

failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL " + msg, file=sys.stderr)


def helm():
    import helm_python

    return helm_python


class quiet:
    """Helm's Go side logs every symlink it follows (dashboards/ -> ../../grafana) on
    fd 2; keep everything else it says."""

    def __enter__(self):
        import tempfile

        sys.stderr.flush()
        self.tmp = tempfile.TemporaryFile()
        self.saved = os.dup(2)
        os.dup2(self.tmp.fileno(), 2)
        return self

    def __exit__(self, *exc):
        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.tmp.seek(0)
        for line in self.tmp.read().decode(errors="replace").splitlines():
            if "found symbolic link in path" not in line:
                print(line, file=sys.stderr)
        self.tmp.close()
        return False


def profiles():
    """(name, values) for the defaults and every ci/*-values.yaml."""
    out = [("default", {})]
    for path in sorted(glob.glob(os.path.join(CHART, "ci", "*-values.yaml"))):
        name = os.path.basename(path)[: -len("-values.yaml")]
        with open(path) as f:
            out.append((name, yaml.safe_load(f) or {}))
    return out


def render(values, name=RELEASE, namespace=NAMESPACE):
    """Template path -> rendered text (empty templates left out)."""
    h = helm()
    with quiet():
        chart = h.Chart.load(CHART)
        out = chart.render(values, name=name, namespace=namespace, is_install=True)
    return {k: v for k, v in sorted(out.items()) if v.strip() and not k.endswith("NOTES.txt")}


def objects(rendered):
    """(template, object) for every YAML document."""
    for path, text in rendered.items():
        for doc in yaml.safe_load_all(text):
            if doc:
                yield path, doc


def where(profile, path, obj):
    return f"[{profile}] {path}: {obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


# ---------------------------------------------------------------- lint


def cmd_lint():
    h = helm()
    for name, values in profiles():
        for kv in KUBE_VERSIONS:
            with quiet():
                report = h.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version="v" + kv)
            for m in report.get("messages", []):
                # 1 = info ("icon is recommended"); warnings and errors fail.
                if m.get("severity", 0) >= 2:
                    fail(f"[{name}] helm lint (Kubernetes {kv}): {m.get('path')}: {m.get('error')}")
            for e in report.get("errors", []):
                fail(f"[{name}] helm lint (Kubernetes {kv}): {e}")
        print(f"lint {name}: ok")


# ---------------------------------------------------------------- validate


def crd_schemas():
    """(apiVersion, kind) -> the CRD's openAPIV3Schema, closed like strict field validation."""
    out = {}
    for path in glob.glob(os.path.join(CRDS, "*", "*.yaml")):
        with open(path) as f:
            for crd in yaml.safe_load_all(f):
                if not crd or crd.get("kind") != "CustomResourceDefinition":
                    continue
                group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
                for v in crd["spec"]["versions"]:
                    schema = close(copy.deepcopy(v["schema"]["openAPIV3Schema"]))
                    # Every object carries apiVersion, kind and metadata; the CRD schema
                    # leaves metadata open, the API server checks it.
                    out[(f"{group}/{v['name']}", kind)] = schema
    return out


def close(schema):
    """Unknown fields are errors, as with `kubectl apply --validate=strict`, except where
    the CRD says it keeps them (x-kubernetes-preserve-unknown-fields) or declares a map."""
    if isinstance(schema, dict):
        if (
            schema.get("type") == "object"
            and "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        for k, v in list(schema.items()):
            if k == "properties":
                for p in v.values():
                    close(p)
            elif isinstance(v, (dict, list)):
                close(v)
    elif isinstance(schema, list):
        for v in schema:
            close(v)
    return schema


def cmd_validate():
    import jsonschema
    import kubernetes_validate

    crds = crd_schemas()
    seen_kinds = set()
    for name, values in profiles():
        count = 0
        for path, obj in objects(render(values)):
            count += 1
            key = (obj.get("apiVersion"), obj.get("kind"))
            seen_kinds.add(key)
            if key in crds:
                body = {k: v for k, v in obj.items() if k != "metadata"}
                errors = sorted(
                    jsonschema.Draft7Validator(crds[key]).iter_errors(body), key=lambda e: list(e.path)
                )
                for e in errors:
                    fail(f"{where(name, path, obj)}: {'.'.join(map(str, e.path))}: {e.message}")
                continue
            for kv in KUBE_VERSIONS:
                try:
                    kubernetes_validate.validate(obj, kv, strict=True)
                except kubernetes_validate.SchemaNotFoundError as e:
                    fail(f"{where(name, path, obj)}: no schema (Kubernetes {kv}): {e.message}")
                    break
                except kubernetes_validate.ValidationError as e:
                    fail(f"{where(name, path, obj)} (Kubernetes {kv}): {'.'.join(map(str, e.path))}: {e.message}")
                    break
        print(f"validate {name}: {count} objects")
    print("kinds:", ", ".join(sorted(f"{k}" for _, k in seen_kinds)))


# ---------------------------------------------------------------- golden


GENERATED = re.compile(r"^(  (?:ca\.crt|tls\.crt|tls\.key): ).+$", re.M)


def golden_text(rendered):
    parts = []
    for path, text in rendered.items():
        if path.endswith("tls/generated.yaml"):
            # genCA makes new material on every render.
            text = GENERATED.sub(r"\1<generated>", text)
        parts.append(f"# Source: {path}\n{text.strip()}\n")
    return "---\n".join(parts)


def cmd_golden():
    update = os.environ.get("UPDATE_GOLDEN") == "1"
    os.makedirs(GOLDEN, exist_ok=True)
    names = set()
    for name, values in profiles():
        names.add(name)
        want = golden_text(render(values))
        path = os.path.join(GOLDEN, f"{name}.yaml")
        have = open(path).read() if os.path.exists(path) else None
        if update:
            if have != want:
                with open(path, "w") as f:
                    f.write(want)
                print(f"golden {name}: rewritten")
            continue
        if have != want:
            import difflib

            diff = "".join(
                list(
                    difflib.unified_diff(
                        (have or "").splitlines(True), want.splitlines(True), f"golden/{name}.yaml", "render"
                    )
                )[:80]
            )
            fail(f"[{name}] the render differs from deploy/tests/golden/{name}.yaml "
                 f"(UPDATE_GOLDEN=1 rewrites it after review):\n{diff}")
        else:
            print(f"golden {name}: same")
    for path in glob.glob(os.path.join(GOLDEN, "*.yaml")):
        if os.path.basename(path)[:-5] not in names:
            fail(f"deploy/tests/golden/{os.path.basename(path)} has no profile")


# ---------------------------------------------------------------- invariants


def by_kind(objs, kind):
    return [o for _, o in objs if o["kind"] == kind]


def one(objs, kind, suffix=""):
    found = [o for o in by_kind(objs, kind) if o["metadata"]["name"].endswith(suffix)]
    return found[0] if len(found) == 1 else None


def check(cond, msg):
    if not cond:
        fail(msg)


def container(pod_spec, name):
    return next((c for c in pod_spec.get("containers", []) if c["name"] == name), None)


def env(c, name):
    return next((e for e in c.get("env", []) if e["name"] == name), None)


def cmd_invariants():
    for name, values in profiles():
        objs = list(objects(render(values)))
        p = f"[{name}]"
        ds = one(objs, "DaemonSet")
        if ds is not None:
            spec = ds["spec"]["template"]["spec"]
            a = container(spec, "agent")
            sc = a["securityContext"]
            check(spec["hostNetwork"] is True, f"{p} agent: hostNetwork")
            check(spec["dnsPolicy"] == "ClusterFirstWithHostNet", f"{p} agent: dnsPolicy ClusterFirstWithHostNet")
            check(spec["automountServiceAccountToken"] is False, f"{p} agent: no API token mounted")
            check(sc["capabilities"]["drop"] == ["ALL"], f"{p} agent: drops ALL capabilities")
            icmp = values.get("agent", {}).get("probes", {}).get("icmp", False)
            want_caps = ["NET_ADMIN"] + (["NET_RAW"] if icmp else [])
            check(sc["capabilities"]["add"] == want_caps, f"{p} agent: adds exactly {want_caps}: {sc['capabilities']['add']}")
            check(sc["readOnlyRootFilesystem"] is True, f"{p} agent: read-only root")
            check(sc["allowPrivilegeEscalation"] is False, f"{p} agent: no privilege escalation")
            check(sc.get("privileged") is False, f"{p} agent: not privileged")
            check(sc["seccompProfile"]["type"] == "RuntimeDefault", f"{p} agent: seccomp RuntimeDefault")
            check("cpu" not in a["resources"].get("limits", {}), f"{p} agent: no CPU limit by default")
            check({"cpu", "memory"} <= set(a["resources"].get("requests", {})), f"{p} agent: CPU and memory requests")
            check("memory" in a["resources"].get("limits", {}), f"{p} agent: memory limit")
            wt = env(a, "PODFLOW_WORKER_THREADS")
            check(wt and wt["valueFrom"]["resourceFieldRef"] == {"containerName": "agent", "resource": "requests.cpu", "divisor": "1"},
                  f"{p} agent: PODFLOW_WORKER_THREADS from the CPU request")
            check(env(a, "HOST_IP")["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP", f"{p} agent: HOST_IP from status.hostIP")
            check(env(a, "NODE_NAME")["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName", f"{p} agent: NODE_NAME")
            check("--listen=$(HOST_IP):9469" in a["args"], f"{p} agent: /metrics on the host IP")
            for probe, path in (("startupProbe", "/live"), ("livenessProbe", "/live"), ("readinessProbe", "/ready")):
                check(a.get(probe, {}).get("httpGet", {}).get("path") == path, f"{p} agent: {probe} on {path}")
            check(any(t.get("operator") == "Exists" and "key" not in t for t in spec.get("tolerations", [])),
                  f"{p} agent: tolerates every taint")
            check(ds["spec"]["updateStrategy"]["type"] == "RollingUpdate"
                  and "maxUnavailable" in ds["spec"]["updateStrategy"]["rollingUpdate"], f"{p} agent: RollingUpdate with maxUnavailable")
            vols = {v["name"]: v for v in spec["volumes"]}
            check(vols["data"]["hostPath"]["type"] == "DirectoryOrCreate", f"{p} agent: hostPath data dir")
            auth = values.get("auth", {}).get("agents", "kubernetes")
            if auth == "kubernetes":
                src = vols["podflow-secrets"]["projected"]["sources"]
                tok = [s["serviceAccountToken"] for s in src if "serviceAccountToken" in s]
                check(tok == [{"audience": "podflow", "expirationSeconds": 3600, "path": "token"}],
                      f"{p} agent: projected token, audience podflow, 1 h: {tok}")
                check("--token-file=/var/run/secrets/podflow/token" in a["args"], f"{p} agent: --token-file")
            init = spec.get("initContainers", [])
            if values.get("agent", {}).get("sysctlInit", {}).get("enabled"):
                want = a["command"][:1] + ["sysctl"]
                check(len(init) == 1 and init[0]["command"] == want and "args" not in init[0]
                      and init[0]["image"] == a["image"] and init[0]["securityContext"]["privileged"] is True,
                      f"{p} agent: privileged init container runs {want} from the agent's image")
            else:
                check(not init, f"{p} agent: no init container unless asked")
            pc = one(objs, "PriorityClass")
            if pc is not None:
                check(spec.get("priorityClassName") == pc["metadata"]["name"], f"{p} agent: uses the chart's PriorityClass")

        dep = one(objs, "Deployment")
        if dep is not None:
            spec = dep["spec"]["template"]["spec"]
            s = container(spec, "server")
            ch = values.get("server", {}).get("clickhouse", {}).get("enabled", False)
            replicas = dep["spec"]["replicas"]
            psc = spec["securityContext"]
            check(psc["runAsNonRoot"] is True and psc["runAsUser"] == 65532, f"{p} server: non-root 65532")
            check(psc["seccompProfile"]["type"] == "RuntimeDefault", f"{p} server: seccomp")
            sc = s["securityContext"]
            check(sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"], f"{p} server: no capabilities")
            check(sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"], f"{p} server: restricted container")
            check("checksum/config" in dep["spec"]["template"]["metadata"].get("annotations", {}), f"{p} server: checksum/config")
            for probe, path in (("startupProbe", "/live"), ("livenessProbe", "/live"), ("readinessProbe", "/ready")):
                check(s.get(probe, {}).get("httpGet", {}).get("path") == path, f"{p} server: {probe} on {path}")
            pdb = one(objs, "PodDisruptionBudget")
            if ch:
                check(dep["spec"]["strategy"]["type"] == "RollingUpdate", f"{p} server: RollingUpdate with ClickHouse")
                check(not one(objs, "PersistentVolumeClaim"), f"{p} server: no PVC with ClickHouse")
                if replicas > 1:
                    check(pdb is not None, f"{p} server: a PDB for {replicas} replicas")
                    check("podAntiAffinity" in spec.get("affinity", {}), f"{p} server: anti-affinity for {replicas} replicas")
            else:
                check(replicas == 1, f"{p} server: one replica with the embedded store")
                check(dep["spec"]["strategy"]["type"] == "Recreate", f"{p} server: Recreate with the embedded store")
                check(pdb is None, f"{p} server: no PDB on one replica")
            auth = values.get("auth", {}).get("agents", "kubernetes")
            check(f"--agent-auth={auth}" in s["args"], f"{p} server: --agent-auth={auth}")
            check(s["command"] == ["/podflow"] and s["args"][0] == "server", f"{p} server: runs /podflow server")
            role = one(objs, "ClusterRole")
            if role is not None:
                verbs = {(g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
                for g, r in (("", "pods"), ("", "nodes"), ("", "services"), ("discovery.k8s.io", "endpointslices"),
                             ("apps", "replicasets"), ("batch", "jobs")):
                    check(verbs.get((g, r)) == {"list", "watch"}, f"{p} server: list/watch {r}")
                writes = {k: v for k, v in verbs.items() if v - {"list", "watch", "get"}}
                want = {("authentication.k8s.io", "tokenreviews"): {"create"}} if auth == "kubernetes" else {}
                check(writes == want, f"{p} server: the only non-read verb is create tokenreviews: {writes}")
            nf = [o for o in by_kind(objs, "Service") if o["metadata"]["name"].endswith("-netflow")]
            for svc in nf:
                if svc["spec"]["type"] in ("LoadBalancer", "NodePort"):
                    check(svc["spec"].get("externalTrafficPolicy") == "Local", f"{p} NetFlow Service: externalTrafficPolicy Local")
        for cm in by_kind(objs, "ConfigMap"):
            if cm["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "dashboard":
                check(cm["metadata"]["labels"].get("grafana_dashboard") == "1", f"{p} dashboard ConfigMap label")
                for k, v in cm["data"].items():
                    with open(os.path.join(DEPLOY, "grafana", k)) as f:
                        check(json.loads(v) == json.load(f), f"{p} dashboard {k} equals deploy/grafana/{k}")
        test = [o for o in by_kind(objs, "Pod") if o["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
        if dep is not None:
            check(len(test) == 1, f"{p} a helm test Pod")
            script = " ".join(test[0]["spec"]["containers"][0]["args"]) if test else ""
            check("/ready" in script and "/api/v1/query" in script, f"{p} the test asks /ready and /api/v1/query")
        print(f"invariants {name}: checked")
    # The agent image by default: podflow-agent alone, the agent's flags as args.
    objs = list(objects(render({})))
    a = one(objs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]
    check(a["image"].startswith("localhost/podflow-agent:") and a["command"] == ["/podflow-agent"]
          and a["args"][0].startswith("--"), f"defaults: the agent runs /podflow-agent: {a['image']} {a['command']}")
    # Servers first, agents after: agent.image.tag holds the agents back for one upgrade.
    images = lambda ds: {c["image"] for c in ds["spec"]["template"]["spec"]["containers"] + ds["spec"]["template"]["spec"].get("initContainers", [])}
    for agent, want in [({"image": {"tag": "9.9.8"}}, {"localhost/podflow-agent:9.9.8"}),
                        ({"image": {"repository": ""}}, {"localhost/podflow:9.9.9"}),
                        ({"image": {"repository": "", "tag": "9.9.8"}}, {"localhost/podflow:9.9.8"}),
                        ({"image": {"digest": "sha256:" + "a" * 64}}, {"localhost/podflow-agent@sha256:" + "a" * 64})]:
        objs = list(objects(render({"image": {"tag": "9.9.9"}, "agent": dict(agent, sysctlInit={"enabled": True})})))
        ds, dep = one(objs, "DaemonSet"), one(objs, "Deployment")
        check(images(ds) == want, f"agent {agent}: agents run {images(ds)}, want {want}")
        check(dep["spec"]["template"]["spec"]["containers"][0]["image"] == "localhost/podflow:9.9.9", f"agent {agent} leaves the server alone")
        lean = bool(agent["image"].get("repository", "x"))
        c = ds["spec"]["template"]["spec"]["containers"][0]
        check(c["command"] == (["/podflow-agent"] if lean else ["/podflow", "agent"]), f"agent {agent}: command {c['command']}")
    with open(os.path.join(CHART, "Chart.yaml")) as f:
        app_version = yaml.safe_load(f)["appVersion"]
    # A digest of the server's image pins its repository only: the agent image keeps its tag.
    objs = list(objects(render({"image": {"digest": "sha256:" + "b" * 64}})))
    check(images(one(objs, "DaemonSet")) == {"localhost/podflow-agent:" + app_version},
          f"image.digest leaves the agent image's tag: {images(one(objs, 'DaemonSet'))}")


# ---------------------------------------------------------------- schema


def cmd_schema():
    h = helm()
    bad = [
        ({"agent": {"tolerationz": []}}, "tolerationz"),
        ({"server": {"persistance": {"enabled": False}}}, "persistance"),
        ({"prometheusRule": {"rules": {"agentNotReportin": {"enabled": False}}}}, "agentNotReportin"),
        ({"auth": {"agents": "anyone"}}, "/auth/agents"),
        ({"agent": {"resources": {"limitz": {}}}}, "limitz"),
        ({"server": {"config": {"netwroks": []}}}, "netwroks"),
    ]
    for values, word in bad:
        try:
            render(values)
        except h.HelmError as e:
            check(word in str(e), f"schema: the error for {values} names {word!r}: {e}")
            detail = [l.strip() for l in str(e).splitlines() if l.strip().startswith("- ")]
            print(f"schema refuses {json.dumps(values)}: {' '.join(detail)[:200]}")
            continue
        fail(f"schema: {values} rendered without error")
    # And the chart's own refusals (combinations that cannot work).
    for values, word in [
        ({"server": {"replicas": 2}}, "clickhouse"),
        ({"auth": {"agents": "none"}}, "insecureNoAgentAuth"),
        ({"networkPolicy": {"enabled": True}}, "agentCidrs"),
    ]:
        try:
            render(values)
        except h.HelmError as e:
            check(word in str(e), f"the chart's refusal of {values} names {word!r}: {e}")
            print(f"chart refuses {json.dumps(values)}")
            continue
        fail(f"chart: {values} rendered without error")


# ---------------------------------------------------------------- rules


class Literal(str):
    pass


def literal_dumper():
    class D(yaml.SafeDumper):
        pass

    def rep(dumper, s):
        style = "|" if "\n" in s else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", s, style=style)

    D.add_representer(str, rep)
    return D


RULES_HEADER = """\
# podflow's alert rules, for a Prometheus you run yourself:
#   rule_files: [podflow-rules.yaml]
# The Helm chart ships the same rules as a PrometheusRule (prometheusRule.enabled=true),
# where each rule's enabled/threshold/for/severity can be tuned. This file is the chart's
# rules rendered with the default values: `UPDATE_GOLDEN=1 cargo test -p podflow --test
# deploy` rewrites it, and the tests fail when the two differ. Unit tests of every alert:
# deploy/prometheus/tests/ (promtool test rules).
"""


def chart_rules():
    objs = list(objects(render({"prometheusRule": {"enabled": True}})))
    rule = one(objs, "PrometheusRule")
    return {"groups": rule["spec"]["groups"]}


def cmd_rules():
    want = chart_rules()
    text = RULES_HEADER + yaml.dump(want, Dumper=literal_dumper(), sort_keys=False, width=100, allow_unicode=True)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        with open(RULES_FILE, "w") as f:
            f.write(text)
        print(f"rewrote {RULES_FILE}")
    with open(RULES_FILE) as f:
        have = yaml.safe_load(f)
    if have != want:
        fail("deploy/prometheus/podflow-rules.yaml differs from the chart's PrometheusRule "
             "(UPDATE_GOLDEN=1 rewrites the file from the chart)")
    else:
        n = sum(len(g["rules"]) for g in want["groups"])
        print(f"rules: the plain file and the chart agree ({n} rules)")


COMMANDS = {
    "lint": cmd_lint,
    "validate": cmd_validate,
    "golden": cmd_golden,
    "invariants": cmd_invariants,
    "schema": cmd_schema,
    "rules": cmd_rules,
}

if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    COMMANDS[sys.argv[1]]()
    if failures:
        print(f"{len(failures)} failure(s)", file=sys.stderr)
        sys.exit(1)
