#!/usr/bin/env python3
"""The chart's manifests, executed: no API server runs here, so this renders the chart
with its defaults and runs the server Deployment's and the agent DaemonSet's containers
as a kubelet would — their args with `$(VAR)` filled from their env, fieldRefs answered,
every volume mount mapped into a temporary directory holding the rendered Secrets and a
projected token — each in a network namespace of its own (the agent's is its "node"),
joined by a veth pair. A fake API server in the server's namespace answers the watches
and TokenReviews in Kubernetes' JSON and records every request.

Checked: the startup, liveness and readiness probes declared in the manifests answer
200 on their declared ports and paths within their declared windows; the agent's
declared `http` port serves /metrics from outside its own namespace, and its stream to
the server is open (TLS with the rendered CA, its projected token reviewed and bound to
its node, nothing refused); the requests the server made are exactly
the verbs and resources its ClusterRole grants.

    executed.py PODFLOW_BINARY [VALUES_JSON]

Run by crates/podflow/tests/deploy.rs as root (namespaces). Removes what it made.
"""

import base64
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import chart  # noqa: E402

NS_SRV, NS_NODE = "pf-exec-srv", "pf-exec-node"
SRV_IP, NODE_IP = "10.78.0.1", "10.78.0.2"
NODE = "node-x"
API_PORT = 16443
failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL " + msg, file=sys.stderr)


def sh(*args, check=True):
    return subprocess.run(args, check=check, capture_output=True, text=True)


def fake_api(log_path, agent_sa):
    """Runs in NS_SRV (a child of `ip netns exec`): lists, idle watches, TokenReviews."""
    kinds = {
        "/api/v1/pods": ("Pod", "v1", ""),
        "/api/v1/nodes": ("Node", "v1", ""),
        "/api/v1/services": ("Service", "v1", ""),
        "/apis/discovery.k8s.io/v1/endpointslices": ("EndpointSlice", "discovery.k8s.io/v1", "discovery.k8s.io"),
        "/apis/apps/v1/replicasets": ("ReplicaSet", "apps/v1", "apps"),
        "/apis/batch/v1/jobs": ("Job", "batch/v1", "batch"),
    }
    log = open(log_path, "a", buffering=1)

    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def answer(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            path, _, query = self.path.partition("?")
            watch = "watch=true" in query.split("&") or "watch=1" in query.split("&")
            if path not in kinds:
                return self.answer(404, {"kind": "Status", "code": 404})
            kind, api_version, group = kinds[path]
            resource = path.rsplit("/", 1)[1]
            log.write(json.dumps({"group": group, "resource": resource, "verb": "watch" if watch else "list"}) + "\n")
            if watch:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.wfile.flush()
                try:
                    time.sleep(120)
                except Exception:
                    pass
                return
            items = []
            if kind == "Node":
                items = [{"apiVersion": "v1", "kind": "Node",
                          "metadata": {"name": NODE, "resourceVersion": "3",
                                       "labels": {"topology.kubernetes.io/zone": "zone-x"}},
                          "status": {"addresses": [{"type": "InternalIP", "address": NODE_IP}],
                                     "conditions": [{"type": "Ready", "status": "True"}]}}]
            self.answer(200, {"apiVersion": api_version, "kind": kind + "List",
                              "metadata": {"resourceVersion": "5"}, "items": items})

        def do_POST(self):
            n = int(self.headers.get("Content-Length", "0"))
            req = json.loads(self.rfile.read(n) or b"{}")
            if self.path.split("?")[0] != "/apis/authentication.k8s.io/v1/tokenreviews":
                return self.answer(404, {"kind": "Status", "code": 404})
            log.write(json.dumps({"group": "authentication.k8s.io", "resource": "tokenreviews", "verb": "create"}) + "\n")
            ok = req.get("spec", {}).get("token") == "projected-agent-token"
            status = {"authenticated": ok, "audiences": req.get("spec", {}).get("audiences")}
            if ok:
                ns, name = agent_sa.split("/")
                status["user"] = {"username": f"system:serviceaccount:{ns}:{name}",
                                  "extra": {"authentication.kubernetes.io/node-name": [NODE]}}
            else:
                status["error"] = "invalid bearer token"
            self.answer(201, {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                              "metadata": {}, "spec": req.get("spec"), "status": status})

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", API_PORT), H)
    srv.daemon_threads = True
    srv.serve_forever()


def field(path, pod):
    return {"spec.nodeName": NODE, "status.hostIP": pod["ip"], "status.podIP": pod["ip"],
            "metadata.name": pod["name"], "metadata.namespace": chart.NAMESPACE}[path]


def command_of(c, pod, mounts):
    """The container's argv and env as the kubelet would run them."""
    env = {}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "fieldRef" in e.get("valueFrom", {}):
            env[e["name"]] = field(e["valueFrom"]["fieldRef"]["fieldPath"], pod)
        elif "resourceFieldRef" in e.get("valueFrom", {}):
            env[e["name"]] = "1"
    fill = lambda s: re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), s)
    argv = [fill(a) for a in (c.get("command") or []) + (c.get("args") or [])]
    # A path under a mount becomes the same path under its directory (the longest mount
    # that holds it), once.
    def remap(a):
        key, eq, val = a.rpartition("=") if a.startswith("--") and "=" in a else ("", "", a)
        for path, local in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
            if val == path or val.startswith(path.rstrip("/") + "/"):
                return key + eq + local + val[len(path):]
        return a
    return [remap(a) for a in argv], env


def mount(spec, c, root, secrets, token):
    """Fills a directory per volume mount: Secrets' keys, the projected token, empty dirs."""
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    out = {}
    for m in c.get("volumeMounts", []):
        d = os.path.join(root, m["name"])
        os.makedirs(d, exist_ok=True)
        v = vols[m["name"]]
        sources = []
        if "secret" in v:
            sources = [{"secret": v["secret"] | {"name": v["secret"]["secretName"]}}]
        elif "projected" in v:
            sources = v["projected"]["sources"]
        for s in sources:
            if "serviceAccountToken" in s:
                open(os.path.join(d, s["serviceAccountToken"]["path"]), "w").write(token)
            if "secret" in s:
                data = secrets[s["secret"]["name"]]
                for item in s["secret"].get("items") or [{"key": k, "path": k} for k in data]:
                    p = os.path.join(d, item["path"])
                    os.makedirs(os.path.dirname(p), exist_ok=True)
                    open(p, "wb").write(base64.b64decode(data[item["key"]]))
        out[m["mountPath"]] = d
    return out


def port_of(c, port):
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in c["ports"] if p["name"] == port)


def get(ns, url):
    """An HTTP status from inside namespace `ns` (None: no answer)."""
    r = sh("ip", "netns", "exec", ns, "python3", "-c",
           "import ssl,sys,urllib.request\n"
           # As the kubelet's HTTPS probes: the certificate is not verified.
           "ctx=ssl.create_default_context(); ctx.check_hostname=False; ctx.verify_mode=ssl.CERT_NONE\n"
           "try:\n r=urllib.request.urlopen(sys.argv[1],timeout=3,context=ctx); print(r.status); sys.stdout.write(r.read().decode(errors='replace'))\n"
           "except urllib.error.HTTPError as e: print(e.code)\n"
           "except Exception: print(0)\n", url, check=False)
    lines = r.stdout.split("\n", 1)
    code = int(lines[0]) if lines[0].strip().isdigit() else 0
    return code, (lines[1] if len(lines) > 1 else "")


def probes_answer(what, ns, ip, c, started):
    """Every declared probe answers 200 within its window (startup: period × threshold;
    liveness and readiness: after startup, within period × threshold)."""
    for kind in ["startupProbe", "livenessProbe", "readinessProbe"]:
        p = c.get(kind)
        if not p:
            continue
        window = p.get("initialDelaySeconds", 0) + p.get("periodSeconds", 10) * p.get("failureThreshold", 3)
        if kind != "startupProbe":
            window += c.get("startupProbe", {}).get("periodSeconds", 0) * c.get("startupProbe", {}).get("failureThreshold", 0)
        scheme = p["httpGet"].get("scheme", "HTTP").lower()
        url = f"{scheme}://{ip}:{port_of(c, p['httpGet']['port'])}{p['httpGet']['path']}"
        while True:
            code, _ = get(ns, url)
            if code == 200:
                print(f"{what} {kind} {url}: 200 after {time.time() - started:.1f} s (window {window} s)")
                break
            if time.time() - started > window:
                fail(f"{what} {kind} {url}: {code} after its {window} s window")
                break
            time.sleep(0.5)


def main(binary, values):
    objs = list(chart.objects(chart.render(values)))
    server = chart.one(objs, "Deployment", "-server")
    server_scheme = "https" if any(a.startswith("--http-tls-cert")
                                   for a in server["spec"]["template"]["spec"]["containers"][0]["args"]) else "http"
    agent = chart.one(objs, "DaemonSet", "-agent")
    role = chart.one(objs, "ClusterRole", "-server-" + chart.NAMESPACE)
    secrets = {o["metadata"]["name"]: o.get("data", {}) for o in chart.by_kind(objs, "Secret")}
    agent_sa = f"{chart.NAMESPACE}/{agent['spec']['template']['spec']['serviceAccountName']}"
    root = tempfile.mkdtemp(prefix="podflow-executed-")
    children = []
    hosts_dir = f"/etc/netns/{NS_NODE}"
    try:
        for ns in [NS_SRV, NS_NODE]:
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "link", "add", "pfx-srv", "netns", NS_SRV, "type", "veth", "peer", "name", "pfx-node", "netns", NS_NODE)
        for ns, dev, ip in [(NS_SRV, "pfx-srv", SRV_IP), (NS_NODE, "pfx-node", NODE_IP)]:
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
        # The agent resolves the server's Service name as cluster DNS would.
        os.makedirs(hosts_dir, exist_ok=True)
        url = next(a for a in agent["spec"]["template"]["spec"]["containers"][0]["args"] if a.startswith("--server="))
        host = re.match(r"--server=https?://([^:/]+)", url).group(1)
        open(os.path.join(hosts_dir, "hosts"), "w").write(f"127.0.0.1 localhost\n{SRV_IP} {host}\n")

        api_log = os.path.join(root, "api.log")
        children.append(subprocess.Popen(["ip", "netns", "exec", NS_SRV, sys.executable, os.path.abspath(__file__), "--fake-api", api_log, agent_sa]))
        for _ in range(50):
            if get(NS_SRV, f"http://127.0.0.1:{API_PORT}/api/v1/nodes")[0] == 200:
                break
            time.sleep(0.1)
        open(api_log, "w").close()
        kubeconfig = os.path.join(root, "kubeconfig")
        open(kubeconfig, "w").write(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{API_PORT}"}}],
            "users": [{"name": "server", "user": {"token": "server-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "server"}}]}))

        runs = []
        for what, obj, ns, ip, extra in [
            ("server", server, NS_SRV, SRV_IP, ["--kubeconfig", kubeconfig]),
            ("agent", agent, NS_NODE, NODE_IP, []),
        ]:
            spec = obj["spec"]["template"]["spec"]
            c = spec["containers"][0]
            mounts = mount(spec, c, os.path.join(root, what), secrets, "projected-agent-token")
            argv, env = command_of(c, {"ip": ip, "name": f"podflow-{what}-0"}, mounts)
            started = time.time()
            logf = open(os.path.join(root, what + ".log"), "w")
            # The image's program (/podflow, /podflow-agent) is the binary of that name
            # beside the one given.
            program = os.path.join(os.path.dirname(binary), os.path.basename(argv[0]))
            if not os.access(program, os.X_OK):
                fail(f"{what}: the container runs {argv[0]}: no {program}")
            children.append(subprocess.Popen(["ip", "netns", "exec", ns, program] + argv[1:] + extra,
                                             env=dict(os.environ, **env), stdout=logf, stderr=logf))
            runs.append((what, ns, ip, c, started))
            time.sleep(1)
        for what, ns, ip, c, started in runs:
            probes_answer(what, ns, ip, c, started)
        # The agent's declared http port, from outside its namespace; and its stream in.
        a = agent["spec"]["template"]["spec"]["containers"][0]
        code, body = get(NS_SRV, f"http://{NODE_IP}:{port_of(a, 'http')}/metrics")
        if code != 200 or "podflow_agent_batches_sent_total" not in body:
            fail(f"agent /metrics from the server's namespace: {code}")
        deadline = time.time() + 60
        while True:
            _, m = get(NS_SRV, f"{server_scheme}://{SRV_IP}:{port_of(server['spec']['template']['spec']['containers'][0], 'http')}/metrics")
            streams = re.search(r'^podflow_server_agent_connections (\d+)', m, re.M)
            refused = re.findall(r'^podflow_server_agent_refusals_total\{reason="(\w+)"\} ([1-9]\d*)', m, re.M)
            if refused:
                fail(f"the server refused the agent: {refused}")
                break
            if streams and int(streams.group(1)) > 0:
                print("the agent's stream is open, its token reviewed and bound to its node")
                break
            if time.time() > deadline:
                fail("the agent never got a stream to the server")
                break
            time.sleep(1)
        # RBAC: exactly the verbs and resources the server used.
        used = {(r["group"], r["resource"], r["verb"]) for r in map(json.loads, open(api_log))}
        granted = {(g, res, v) for rule in role["rules"] for g in rule["apiGroups"] for res in rule["resources"] for v in rule["verbs"]}
        if used != granted:
            fail(f"RBAC: used but not granted {sorted(used - granted)}, granted but not used {sorted(granted - used)}")
        else:
            print(f"RBAC: the server used exactly its {len(granted)} grants")
    finally:
        for ch in children:
            ch.terminate()
        for ch in children:
            try:
                ch.wait(15)
            except subprocess.TimeoutExpired:
                ch.kill()
        for ns in [NS_SRV, NS_NODE]:
            sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(hosts_dir, ignore_errors=True)
        if failures:
            for what in ["server", "agent"]:
                p = os.path.join(root, what + ".log")
                if os.path.exists(p):
                    print(f"--- {what}.log\n" + open(p).read()[-3000:], file=sys.stderr)
        shutil.rmtree(root, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    if sys.argv[1] == "--fake-api":
        fake_api(sys.argv[2], sys.argv[3])
    else:
        sys.exit(main(sys.argv[1], json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}))
