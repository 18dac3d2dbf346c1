#!/usr/bin/env bash
# Builds podflow's container image (deploy/Containerfile), or with --agent the agent image
# (deploy/Containerfile.agent: podflow-agent alone), and checks it:
#   1. the binary, cargo profile `dist` (release without debug info, stripped), linked
#      statically (glibc's static-pie; if a build ever comes out dynamic, exactly the
#      libraries ldd lists are copied next to it instead);
#   2. the image, with `podman build` FROM scratch (no registry is contacted);
#   3. its filesystem, exported (`podman create` + `podman export`), runs
#      `/podflow --version` (or `/podflow-agent --version`) in a chroot, as root and as the
#      image's user, and resolves a name through /etc/hosts and through a DNS server on
#      127.0.0.2 (a static glibc must still resolve the server's Service name in a pod):
#      `podflow flows --url`, or the agent connecting to its --server, in a network
#      namespace of its own (it reads that namespace's conntrack as root);
#   4. its size: the layer as stored, and compressed as a registry stores it (gzip).
# Podman here cannot start containers (crun setrlimit fails), hence the chroot.
#
#   sudo scripts/build-image.sh                    # localhost/podflow:<version>
#   sudo scripts/build-image.sh --agent            # localhost/podflow-agent:<version>
#   sudo scripts/build-image.sh --tag NAME:TAG     # another name
#   sudo scripts/build-image.sh --no-build         # reuse the binary already built
#
# The last line is `image_compressed_bytes=N` (and the tests read it).
set -euo pipefail
cd "$(dirname "$0")/.."

tag=""
build=1
name=podflow
while [ $# -gt 0 ]; do
  case "$1" in
    --agent) name=podflow-agent; shift ;;
    --tag) tag="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    *) echo "build-image.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

if [ "$(id -u)" != 0 ]; then
  echo "build-image.sh: run as root (podman's root storage, chroot)" >&2
  exit 1
fi
for cmd in cargo podman python3 gzip ip; do
  command -v "$cmd" >/dev/null || { echo "build-image.sh: needs $cmd" >&2; exit 1; }
done

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
tag=${tag:-localhost/$name:$version}
containerfile=deploy/Containerfile
[ "$name" = podflow-agent ] && containerfile=deploy/Containerfile.agent
target=x86_64-unknown-linux-gnu
target_dir=${CARGO_TARGET_DIR:-target}
bin="$target_dir/$target/dist/$name"

if [ "$build" = 1 ]; then
  start=$(date +%s)
  # --target keeps crt-static off the build scripts and proc macros.
  RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --locked --profile dist --target "$target" -p podflow --bin "$name"
  echo "binary built in $(( $(date +%s) - start )) s"
fi
[ -x "$bin" ] || { echo "build-image.sh: no binary at $bin (build it, or drop --no-build)" >&2; exit 1; }

work=$(mktemp -d /tmp/podflow-image.XXXXXX)
container=""
dns_pid=""
agent_pid=""
netns=""
proc_mounted=""
cleanup() {
  [ -n "$proc_mounted" ] && umount "$work/fs/proc" 2>/dev/null || true
  [ -n "$agent_pid" ] && kill -9 "$agent_pid" 2>/dev/null || true
  [ -n "$dns_pid" ] && kill "$dns_pid" 2>/dev/null || true
  [ -n "$container" ] && podman rm -f "$container" >/dev/null 2>&1 || true
  [ -n "$netns" ] && ip netns del "$netns" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# The build context: rootfs/ is copied to / as is.
root="$work/context/rootfs"
mkdir -p "$root/etc" "$root/tmp" "$root/var/lib/podflow"
install -m 0755 "$bin" "$root/$name"
libs=$(ldd "$bin" 2>/dev/null | awk '/=> \// {print $3} /^\t\/[^ ]+ \(/ {print $1}' || true)
if [ -n "$libs" ]; then
  echo "the binary is dynamic; copying the libraries ldd lists:"
  for lib in $libs; do
    echo "  $lib"
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
else
  echo "the binary is static: no libraries"
fi
printf 'root:x:0:0:root:/:/sbin/nologin\nnonroot:x:65532:65532:podflow:/var/lib/podflow:/sbin/nologin\n' > "$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$root/etc/group"
chmod 1777 "$root/tmp"
chown 65532:65532 "$root/var/lib/podflow"
chmod 0750 "$root/var/lib/podflow"
cp "$containerfile" "$work/context/Containerfile"

podman build --quiet --format oci --build-arg "VERSION=$version" -t "$tag" "$work/context" >/dev/null
echo "built $tag"

# The filesystem as a container would see it.
container=$(podman create "$tag")
mkdir "$work/fs"
podman export "$container" | tar -x -C "$work/fs"
want="$name $version"
got=$(chroot "$work/fs" "/$name" --version)
[ "$got" = "$want" ] || { echo "chroot /$name --version: '$got', want '$want'" >&2; exit 1; }
got=$(chroot --userspec=65532:65532 "$work/fs" "/$name" --version)
[ "$got" = "$want" ] || { echo "as 65532: '$got', want '$want'" >&2; exit 1; }
user=$(podman image inspect --format '{{.Config.User}}' "$tag")
[ "$user" = "65532:65532" ] || { echo "image user is '$user', want 65532:65532" >&2; exit 1; }
echo "chroot: '$got' as root and as 65532"

# Name resolution in the image: /etc/hosts, then DNS (what a pod has: both mounted by
# the kubelet). `podflow flows` reports a refused connection only after resolving; the
# agent logs it when it connects to its --server. The agent runs as root (conntrack) in a
# namespace of its own, where the DNS server runs too.
in_ns=()
if [ "$name" = podflow-agent ]; then
  netns="pf-image-$$"
  ip netns add "$netns"
  ip -n "$netns" link set lo up
  in_ns=(ip netns exec "$netns")
  # The agent reads its namespace's conntrack settings in /proc/sys/net/netfilter.
  mkdir -p "$work/fs/proc"
  mount --bind /proc "$work/fs/proc"
  proc_mounted=1
fi
resolves() {
  local out
  if [ "$name" = podflow ]; then
    out=$(chroot --userspec=65532:65532 "$work/fs" /podflow flows --url "http://$1:1" 2>&1 || true)
  else
    rm -rf "$work/fs/tmp/agent"
    "${in_ns[@]}" chroot "$work/fs" /podflow-agent --server "http://$1:1" --data-dir /tmp/agent \
      --listen 127.0.0.1:0 --log-format json >"$work/agent.log" 2>&1 &
    agent_pid=$!
    for _ in $(seq 50); do
      grep -q "connection to the server failed" "$work/agent.log" && break
      sleep 0.1
    done
    kill -9 "$agent_pid" 2>/dev/null || true
    wait "$agent_pid" 2>/dev/null || true
    agent_pid=""
    out=$(grep -m1 "connection to the server failed" "$work/agent.log" || cat "$work/agent.log")
  fi
  case "$out" in
    *"Connection refused"*) return 0 ;;
    *) echo "resolving $1 in the image: $out" >&2; return 1 ;;
  esac
}
echo "127.0.0.1 localhost podflow-hosts.test" > "$work/fs/etc/hosts"
resolves podflow-hosts.test
"${in_ns[@]}" python3 - "$work/dns.ready" <<'PY' &
# A one-name DNS server on 127.0.0.2:53: podflow-dns.test -> 127.0.0.1, else NXDOMAIN.
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.2", 53))
s.settimeout(30)
open(sys.argv[1], "w").close()
try:
    while True:
        q, peer = s.recvfrom(512)
        tid, flags, qd = struct.unpack(">HHH", q[:6])
        i = 12
        labels = []
        while q[i]:
            labels.append(q[i + 1 : i + 1 + q[i]].decode())
            i += q[i] + 1
        qtype, = struct.unpack(">H", q[i + 1 : i + 3])
        question = q[12 : i + 5]
        name = ".".join(labels).lower()
        if name == "podflow-dns.test" and qtype == 1:
            answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 5, 4) + socket.inet_aton("127.0.0.1")
            s.sendto(struct.pack(">HHHHHH", tid, 0x8180, 1, 1, 0, 0) + question + answer, peer)
        else:
            rcode = 0 if name == "podflow-dns.test" else 3
            s.sendto(struct.pack(">HHHHHH", tid, 0x8180 | rcode, 1, 0, 0, 0) + question, peer)
except socket.timeout:
    pass
PY
dns_pid=$!
for _ in $(seq 50); do [ -e "$work/dns.ready" ] && break; sleep 0.1; done
echo "nameserver 127.0.0.2" > "$work/fs/etc/resolv.conf"
resolves podflow-dns.test
echo "name resolution: /etc/hosts and DNS"

layer=$(podman image inspect --format '{{.Size}}' "$tag")
mkdir "$work/oci"
podman push --quiet --compression-format gzip "$tag" "oci:$work/oci:image" >/dev/null
compressed=$(find "$work/oci/blobs" -type f -printf '%s\n' | awk '{s+=$1} END {print s}')
echo "image $tag: $layer bytes unpacked, $compressed bytes compressed (gzip, as pushed)"
echo "image_compressed_bytes=$compressed"
