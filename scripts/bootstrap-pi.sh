#!/usr/bin/env bash
# Turns bare machines reachable over ssh (Raspberry Pis, a VPS) into nodes of this cluster:
#
#   scripts/bootstrap-pi.sh pi@192.168.1.21 pi@192.168.1.22 pi@pi3.local
#
# Run it on a manager, or on a laptop whose `shoal` CLI points at one (SHOAL_HOST or -H).
# For each host, in parallel: detect its architecture (`uname -m`), copy the right binary
# and install.sh there, mint a short-lived worker token unless one is given
# (`shoal join-token worker --ttl 1h`), run install.sh (systemd unit, join), and wait until
# the node is `ready` in `shoal node ls`. Each step is printed, prefixed with the host; on
# a failure, the remote daemon's last log lines. Exits 1 when any host failed.
#
# Options:
#   --token T            join with this token instead of minting one
#   --manager ADDR       the manager the hosts join through (default: the addresses in the token)
#   --from DIR           release binaries by architecture (scripts/build-release.sh; default dist/)
#   --binary PATH        copy this binary to every host instead (its architecture must fit)
#   --ssh CMD            how to run a command on a host: CMD HOST 'COMMAND' (default
#                        `ssh -o BatchMode=yes -o ConnectTimeout=10`). The seam that lets a
#                        test use a network namespace or a container instead.
#   --install-opts OPTS  more install.sh options, in the remote shell's syntax, e.g.
#                        "--daemon-opts '--advertise-addr 192.168.1.21'" or "--no-systemd"
#   --timeout SECS       how long a node may take to become ready (default 120)
#   -H, --host SOCKET    the local CLI's daemon (as `shoal -H`); default SHOAL_HOST
#   --cli PATH           the local shoal CLI (default: shoal in PATH, else this tree's build)
#
# A remote user other than root runs install.sh through `sudo -n` (passwordless sudo, as on
# Raspberry Pi OS). Files are staged in a temp dir of the remote ($TMPDIR or /tmp), removed
# at the end.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
    exit "${1:-0}"
}

TOKEN='' MANAGER='' FROM='' BINARY='' SSH_CMD='ssh -o BatchMode=yes -o ConnectTimeout=10'
INSTALL_OPTS='' TIMEOUT=120 CLI='' HOSTS=()
while (($#)); do
    case $1 in
    --token) TOKEN=${2:?--token needs a token}; shift ;;
    --manager) MANAGER=${2:?--manager needs an address}; shift ;;
    --from) FROM=${2:?--from needs a directory}; shift ;;
    --binary) BINARY=${2:?--binary needs a path}; shift ;;
    --ssh) SSH_CMD=${2:?--ssh needs a command}; shift ;;
    --install-opts) INSTALL_OPTS=${2?--install-opts needs a value}; shift ;;
    --timeout) TIMEOUT=${2:?--timeout needs seconds}; shift ;;
    -H | --host) export SHOAL_HOST=${2:?-H needs a socket}; shift ;;
    --cli) CLI=${2:?--cli needs a path}; shift ;;
    -h | --help) usage 0 ;;
    -*) printf 'bootstrap-pi.sh: unknown option %s\n\n' "$1" >&2; usage 2 >&2 ;;
    *) HOSTS+=("$1") ;;
    esac
    shift
done
((${#HOSTS[@]})) || { echo "bootstrap-pi.sh: name at least one [user@]host" >&2; usage 2 >&2; }
[[ -n $BINARY && -n $FROM ]] && { echo "bootstrap-pi.sh: give --binary or --from, not both" >&2; exit 2; }
[[ $TIMEOUT =~ ^[0-9]+$ ]] || { echo "bootstrap-pi.sh: --timeout takes whole seconds" >&2; exit 2; }
read -ra SSH <<<"$SSH_CMD"

if [[ -z $CLI ]]; then
    if command -v shoal >/dev/null; then
        CLI=$(command -v shoal)
    elif [[ -x $HERE/../target/release/shoal ]]; then
        CLI=$HERE/../target/release/shoal
    elif [[ -x $HERE/../target/debug/shoal ]]; then
        CLI=$HERE/../target/debug/shoal
    else
        echo "bootstrap-pi.sh: no shoal CLI here: install it, or give --cli PATH" >&2
        exit 1
    fi
fi
[[ -n $FROM || -n $BINARY ]] || FROM=$HERE/../dist
for f in "$HERE/install.sh" "$HERE/shoal.service"; do
    [[ -f $f ]] || { echo "bootstrap-pi.sh: $f is missing" >&2; exit 1; }
done

say() { printf '==> %s\n' "$*"; }

# The cluster this CLI talks to, and a token.
if ! info=$("$CLI" info --format json 2>&1); then
    echo "bootstrap-pi.sh: the local shoal CLI cannot reach its daemon: $info" >&2
    echo "  (run this on a manager, or point the CLI at one: SHOAL_HOST=unix:///path/to/shoal.sock or -H)" >&2
    exit 1
fi
grep -q '"cluster": "active"' <<<"$info" || {
    echo "bootstrap-pi.sh: this node is in no cluster: \`shoal init\` first" >&2
    exit 1
}
if [[ -z $TOKEN ]]; then
    say "minting a worker token valid for 1 hour: shoal join-token worker --ttl 1h"
    TOKEN=$("$CLI" join-token -q worker --ttl 1h)
fi

# Runs COMMAND on HOST (through --ssh); stdin passes through.
remote() {
    local host=$1
    shift
    "${SSH[@]}" "$host" "$*"
}

arch_of() {
    case $1 in
    x86_64 | amd64) echo x86_64 ;;
    aarch64 | arm64) echo aarch64 ;;
    armv7l | armv8l | armhf) echo armv7 ;;
    *) return 1 ;;
    esac
}

bootstrap_one() {
    local host=$1 machine arch bin dir='' sudo='' out rc node_id status=''
    step() { printf '==> %s\n' "$*"; }
    # fail MESSAGE [logs]: says why; with `logs`, the remote daemon's last lines too
    # (install.sh prints them itself when it fails).
    fail() {
        printf 'FAILED: %s\n' "$1"
        if [[ -n $dir && ${2:-} == logs ]]; then
            echo "--- the remote daemon's last log lines ---"
            remote "$host" "$sudo bash $dir/install.sh --logs $INSTALL_OPTS" 2>&1 | tail -n 20 || true
        fi
        [[ -z $dir ]] || remote "$host" "rm -rf $dir" >/dev/null 2>&1 || true
        return 1
    }

    step "detecting the architecture: uname -m"
    machine=$(remote "$host" 'uname -m' 2>&1) || { fail "cannot run a command there: $machine"; return 1; }
    arch=$(arch_of "$machine") || { fail "unsupported architecture $machine (x86_64, aarch64 and armv7 are built)"; return 1; }
    if [[ -n $BINARY ]]; then
        bin=$BINARY
    else
        bin=$FROM/shoal-$arch
        [[ -f $bin ]] || { fail "$machine: no $bin (scripts/build-release.sh $arch builds it)"; return 1; }
    fi
    step "$machine: copying $(basename "$bin") and install.sh"
    local made
    # shellcheck disable=SC2016 # expanded by the remote shell
    made=$(remote "$host" 'mktemp -d "${TMPDIR:-/tmp}/shoal-bootstrap.XXXXXX"' 2>&1) || { fail "cannot make a temp dir: $made"; return 1; }
    dir=$made
    remote "$host" "cat > $dir/shoal && chmod 0755 $dir/shoal" <"$bin" || { fail "copying the binary failed"; return 1; }
    remote "$host" "cat > $dir/install.sh" <"$HERE/install.sh" || { fail "copying install.sh failed"; return 1; }
    remote "$host" "cat > $dir/shoal.service" <"$HERE/shoal.service" || { fail "copying shoal.service failed"; return 1; }
    [[ $(remote "$host" 'id -u') == 0 ]] || sudo='sudo -n'

    local args
    args="--binary $dir/shoal --token $(printf '%q' "$TOKEN")"
    [[ -n $MANAGER ]] && args+=" --manager $(printf '%q' "$MANAGER")"
    step "installing and joining: ${sudo:+$sudo }install.sh --binary shoal --token <token>${MANAGER:+ --manager $MANAGER} $INSTALL_OPTS"
    out=$(remote "$host" "$sudo bash $dir/install.sh $args $INSTALL_OPTS" 2>&1) && rc=0 || rc=$?
    printf '%s\n' "$out" | sed 's/^/    /'
    if ((rc)); then
        if grep -q 'expired' <<<"$out"; then
            fail "the join token expired: mint a new one (shoal join-token worker --ttl 1h) or leave --token out to have one minted"
        else
            fail "install.sh exited with $rc"
        fi
        return 1
    fi
    node_id=$(sed -n 's/^Node ID: //p' <<<"$out" | tail -n 1)
    [[ -n $node_id ]] || { fail "install.sh did not say which node it installed (no daemon running? see above)"; return 1; }

    step "waiting until node $node_id is ready in \`shoal node ls\` (at most ${TIMEOUT}s)"
    local deadline=$((SECONDS + TIMEOUT)) row
    while :; do
        row=$("$CLI" node ls --no-trunc --filter "id=$node_id" --format '{{.ID}} {{.Status}}' 2>/dev/null || true)
        status=$(awk -v id="$node_id" '$1 == id { print tolower($2) }' <<<"$row")
        [[ $status == ready ]] && break
        if ((SECONDS >= deadline)); then
            fail "node $node_id is not ready after ${TIMEOUT}s (status: ${status:-not in the node table})" logs
            return 1
        fi
        sleep 1
    done
    remote "$host" "rm -rf $dir" >/dev/null 2>&1 || true
    step "ready: node $node_id"
}

pids=()
for host in "${HOSTS[@]}"; do
    (bootstrap_one "$host" 2>&1 | sed -u "s|^|[$host] |") &
    pids+=($!)
done
failed=()
for i in "${!HOSTS[@]}"; do
    wait "${pids[$i]}" || failed+=("${HOSTS[$i]}")
done
if ((${#failed[@]})); then
    say "failed: ${failed[*]} (of ${#HOSTS[@]})"
    exit 1
fi
say "all ${#HOSTS[@]} ready:"
"$CLI" node ls
