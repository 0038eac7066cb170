#!/usr/bin/env bash
# How fast a service comes up, beside the container engine's own floor, measured in one run.
#
#   scripts/bench-create.sh [RUNS]     # default 3; prints every run and the medians
#
# Release build, Docker driver, the local test image (no registry). Every time is taken from
# Docker's own `create` and `start` events (nanosecond timestamps), never from polling:
#
#   engine floor  N   `docker run -d --network shoal IMAGE sleep` N times at once (N CLI
#                     processes in parallel; the network Shoal's containers join) → the Nth
#                     container's start event. Also one container alone (its create and
#                     start events), and 10 one after another.
#   fresh  10         a daemon just started and `init`ed, then
#                     `service create -d --replicas 10 IMAGE sleep 3600` → the first
#                     container's create event (Shoal has asked the engine for it: where
#                     Shoal's part ends), the first and the tenth start event, counted from
#                     the moment the command returned ("after ack") and from the moment it
#                     was issued ("from issue").
#   warm   10         the same create on the same cluster, a few seconds later (another
#                     service name)
#   scale  50         three nodes (one manager, two workers, 127.0.43.x), a service of 1
#                     replica, then `service scale -d NAME=50` → the 49 new start events,
#                     from the moment the scale command was issued
#
# The ratio printed is Shoal's "from issue" time of the last container over the engine's
# all-at-once floor for the same count. What this does not measure: image pulls (the image
# is local), a loaded machine, the process driver.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
IMAGE=${SHOAL_TEST_IMAGE:-shoal-test/busybox:latest}

cargo build --quiet --release -p shoal --bin shoal
SHOAL="$PWD/target/release/shoal"
scripts/test-image.sh

DIR=$(mktemp -d /tmp/shoal-bench-create.XXXXXX)
BENCH="bench-$$-$RANDOM"
PIDS=()

stop_daemons() {
    for pid in "${PIDS[@]}"; do
        { kill -9 "$pid" && wait "$pid"; } 2>/dev/null || true
    done
    PIDS=()
    local ids
    ids=$(docker ps -aq --filter "label=shoal.bench=$BENCH" 2>/dev/null || true)
    [[ -n "$ids" ]] && docker rm -f $ids >/dev/null 2>&1 || true
    for d in "$DIR"/*/; do
        [[ -f "$d/node.json" ]] || continue
        local cluster
        cluster=$(sed -n 's/.*"cluster_id": *"\([^"]*\)".*/\1/p' "$d/node.json" | head -1)
        if [[ -n "$cluster" ]]; then
            ids=$(docker ps -aq --filter "label=shoal.cluster=$cluster" 2>/dev/null || true)
            [[ -n "$ids" ]] && docker rm -f $ids >/dev/null 2>&1 || true
        fi
    done
    return 0
}
cleanup() {
    stop_daemons
    rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now_ns() { date +%s%N; }
# Seconds with nanoseconds, as `docker events --since` takes them.
ns_to_s() { printf '%d.%09d' $(($1 / 1000000000)) $(($1 % 1000000000)); }

# event_times EVENT SINCE_NS FILTER... → the nanosecond times of EVENT (create, start) since
# SINCE_NS, sorted.
event_times() {
    local event=$1 since=$2
    shift 2
    docker events --since "$(ns_to_s "$since")" --until "$(ns_to_s "$(now_ns)")" \
        --filter type=container --filter "event=$event" "$@" --format '{{.TimeNano}}' | sort -n
}
start_times() { event_times start "$@"; }

# wait_starts SINCE_NS COUNT FILTER... → waits (60 s at most) until COUNT containers matching
# FILTER started since SINCE_NS, then prints their start times.
wait_starts() {
    local since=$1 count=$2
    shift 2
    local deadline=$(($(date +%s) + 60)) times n
    while :; do
        times=$(start_times "$since" "$@")
        n=$(grep -c . <<<"$times" || true)
        if ((n >= count)); then
            head -n "$count" <<<"$times"
            return 0
        fi
        if (($(date +%s) > deadline)); then
            echo "bench-create: only $n of $count containers started within 60 s" >&2
            return 1
        fi
        sleep 0.2
    done
}

ms() { echo $((($1) / 1000000)); }

engine_floor() { # COUNT MODE(parallel|serial) → ms from issue to the last start
    local count=$1 mode=$2 t0 times last
    t0=$(now_ns)
    if [[ $mode == parallel ]]; then
        local runs=()
        for ((i = 0; i < count; i++)); do
            docker run -d --network shoal --label "shoal.bench=$BENCH" "$IMAGE" sleep 3600 \
                >/dev/null &
            runs+=($!)
        done
        wait "${runs[@]}"
    else
        for ((i = 0; i < count; i++)); do
            docker run -d --network shoal --label "shoal.bench=$BENCH" "$IMAGE" sleep 3600 \
                >/dev/null
        done
    fi
    times=$(wait_starts "$t0" "$count" --filter "label=shoal.bench=$BENCH")
    last=$(tail -1 <<<"$times")
    local created
    created=$(event_times create "$t0" --filter "label=shoal.bench=$BENCH" | head -1)
    local ids
    ids=$(docker ps -aq --filter "label=shoal.bench=$BENCH")
    [[ -n "$ids" ]] && docker rm -f $ids >/dev/null
    if ((count == 1)); then
        echo "$(ms "$created - t0") $(ms "$last - t0")"
    else
        ms "$last - t0"
    fi
}

start_daemon() { # NAME ADDR
    local name=$1 addr=$2
    "$SHOAL" daemon --no-discovery --state-dir "$DIR/$name" --socket "$DIR/$name.sock" \
        --listen-addr "$addr:4747" --hostname "$name" 2>"$DIR/$name.log" &
    PIDS+=($!)
    for _ in $(seq 200); do [[ -S "$DIR/$name.sock" ]] && return 0; sleep 0.05; done
    echo "bench-create: daemon $name did not start; its log:" >&2
    cat "$DIR/$name.log" >&2
    return 1
}
sh_() { local name=$1; shift; "$SHOAL" -H "unix://$DIR/$name.sock" "$@"; }
cluster_of() { sh_ "$1" info --format json | sed -n 's/.*"cluster_id": *"\([^"]*\)".*/\1/p' | head -1; }

# create_run NAME SERVICE → "first_create first_start last_start (after ack) last_start (from
# issue)" in ms
create_run() {
    local node=$1 svc=$2 cluster t0 t1 times first last created
    cluster=$(cluster_of "$node")
    t0=$(now_ns)
    sh_ "$node" service create -d --name "$svc" --replicas 10 "$IMAGE" sleep 3600 >/dev/null
    t1=$(now_ns)
    times=$(wait_starts "$t0" 10 --filter "label=shoal.cluster=$cluster" \
        --filter "label=shoal.service.name=$svc")
    first=$(head -1 <<<"$times")
    last=$(tail -1 <<<"$times")
    created=$(event_times create "$t0" --filter "label=shoal.cluster=$cluster" \
        --filter "label=shoal.service.name=$svc" | head -1)
    echo "$(ms "$created - t1") $(ms "$first - t1") $(ms "$last - t1") $(ms "$last - t0")"
}

docker network inspect shoal >/dev/null 2>&1 ||
    docker network create --label shoal.network=true shoal >/dev/null

results=$(mktemp)
for ((run = 1; run <= RUNS; run++)); do
    read -r one_create one_start <<<"$(engine_floor 1 parallel)"
    floor10=$(engine_floor 10 parallel)
    serial10=$(engine_floor 10 serial)
    floor50=$(engine_floor 50 parallel)

    # Fresh cluster of one, then warm.
    solo=solo$run
    start_daemon "$solo" 127.0.43.10
    sh_ "$solo" init >/dev/null
    read -r fc fa fl fi_ <<<"$(create_run "$solo" fresh)"
    sleep 2 # let the first service settle before the warm measurement
    read -r wc wa wl wi <<<"$(create_run "$solo" warm)"
    stop_daemons

    # Three nodes: scale 1 → 50.
    m1=m$run w2=w${run}a w3=w${run}b
    start_daemon "$m1" 127.0.43.1
    start_daemon "$w2" 127.0.43.2
    start_daemon "$w3" 127.0.43.3
    sh_ "$m1" init >/dev/null
    token=$(sh_ "$m1" join-token -q worker)
    sh_ "$w2" join --token "$token" >/dev/null
    sh_ "$w3" join --token "$token" >/dev/null
    cluster=$(cluster_of "$m1")
    sh_ "$m1" service create --name web --replicas 1 "$IMAGE" sleep 3600 >/dev/null
    t0=$(now_ns)
    sh_ "$m1" service scale -d web=50 >/dev/null
    times=$(wait_starts "$t0" 49 --filter "label=shoal.cluster=$cluster" \
        --filter "label=shoal.service.name=web")
    scale50=$(ms "$(tail -1 <<<"$times") - t0")
    stop_daemons

    ratio10=$(awk -v a="$fi_" -v b="$floor10" 'BEGIN { printf "%.2f", a / b }')
    ratio10w=$(awk -v a="$wi" -v b="$floor10" 'BEGIN { printf "%.2f", a / b }')
    ratio50=$(awk -v a="$scale50" -v b="$floor50" 'BEGIN { printf "%.2f", a / b }')
    printf 'run %d: engine: one container created %s ms, started %s ms after `docker run`; 10 at once %s ms (one after another %s ms); 50 at once %s ms\n' \
        "$run" "$one_create" "$one_start" "$floor10" "$serial10" "$floor50"
    printf 'run %d: fresh create 10: first created %s ms, first started %s ms, tenth started %s ms after ack; tenth %s ms from issue (%sx engine)\n' \
        "$run" "$fc" "$fa" "$fl" "$fi_" "$ratio10"
    printf 'run %d: warm  create 10: first created %s ms, first started %s ms, tenth started %s ms after ack; tenth %s ms from issue (%sx engine)\n' \
        "$run" "$wc" "$wa" "$wl" "$wi" "$ratio10w"
    printf 'run %d: scale 1 -> 50 on 3 nodes: 49th new container %s ms from issue (%sx engine)\n' \
        "$run" "$scale50" "$ratio50"
    echo "$floor10 $serial10 $floor50 $fa $fl $fi_ $wa $wl $wi $scale50 $fc $wc $one_create $one_start" >>"$results"
done

median_col() { # COLUMN
    awk -v c="$1" '{ print $c }' "$results" | sort -n | awk '{ v[NR] = $1 } END {
        if (NR % 2) { print v[(NR + 1) / 2] } else { print (v[NR / 2] + v[NR / 2 + 1]) / 2 } }'
}
m_floor10=$(median_col 1); m_serial10=$(median_col 2); m_floor50=$(median_col 3)
m_fa=$(median_col 4); m_fl=$(median_col 5); m_fi=$(median_col 6)
m_wa=$(median_col 7); m_wl=$(median_col 8); m_wi=$(median_col 9); m_s50=$(median_col 10)
m_fc=$(median_col 11); m_wc=$(median_col 12); m_oc=$(median_col 13); m_os=$(median_col 14)
echo
echo "medians over $RUNS runs (ms):"
printf '  engine floor: one container created %s, started %s; 10 at once %s, 10 one after another %s, 50 at once %s\n' \
    "$m_oc" "$m_os" "$m_floor10" "$m_serial10" "$m_floor50"
printf '  fresh create 10: first created %s, first started %s, tenth started %s after ack; tenth from issue %s (%sx engine)\n' \
    "$m_fc" "$m_fa" "$m_fl" "$m_fi" "$(awk -v a="$m_fi" -v b="$m_floor10" 'BEGIN { printf "%.2f", a / b }')"
printf '  warm  create 10: first created %s, first started %s, tenth started %s after ack; tenth from issue %s (%sx engine)\n' \
    "$m_wc" "$m_wa" "$m_wl" "$m_wi" "$(awk -v a="$m_wi" -v b="$m_floor10" 'BEGIN { printf "%.2f", a / b }')"
printf '  scale 1 -> 50 on 3 nodes: %s from issue (%sx engine for 50)\n' \
    "$m_s50" "$(awk -v a="$m_s50" -v b="$m_floor50" 'BEGIN { printf "%.2f", a / b }')"
rm -f "$results"
