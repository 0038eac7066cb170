#!/usr/bin/env bash
# The routing mesh's cost (issue 18): one HTTP server, three ways in, in one run.
#
#   scripts/bench-mesh.sh
#
# Environment:
#   CONNECTIONS  concurrent client connections of the load generator (default 16)
#   DURATION     seconds of load per path (default 10)
#   PORT         the published port (default 28080)
#
# A release build (`cargo build --release -p shoal -p shoal-tests --bins`), then a
# two-node cluster on loopback: node 1 (manager, 127.0.43.1) and node 2 (worker, 127.0.43.2),
# each started with `--publish-addr` its own address, state in a temp dir. One replica of
# busybox httpd (the local test image, scripts/test-image.sh) serving a one-line page,
# pinned to node 1 (`--constraint node.hostname==bench-mesh-1`), published on PORT:80.
# `mesh-load` (tests/src/bin/mesh-load.rs: HTTP/1.0 GETs, one new connection per request,
# CONNECTIONS threads for DURATION seconds) measures, one after the other:
#
#   direct   the container's own address on the `shoal` bridge, port 80 (no mesh)
#   local    node 1's published port: the mesh forwards to the task on its own node
#   remote   node 2's published port: node 2 forwards over a QUIC stream to node 1
#
# Printed per path: mesh-load's JSON (requests, errors, req_per_s, p50_us, p99_us), the
# ratios to direct (req/s and p50), and the CPU time (user + system, /proc/PID/stat) both
# daemons used during that path's run, per request. Then both nodes' mesh counters (node
# 2's remote_forwards proves the remote path ran). Everything the script starts (daemons,
# containers, the temp dir) is removed on exit, also on failure or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
CONNECTIONS=${CONNECTIONS:-16}
DURATION=${DURATION:-10}
PORT=${PORT:-28080}
IMAGE=${SHOAL_TEST_IMAGE:-shoal-test/busybox:latest}

die() { printf 'bench-mesh: %s\n' "$*" >&2; exit 1; }
[[ $CONNECTIONS =~ ^[0-9]+$ ]] || die "CONNECTIONS must be a whole number"
[[ $DURATION =~ ^[0-9]+([.][0-9]+)?$ ]] || die "DURATION must be a number of seconds"
[[ $PORT =~ ^[0-9]+$ ]] || die "PORT must be a port number"

cargo build --quiet --release -p shoal -p shoal-tests --bins
SHOAL="$PWD/target/release/shoal"
LOAD="$PWD/target/release/mesh-load"
scripts/test-image.sh

DIR=$(mktemp -d /tmp/shoal-bench-mesh.XXXXXX)
P1= P2=
cleanup() {
    local p d cluster ids
    for p in $P1 $P2; do { kill -9 "$p" && wait "$p"; } 2>/dev/null || true; done
    for d in "$DIR"/n1 "$DIR"/n2; do
        [[ -f "$d/node.json" ]] || continue
        cluster=$(sed -n 's/.*"cluster_id": *"\([^"]*\)".*/\1/p' "$d/node.json" | head -1)
        [[ -n $cluster ]] || continue
        ids=$(docker ps -aq --filter "label=shoal.cluster=$cluster" 2>/dev/null || true)
        [[ -z $ids ]] || docker rm -f $ids >/dev/null 2>&1 || true
    done
    rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

sh1() { "$SHOAL" -H "unix://$DIR/n1.sock" "$@"; }
sh2() { "$SHOAL" -H "unix://$DIR/n2.sock" "$@"; }

start_node() { # N → starts node N on 127.0.43.N, sets P<N>
    local n=$1 ip=127.0.43.$1
    RUST_LOG=${RUST_LOG:-warn} "$SHOAL" daemon --no-discovery --state-dir "$DIR/n$n" --socket "$DIR/n$n.sock" \
        --listen-addr "$ip:4747" --publish-addr "$ip" --hostname "bench-mesh-$n" \
        2>"$DIR/n$n.log" &
    printf -v "P$n" '%s' "$!"
    local i
    for i in $(seq 200); do [[ -S "$DIR/n$n.sock" ]] && return 0; sleep 0.05; done
    cat "$DIR/n$n.log" >&2
    die "node $n did not start"
}
start_node 1
start_node 2
sh1 init >/dev/null
sh2 join --token "$(sh1 join-token -q worker)" 127.0.43.1:4747 >/dev/null
cluster=$(sed -n 's/.*"cluster_id": *"\([^"]*\)".*/\1/p' "$DIR/n1/node.json" | head -1)
[[ -n $cluster ]] || die "node 1 has no cluster id"

sh1 service create --detach --name web --replicas 1 \
    --constraint node.hostname==bench-mesh-1 -p "$PORT:80" \
    "$IMAGE" sh -c 'mkdir -p /www; echo hello > /www/index.html; trap "exit 0" TERM; httpd -f -p 80 -h /www & wait' \
    >/dev/null

container=
for _ in $(seq 600); do
    container=$(docker ps -q --filter "label=shoal.cluster=$cluster" --filter label=shoal.service.name=web | head -1)
    [[ -n $container ]] && break
    sleep 0.1
done
[[ -n $container ]] || die "the web task did not start: $(sh1 service ps web 2>&1)"
cip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$container")
[[ -n $cip ]] || die "the container $container has no address"

# wait_served ADDR → polls (up to 60 s) until one request to ADDR succeeds.
wait_served() {
    local i
    for i in $(seq 120); do
        "$LOAD" --addr "$1" --connections 1 --duration 0.2 >/dev/null 2>&1 && return 0
        sleep 0.3
    done
    die "$1 did not answer within 60 s"
}
DIRECT="$cip:80" LOCAL="127.0.43.1:$PORT" REMOTE="127.0.43.2:$PORT"
for a in "$DIRECT" "$LOCAL" "$REMOTE"; do wait_served "$a"; done

# utime + stime of a process, in milliseconds; user_ms: utime only.
cpu_ms() { awk -v hz="$(getconf CLK_TCK)" '{ print int(($14 + $15) * 1000 / hz) }' "/proc/$1/stat"; }
user_ms() { awk -v hz="$(getconf CLK_TCK)" '{ print int($14 * 1000 / hz) }' "/proc/$1/stat"; }
field() { sed -n "s/.*\"$2\":\([0-9.]*\).*/\1/p" <<<"$1"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }

declare -A RPS P50
P99_DIRECT=0
echo "routing mesh: $CONNECTIONS connections, ${DURATION}s per path, one connection per request"
for path in direct local remote; do
    case $path in
    direct) addr=$DIRECT ;;
    local) addr=$LOCAL ;;
    remote) addr=$REMOTE ;;
    esac
    c1=$(cpu_ms "$P1") c2=$(cpu_ms "$P2") u1=$(user_ms "$P1") u2=$(user_ms "$P2")
    out=$("$LOAD" --addr "$addr" --connections "$CONNECTIONS" --duration "$DURATION") ||
        die "$path: mesh-load failed: $out"
    d1=$(($(cpu_ms "$P1") - c1)) d2=$(($(cpu_ms "$P2") - c2))
    du=$(($(user_ms "$P1") - u1 + $(user_ms "$P2") - u2))
    RPS[$path]=$(field "$out" req_per_s)
    P50[$path]=$(field "$out" p50_us)
    if [[ $path == direct ]]; then P99_DIRECT=$(field "$out" p99_us); fi
    requests=$(field "$out" requests)
    per_req=$(awk -v t="$((d1 + d2))" -v n="$requests" 'BEGIN { if (n > 0) printf "%.1f", t * 1000 / n; else print "-" }')
    printf '%-6s %s\n' "$path" "$out"
    printf '       vs direct: req/s %s, p50 %s, p99 %s; daemon CPU: node1 %d ms, node2 %d ms (user %d ms), %s us per request\n' \
        "$(ratio "${RPS[$path]}" "${RPS[direct]}")" "$(ratio "${P50[$path]}" "${P50[direct]}")" \
        "$(ratio "$(field "$out" p99_us)" "$P99_DIRECT")" "$d1" "$d2" "$du" "$per_req"
done
echo
for n in 1 2; do
    printf 'node %d mesh: %s\n' "$n" "$("sh$n" info --format json | tr -d ' \n' |
        sed -n 's/.*"mesh":\({[^}]*}\).*/\1/p')"
done
