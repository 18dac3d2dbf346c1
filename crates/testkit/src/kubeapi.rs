//! A fake Kubernetes API server on 127.0.0.1 for whole-process tests: list and watch of
//! pods, nodes, services, EndpointSlices, ReplicaSets and Jobs in Kubernetes' own JSON,
//! with resource versions, a watch history a re-watch resumes from, and the faults a real
//! API server shows: a watch cut mid-stream, and 410 Gone (as a watch ERROR event or as
//! an HTTP 410 answer) for a resourceVersion that is too old, which forces a relist.
//!
//! Plain threads and HTTP/1.1 (every answer `Connection: close`; watches chunked, so a
//! cut stream is an error to the client, not a clean end).

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// (path, kind, apiVersion) of every kind the server watches.
const KINDS: [(&str, &str, &str); 6] = [
    ("/api/v1/pods", "Pod", "v1"),
    ("/api/v1/nodes", "Node", "v1"),
    ("/api/v1/services", "Service", "v1"),
    (
        "/apis/discovery.k8s.io/v1/endpointslices",
        "EndpointSlice",
        "discovery.k8s.io/v1",
    ),
    ("/apis/apps/v1/replicasets", "ReplicaSet", "apps/v1"),
    ("/apis/batch/v1/jobs", "Job", "batch/v1"),
];

/// How a too-old resourceVersion is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gone {
    /// HTTP 200 and a watch `ERROR` event carrying a Status with code 410.
    Event,
    /// HTTP 410 with a Status body.
    Http,
}

#[derive(Debug)]
struct State {
    rv: u64,
    /// (path, "namespace/name") → object.
    objects: BTreeMap<(&'static str, String), Value>,
    /// (rv, path, event) of every change a watch can resume from.
    history: Vec<(u64, &'static str, Value)>,
    /// Watches from a resourceVersion below this are answered 410 Gone.
    compacted: u64,
    gone: Gone,
    /// Bumped to end every open watch: cut mid-stream (`drops`) or with a 410 (`expiries`).
    drops: u64,
    expiries: u64,
    /// Bumped to send a BOOKMARK (the current resourceVersion) on watches that allow them.
    bookmarks: u64,
    log: Vec<String>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    changed: Condvar,
    stop: AtomicBool,
}

/// The fake API server; stops (and cuts its watches) when dropped.
#[derive(Debug)]
pub struct FakeKube {
    port: u16,
    inner: Arc<Inner>,
}

fn kind_of(obj: &Value) -> Option<(&'static str, &'static str, &'static str)> {
    KINDS.iter().copied().find(|(_, k, _)| obj["kind"] == *k)
}

fn key(obj: &Value) -> String {
    let m = &obj["metadata"];
    format!(
        "{}/{}",
        m["namespace"].as_str().unwrap_or(""),
        m["name"].as_str().unwrap_or("")
    )
}

impl FakeKube {
    /// Serves `objects` (Pods, Nodes, ... in Kubernetes JSON) on 127.0.0.1:`port` (0: any
    /// free port).
    pub fn start(port: u16, objects: Vec<Value>) -> io::Result<FakeKube> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        let port = listener.local_addr()?.port();
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                rv: 100,
                objects: BTreeMap::new(),
                history: Vec::new(),
                compacted: 0,
                gone: Gone::Event,
                drops: 0,
                expiries: 0,
                bookmarks: 0,
                log: Vec::new(),
            }),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        if let Ok(mut s) = inner.state.lock() {
            for o in objects {
                apply(&mut s, o, true);
            }
        }
        let i = Arc::clone(&inner);
        listener.set_nonblocking(true)?;
        std::thread::spawn(move || {
            while !i.stop.load(Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let i = Arc::clone(&i);
                        std::thread::spawn(move || {
                            let _ = s.set_nonblocking(false);
                            let _ = serve(&i, s);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(FakeKube { port, inner })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A kubeconfig naming this server (written to `path`).
    pub fn write_kubeconfig(port: u16, path: &std::path::Path) -> io::Result<()> {
        std::fs::write(
            path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://127.0.0.1:{port}\nusers:\n- name: podflow\n  user:\n    token: test-token\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: podflow\ncurrent-context: fake\n"
            ),
        )
    }

    fn change(&self, f: impl FnOnce(&mut State)) {
        let mut s = self.inner.state.lock().expect("fake state");
        f(&mut s);
        drop(s);
        self.inner.changed.notify_all();
    }

    /// Creates or replaces `obj` (a Pod, Node, ... in Kubernetes JSON); open watches see it.
    pub fn apply(&self, obj: Value) {
        self.change(|s| apply(s, obj, true));
    }

    /// Deletes the object of `kind` named `namespace/name`; open watches see it.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) {
        self.change(|s| delete(s, kind, namespace, name, true));
    }

    /// The watch history is lost (as when etcd compacts): `changes` are made without any
    /// watch seeing them, every open watch ends with a 410 (`how`), and every watch from
    /// an older resourceVersion is refused with 410 until the client lists again.
    pub fn expire(&self, how: Gone, changes: impl FnOnce(&mut Changes<'_>)) {
        self.change(|s| {
            changes(&mut Changes(s));
            s.history.clear();
            s.compacted = s.rv;
            s.gone = how;
            s.expiries += 1;
        });
    }

    /// Cuts every open watch mid-stream (the connection closes without the end of the
    /// chunked body); a re-watch resumes from its last resourceVersion.
    pub fn drop_watches(&self) {
        self.change(|s| s.drops += 1);
    }

    /// Sends a BOOKMARK with the current resourceVersion on every open watch that allows
    /// bookmarks: a re-watch then resumes from it.
    pub fn bookmark(&self) {
        self.change(|s| s.bookmarks += 1);
    }

    /// Every request so far, as `path?query`.
    pub fn log(&self) -> Vec<String> {
        self.inner.state.lock().expect("fake state").log.clone()
    }

    /// Requests for `path` so far that were lists (not watches).
    pub fn lists(&self, path: &str) -> usize {
        self.log()
            .iter()
            .filter(|l| l.starts_with(&format!("{path}?")) && !l.contains("watch=true"))
            .count()
    }

    /// Watches of `path` so far, as their query strings.
    pub fn watches(&self, path: &str) -> Vec<String> {
        self.log()
            .into_iter()
            .filter_map(|l| {
                l.strip_prefix(&format!("{path}?"))
                    .filter(|q| q.contains("watch=true"))
                    .map(str::to_string)
            })
            .collect()
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.inner.stop.store(true, Relaxed);
        self.inner.changed.notify_all();
    }
}

/// Changes no watch sees ([`FakeKube::expire`]).
#[derive(Debug)]
pub struct Changes<'a>(&'a mut State);

impl Changes<'_> {
    /// Creates or replaces `obj`.
    pub fn apply(&mut self, obj: Value) {
        apply(self.0, obj, false);
    }

    /// Deletes an object.
    pub fn delete(&mut self, kind: &str, namespace: &str, name: &str) {
        delete(self.0, kind, namespace, name, false);
    }
}

fn apply(s: &mut State, mut obj: Value, seen: bool) {
    let (path, _, _) = kind_of(&obj).expect("a kind the fake serves");
    s.rv += 1;
    obj["metadata"]["resourceVersion"] = json!(s.rv.to_string());
    let k = (path, key(&obj));
    let ty = if s.objects.contains_key(&k) {
        "MODIFIED"
    } else {
        "ADDED"
    };
    s.objects.insert(k, obj.clone());
    if seen {
        s.history
            .push((s.rv, path, json!({"type": ty, "object": obj})));
    }
}

fn delete(s: &mut State, kind: &str, namespace: &str, name: &str, seen: bool) {
    let (path, _, _) = KINDS
        .iter()
        .copied()
        .find(|(_, k, _)| *k == kind)
        .expect("a kind the fake serves");
    if let Some(mut obj) = s.objects.remove(&(path, format!("{namespace}/{name}"))) {
        s.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(s.rv.to_string());
        if seen {
            s.history
                .push((s.rv, path, json!({"type": "DELETED", "object": obj})));
        }
    }
}

fn respond(s: &mut TcpStream, status: &str, body: &Value) -> io::Result<()> {
    let body = body.to_string();
    write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn chunk(s: &mut TcpStream, v: &Value) -> io::Result<()> {
    let line = format!("{v}\n");
    write!(s, "{:x}\r\n{line}\r\n", line.len())?;
    s.flush()
}

fn gone_status(rv: u64, compacted: u64) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": format!("too old resource version: {rv} ({compacted})"),
           "reason": "Expired", "code": 410})
}

fn serve(inner: &Inner, mut s: TcpStream) -> io::Result<()> {
    let mut r = BufReader::new(s.try_clone()?);
    let mut first = String::new();
    r.read_line(&mut first)?;
    loop {
        let mut l = String::new();
        if r.read_line(&mut l)? == 0 || l == "\r\n" || l == "\n" {
            break;
        }
    }
    let target = first.split_whitespace().nth(1).unwrap_or("/").to_string();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let param = |k: &str| {
        query
            .split('&')
            .find_map(|p| p.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
    };
    let watch = param("watch") == Some("true");
    let mut st = inner.state.lock().expect("fake state");
    st.log.push(format!("{path}?{query}"));
    let Some((path, kind, api_version)) = KINDS.iter().copied().find(|(p, _, _)| *p == path) else {
        drop(st);
        return respond(
            &mut s,
            "404 Not Found",
            &json!({"kind": "Status", "code": 404}),
        );
    };
    if !watch {
        let items: Vec<Value> = st
            .objects
            .iter()
            .filter(|((p, _), _)| *p == path)
            .map(|(_, o)| o.clone())
            .collect();
        let list = json!({"apiVersion": api_version, "kind": format!("{kind}List"),
                          "metadata": {"resourceVersion": st.rv.to_string()}, "items": items});
        drop(st);
        return respond(&mut s, "200 OK", &list);
    }
    let from: u64 = param("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(st.rv);
    let timeout = Duration::from_secs(
        param("timeoutSeconds")
            .and_then(|v| v.parse().ok())
            .unwrap_or(290),
    );
    if from < st.compacted && st.gone == Gone::Http {
        let status = gone_status(from, st.compacted);
        drop(st);
        return respond(&mut s, "410 Gone", &status);
    }
    write!(
        s,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )?;
    if from < st.compacted {
        let status = gone_status(from, st.compacted);
        drop(st);
        chunk(&mut s, &json!({"type": "ERROR", "object": status}))?;
        return write!(s, "0\r\n\r\n");
    }
    let (drops, expiries) = (st.drops, st.expiries);
    let mut bookmarks = st.bookmarks;
    let bookmarks_allowed = param("allowWatchBookmarks") == Some("true");
    let t0 = Instant::now();
    let mut sent = from;
    loop {
        let events: Vec<(u64, Value)> = st
            .history
            .iter()
            .filter(|(rv, p, _)| *rv > sent && *p == path)
            .map(|(rv, _, e)| (*rv, e.clone()))
            .collect();
        if st.expiries != expiries {
            // As an ERROR event on the open watch; or the watch ends and the re-watch is
            // answered HTTP 410.
            let status = gone_status(sent, st.compacted);
            let event = st.gone == Gone::Event;
            drop(st);
            if event {
                chunk(&mut s, &json!({"type": "ERROR", "object": status}))?;
            }
            return write!(s, "0\r\n\r\n");
        }
        if st.drops != drops || inner.stop.load(Relaxed) {
            drop(st);
            return s.shutdown(Shutdown::Both);
        }
        if t0.elapsed() >= timeout {
            drop(st);
            return write!(s, "0\r\n\r\n");
        }
        let bookmark = (st.bookmarks != bookmarks && bookmarks_allowed).then_some(st.rv);
        bookmarks = st.bookmarks;
        drop(st);
        for (rv, e) in events {
            chunk(&mut s, &e)?;
            sent = rv;
        }
        if let Some(rv) = bookmark {
            chunk(
                &mut s,
                &json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api_version,
                        "metadata": {"resourceVersion": rv.to_string()}}}),
            )?;
            sent = sent.max(rv);
        }
        st = inner.state.lock().expect("fake state");
        st = inner
            .changed
            .wait_timeout(st, Duration::from_millis(200))
            .expect("fake state")
            .0;
    }
}

/// A Running pod in Kubernetes JSON: `namespace/name` on `node` with `ip`, owned by
/// `owner` (kind, name) when given, created at `created` (RFC 3339).
pub fn pod(
    namespace: &str,
    name: &str,
    node: &str,
    ip: &str,
    owner: Option<(&str, &str)>,
    created: &str,
) -> Value {
    let mut meta = json!({
        "name": name, "namespace": namespace, "uid": format!("uid-{namespace}-{name}"),
        "creationTimestamp": created, "labels": {"app": name}
    });
    if let Some((kind, owner)) = owner {
        meta["ownerReferences"] = owner_ref(kind, owner);
    }
    json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": meta,
        "spec": {"nodeName": node, "containers": [{"name": "main", "image": "nginx"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    })
}

fn owner_ref(kind: &str, name: &str) -> Value {
    let api_version = match kind {
        "ReplicaSet" | "Deployment" | "StatefulSet" | "DaemonSet" => "apps/v1",
        "Job" | "CronJob" => "batch/v1",
        _ => "v1",
    };
    json!([{"apiVersion": api_version, "kind": kind, "name": name,
            "uid": format!("uid-{name}"), "controller": true}])
}

/// A ReplicaSet `namespace/name` owned by Deployment `deployment`.
pub fn replicaset(namespace: &str, name: &str, deployment: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{name}"),
                     "ownerReferences": owner_ref("Deployment", deployment)},
        "spec": {"selector": {"matchLabels": {"app": deployment}}}
    })
}

/// A Node with `ip` as its InternalIP in `zone` (region: the zone without its last letter).
pub fn node(name: &str, ip: &str, zone: &str) -> Value {
    let region = &zone[..zone.len().saturating_sub(1)];
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "uid": format!("uid-{name}"), "labels": {
            "topology.kubernetes.io/zone": zone, "topology.kubernetes.io/region": region}},
        "spec": {"providerID": format!("aws:///{zone}/i-{name}")},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}]}
    })
}
