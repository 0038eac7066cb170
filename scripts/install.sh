#!/usr/bin/env bash
# Installs a Shoal node on this machine (Debian, Raspberry Pi OS on arm64 or armhf, any
# Linux with bash), then joins a cluster or starts one:
#
#   sudo scripts/install.sh --binary ./shoal --token SHOAL1-...        # join (addresses from the token)
#   sudo scripts/install.sh --from dist/ --init                       # first manager of a new cluster
#   sudo scripts/install.sh --uninstall                               # leave the cluster, remove it all
#
# Options:
#   --binary PATH        the shoal binary to install
#   --from DIR           a directory of release binaries (scripts/build-release.sh: shoal-x86_64,
#                        shoal-aarch64, shoal-armv7); the one for `uname -m` is installed.
#                        Neither: keep the binary installed before.
#   --token T            join with this token (`shoal join-token worker` on a manager)
#   --manager ADDR       ... through this manager (default: the addresses in the token)
#   --init               start a new cluster with this node as its first manager
#   --daemon-opts "OPTS" flags for `shoal daemon`, kept in /etc/default/shoal (SHOAL_OPTS),
#                        e.g. "--advertise-addr 192.168.1.20 --metrics-addr 127.0.0.1:9323"
#   --socket-group NAME  the group that may use the control socket (default shoal, created
#                        when missing; "" for root only). Its members are root on every node.
#   --no-systemd         do not use systemd: start the daemon directly, in the background
#                        (log /var/log/shoal.log, pid /run/shoal/shoal.pid). For machines
#                        without systemd, containers and tests.
#   --root DIR           install into DIR instead of /: everything written goes under DIR
#                        and nothing outside it is touched. Nothing is started (what would
#                        be run is printed) unless --no-systemd is given too, which starts
#                        the daemon on DIR's paths.
#   --uninstall          stop the daemon, leave the cluster, remove everything install.sh
#                        added (the list is in /usr/local/lib/shoal/manifest)
#   --keep-state         with --uninstall: do not leave, keep /var/lib/shoal
#   --force              with --uninstall: leave even as a manager (`shoal leave --force`;
#                        the last manager wipes the cluster)
#   --logs               print the daemon's last log lines and exit
#
# Running it again changes nothing when nothing changed, and says so. It writes:
#   /usr/local/bin/shoal, /etc/systemd/system/shoal.service, /etc/default/shoal,
#   /var/lib/shoal (0700), /usr/local/lib/shoal/{install.sh,shoal.service,manifest},
#   bash and zsh completions and the man pages under /usr/local/share, fish completions
#   in /etc/fish/completions.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
    exit "${1:-0}"
}
die() {
    printf 'install.sh: %s\n' "$*" >&2
    exit 1
}
say() { printf '==> %s\n' "$*"; }

BINARY='' FROM='' ROOT='' TOKEN='' MANAGER='' INIT=0 UNINSTALL=0 KEEP_STATE=0
NO_SYSTEMD=0 LOGS=0 FORCE=0 DAEMON_OPTS='' DAEMON_OPTS_SET=0 SOCKET_GROUP=shoal
while (($#)); do
    case $1 in
    --binary) BINARY=${2:?--binary needs a path}; shift ;;
    --from) FROM=${2:?--from needs a directory}; shift ;;
    --root) ROOT=${2:?--root needs a directory}; shift ;;
    --token) TOKEN=${2:?--token needs a token}; shift ;;
    --manager) MANAGER=${2:?--manager needs an address}; shift ;;
    --init) INIT=1 ;;
    --daemon-opts) DAEMON_OPTS=${2?--daemon-opts needs a value}; DAEMON_OPTS_SET=1; shift ;;
    --socket-group) SOCKET_GROUP=${2?--socket-group needs a name}; shift ;;
    --no-systemd) NO_SYSTEMD=1 ;;
    --uninstall) UNINSTALL=1 ;;
    --keep-state) KEEP_STATE=1 ;;
    --force) FORCE=1 ;;
    --logs) LOGS=1 ;;
    -h | --help) usage 0 ;;
    *) printf 'install.sh: unknown option %s\n\n' "$1" >&2; usage 2 >&2 ;;
    esac
    shift
done
[[ -n $BINARY && -n $FROM ]] && die "give --binary or --from, not both"
[[ -n $TOKEN && $INIT == 1 ]] && die "give --token or --init, not both"
[[ -n $MANAGER && -z $TOKEN ]] && die "--manager goes with --token"
[[ $KEEP_STATE == 1 && $UNINSTALL == 0 ]] && die "--keep-state goes with --uninstall"
[[ $FORCE == 1 && $UNINSTALL == 0 ]] && die "--force goes with --uninstall"
if [[ -n $ROOT ]]; then
    mkdir -p "$ROOT"
    ROOT=$(cd "$ROOT" && pwd)
    [[ $ROOT == / ]] && ROOT=''
fi
R=$ROOT

BIN=/usr/local/bin/shoal
LIBDIR=/usr/local/lib/shoal
MANIFEST=$LIBDIR/manifest
UNIT=/etc/systemd/system/shoal.service
DEFAULTS=/etc/default/shoal
STATE=/var/lib/shoal
RUNDIR=/run/shoal
SOCK=$RUNDIR/shoal.sock
PIDFILE=$RUNDIR/shoal.pid
LOG=/var/log/shoal.log
MAN1=/usr/local/share/man/man1
declare -A COMPLETIONS=(
    [bash]=/usr/local/share/bash-completion/completions/shoal
    [zsh]=/usr/local/share/zsh/site-functions/_shoal
    # fish reads /usr/local/share/fish only when XDG_DATA_DIRS names it; /etc/fish always.
    [fish]=/etc/fish/completions/shoal.fish
)

systemd_running() { [[ -z $R && -d /run/systemd/system ]]; }
cli() { "$R$BIN" -H "unix://$R$SOCK" "$@"; }

# --- the manifest: what this script added (paths without the root) ---------------------

MANIFEST_LINES=()
if [[ -f $R$MANIFEST ]]; then
    mapfile -t MANIFEST_LINES <"$R$MANIFEST"
fi
in_manifest() {
    local l
    for l in "${MANIFEST_LINES[@]}"; do [[ $l == "$1" ]] && return 0; done
    return 1
}
note() { in_manifest "$1" || MANIFEST_LINES+=("$1"); }
manifest_mode() {
    local l
    for l in "${MANIFEST_LINES[@]}"; do
        if [[ $l == mode\ * ]]; then echo "${l#mode }"; fi
    done
}

# mkdir -p that notes each directory it creates.
make_dirs() {
    local path=$1 mode=${2:-0755} part='' comp
    local IFS=/
    for comp in ${path#/}; do
        part="$part/$comp"
        if [[ ! -d $R$part ]]; then
            mkdir -m "$mode" "$R$part"
            note "dir $part"
        fi
    done
}

CHANGED=0 # anything changed by this run
PUT_CHANGED=0 # whether the last put_file changed its file
# Installs SRC as DEST with MODE unless DEST already has that content and mode.
put_file() {
    local src=$1 dest=$2 mode=$3
    PUT_CHANGED=0
    make_dirs "$(dirname "$dest")"
    if [[ -f $R$dest ]] && cmp -s "$src" "$R$dest" &&
        [[ $(stat -c %a "$R$dest") == "${mode#0}" ]]; then
        note "file $dest"
        return 0
    fi
    local existed=0
    [[ -e $R$dest ]] && existed=1
    install -m "$mode" "$src" "$R$dest.shoal-new"
    mv -f "$R$dest.shoal-new" "$R$dest"
    note "file $dest"
    CHANGED=1 PUT_CHANGED=1
    ((${QUIET_PUT:-0})) && return 0
    if ((existed)); then say "updated $R$dest"; else say "installed $R$dest"; fi
}

# Writes the manifest (only when it changed: a second run touches nothing).
save_manifest() {
    make_dirs "$LIBDIR"
    printf '%s\n' "${MANIFEST_LINES[@]}" >"$work/manifest"
    cmp -s "$work/manifest" "$R$MANIFEST" && return 0
    install -m 0644 "$work/manifest" "$R$MANIFEST.shoal-new"
    mv -f "$R$MANIFEST.shoal-new" "$R$MANIFEST"
}

# --- the daemon without systemd --------------------------------------------------------

# The pid of the daemon started by --no-systemd, if it still runs (and is ours).
nosystemd_pid() {
    [[ -f $R$PIDFILE ]] || return 1
    local pid
    pid=$(cat "$R$PIDFILE")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    local args
    args=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ $args == *" daemon --state-dir $R$STATE "* ]] || return 1
    echo "$pid"
}

# The daemon's command line without systemd, in DAEMON_CMD: the unit's flags, on the
# root's paths, and SHOAL_OPTS from the defaults file.
DAEMON_CMD=()
daemon_command() {
    DAEMON_CMD=("$R$BIN" daemon --state-dir "$R$STATE" --socket "$R$SOCK")
    if [[ -n $SOCKET_GROUP ]]; then
        if getent group "$SOCKET_GROUP" >/dev/null; then
            DAEMON_CMD+=(--socket-group "$SOCKET_GROUP")
        else
            say "group $SOCKET_GROUP does not exist on this machine: the socket stays root's"
        fi
    fi
    local opts=''
    # shellcheck disable=SC1090
    [[ -f $R$DEFAULTS ]] && opts=$(. "$R$DEFAULTS" && printf '%s' "${SHOAL_OPTS:-}")
    # SHOAL_OPTS is split at spaces, as systemd splits $SHOAL_OPTS in ExecStart.
    # shellcheck disable=SC2206
    [[ -n $opts ]] && DAEMON_CMD+=($opts)
    return 0
}

nosystemd_stop() {
    local pid
    pid=$(nosystemd_pid) || return 0
    say "stopping the daemon (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$R$PIDFILE"
}

nosystemd_start() {
    make_dirs "$RUNDIR"
    make_dirs "$(dirname "$LOG")"
    note "file $PIDFILE"
    note "file $SOCK"
    note "file $LOG"
    daemon_command
    say "starting: ${DAEMON_CMD[*]}"
    # A session of its own, so it outlives this script and the ssh session that ran it.
    # NO_COLOR: plain log lines in the file, no terminal colour codes.
    NO_COLOR=1 setsid nohup "${DAEMON_CMD[@]}" </dev/null >>"$R$LOG" 2>&1 &
    echo $! >"$R$PIDFILE"
}

log_tail() {
    if [[ $(manifest_mode) == no-systemd || $NO_SYSTEMD == 1 ]]; then
        if [[ -f $R$LOG ]]; then
            echo "--- last lines of $R$LOG ---"
            tail -n "${1:-30}" "$R$LOG"
        else
            echo "(no log at $R$LOG)"
        fi
    elif [[ -z $R ]] && command -v journalctl >/dev/null; then
        echo "--- journalctl -u shoal (last lines) ---"
        journalctl -u shoal.service -n "${1:-30}" --no-pager 2>&1 || true
    else
        echo "(no daemon log: the daemon was never started from $R)"
    fi
}

wait_for_socket() {
    for _ in $(seq 300); do
        cli version >/dev/null 2>&1 && cli info --format json >/dev/null 2>&1 && return 0
        if [[ $NO_SYSTEMD == 1 ]] && ! nosystemd_pid >/dev/null; then
            echo "install.sh: the daemon exited" >&2
            log_tail 20 >&2
            return 1
        fi
        sleep 0.1
    done
    echo "install.sh: the daemon's socket $R$SOCK did not answer within 30 s" >&2
    log_tail 20 >&2
    return 1
}

if ((LOGS)); then
    log_tail 30
    exit 0
fi

# --- uninstall -------------------------------------------------------------------------

if ((UNINSTALL)); then
    if ((${#MANIFEST_LINES[@]} == 0)); then
        say "nothing to remove: no $R$MANIFEST (shoal was not installed here by install.sh)"
        exit 0
    fi
    mode=$(manifest_mode)
    [[ $mode == no-systemd ]] && NO_SYSTEMD=1
    running=0
    if [[ -x $R$BIN ]] && cli info --format json >/dev/null 2>&1; then running=1; fi
    if ((running && !KEEP_STATE)); then
        if cli info --format json | grep -q '"cluster": "active"'; then
            leave=(leave)
            ((FORCE)) && leave+=(--force)
            say "shoal ${leave[*]}"
            if ! cli "${leave[@]}"; then
                die "could not leave the cluster, nothing removed: demote this manager first (\`shoal node demote\` on another manager), or run again with --force (or --keep-state to keep its state and not leave)"
            fi
        fi
    fi
    if [[ $mode == no-systemd ]]; then
        nosystemd_stop
    elif systemd_running; then
        if systemctl is-enabled --quiet shoal.service 2>/dev/null ||
            systemctl is-active --quiet shoal.service 2>/dev/null; then
            say "systemctl disable --now shoal.service"
            systemctl disable --now shoal.service
        fi
    elif [[ -n $R ]]; then
        say "would run: systemctl disable --now shoal.service (nothing runs from $R)"
    fi
    # Files first, then the state, then the directories this script created (deepest
    # first, only when empty), then the group.
    pages=0
    for l in "${MANIFEST_LINES[@]}"; do
        if [[ $l == file\ * ]]; then
            f=${l#file }
            [[ -e $R$f || -L $R$f ]] || continue
            rm -f "$R$f"
            if [[ $f == "$MAN1"/* ]]; then pages=$((pages + 1)); else say "removed $R$f"; fi
        fi
    done
    ((pages)) && say "removed $pages man pages from $R$MAN1"
    if ((!KEEP_STATE)) && in_manifest "dir $STATE" && [[ -d $R$STATE ]]; then
        rm -rf "${R:?}$STATE"
        say "removed $R$STATE (the node's key and state)"
    elif [[ -d $R$STATE ]]; then
        say "kept $R$STATE"
    fi
    mapfile -t dirs < <(printf '%s\n' "${MANIFEST_LINES[@]}" | sed -n 's/^dir //p' | awk '{ print length($0) " " $0 }' | sort -rn | cut -d' ' -f2-)
    rm -f "$R$MANIFEST"
    for d in "${dirs[@]}"; do
        if [[ -d $R$d ]]; then rmdir "$R$d" 2>/dev/null || true; fi
    done
    for l in "${MANIFEST_LINES[@]}"; do
        if [[ $l == group\ * && -z $R ]]; then
            g=${l#group }
            if groupdel "$g" 2>/dev/null; then say "removed the group $g"; fi
        fi
    done
    if systemd_running && [[ $mode != no-systemd ]]; then systemctl daemon-reload; fi
    say "shoal is uninstalled${R:+ from $R}"
    exit 0
fi

# --- install ---------------------------------------------------------------------------

arch_name() {
    case $(uname -m) in
    x86_64 | amd64) echo x86_64 ;;
    aarch64 | arm64) echo aarch64 ;;
    armv7l | armv8l | armhf) echo armv7 ;;
    *) uname -m ;;
    esac
}

if [[ -n $FROM ]]; then
    arch=$(arch_name)
    BINARY=$FROM/shoal-$arch
    [[ -f $BINARY ]] || die "no binary for $arch ($(uname -m)) in $FROM: it has $(cd "$FROM" && echo shoal-* | tr -d '\n')"
fi
if [[ -z $BINARY ]]; then
    [[ -x $R$BIN ]] || die "give --binary PATH or --from DIR (no shoal installed at $R$BIN yet)"
    BINARY=$R$BIN
fi
[[ -f $BINARY ]] || die "no such file: $BINARY"
if ! version=$("$BINARY" version 2>&1) || [[ $version != shoal\ * ]]; then
    die "$BINARY does not run here ($(uname -m)): ${version:-no output}"
fi
say "$version for $(uname -m)${R:+, into $R}"

if ((!NO_SYSTEMD)) && [[ $(manifest_mode) == no-systemd ]]; then
    die "this node was installed with --no-systemd: run again with --no-systemd (or --uninstall first)"
fi
((NO_SYSTEMD)) && note "mode no-systemd"

make_dirs "$(dirname "$BIN")"
put_file "$BINARY" "$BIN" 0755
BIN_CHANGED=$PUT_CHANGED

# Completions and man pages, generated by the binary from its own command line.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for shell in bash zsh fish; do
    "$R$BIN" completion "$shell" >"$work/completion.$shell"
    put_file "$work/completion.$shell" "${COMPLETIONS[$shell]}" 0644
done
mkdir "$work/man"
"$R$BIN" man --dir "$work/man" >/dev/null
pages=0 changed_pages=0
for page in "$work"/man/*.1; do
    QUIET_PUT=1 put_file "$page" "$MAN1/$(basename "$page")" 0644
    pages=$((pages + 1)) changed_pages=$((changed_pages + PUT_CHANGED))
done
((changed_pages)) && say "installed $changed_pages of $pages man pages in $R$MAN1 (shoal.1, shoal-service-create.1, ...)"

# This script and the unit's template, so `install.sh --uninstall` can run from here later.
put_file "$HERE/install.sh" "$LIBDIR/install.sh" 0755
[[ -f $HERE/shoal.service ]] || die "no shoal.service beside install.sh in $HERE"
put_file "$HERE/shoal.service" "$LIBDIR/shoal.service" 0644

# The unit: Wants=docker.service only where Docker is installed; the socket group given.
docker_installed() {
    local f
    for f in /usr/bin/dockerd /usr/sbin/dockerd /usr/local/bin/dockerd \
        /lib/systemd/system/docker.service /usr/lib/systemd/system/docker.service \
        /etc/systemd/system/docker.service; do
        [[ -e $R$f ]] && return 0
    done
    return 1
}
unit_text=$(cat "$HERE/shoal.service")
if docker_installed; then
    unit_text=${unit_text/$'\nWants=network-online.target\n'/$'\nWants=network-online.target\nWants=docker.service\n'}
fi
if [[ -n $SOCKET_GROUP ]]; then
    [[ $SOCKET_GROUP =~ ^[a-z_][a-z0-9_-]*$ ]] || die "bad group name: $SOCKET_GROUP"
    unit_text=${unit_text/--socket-group shoal/--socket-group $SOCKET_GROUP}
else
    unit_text=${unit_text/ --socket-group shoal/}
fi
printf '%s\n' "$unit_text" >"$work/shoal.service"
put_file "$work/shoal.service" "$UNIT" 0644
UNIT_CHANGED=$PUT_CHANGED

if ((DAEMON_OPTS_SET)) || [[ ! -f $R$DEFAULTS ]]; then
    {
        echo "# Flags added to \`shoal daemon\` by shoal.service (and install.sh --no-systemd),"
        echo "# e.g. SHOAL_OPTS=\"--advertise-addr 192.168.1.20 --metrics-addr 127.0.0.1:9323\"."
        echo "# See \`shoal daemon --help\`; then \`systemctl restart shoal\`."
        printf 'SHOAL_OPTS="%s"\n' "${DAEMON_OPTS//\"/\\\"}"
    } >"$work/defaults"
    put_file "$work/defaults" "$DEFAULTS" 0644
    UNIT_CHANGED=$((UNIT_CHANGED | PUT_CHANGED))
fi

# The socket group.
if [[ -n $SOCKET_GROUP ]]; then
    if [[ -z $R ]]; then
        if ! getent group "$SOCKET_GROUP" >/dev/null; then
            groupadd --system "$SOCKET_GROUP"
            note "group $SOCKET_GROUP"
            CHANGED=1
            say "created the group $SOCKET_GROUP (its members may use the control socket: root on every node)"
        fi
    elif ! grep -q "^$SOCKET_GROUP:" "$R/etc/group" 2>/dev/null; then
        say "would create the group $SOCKET_GROUP (groupadd --system $SOCKET_GROUP)"
    fi
fi

if [[ ! -d $R$STATE ]]; then
    make_dirs "$(dirname "$STATE")"
    mkdir -m 0700 "$R$STATE"
    note "dir $STATE"
    CHANGED=1
    say "created $R$STATE"
else
    note "dir $STATE"
fi
save_manifest

# --- start -----------------------------------------------------------------------------

STARTED=0 # whether a daemon answers on the socket after this section
if ((NO_SYSTEMD)); then
    if pid=$(nosystemd_pid); then
        if ((BIN_CHANGED || UNIT_CHANGED)); then
            say "restarting the daemon (pid $pid) for the new binary or options"
            nosystemd_stop
            nosystemd_start
            CHANGED=1
        else
            say "the daemon already runs (pid $pid)"
        fi
    else
        nosystemd_start
        CHANGED=1
    fi
    save_manifest
    wait_for_socket || exit 1
    STARTED=1
elif [[ -n $R ]]; then
    say "would run: systemctl daemon-reload && systemctl enable --now shoal.service"
elif systemd_running; then
    ((UNIT_CHANGED)) && systemctl daemon-reload
    if ! systemctl is-enabled --quiet shoal.service 2>/dev/null; then
        say "systemctl enable shoal.service"
        systemctl enable --quiet shoal.service
        CHANGED=1
    fi
    if ! systemctl is-active --quiet shoal.service; then
        say "systemctl start shoal.service"
        systemctl start shoal.service
        CHANGED=1
    elif ((BIN_CHANGED || UNIT_CHANGED)); then
        say "systemctl restart shoal.service (new binary or options)"
        systemctl restart shoal.service
    else
        say "shoal.service is enabled and running"
    fi
    wait_for_socket || exit 1
    STARTED=1
else
    say "systemd is not running on this machine: start the daemon with your init system"
    say "(or run install.sh again with --no-systemd to have it started in the background):"
    daemon_command
    echo "    ${DAEMON_CMD[*]}"
fi

# --- join or init ----------------------------------------------------------------------

join_cmd=()
if [[ -n $TOKEN ]]; then
    join_cmd=(join --token "$TOKEN")
    [[ -n $MANAGER ]] && join_cmd+=("$MANAGER")
elif ((INIT)); then
    join_cmd=(init)
fi

if ((STARTED)); then
    info=$(cli info --format json)
    if grep -q '"cluster": "active"' <<<"$info"; then
        if ((${#join_cmd[@]})); then
            say "already in cluster $(sed -n 's/.*"cluster_id": "\([^"]*\)".*/\1/p' <<<"$info"): nothing to join"
        fi
    elif ((${#join_cmd[@]})); then
        say "shoal ${join_cmd[0]}"
        if ! cli "${join_cmd[@]}"; then
            echo "install.sh: \`shoal ${join_cmd[0]}\` failed (above); the daemon stays installed and running" >&2
            log_tail 15 >&2
            exit 1
        fi
        CHANGED=1
    else
        say "not in a cluster yet: run \`shoal join --token T\` or \`shoal init\`"
    fi
    node_id=$(cli info --format json | sed -n 's/.*"node_id": "\([^"]*\)".*/\1/p')
    echo "Node ID: $node_id"
elif ((${#join_cmd[@]})); then
    if [[ -n $R ]]; then
        say "would run: shoal ${join_cmd[0]}${TOKEN:+ --token <token>}${MANAGER:+ $MANAGER}"
    else
        say "then run: shoal ${join_cmd[0]}${TOKEN:+ --token <token>}${MANAGER:+ $MANAGER}"
    fi
fi

if ((CHANGED)); then
    say "done"
else
    say "nothing changed: shoal is installed and up to date${R:+ in $R}"
fi
