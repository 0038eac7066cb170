#!/usr/bin/env bash
# A local Shoal cluster serving a real service:
#   three daemons on 127.0.42.1-3 (one manager, two workers), a web service of three
#   busybox httpd replicas on Docker spread across them, published on port 8080 of every
#   node through the routing mesh, a rolling update (start-first, with a health check) that
#   changes the greeting while requests keep flowing (and counts the failed ones), then a
#   node killed with kill -9, the surviving nodes still serving, and its task running
#   elsewhere within seconds.
# Everything lives in a temp dir; Ctrl-C (or the end of the demo) stops the daemons,
# removes their containers and the temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --quiet --bin shoal
SHOAL="$PWD/target/debug/shoal"
DIR=$(mktemp -d /tmp/shoal-demo.XXXXXX)
PIDS=()

cleanup() {
    for pid in "${PIDS[@]}"; do
        { kill -9 "$pid" && wait "$pid"; } 2>/dev/null || true
    done
    if [[ -n "${CLUSTER:-}" ]] && command -v docker >/dev/null; then
        ids=$(docker ps -aq --filter "label=shoal.cluster=$CLUSTER" 2>/dev/null || true)
        [[ -n "$ids" ]] && docker rm -f $ids >/dev/null 2>&1 || true
    fi
    rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
sh_() { step "shoal $*"; "$SHOAL" -H "unix://$DIR/n1.sock" "$@"; }

for i in 1 2 3; do
    "$SHOAL" daemon --state-dir "$DIR/n$i" --socket "$DIR/n$i.sock" \
        --listen-addr "127.0.42.$i:4747" --publish-addr "127.0.42.$i" --hostname "node-$i" \
        2>"$DIR/n$i.log" &
    PIDS+=($!)
done
for i in 1 2 3; do
    for _ in $(seq 100); do [[ -S "$DIR/n$i.sock" ]] && break; sleep 0.1; done
done

sh_ init
CLUSTER=$("$SHOAL" -H "unix://$DIR/n1.sock" info --format json | sed -n 's/.*"cluster_id": "\([^"]*\)".*/\1/p')
TOKEN=$("$SHOAL" -H "unix://$DIR/n1.sock" join-token -q worker)
for i in 2 3; do
    step "shoal join --token <worker token>   (on node-$i)"
    "$SHOAL" -H "unix://$DIR/n$i.sock" join --token "$TOKEN"
done
sh_ node ls

if ! docker image inspect shoal-test/busybox:latest >/dev/null 2>&1; then
    step "scripts/test-image.sh   (builds the local busybox image; no registry needed)"
    scripts/test-image.sh
fi

sh_ service create --name web --replicas 3 -p 8080:80 -e GREETING=hello shoal-test/busybox:latest \
    sh -c 'mkdir -p /www && echo "$GREETING from $(hostname)" > /www/index.html && httpd -f -p 80 -h /www'
sh_ service ls
sh_ service ps web

get() { curl -s -m 3 "$1" 2>/dev/null || wget -qO- -T 3 "$1" 2>/dev/null; }

curl_mesh() {
    step "curl port 8080 of every node (the routing mesh picks a replica)"
    for i in "$@"; do
        for _ in 1 2 3; do
            printf 'node-%s:8080 -> ' "$i"
            get "http://127.0.42.$i:8080/" || echo "(no answer)"
        done
    done
}
curl_mesh 1 2 3

# Requests back to back against node-2 while something happens; prints how many failed.
LOAD_STOP="$DIR/load.stop"
load_start() {
    rm -f "$LOAD_STOP"
    (ok=0 failed=0
     while [[ ! -e "$LOAD_STOP" ]]; do
         if get "http://127.0.42.$1:8080/" >/dev/null; then ok=$((ok + 1)); else failed=$((failed + 1)); fi
     done
     echo "$ok requests answered, $failed failed" >"$DIR/load.out") &
    LOAD_PID=$!
}
load_end() {
    touch "$LOAD_STOP"
    wait "$LOAD_PID" 2>/dev/null || true
    step "requests to node-$1:8080 meanwhile: $(cat "$DIR/load.out")"
}

# A rolling update: each new task starts beside the old one and replaces it only once its
# health check passes; the mesh takes the old one out of rotation before it stops.
load_start 2
sh_ service update --env-add GREETING=bonjour --update-order start-first \
    --health-cmd 'wget -qO- http://127.0.0.1:80/ >/dev/null' --health-interval 500ms \
    --health-retries 2 web
load_end 2
sh_ service ps web
curl_mesh 1 2 3

load_start 1
step "kill -9 node-3's daemon"
{ kill -9 "${PIDS[2]}" && wait "${PIDS[2]}"; } 2>/dev/null || true
start=$(date +%s%N)
for _ in $(seq 200); do
    if "$SHOAL" -H "unix://$DIR/n1.sock" service ps web --format json | tr -d ' \n' \
        | grep -q '"state":"orphaned"' && \
       [[ $("$SHOAL" -H "unix://$DIR/n1.sock" service ls --format json | sed -n 's/.*"running": \([0-9]*\).*/\1/p') == 3 ]]; then
        break
    fi
    sleep 0.1
done
echo "its task runs elsewhere after $(( ($(date +%s%N) - start) / 1000000 )) ms"
load_end 1
sh_ node ls
sh_ service ps web

echo
if [[ "${SHOAL_DEMO_NO_WAIT:-0}" == 1 ]]; then
    exit 0
fi
echo "Logs: $DIR/n*.log. Press Ctrl-C to stop the cluster and clean up."
wait "${PIDS[0]}"
