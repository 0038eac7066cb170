#!/usr/bin/env bash
# Membership soak with real daemons under packet loss (issue 20): no healthy node may be
# marked down, no leader lost, no task moved.
#
#   scripts/soak.sh [--minutes 5] [--loss 0.05] [--managers 3] [--workers 3]
#
# A network namespace of its own (`shoal-soak-$$`): its loopback carries the cluster
# (daemons on 127.0.0.1..N:4747, process driver), and one iptables rule in it drops every
# UDP datagram arriving there with probability LOSS (`-m statistic --mode random`: the
# kernel here has no sch_netem, so `tc netem` is not available; a random drop on input is
# the same loss on every datagram, QUIC's and SWIM's alike). The namespace and the rule go
# away with the script. Needs root, iproute2, iptables and curl.
#
# Before the loss starts: MANAGERS managers (the first inits), WORKERS workers, all ready,
# and a 2 × nodes-replica process-driver service running. Then for MINUTES minutes, every
# 10 s: `node ls` on the first manager (any status other than `ready` counts), each node's
# metrics (`shoal_gossip_members{state="down"}` / `"suspect"`) and the Raft term. At the end:
# the node and task events of the whole soak (`shoal events --since`), the datagrams the
# rule dropped (its counter), and one summary line. Exit 1 if any node was seen not ready,
# any node down in any gossip view, any `node down` or task `orphaned` event, or the term
# moved (an election).
set -euo pipefail
cd "$(dirname "$0")/.."

MINUTES=5 LOSS=0.05 MANAGERS=3 WORKERS=3
while (($#)); do
    case $1 in
    --minutes) MINUTES=$2; shift 2 ;;
    --loss) LOSS=$2; shift 2 ;;
    --managers) MANAGERS=$2; shift 2 ;;
    --workers) WORKERS=$2; shift 2 ;;
    *) echo "soak: unknown argument $1" >&2; exit 2 ;;
    esac
done
[[ $MINUTES =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "soak: --minutes must be a number" >&2; exit 2; }
[[ $LOSS =~ ^0?[.][0-9]+$ ]] || { echo "soak: --loss must be a probability like 0.05" >&2; exit 2; }
[[ $(id -u) == 0 ]] || { echo "soak: needs root (network namespace, iptables)" >&2; exit 1; }
for t in ip iptables curl; do
    command -v "$t" >/dev/null || { echo "soak: $t is missing" >&2; exit 1; }
done

if [[ -z ${SHOAL_BIN:-} ]]; then
    cargo build --quiet --release -p shoal
    SHOAL_BIN="$PWD/target/release/shoal"
fi
N=$((MANAGERS + WORKERS))
NS="shoal-soak-$$"
DIR=$(mktemp -d /tmp/shoal-soak.XXXXXX)
PIDS=()
EVENTS_PID=

cleanup() {
    local p
    [[ -z $EVENTS_PID ]] || kill "$EVENTS_PID" 2>/dev/null || true
    for p in "${PIDS[@]}"; do kill -9 -- "-$p" 2>/dev/null || kill -9 "$p" 2>/dev/null || true; done
    # The process driver's shims and tasks run in process groups of their own.
    for p in $(grep -laF "$DIR" /proc/[0-9]*/environ /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3 | sort -u); do
        [[ $p == "$$" ]] || kill -9 "$p" 2>/dev/null || true
    done
    ip netns del "$NS" 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ip netns add "$NS"
ip netns exec "$NS" ip link set lo up
inns() { ip netns exec "$NS" "$@"; }
cli() { local i=$1; shift; "$SHOAL_BIN" -H "unix://$DIR/n$i.sock" "$@"; }
metrics() { inns curl -s --max-time 5 "http://127.0.0.$1:9400/metrics"; }
sample() { metrics "$1" | awk -v k="$2" '$1 == k { print $2 }'; }

for i in $(seq 1 "$N"); do
    setsid ip netns exec "$NS" "$SHOAL_BIN" daemon --state-dir "$DIR/s$i" --socket "$DIR/n$i.sock" \
        --listen-addr "127.0.0.$i:4747" --publish-addr "127.0.0.$i" --hostname "soak-$i" \
        --metrics-addr "127.0.0.$i:9400" --drivers process >"$DIR/log$i" 2>&1 &
    PIDS+=($!)
    disown
done
for i in $(seq 1 "$N"); do
    for _ in $(seq 100); do cli "$i" info >/dev/null 2>&1 && break; sleep 0.1; done
    cli "$i" info >/dev/null || { echo "soak: daemon $i did not start:"; tail "$DIR/log$i"; exit 1; }
done
cli 1 init >/dev/null
MT=$(cli 1 join-token -q manager)
WT=$(cli 1 join-token -q worker)
for i in $(seq 2 "$N"); do
    if ((i <= MANAGERS)); then t=$MT; else t=$WT; fi
    cli "$i" join --token "$t" 127.0.0.1:4747 >/dev/null
done
ready() { cli 1 node ls --format '{{.Status}}' | grep -ci '^ready$' || true; }
for _ in $(seq 300); do [[ $(ready) == "$N" ]] && break; sleep 0.1; done
[[ $(ready) == "$N" ]] || { echo "soak: not every node is ready"; cli 1 node ls; exit 1; }
cli 1 service create --detach --name soak --driver process --replicas $((2 * N)) /bin/sleep 100000 >/dev/null
want=$((2 * N))
for _ in $(seq 300); do
    [[ $(cli 1 service ps soak --filter desired-state=running --format '{{.CurrentState}}' | grep -c '^Running' || true) == "$want" ]] && break
    sleep 0.2
done
TERM0=$(sample 1 shoal_raft_term)
START=$(date +%s)
echo "soak: $MANAGERS managers + $WORKERS workers ready, $want tasks running, Raft term $TERM0; dropping $LOSS of every datagram for $MINUTES min"
inns iptables -A INPUT -p udp -m statistic --mode random --probability "$LOSS" -j DROP

not_ready=0 gossip_down=0 gossip_suspect_max=0 samples=0
end=$(awk -v s="$START" -v m="$MINUTES" 'BEGIN { print int(s + m * 60) }')
while (($(date +%s) < end)); do
    sleep 10
    samples=$((samples + 1))
    statuses=$(cli 1 node ls --format '{{.Hostname}}={{.Status}}' 2>&1 || true)
    bad=$(grep -vi '=ready$' <<<"$statuses" || true)
    if [[ -n $bad ]]; then
        not_ready=$((not_ready + 1))
        echo "  $(date +%T) not ready: $(tr '\n' ' ' <<<"$bad")"
    fi
    downs="" suspects=0
    for i in $(seq 1 "$N"); do
        d=$(sample "$i" 'shoal_gossip_members{state="down"}')
        s=$(sample "$i" 'shoal_gossip_members{state="suspect"}')
        [[ ${d:-0} == 0 ]] || downs+=" soak-$i:$d"
        suspects=$((suspects + ${s:-0}))
    done
    [[ -z $downs ]] || { gossip_down=$((gossip_down + 1)); echo "  $(date +%T) down in gossip views:$downs"; }
    ((suspects <= gossip_suspect_max)) || gossip_suspect_max=$suspects
    echo "  $(date +%T) +$(($(date +%s) - START)) s: all ready: $([[ -z $bad ]] && echo yes || echo no), suspects now $suspects, term $(sample 1 shoal_raft_term)"
done
dropped=$(inns iptables -L INPUT -v -x | awk '/statistic/ { print $1 }')
inns iptables -D INPUT -p udp -m statistic --mode random --probability "$LOSS" -j DROP
TERM1=$(sample 1 shoal_raft_term)
# `TIME TYPE ACTION ID (k=v, …)` per event.
events=$(cli 1 events --since "$START" --until "$(date +%s)" 2>&1 | awk '{ print $2, $3 }' || true)
node_downs=$(grep -c '^node down$' <<<"$events" || true)
orphaned=$(grep -c '^task orphaned$' <<<"$events" || true)
echo "soak: $MINUTES min at loss $LOSS, $N nodes: datagrams dropped $dropped, samples $samples, samples with a node not ready $not_ready, samples with a node down in a gossip view $gossip_down, most suspects at once $gossip_suspect_max, node down events $node_downs, tasks orphaned $orphaned, Raft term $TERM0 -> $TERM1"
if ((not_ready || gossip_down || node_downs || orphaned)) || [[ $TERM0 != "$TERM1" ]]; then
    echo "soak: FAILED"
    exit 1
fi
echo "soak: passed (zero healthy nodes marked down)"
