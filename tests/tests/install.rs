//! Issue 21: scripts/install.sh into a scratch root (idempotent, uninstalled to what was
//! there), its systemd unit through `systemd-analyze verify`, shell completions, and
//! scripts/bootstrap-pi.sh over `--ssh` into network namespaces.
//!
//! Addresses: 10.231.0.0/24, on veth pairs into namespaces named `shoalpi-<pid>-<n>` that
//! the bootstrap test creates and always removes (a watchdog does it when the test process
//! dies; namespaces of dead test processes are removed at the next start).

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail, ensure};
use shoal_tests::{Daemon, Poll, node_status, output_within, shoal_bin};

/// How long one script run may take.
const SCRIPT_DEADLINE: Duration = Duration::from_secs(180);

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts")
        .join(name)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd` (with a deadline); fails with its output unless it succeeds.
fn succeeds(cmd: &mut Command) -> Result<String> {
    let out = output_within(cmd.stdin(Stdio::null()), SCRIPT_DEADLINE)?;
    let all = text(&out);
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{all}",
        out.status
    );
    Ok(all)
}

fn install(args: &[&str]) -> Result<String> {
    succeeds(Command::new("bash").arg(script("install.sh")).args(args))
}

/// What a file tree holds: each path's kind, mode, size, content hash and mtime.
fn snapshot(root: &Path) -> Result<BTreeMap<PathBuf, String>> {
    snapshot_of(root, true)
}

/// [`snapshot`] without the directories' mtimes (which adding and removing entries moves).
fn contents(root: &Path) -> Result<BTreeMap<PathBuf, String>> {
    snapshot_of(root, false)
}

fn snapshot_of(root: &Path, dir_mtimes: bool) -> Result<BTreeMap<PathBuf, String>> {
    fn walk(
        root: &Path,
        dir: &Path,
        dir_mtimes: bool,
        out: &mut BTreeMap<PathBuf, String>,
    ) -> Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let meta = std::fs::symlink_metadata(&path)?;
            let rel = path.strip_prefix(root)?.to_path_buf();
            let mtime = meta.modified()?.duration_since(SystemTime::UNIX_EPOCH)?;
            let what = if meta.is_dir() {
                walk(root, &path, dir_mtimes, out)?;
                "dir".to_string()
            } else if meta.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&path)?.display())
            } else {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                std::fs::read(&path)?.hash(&mut h);
                format!("file {} {:x}", meta.len(), h.finish())
            };
            let mode = meta.mode() & 0o7777;
            if meta.is_dir() && !dir_mtimes {
                out.insert(rel, format!("{what} mode {mode:o}"));
            } else {
                out.insert(rel, format!("{what} mode {mode:o} mtime {mtime:?}"));
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(root, root, dir_mtimes, &mut out)?;
    Ok(out)
}

/// Pids of processes whose command line names `dir` (nothing may run from a scratch root).
fn processes_naming(dir: &Path) -> Vec<i32> {
    let needle = dir.to_string_lossy().into_owned();
    shoal_tests::all_pids()
        .into_iter()
        .filter(|pid| {
            shoal_tests::cmdline(*pid).is_some_and(|args| args.iter().any(|a| a.contains(&needle)))
        })
        .collect()
}

/// `uname -m` as install.sh names release binaries (`shoal-x86_64`, `shoal-aarch64`,
/// `shoal-armv7`).
fn release_arch() -> &'static str {
    match std::env::consts::ARCH {
        "arm" => "armv7",
        other => other,
    }
}

/// The paths install.sh writes on a real system: a run with `--root` must not touch them.
const SYSTEM_PATHS: &[&str] = &[
    "/usr/local/bin/shoal",
    "/usr/local/lib/shoal",
    "/etc/systemd/system/shoal.service",
    "/etc/default/shoal",
    "/var/lib/shoal",
    "/run/shoal",
    "/usr/local/share/bash-completion/completions/shoal",
    "/etc/fish/completions/shoal.fish",
    "/usr/local/share/man/man1/shoal.1",
];

fn system_paths_state() -> Vec<(String, Option<SystemTime>)> {
    SYSTEM_PATHS
        .iter()
        .map(|p| {
            let m = std::fs::symlink_metadata(p).ok();
            (p.to_string(), m.and_then(|m| m.modified().ok()))
        })
        .collect()
}

/// Issue 21: install.sh into a scratch root writes the binary, unit, defaults, state dir,
/// completions and man pages there and nothing elsewhere, starts nothing (it says what it
/// would run); a second run (with `--from`, picking the binary by architecture) changes
/// nothing and says so; `--uninstall` leaves the root exactly as it was.
#[test]
fn issue_21_install_into_a_scratch_root_twice_then_uninstall_restores_it() -> Result<()> {
    let dir = tempfile::Builder::new().prefix("shoal-pi-").tempdir()?;
    let root = dir.path().join("root");
    // What the root had before: files and directories install.sh shares with others,
    // and a Docker engine (so the unit wants docker.service).
    for (path, body, mode) in [
        ("etc/hostname", "pi-1\n", 0o644),
        ("usr/local/bin/other-tool", "#!/bin/sh\n", 0o755),
        ("var/lib/other/data", "keep me\n", 0o600),
        ("usr/bin/dockerd", "#!/bin/sh\nexit 1\n", 0o755),
    ] {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().context("no parent")?)?;
        std::fs::write(&p, body)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
    }
    let before = contents(&root)?;
    let system_before = system_paths_state();
    let bin = shoal_bin();
    let bin_s = bin.to_string_lossy().into_owned();
    let root_s = root.to_string_lossy().into_owned();

    let first = install(&[
        "--binary",
        &bin_s,
        "--root",
        &root_s,
        "--token",
        "SHOAL1-test",
        "--manager",
        "192.0.2.10",
    ])?;
    let expect = |p: &str| -> Result<std::fs::Metadata> {
        std::fs::metadata(root.join(p)).with_context(|| format!("{p} was not installed:\n{first}"))
    };
    ensure!(
        std::fs::read(root.join("usr/local/bin/shoal"))? == std::fs::read(&bin)?,
        "the installed binary is not the one given"
    );
    ensure!(expect("usr/local/bin/shoal")?.mode() & 0o777 == 0o755);
    ensure!(
        expect("var/lib/shoal")?.mode() & 0o777 == 0o700,
        "state dir not 0700"
    );
    for p in [
        "usr/local/share/bash-completion/completions/shoal",
        "usr/local/share/zsh/site-functions/_shoal",
        "etc/fish/completions/shoal.fish",
        "usr/local/share/man/man1/shoal.1",
        "usr/local/share/man/man1/shoal-service-create.1",
        "usr/local/lib/shoal/install.sh",
        "usr/local/lib/shoal/manifest",
        "etc/default/shoal",
    ] {
        expect(p)?;
    }
    let bash = Command::new(&bin).args(["completion", "bash"]).output()?;
    ensure!(
        std::fs::read(root.join("usr/local/share/bash-completion/completions/shoal"))?
            == bash.stdout,
        "the installed bash completion is not `shoal completion bash`"
    );
    let unit = std::fs::read_to_string(root.join("etc/systemd/system/shoal.service"))?;
    for line in [
        "After=network-online.target docker.service",
        "Wants=docker.service",
        "Restart=on-failure",
        "KillMode=process",
        "ExecStart=/usr/local/bin/shoal daemon --state-dir /var/lib/shoal --socket /run/shoal/shoal.sock --socket-group shoal $SHOAL_OPTS",
        "WantedBy=multi-user.target",
    ] {
        ensure!(
            unit.lines().any(|l| l == line),
            "no `{line}` in the unit:\n{unit}"
        );
    }
    // Nothing started; what would be is said.
    ensure!(
        first
            .contains("would run: systemctl daemon-reload && systemctl enable --now shoal.service"),
        "{first}"
    );
    ensure!(
        first.contains("would run: shoal join --token <token> 192.0.2.10"),
        "{first}"
    );
    ensure!(
        processes_naming(&root).is_empty(),
        "something runs from the scratch root"
    );
    let installed = snapshot(&root)?;

    // Again, from a directory of release binaries: the one for this machine is picked,
    // it is the same binary, so nothing changes (not even a file's mtime).
    let releases = dir.path().join("dist");
    std::fs::create_dir(&releases)?;
    std::fs::copy(&bin, releases.join(format!("shoal-{}", release_arch())))?;
    std::fs::write(releases.join("shoal-other-arch"), "not this one")?;
    let second = install(&[
        "--from",
        &releases.to_string_lossy(),
        "--root",
        &root_s,
        "--token",
        "SHOAL1-test",
        "--manager",
        "192.0.2.10",
    ])?;
    ensure!(
        second.contains("nothing changed: shoal is installed and up to date"),
        "{second}"
    );
    ensure!(!second.contains("installed /"), "{second}");
    let again = snapshot(&root)?;
    ensure!(
        again == installed,
        "the second run changed {:?}:\n{second}",
        again
            .iter()
            .filter(|(k, v)| installed.get(*k) != Some(*v))
            .map(|(k, _)| k)
            .collect::<Vec<_>>()
    );

    let gone = install(&["--uninstall", "--root", &root_s])?;
    // As it was: every file, link and directory, with its content, mode and (files) mtime.
    let after = contents(&root)?;
    if after != before {
        let added: Vec<_> = after.keys().filter(|k| !before.contains_key(*k)).collect();
        let lost: Vec<_> = before.keys().filter(|k| !after.contains_key(*k)).collect();
        bail!(
            "--uninstall did not restore the root: added {added:?}, lost {lost:?}, changed {:?}\n{gone}",
            before
                .iter()
                .filter(|(k, v)| after.get(*k).is_some_and(|a| a != *v))
                .map(|(k, _)| k)
                .collect::<Vec<_>>()
        );
    }
    ensure!(
        system_paths_state() == system_before,
        "install.sh --root touched the real system"
    );
    Ok(())
}

/// `systemd-analyze verify` of ROOT's unit, with ROOT's binary and man page where the
/// unit names them (bind-mounted in a mount namespace of its own: nothing outside changes).
fn systemd_verify(root: &Path) -> Result<Output> {
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(
            r#"mount --bind "$1/usr/local/bin" /usr/local/bin &&
               MANPATH="$1/usr/local/share/man" exec systemd-analyze verify "$1/etc/systemd/system/shoal.service""#,
        )
        .arg("sh")
        .arg(root);
    output_within(cmd.stdin(Stdio::null()), SCRIPT_DEADLINE)
}

/// Issue 21: the unit install.sh writes passes `systemd-analyze verify` (no warning
/// either), with and without Docker installed and with and without a socket group.
#[test]
fn issue_21_the_installed_unit_passes_systemd_analyze_verify() -> Result<()> {
    ensure!(
        Command::new("systemd-analyze")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "systemd-analyze is missing: scripts/test.sh installs it (Debian package systemd)"
    );
    let bin = shoal_bin().to_string_lossy().into_owned();
    for (docker, group) in [(true, "shoal"), (false, "")] {
        let dir = tempfile::Builder::new().prefix("shoal-pi-").tempdir()?;
        let root = dir.path().join("root");
        if docker {
            std::fs::create_dir_all(root.join("usr/bin"))?;
            std::fs::write(root.join("usr/bin/dockerd"), "")?;
        }
        let root_s = root.to_string_lossy().into_owned();
        install(&["--binary", &bin, "--root", &root_s, "--socket-group", group])?;
        let unit = std::fs::read_to_string(root.join("etc/systemd/system/shoal.service"))?;
        ensure!(
            unit.contains("\nWants=docker.service\n") == docker,
            "docker installed: {docker}; unit:\n{unit}"
        );
        ensure!(
            unit.contains("--socket-group shoal") != group.is_empty(),
            "socket group {group:?}; unit:\n{unit}"
        );
        let out = systemd_verify(&root)?;
        ensure!(
            out.status.success() && text(&out).trim().is_empty(),
            "systemd-analyze verify (docker {docker}, group {group:?}) said ({}):\n{}\n{unit}",
            out.status,
            text(&out)
        );
    }
    Ok(())
}

/// Issue 21: `shoal completion bash|zsh|fish` generate scripts that the shells load and
/// that complete Shoal's commands.
#[test]
fn issue_21_completions_generate_for_bash_zsh_and_fish() -> Result<()> {
    let dir = tempfile::Builder::new().prefix("shoal-pi-").tempdir()?;
    for shell in ["bash", "zsh", "fish"] {
        let out = output_within(
            Command::new(shoal_bin())
                .args(["completion", shell])
                .stdin(Stdio::null()),
            SCRIPT_DEADLINE,
        )?;
        ensure!(
            out.status.success() && out.stdout.len() > 1000,
            "{shell}: {}",
            text(&out)
        );
        std::fs::write(dir.path().join(shell), &out.stdout)?;
        ensure!(
            Command::new(shell)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success()),
            "{shell} is missing: scripts/test.sh installs it"
        );
    }
    let file = |s: &str| dir.path().join(s).to_string_lossy().into_owned();
    // bash: the completion function offers `service` for `shoal serv`, `create` for
    // `shoal service cr`, the shells for `shoal completion `.
    for (words, cword, want) in [
        ("shoal serv", 1, "service"),
        ("shoal service cr", 2, "create"),
        ("shoal completion ''", 2, "zsh"),
    ] {
        let out = succeeds(Command::new("bash").arg("-c").arg(format!(
            r#"source "$1"; COMP_WORDS=({words}); COMP_CWORD={cword}; _shoal shoal "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"; printf '%s\n' "${{COMPREPLY[@]}}""#
        )).arg("bash").arg(file("bash")))?;
        ensure!(out.lines().any(|l| l == want), "bash `{words}`: {out}");
    }
    // zsh: the script parses.
    succeeds(Command::new("zsh").arg("-n").arg(file("zsh")))?;
    // fish: it completes.
    let out = succeeds(
        Command::new("fish")
            .arg("-c")
            .arg(r#"source $argv[1]; complete -C "shoal serv"; complete -C "shoal node pro""#)
            .arg(file("fish")),
    )?;
    ensure!(
        out.lines().any(|l| l.starts_with("service\t")),
        "fish: {out}"
    );
    ensure!(
        out.lines().any(|l| l.starts_with("promote\t")),
        "fish: {out}"
    );
    Ok(())
}

// --- bootstrap-pi.sh into network namespaces ---------------------------------------------

/// Removes what the namespaces hold when the test process is gone, however it ended: every
/// process in them, the namespaces, the host ends of their veth pairs. Arguments: the
/// namespace names (veth host end: the name with `h` appended, shortened as [`veth`] does).
const NETNS_WATCHDOG: &str = r#"
cat >/dev/null
for ns in "$@"; do
    for _ in 1 2 3 4 5; do
        pids=$(ip netns pids "$ns" 2>/dev/null)
        [ -n "$pids" ] || break
        kill -9 $pids 2>/dev/null
        sleep 0.2
    done
    ip netns del "$ns" 2>/dev/null
done
"#;

/// Network namespaces `shoalpi-<pid>-<n>`, each joined to this one by a veth pair:
/// 10.231.0.(4n+1) here, 10.231.0.(4n+2) there (the default route). Dropping it (or the
/// test process dying) kills every process in them and deletes them.
struct Namespaces {
    names: Vec<String>,
    watchdog: Option<(Child, ChildStdin)>,
}

/// A veth name (at most 15 bytes) for namespace `n` of this process, `side` h or n.
fn veth(n: usize, side: char) -> String {
    format!("spi{}{side}{n}", std::process::id() % 100_000)
}

fn ip(args: &[&str]) -> Result<()> {
    let out = output_within(
        Command::new("ip").args(args).stdin(Stdio::null()),
        SCRIPT_DEADLINE,
    )
    .context("cannot run ip (iproute2; the tests run as root)")?;
    ensure!(
        out.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        text(&out)
    );
    Ok(())
}

impl Namespaces {
    fn new(count: usize) -> Result<Namespaces> {
        // Namespaces left by a test process that died before it could remove them.
        let listing = Command::new("ip").args(["netns", "list"]).output()?;
        for line in String::from_utf8_lossy(&listing.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or_default();
            let owner = name
                .strip_prefix("shoalpi-")
                .and_then(|r| r.split('-').next());
            if let Some(pid) = owner.and_then(|p| p.parse::<u32>().ok())
                && !Path::new(&format!("/proc/{pid}")).exists()
            {
                eprintln!("removing network namespace {name}, left by a dead test process");
                let _ = Command::new("sh")
                    .arg("-c")
                    .arg(NETNS_WATCHDOG)
                    .arg("sh")
                    .arg(name)
                    .stdin(Stdio::null())
                    .status();
            }
        }
        let names: Vec<String> = (0..count)
            .map(|n| format!("shoalpi-{}-{n}", std::process::id()))
            .collect();
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(NETNS_WATCHDOG)
            .arg("shoal-test-netns-watchdog")
            .args(&names)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().context("cannot start the namespace watchdog")?;
        let stdin = child.stdin.take().context("the watchdog has no stdin")?;
        let ns = Namespaces {
            names,
            watchdog: Some((child, stdin)),
        };
        for (n, name) in ns.names.iter().enumerate() {
            let (here, there) = (
                format!("10.231.0.{}", 4 * n + 1),
                format!("10.231.0.{}", 4 * n + 2),
            );
            let (h, t) = (veth(n, 'h'), veth(n, 'n'));
            ip(&["netns", "add", name])?;
            ip(&["link", "add", &h, "type", "veth", "peer", "name", &t])?;
            ip(&["link", "set", &t, "netns", name])?;
            ip(&["addr", "add", &format!("{here}/30"), "dev", &h])?;
            ip(&["link", "set", &h, "up"])?;
            for args in [
                vec!["addr", "add", &format!("{there}/30"), "dev", &t],
                vec!["link", "set", &t, "up"],
                vec!["link", "set", "lo", "up"],
                vec!["route", "add", "default", "via", &here],
            ] {
                let mut all = vec!["netns", "exec", name, "ip"];
                all.extend(args.iter().copied());
                ip(&all)?;
            }
        }
        Ok(ns)
    }

    /// The address of this side of namespace `n`'s link.
    fn here(n: usize) -> String {
        format!("10.231.0.{}", 4 * n + 1)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        // Closing its stdin makes the watchdog clean up now; wait for it (bounded).
        if let Some((mut child, stdin)) = self.watchdog.take() {
            drop(stdin);
            let done = Poll::new("the namespace watchdog", Duration::from_secs(30))
                .every(Duration::from_millis(20))
                .until(|| Ok(child.try_wait()?.map(|_| ())));
            if done.is_err() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        for n in 0..self.names.len() {
            // Gone with its namespace; deleted here in case the namespace lingered.
            let _ = Command::new("ip")
                .args(["link", "del", &veth(n, 'h')])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A stand-in for `ssh HOST COMMAND`: runs COMMAND with bash in the network namespace
/// named by HOST (`user@` ignored), with TMPDIR in that host's scratch dir.
fn fake_ssh(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("ssh");
    let mut f = std::fs::File::create(&path)?;
    write!(
        f,
        r#"#!/bin/sh
host=${{1#*@}}
shift
mkdir -p "{dir}/$host/tmp"
exec ip netns exec "$host" env TMPDIR="{dir}/$host/tmp" bash -c "$*"
"#,
        dir = dir.display()
    )?;
    drop(f);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// Runs bootstrap-pi.sh against `hosts` (namespaces), installing each into its scratch
/// root `DIR/HOST/root` with the daemon started without systemd.
fn bootstrap(dir: &Path, m: &Daemon, hosts: &[&str], extra: &[&str]) -> Result<Output> {
    let ssh = fake_ssh(dir)?;
    let bin = shoal_bin();
    let mut cmd = Command::new("bash");
    cmd.arg(script("bootstrap-pi.sh"))
        .arg("--cli")
        .arg(&bin)
        .arg("-H")
        .arg(format!("unix://{}", m.socket.display()))
        .arg("--binary")
        .arg(&bin)
        .arg("--ssh")
        .arg(&ssh)
        // Each host's own root: the fake ssh runs on this machine. Its daemons share this
        // machine's Docker engine (as the harness's do), so without service discovery: it
        // would create the engine's `shoal` network from every namespace at once.
        .arg("--install-opts")
        .arg(format!(
            r#"--root "{}/$(ip netns identify)/root" --no-systemd --daemon-opts --no-discovery"#,
            dir.display()
        ))
        .arg("--timeout")
        .arg("60")
        .args(extra)
        .args(hosts.iter().map(|h| format!("root@{h}")));
    output_within(cmd.stdin(Stdio::null()), SCRIPT_DEADLINE)
}

/// The node IDs bootstrap-pi.sh reported ready (`[host] ==> ready: node ID`).
fn ready_ids(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| {
            l.split_once("==> ready: node ")
                .map(|(_, id)| id.trim().to_string())
        })
        .collect()
}

/// Issue 21: bootstrap-pi.sh, given `--ssh` into two network namespaces at once, copies the
/// binary and install.sh, mints a token, installs (each into its scratch root), joins, and
/// ends with both nodes `ready`; nothing is left in the hosts' temp dirs. Run again, it
/// changes nothing. With an expired token the remote install says so, and so does the
/// script, which exits 1.
#[test]
fn issue_21_bootstrap_pi_over_ssh_into_namespaces_ends_ready_and_says_when_a_token_expired()
-> Result<()> {
    let ns = Namespaces::new(3)?;
    let dir = tempfile::Builder::new().prefix("shoal-pi-").tempdir()?;
    let mut m = Daemon::new("pi-manager", &format!("{}:4747", Namespaces::here(0)))?;
    m.start()?;
    m.ok(&["init"])?;
    // A token that will have expired by the end (the managers allow 60 s of clock skew).
    let expiring = m
        .ok(&["join-token", "-q", "--ttl", "1s", "worker"])?
        .trim()
        .to_string();
    let expired_at = SystemTime::now() + Duration::from_secs(1 + 60 + 2);

    let hosts = [ns.names[0].as_str(), ns.names[1].as_str()];
    let out = bootstrap(dir.path(), &m, &hosts, &[])?;
    let all = text(&out);
    ensure!(
        out.status.success(),
        "bootstrap-pi.sh failed ({}):\n{all}",
        out.status
    );
    for step in [
        "minting a worker token valid for 1 hour",
        "==> detecting the architecture: uname -m",
        "copying shoal and install.sh",
        "This node joined the cluster as a worker",
        "==> all 2 ready:",
    ] {
        ensure!(all.contains(step), "no `{step}` in:\n{all}");
    }
    let ids = ready_ids(&all);
    ensure!(ids.len() == 2, "two nodes should be ready: {ids:?}\n{all}");
    for id in &ids {
        let rows = m.json(&["node", "ls"])?;
        let row = rows
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["id"] == id.as_str())
            .with_context(|| format!("{id} is not in node ls: {rows}"))?;
        ensure!(row["status"] == "ready" && row["role"] == "worker", "{row}");
    }
    for host in hosts {
        let root = dir.path().join(host).join("root");
        ensure!(
            root.join("usr/local/bin/shoal").exists(),
            "{host}: not installed in its root"
        );
        let tmp: Vec<_> = std::fs::read_dir(dir.path().join(host).join("tmp"))?.collect();
        ensure!(
            tmp.is_empty(),
            "{host}: the staging dir was left behind: {tmp:?}"
        );
    }

    // Again: nothing to do, same nodes.
    let again = bootstrap(
        dir.path(),
        &m,
        &hosts[..1],
        &["--token", &shoal_tests::join_token(&m, "worker")?],
    )?;
    let again_all = text(&again);
    ensure!(again.status.success(), "second run failed:\n{again_all}");
    ensure!(again_all.contains("nothing to join"), "{again_all}");
    ensure!(again_all.contains("nothing changed"), "{again_all}");
    let again_ids = ready_ids(&again_all);
    ensure!(
        again_ids.len() == 1 && ids.contains(&again_ids[0]),
        "the second run should find the same node ready: {again_ids:?} of {ids:?}\n{again_all}"
    );

    // The expired token, on a third host.
    Poll::new(
        "the 1 s token to be past its expiry and the skew allowance",
        Duration::from_secs(90),
    )
    .every(Duration::from_millis(500))
    .until(|| Ok((SystemTime::now() >= expired_at).then_some(())))?;
    let nodes_before = m.json(&["node", "ls"])?.as_array().map_or(0, Vec::len);
    let late = bootstrap(
        dir.path(),
        &m,
        &[ns.names[2].as_str()],
        &["--token", &expiring],
    )?;
    let late_all = text(&late);
    ensure!(
        !late.status.success(),
        "an expired token was accepted:\n{late_all}"
    );
    ensure!(
        late_all.contains("this join token expired at"),
        "the remote side does not say the token expired:\n{late_all}"
    );
    ensure!(
        late_all.contains("FAILED: the join token expired"),
        "the script does not say the token expired:\n{late_all}"
    );
    ensure!(late_all.contains("==> failed: root@"), "{late_all}");
    ensure!(
        m.json(&["node", "ls"])?.as_array().map_or(0, Vec::len) == nodes_before,
        "a node joined with an expired token"
    );
    ensure!(node_status(&m, "pi-manager")?.as_deref() == Some("ready"));
    // Nothing of the hosts outlives their namespaces.
    drop(ns);
    let left = processes_naming(dir.path());
    ensure!(left.is_empty(), "processes of the hosts remain: {left:?}");
    Ok(())
}
