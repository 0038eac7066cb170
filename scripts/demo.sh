#!/usr/bin/env bash
# Shoal in two minutes, on this machine:
#   builds the release binary; starts three daemons on 127.0.42.1-3 (one manager, two
#   workers) in a temp dir; deploys `web`, three replicas of a small HTTP server published
#   on port 8080 of every node through the routing mesh (on Docker with the local busybox
#   test image when an engine answers, else as plain processes); shows `node ls` and
#   `service ps`; asks each node's port 8080; (on Docker) asks `web` by name from inside
#   one of its containers (service discovery); rolls the service to a new version
#   (start-first, with a health check) while requests keep flowing, and counts the failed
#   ones; shows `service logs`; kills a node with kill -9 and shows its task running
#   elsewhere. Ctrl-C, or the end, stops the daemons and removes their tasks, containers
#   and the temp dir.
#
#   scripts/demo.sh [--keep] [--check] [--debug] [--driver docker|process]
#
#   --keep     leave the cluster running at the end, and print the `export SHOAL_HOST=...`
#              lines to try commands by hand (and the command that stops it)
#   --check    non-interactive: every step is checked (nodes ready, every node answers,
#              no failed request during the update, the new version everywhere, logs, the
#              killed node's task replaced); exits 1 at the first step that misbehaves.
#              Uses the debug build (what scripts/test.sh builds anyway).
#   --debug    use the debug build instead of the release build
#   --driver   force the task driver (default: docker when an engine answers)
set -euo pipefail
cd "$(dirname "$0")/.."

KEEP=0 CHECK=0 PROFILE=release DRIVER=''
while (($#)); do
    case $1 in
    --keep) KEEP=1 ;;
    --check) CHECK=1 PROFILE=debug ;;
    --debug) PROFILE=debug ;;
    --driver) DRIVER=${2:?--driver docker|process}; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "demo.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

bold() { printf '\n\033[1m%s\033[0m\n' "$*"; }
step() { bold "\$ $*"; }
DIR='' CLUSTER='' PIDS=()

fail() {
    printf '\n\033[1;31mdemo: FAILED: %s\033[0m\n' "$*" >&2
    if [[ -n $DIR ]]; then
        for i in 1 2 3; do
            [[ -f $DIR/n$i.log ]] || continue
            echo "--- last lines of node-$i's log ---" >&2
            tail -n 15 "$DIR/n$i.log" >&2
        done
    fi
    exit 1
}

if [[ $PROFILE == release ]]; then
    step "cargo build --release --bin shoal   (the first time takes a while: LTO)"
    cargo build --release --quiet --bin shoal
else
    step "cargo build --bin shoal"
    cargo build --quiet --bin shoal
fi
SHOAL="$PWD/target/$PROFILE/shoal"

if [[ -z $DRIVER ]]; then
    if docker info >/dev/null 2>&1; then DRIVER=docker; else DRIVER=process; fi
fi
case $DRIVER in
docker | process) ;;
*) echo "demo.sh: --driver docker or process" >&2; exit 2 ;;
esac
if [[ $DRIVER == docker ]] && ! docker image inspect shoal-test/busybox:latest >/dev/null 2>&1; then
    step "scripts/test-image.sh   (builds the local busybox image; no registry needed)"
    scripts/test-image.sh
fi

DIR=$(mktemp -d /tmp/shoal-demo.XXXXXX)

# Stops everything this demo started: its daemons, the process driver's shims and tasks
# (processes naming the temp dir: they outlive their daemon by design), its containers,
# the temp dir. Also written to $DIR/stop.sh for --keep.
cat >"$DIR/stop.sh" <<EOF
#!/usr/bin/env bash
# Stops the demo cluster in $DIR and removes it.
for _ in 1 2 3 4 5; do
    pids=\$({ grep -laF "$DIR" /proc/[0-9]*/cmdline; grep -laF "HOME=$DIR" /proc/[0-9]*/environ; } 2>/dev/null |
        sed -E 's#^/proc/([0-9]+)/.*#\1#' | sort -un | grep -vx "\$\$" || true)
    [[ -n \$pids ]] || break
    kill -9 \$pids 2>/dev/null || true
    sleep 0.2
done
if command -v docker >/dev/null; then
    ids=''
    for c in \$(cat "$DIR/clusters" 2>/dev/null); do
        ids="\$ids \$(docker ps -aq --filter "label=shoal.cluster=\$c" 2>/dev/null || true)"
    done
    [[ -z \${ids// /} ]] || docker rm -f \$ids >/dev/null 2>&1 || true
    for i in 1 2 3; do docker network rm "shoal-demo-\$i" >/dev/null 2>&1 || true; done
fi
rm -rf "$DIR"
EOF
chmod +x "$DIR/stop.sh"

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if ((KEEP && rc == 0)); then
        exit 0
    fi
    for pid in "${PIDS[@]}"; do
        { kill -9 "$pid" && wait "$pid"; } 2>/dev/null || true
    done
    "$DIR/stop.sh"
    exit "$rc"
}
trap cleanup EXIT
trap 'echo; echo "interrupted: cleaning up"; exit 130' INT TERM

sh_() { step "shoal $*"; "$SHOAL" -H "unix://$DIR/n1.sock" "$@"; }
q() { "$SHOAL" -H "unix://$DIR/n1.sock" "$@"; }

step "shoal daemon ...   (three nodes: 127.0.42.1, .2, .3; state and logs in $DIR)"
for i in 1 2 3; do
    # Service discovery: three daemons share this machine's engine, so each gets a network
    # of its own (one daemon per machine needs neither flag).
    if [[ $DRIVER == docker ]]; then
        net=(--network "shoal-demo-$i" --network-subnet "10.215.$i.0/24")
    else
        net=(--no-discovery)
    fi
    # setsid: a daemon of its own session, so Ctrl-C reaches this script only and the
    # cleanup decides what stops.
    NO_COLOR=1 setsid "$SHOAL" daemon --state-dir "$DIR/n$i" --socket "$DIR/n$i.sock" \
        --listen-addr "127.0.42.$i:4747" --publish-addr "127.0.42.$i" --hostname "node-$i" \
        --drivers "$DRIVER" "${net[@]}" </dev/null >"$DIR/n$i.log" 2>&1 &
    PIDS+=($!)
done
for i in 1 2 3; do
    for _ in $(seq 200); do
        "$SHOAL" -H "unix://$DIR/n$i.sock" info >/dev/null 2>&1 && continue 2
        kill -0 "${PIDS[$((i - 1))]}" 2>/dev/null || fail "node-$i's daemon exited"
        sleep 0.1
    done
    fail "node-$i's daemon did not answer within 20 s"
done

sh_ init
CLUSTER=$(q info --format json | sed -n 's/.*"cluster_id": "\([^"]*\)".*/\1/p')
echo "$CLUSTER" >"$DIR/clusters"
TOKEN=$(q join-token -q worker)
for i in 2 3; do
    step "shoal join --token <worker token>   (on node-$i)"
    "$SHOAL" -H "unix://$DIR/n$i.sock" join --token "$TOKEN"
done
for _ in $(seq 200); do
    [[ $(q node ls --format '{{.Status}}' | grep -c Ready) == 3 ]] && break
    sleep 0.1
done
sh_ node ls
[[ $(q node ls --format '{{.Status}}' | grep -c Ready) == 3 ]] || fail "three nodes should be ready"

# The web service: "GREETING from WHERE" on port 80 (Docker) or $PORT (process driver).
if [[ $DRIVER == docker ]]; then
    # shellcheck disable=SC2016 # expanded in the container
    create=(--driver docker shoal-test/busybox:latest sh -c
        'mkdir -p /www && echo "$GREETING from $(hostname)" > /www/index.html && echo "web: serving $GREETING" && exec httpd -f -p 80 -h /www')
    health='wget -qO- http://127.0.0.1:80/ >/dev/null'
else
    cat >"$DIR/web.sh" <<'EOF'
#!/bin/sh
# The demo's web server for the process driver: "$GREETING from slot N" on 127.0.0.1:$PORT;
# `web.sh check` is its health check.
cd "$HOME" || exit 1
url="http://127.0.0.1:$PORT/"
if [ "${1:-}" = check ]; then
    if command -v busybox >/dev/null; then exec busybox wget -qO- "$url" >/dev/null; fi
    exec python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" "$url"
fi
mkdir -p www && echo "$GREETING from slot $SHOAL_TASK_SLOT" >www/index.html
echo "web: serving $GREETING on 127.0.0.1:$PORT"
if command -v busybox >/dev/null; then exec busybox httpd -f -p "127.0.0.1:$PORT" -h www; fi
exec python3 -m http.server "$PORT" --bind 127.0.0.1 --directory www
EOF
    chmod +x "$DIR/web.sh"
    command -v busybox >/dev/null || command -v python3 >/dev/null ||
        fail "the process driver's web server needs busybox or python3"
    create=(--driver process "$DIR/web.sh")
    health="$DIR/web.sh check"
fi
sh_ service create --name web --replicas 3 -p 8080:80 -e GREETING=hello "${create[@]}"
sh_ service ls
sh_ service ps web
[[ $(q service ls --format '{{.Replicas}}') == 3/3 ]] || fail "web should run 3/3 replicas"

get() { curl -s -m 3 "$1" 2>/dev/null || wget -qO- -T 3 "$1" 2>/dev/null; }

# ask WANT NODE...: asks each node's port 8080 three times; every answer must contain WANT.
ask() {
    local want=$1 i answer
    shift
    step "curl http://127.0.42.{$(IFS=,; echo "$*")}:8080/   (the mesh of each node picks a replica)"
    for i in "$@"; do
        for _ in 1 2 3; do
            answer=$(get "http://127.0.42.$i:8080/") || answer=''
            printf 'node-%s:8080 -> %s\n' "$i" "${answer:-(no answer)}"
            [[ $answer == *"$want"* ]] || fail "node-$i:8080 answered '${answer}', not '$want ...'"
        done
    done
}
ask hello 1 2 3

# Service discovery: from inside a container, `web` is a name (DNS on the node's network
# gateway) for a virtual IP that the node balances over the replicas, wherever they run.
if [[ $DRIVER == docker ]]; then
    inside=$(docker ps -q --filter "label=shoal.cluster=$CLUSTER" --filter label=shoal.service.name=web | head -n 1)
    [[ -n $inside ]] || fail "no container of web found"
    step "docker exec <a web container> sh -c 'nc web 80'   (by name, from inside; three times)"
    for _ in 1 2 3; do
        answer=''
        for _ in $(seq 50); do
            answer=$(docker exec "$inside" sh -c "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 web 80 | tail -n 1" 2>/dev/null) || answer=''
            [[ $answer == *hello* ]] && break
            sleep 0.2
        done
        printf 'web:80 -> %s\n' "${answer:-(no answer)}"
        [[ $answer == *hello* ]] || fail "web by name answered '${answer}', not 'hello ...'"
    done
fi

# Requests back to back against node $1 while something happens.
LOAD_STOP="$DIR/load.stop"
load_start() {
    rm -f "$LOAD_STOP" "$DIR/load.out"
    (ok=0 failed=0
     while [[ ! -e $LOAD_STOP ]]; do
         if get "http://127.0.42.$1:8080/" >/dev/null; then ok=$((ok + 1)); else failed=$((failed + 1)); fi
     done
     echo "$ok $failed" >"$DIR/load.out") &
    LOAD_PID=$!
}
# Prints the count; sets LOAD_OK and LOAD_FAILED.
load_end() {
    touch "$LOAD_STOP"
    wait "$LOAD_PID" 2>/dev/null || true
    read -r LOAD_OK LOAD_FAILED <"$DIR/load.out"
    bold "requests to node-$1:8080 meanwhile: $LOAD_OK answered, $LOAD_FAILED failed"
}

# A rolling update: each new task starts beside the old one and replaces it only once its
# health check passes; the mesh takes the old one out of rotation before it stops it.
load_start 2
sh_ service update --env-add GREETING=bonjour --update-order start-first \
    --health-cmd "$health" --health-interval 500ms --health-retries 2 web
load_end 2
((LOAD_OK > 0)) || fail "no request was answered during the update"
((LOAD_FAILED == 0)) || fail "$LOAD_FAILED requests failed during the rolling update"
sh_ service ps web
ask bonjour 1 2 3

sh_ service logs --tail 2 web
logs=$(q service logs web 2>&1)
[[ $(grep -c 'web: serving bonjour' <<<"$logs") -ge 3 ]] || fail "service logs should show the three new tasks starting:
$logs"

load_start 1
step "kill -9 node-3's daemon"
{ kill -9 "${PIDS[2]}" && wait "${PIDS[2]}"; } 2>/dev/null || true
start=$(date +%s%N)
moved=0
for _ in $(seq 300); do
    if q service ps web --format json | tr -d ' \n' | grep -q '"state":"orphaned"' &&
        [[ $(q service ls --format '{{.Replicas}}') == 3/3 ]]; then
        moved=1
        break
    fi
    sleep 0.1
done
((moved)) || fail "node-3's task was not replaced within 30 s"
bold "node-3 is gone; its task runs on another node after $((($(date +%s%N) - start) / 1000000)) ms"
load_end 1
sh_ node ls
sh_ service ps web
ask bonjour 1 2

if ((KEEP)); then
    bold "The cluster keeps running (node-3 was killed; node-1 and node-2 are up). Try:"
    echo "  export SHOAL_HOST=unix://$DIR/n1.sock   # node-1, the manager"
    echo "  export PATH=\"$(dirname "$SHOAL"):\$PATH\""
    echo "  shoal node ls; shoal service ps web; curl http://127.0.42.1:8080/"
    echo "  (node-2: export SHOAL_HOST=unix://$DIR/n2.sock)"
    echo "Logs: $DIR/n*.log. Stop it and clean up with: $DIR/stop.sh"
else
    if ((!CHECK)) && [[ -t 0 && -t 1 ]]; then
        bold "Logs: $DIR/n*.log. Press Enter (or Ctrl-C) to stop the cluster and clean up."
        read -r _ || true
    fi
    bold "The demo is over: stopping the cluster and cleaning up."
fi
