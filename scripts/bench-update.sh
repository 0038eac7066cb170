#!/usr/bin/env bash
# A rolling update of 10 replicas, Shoal beside Docker Swarm on the same engine, in one run.
#
#   scripts/bench-update.sh [RUNS]     # default 1; prints every run and the medians
#
# Environment:
#   GRACE        stop grace period in seconds, the same for both (default 2)
#   BENCH_ONLY   `swarm` or `shoal` to measure one side only (the floor is always measured)
#   SHOAL_BIN    the shoal binary to use (default: a release build made here)
#
# Both sides run the same service and the same update: 10 replicas of the local test image
# running `sleep 100000` (busybox `sleep` as PID 1 ignores SIGTERM, so every stop waits the
# whole grace), then `--image shoal-test/busybox:bench-b` (a `docker tag` of the same image:
# a change of spec, the same image ID) with parallelism 1, stop-first, no delay, 5 s monitor,
# failure action pause. Each update is timed from the moment the update command is issued
# (`--detach`) until `docker ps` shows 10 running containers of the service, all created from
# the new image name (polled every 0.1 s).
#
#   swarm   `docker swarm init --advertise-addr 127.0.0.1` (refused when the engine is
#           already in a swarm: this script never leaves a swarm it did not make), the
#           service created and updated with `docker service`, then
#           `docker swarm leave --force` (also on failure or Ctrl-C)
#   shoal   a one-node cluster (daemon on 127.0.43.20, state in a temp dir), Docker driver,
#           the same through `shoal service create` / `shoal service update`
#   floor   Σ over the 10 tasks of (stop grace + the engine's own container start time), the
#           start time being the median of three `docker run -d IMAGE sleep` (issue to return)
#
# Printed per run and as medians: swarm_s=… shoal_s=… floor_s=… shoal/swarm=… shoal/floor=…
# Goal (issue 17): shoal/swarm ≤ 0.8 and shoal/floor ≤ 1.1.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-1}
GRACE=${GRACE:-2}
ONLY=${BENCH_ONLY:-}
IMAGE=${SHOAL_TEST_IMAGE:-shoal-test/busybox:latest}
NEW=shoal-test/busybox:bench-b
REPLICAS=10
SETTINGS=(--update-parallelism 1 --update-order stop-first --update-delay 0s
    --update-monitor 5s --update-failure-action pause --stop-grace-period "${GRACE}s")

die() { printf 'bench-update: %s\n' "$*" >&2; exit 1; }
[[ $ONLY == "" || $ONLY == swarm || $ONLY == shoal ]] || die "BENCH_ONLY must be swarm or shoal"
[[ $GRACE =~ ^[0-9]+$ ]] || die "GRACE must be whole seconds"

if [[ $ONLY != swarm ]]; then
    if [[ -n ${SHOAL_BIN:-} ]]; then
        SHOAL=$SHOAL_BIN
    else
        cargo build --quiet --release -p shoal --bin shoal
        SHOAL="$PWD/target/release/shoal"
    fi
fi
scripts/test-image.sh

if [[ $ONLY != shoal ]]; then
    state=$(docker info --format '{{.Swarm.LocalNodeState}}')
    [[ $state == inactive ]] ||
        die "the Docker engine is already in a swarm ($state): refusing to touch it"
fi

DIR=$(mktemp -d /tmp/shoal-bench-update.XXXXXX)
BENCH="bench-update-$$-$RANDOM"
SWARM_SVC="shoal-bench-$$"
SWARM_OURS=0
DAEMON_PID=
TAGGED=0
ELAPSED=0

stop_shoal() {
    if [[ -n $DAEMON_PID ]]; then
        { kill -9 "$DAEMON_PID" && wait "$DAEMON_PID"; } 2>/dev/null || true
        DAEMON_PID=
    fi
    local d cluster ids
    for d in "$DIR"/*/; do
        [[ -f "$d/node.json" ]] || continue
        cluster=$(sed -n 's/.*"cluster_id": *"\([^"]*\)".*/\1/p' "$d/node.json" | head -1)
        if [[ -n "$cluster" ]]; then
            ids=$(docker ps -aq --filter "label=shoal.cluster=$cluster" 2>/dev/null || true)
            [[ -n "$ids" ]] && docker rm -f $ids >/dev/null 2>&1 || true
        fi
    done
    rm -rf "${DIR:?}"/*
    return 0
}
leave_swarm() {
    if ((SWARM_OURS)); then
        docker service rm "$SWARM_SVC" >/dev/null 2>&1 || true
        docker swarm leave --force >/dev/null 2>&1 || true
        SWARM_OURS=0
        # Swarm's task containers go with the swarm; remove any straggler.
        local ids
        ids=$(docker ps -aq --filter "label=com.docker.swarm.service.name=$SWARM_SVC" 2>/dev/null || true)
        [[ -n "$ids" ]] && docker rm -f $ids >/dev/null 2>&1 || true
    fi
    return 0
}
cleanup() {
    leave_swarm
    stop_shoal
    local ids
    ids=$(docker ps -aq --filter "label=shoal.bench=$BENCH" 2>/dev/null || true)
    [[ -n "$ids" ]] && docker rm -f $ids >/dev/null 2>&1 || true
    ((TAGGED)) && docker rmi "$NEW" >/dev/null 2>&1 || true
    rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if docker image inspect "$NEW" >/dev/null 2>&1; then
    die "$NEW already exists: remove it (docker rmi $NEW) so this run can own it"
fi
docker tag "$IMAGE" "$NEW"
TAGGED=1

now_ns() { date +%s%N; }
secs() { awk -v a="$1" 'BEGIN { printf "%.2f", a / 1e9 }'; }

# wait_new DEADLINE_S FILTER... → waits until exactly $REPLICAS running containers match
# FILTER and all of them run the image name $NEW.
wait_new() {
    local limit=$1 out total new
    local deadline=$(($(date +%s) + limit))
    shift
    while :; do
        out=$(docker ps "$@" --format '{{.Image}}')
        total=$(grep -c . <<<"$out" || true)
        new=$(grep -cxF "$NEW" <<<"$out" || true)
        ((total == REPLICAS && new == REPLICAS)) && return 0
        if (($(date +%s) > deadline)); then
            echo "bench-update: $new of $REPLICAS on $NEW ($total running) after $limit s" >&2
            return 1
        fi
        sleep 0.1
    done
}

# wait_running DEADLINE_S FILTER... → waits until $REPLICAS containers matching FILTER run.
wait_running() {
    local limit=$1 n
    local deadline=$(($(date +%s) + limit))
    shift
    while :; do
        n=$(docker ps -q "$@" | grep -c . || true)
        ((n == REPLICAS)) && return 0
        if (($(date +%s) > deadline)); then
            echo "bench-update: $n of $REPLICAS running after $limit s" >&2
            return 1
        fi
        sleep 0.2
    done
}

# The engine's own start time (ns): median of three `docker run -d`.
engine_start() {
    local i t0 t
    for i in 1 2 3; do
        t0=$(now_ns)
        docker run -d --label "shoal.bench=$BENCH" "$IMAGE" sleep 100000 >/dev/null
        t=$(($(now_ns) - t0))
        echo "$t"
        docker rm -f $(docker ps -aq --filter "label=shoal.bench=$BENCH") >/dev/null
    done | sort -n | sed -n 2p
}

swarm_run() { # sets ELAPSED (ns); runs in this shell, so the trap knows the swarm is ours
    docker swarm init --advertise-addr 127.0.0.1 >/dev/null
    SWARM_OURS=1
    docker service create --detach --quiet --no-resolve-image --name "$SWARM_SVC" \
        --replicas "$REPLICAS" "${SETTINGS[@]}" "$IMAGE" sleep 100000 >/dev/null
    wait_running 300 --filter "label=com.docker.swarm.service.name=$SWARM_SVC"
    sleep 1 # let the service settle, as for Shoal below
    local t0
    t0=$(now_ns)
    docker service update --detach --quiet --no-resolve-image --image "$NEW" "$SWARM_SVC" \
        >/dev/null
    wait_new 900 --filter "label=com.docker.swarm.service.name=$SWARM_SVC"
    ELAPSED=$(($(now_ns) - t0))
    leave_swarm
}

sh_() { "$SHOAL" -H "unix://$DIR/node.sock" "$@"; }

shoal_run() { # sets ELAPSED (ns); runs in this shell, so the trap knows the daemon
    "$SHOAL" daemon --no-discovery --state-dir "$DIR/node" --socket "$DIR/node.sock" \
        --listen-addr 127.0.43.20:4747 --hostname bench-update 2>"$DIR/node.log" &
    DAEMON_PID=$!
    local i
    for i in $(seq 200); do [[ -S "$DIR/node.sock" ]] && break; sleep 0.05; done
    [[ -S "$DIR/node.sock" ]] || { cat "$DIR/node.log" >&2; die "the daemon did not start"; }
    sh_ init >/dev/null
    local cluster
    cluster=$(sh_ info --format json | sed -n 's/.*"cluster_id": *"\([^"]*\)".*/\1/p' | head -1)
    sh_ service create --detach --name bench --driver docker --replicas "$REPLICAS" \
        "${SETTINGS[@]}" "$IMAGE" sleep 100000 >/dev/null
    local filter=(--filter "label=shoal.cluster=$cluster" --filter "label=shoal.service.name=bench")
    wait_running 300 "${filter[@]}"
    sleep 1
    local t0
    t0=$(now_ns)
    sh_ service update --detach --image "$NEW" bench >/dev/null
    wait_new 900 "${filter[@]}"
    ELAPSED=$(($(now_ns) - t0))
    stop_shoal
}

ratio() { if [[ $1 == - || $2 == - ]]; then echo -; else awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; fi; }

echo "update of $REPLICAS replicas, parallelism 1, stop-first, stop grace ${GRACE}s, $IMAGE -> $NEW"
results=$(mktemp)
for ((run = 1; run <= RUNS; run++)); do
    start=$(engine_start)
    floor=$((REPLICAS * (GRACE * 1000000000 + start)))
    swarm=- shoal=-
    if [[ $ONLY != shoal ]]; then swarm_run; swarm=$ELAPSED; fi
    if [[ $ONLY != swarm ]]; then shoal_run; shoal=$ELAPSED; fi
    sw=$([[ $swarm == - ]] && echo - || secs "$swarm")
    sh=$([[ $shoal == - ]] && echo - || secs "$shoal")
    fl=$(secs "$floor")
    printf 'run %d: swarm_s=%s shoal_s=%s floor_s=%s shoal/swarm=%s shoal/floor=%s (engine start %s s)\n' \
        "$run" "$sw" "$sh" "$fl" "$(ratio "$sh" "$sw")" "$(ratio "$sh" "$fl")" "$(secs "$start")"
    echo "$sw $sh $fl" >>"$results"
done

median_col() { # COLUMN → the median, or - when the column holds no figure
    awk -v c="$1" '$c != "-" { print $c }' "$results" | sort -n | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "-" } else if (NR % 2) { print v[(NR + 1) / 2] }
        else { printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 } }'
}
m_sw=$(median_col 1) m_sh=$(median_col 2) m_fl=$(median_col 3)
rm -f "$results"
echo
printf 'median of %d: swarm_s=%s shoal_s=%s floor_s=%s shoal/swarm=%s shoal/floor=%s\n' \
    "$RUNS" "$m_sw" "$m_sh" "$m_fl" "$(ratio "$m_sh" "$m_sw")" "$(ratio "$m_sh" "$m_fl")"
