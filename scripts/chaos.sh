#!/usr/bin/env bash
# The chaos run (issue 20): a 3-manager + 3-worker cluster on 127.0.120.x, a seeded
# schedule of faults (kill -9 and restart of any node, the leader and now and then a
# majority of the managers included; partitions; one-way lossy links; docker kill of task
# containers; steps of a node's wall clock) and client writes, with the invariants checked
# as it goes and at the end (see tests/src/chaos/mod.rs). One line per event; the last
# line has the counts.
#
#   scripts/chaos.sh [--duration S] [--seed N] [--nodes M+W] [--block B]
#
# --block B runs on 127.0.B.x instead (its own firewall chain SHOAL-CHAOS-B), so that
# several seeds can run at once. Clock steps need libfaketime (Debian's faketime
# package, installed here when missing); without it the run says so and has none.
#
# The same seed replays the same schedule (the outcome may differ with timing). Needs
# root and iptables; uses Docker and the test image when they are there (required with
# SHOAL_REQUIRE_DOCKER=1), else the process driver only. SHOAL_BIN picks the shoal
# binary (default: the workspace's debug build, built here). Exits with the harness's
# status: 0 when no invariant was violated.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }

ARGS=()
while (($#)); do
    case $1 in
    --duration | --seed | --nodes | --block)
        (($# >= 2)) || { echo "chaos: $1 needs a value" >&2; exit 2; }
        ARGS+=("$1" "$2")
        shift 2
        ;;
    -h | --help)
        sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *) echo "chaos: unknown argument $1" >&2; exit 2 ;;
    esac
done
BLOCK=120
for ((i = 0; i < ${#ARGS[@]}; i++)); do
    [[ ${ARGS[i]} != --block ]] || BLOCK=${ARGS[i + 1]}
done
[[ $BLOCK =~ ^[0-9]+$ ]] || { echo "chaos: bad --block $BLOCK" >&2; exit 2; }
CHAIN="SHOAL-CHAOS-$BLOCK"

[[ $(id -u) == 0 ]] || { echo "chaos: needs root (iptables rules on lo)" >&2; exit 1; }
command -v iptables >/dev/null || { echo "chaos: iptables is missing (apt-get install iptables)" >&2; exit 1; }

if docker info >/dev/null 2>&1 && docker image inspect shoal-test/busybox:latest >/dev/null 2>&1; then
    :
elif docker info >/dev/null 2>&1 && [[ -x scripts/test-image.sh ]] && scripts/test-image.sh >&2; then
    :
elif [[ "${SHOAL_REQUIRE_DOCKER:-0}" == 1 ]]; then
    echo "chaos: Docker or the test image is missing and SHOAL_REQUIRE_DOCKER=1" >&2
    exit 1
else
    log "no Docker: the process driver only"
    ARGS+=(--no-docker)
fi

# libfaketime for the clock steps: the daemons run under it (LD_PRELOAD).
faketime_lib() {
    local f
    for f in /usr/lib/*/faketime/libfaketimeMT.so.1 /usr/lib/faketime/libfaketimeMT.so.1; do
        [[ -f $f ]] && { echo "$f"; return 0; }
    done
    return 1
}
if ! FAKETIME=$(faketime_lib); then
    log "installing libfaketime (Debian's faketime) for the clock steps"
    { apt-get install -y -qq faketime >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq faketime >/dev/null 2>&1; }; } || true
    FAKETIME=$(faketime_lib) || FAKETIME=
fi
if [[ -n $FAKETIME ]]; then
    ARGS+=(--faketime "$FAKETIME")
else
    log "no libfaketime: a run without clock steps"
fi

# The same build as scripts/test.sh's (one feature resolution): a no-op after it.
log "building shoal and the chaos harness"
cargo build --quiet --workspace --all-targets
export SHOAL_BIN="${SHOAL_BIN:-$PWD/target/debug/shoal}"

# The harness removes its chain itself, also on SIGINT/SIGTERM; this covers a harness
# killed without a chance to (SIGKILL): its daemons, shims, tasks and containers are
# removed by its watchdog (tests/src/lib.rs), its rules here.
remove_chain() {
    while iptables -w 10 -D INPUT -i lo -j "$CHAIN" 2>/dev/null; do :; done
    iptables -w 10 -F "$CHAIN" 2>/dev/null || true
    iptables -w 10 -X "$CHAIN" 2>/dev/null || true
}
CHILD=
finish() {
    local rc=$?
    trap - EXIT INT TERM
    [[ -z $CHILD ]] || wait "$CHILD" 2>/dev/null || true
    remove_chain
    exit "$rc"
}
trap finish EXIT
trap '[[ -z $CHILD ]] || kill -TERM "$CHILD" 2>/dev/null; exit 130' INT TERM

target/debug/chaos "${ARGS[@]}" &
CHILD=$!
rc=0
wait "$CHILD" || rc=$?
CHILD=
exit "$rc"
