//! The client's history: every write with its outcome, and the register check at the end.
//!
//! Outcomes, as Jepsen counts them: exit 0 is acknowledged (`ok`); a call that never
//! reached a daemon ("cannot connect to the shoal daemon" on every manager) is `not
//! applied`, and so is a clean refusal ([`CLEAN_REFUSALS`]: the daemon says nothing was
//! proposed or the state machine refused it); anything else (a timeout, "the outcome of
//! this request is unknown", a connection closed mid-request) is `unknown`: maybe applied.
//!
//! The check: every field a write sets (a service's existence, its replica count, its
//! `SEQ` environment variable, a node's `chaos` label) is a register. Walking the history in
//! issue order (one writer, so the order is total), an acknowledged write makes its value
//! the only candidate, an unknown one adds its value to the candidates, a refused one
//! changes nothing. The final value must be one of them: anything else is a lost
//! acknowledged write, or a refused write that was applied after all.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::schedule::Write;
use crate::{output_within, shoal_bin};

/// How long one client write may take before it counts as `unknown`.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(15);

/// Errors that say the write was not applied: the state machine refused it, or the
/// manager refused it before proposing (`ManagerError::NotLeader`: "not proposed"). Any
/// other error (a timeout, "outcome … unknown", a connection closed mid-request) is
/// `unknown`.
pub const CLEAN_REFUSALS: &[&str] = &[
    "no such service",
    "this manager is not the leader",
    "already exists",
];

/// What became of a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Unknown(String),
    NotApplied,
    Refused(String),
}

impl Outcome {
    fn maybe(&self) -> bool {
        matches!(self, Outcome::Unknown(_))
    }

    /// One word for the event line.
    pub fn word(&self) -> String {
        match self {
            Outcome::Ok => "ok".into(),
            Outcome::Unknown(e) => format!("unknown ({e})"),
            Outcome::NotApplied => "not applied (no daemon answered)".into(),
            Outcome::Refused(e) => format!("refused ({e})"),
        }
    }
}

/// One issued write.
#[derive(Debug, Clone)]
pub struct Record {
    pub at: Duration,
    pub write: Write,
    pub outcome: Outcome,
}

/// The command line of `w` (node names by index in `names`).
pub fn args(w: &Write, names: &[String]) -> Vec<String> {
    let v = |s: &[&str]| s.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    match w {
        Write::Create { service, replicas } => v(&[
            "service",
            "create",
            "--detach",
            "--name",
            service,
            "--replicas",
            &replicas.to_string(),
            "--driver",
            "process",
            "--stop-grace-period",
            "1s",
            "/bin/sleep",
            "1000000",
        ]),
        Write::Scale { service, replicas } => v(&[
            "service",
            "scale",
            "--detach",
            &format!("{service}={replicas}"),
        ]),
        Write::Update { service, seq } => v(&[
            "service",
            "update",
            "--detach",
            "--env-add",
            &format!("SEQ={seq}"),
            service,
        ]),
        Write::Rm { service } => v(&["service", "rm", service]),
        Write::Label { node, seq } => v(&[
            "node",
            "update",
            "--label-add",
            &format!("chaos={seq}"),
            &names[*node],
        ]),
    }
}

/// Short text of `w` for the event line.
pub fn describe(w: &Write, names: &[String]) -> String {
    match w {
        Write::Create { service, replicas } => format!("create {service} replicas={replicas}"),
        Write::Scale { service, replicas } => format!("scale {service}={replicas}"),
        Write::Update { service, seq } => format!("update {service} SEQ={seq}"),
        Write::Rm { service } => format!("rm {service}"),
        Write::Label { node, seq } => format!("label {} chaos={seq}", names[*node]),
    }
}

/// Runs `w` on the manager at `sockets[first]`, or on the next ones in order when no daemon
/// answers there.
pub fn run(w: &Write, names: &[String], sockets: &[PathBuf], first: usize) -> Outcome {
    let a = args(w, names);
    for k in 0..sockets.len() {
        let sock = &sockets[(first + k) % sockets.len()];
        let mut cmd = Command::new(shoal_bin());
        cmd.arg("-H")
            .arg(format!("unix://{}", sock.display()))
            .args(&a)
            .stdin(Stdio::null());
        let out = match output_within(&mut cmd, WRITE_DEADLINE) {
            Ok(out) => out,
            Err(e) => {
                return Outcome::Unknown(format!("{e:#}").lines().next().unwrap_or("").into());
            }
        };
        if out.status.success() {
            return Outcome::Ok;
        }
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if err.contains("cannot connect to the shoal daemon") {
            continue;
        }
        if CLEAN_REFUSALS.iter().any(|m| err.contains(m)) {
            return Outcome::Refused(err);
        }
        return Outcome::Unknown(err);
    }
    Outcome::NotApplied
}

/// The final state the check reads: services by name (replicas, `SEQ`), node labels.
#[derive(Debug, Clone, Default)]
pub struct Final {
    pub services: BTreeMap<String, (u64, Option<String>)>,
    pub labels: BTreeMap<String, Option<String>>,
}

/// A register's candidates while walking the history.
#[derive(Debug, Clone)]
struct Register<T: Ord + Clone> {
    candidates: BTreeSet<T>,
    last_ok: Option<usize>,
}

impl<T: Ord + Clone> Register<T> {
    fn new(initial: T) -> Register<T> {
        Register {
            candidates: BTreeSet::from([initial]),
            last_ok: None,
        }
    }

    fn write(&mut self, v: T, o: &Outcome, i: usize) {
        if *o == Outcome::Ok {
            self.candidates = BTreeSet::from([v]);
            self.last_ok = Some(i);
        } else if o.maybe() {
            self.candidates.insert(v);
        }
    }
}

/// Counts from the check.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    pub acknowledged: usize,
    pub lost: Vec<String>,
}

/// Checks `fin` against `history`. `base` are the services (with their replica counts)
/// that existed, acknowledged, before the history started; `nodes` every node's name.
pub fn check(history: &[Record], base: &[(&str, u64)], nodes: &[String], fin: &Final) -> Verdict {
    let mut exists: BTreeMap<String, Register<bool>> = BTreeMap::new();
    let mut replicas: BTreeMap<String, Register<Option<u64>>> = BTreeMap::new();
    let mut seq: BTreeMap<String, Register<Option<String>>> = BTreeMap::new();
    let mut labels: BTreeMap<String, Register<Option<String>>> = BTreeMap::new();
    for (s, r) in base {
        exists.insert(s.to_string(), Register::new(true));
        replicas.insert(s.to_string(), Register::new(Some(*r)));
        seq.insert(s.to_string(), Register::new(None));
    }
    for n in nodes {
        labels.insert(n.clone(), Register::new(None));
    }
    let mut verdict = Verdict::default();
    for (i, r) in history.iter().enumerate() {
        if r.outcome == Outcome::Ok {
            verdict.acknowledged += 1;
        }
        let o = &r.outcome;
        match &r.write {
            Write::Create {
                service,
                replicas: n,
            } => {
                exists
                    .entry(service.clone())
                    .or_insert_with(|| Register::new(false))
                    .write(true, o, i);
                replicas
                    .entry(service.clone())
                    .or_insert_with(|| Register::new(None))
                    .write(Some(*n), o, i);
                seq.entry(service.clone())
                    .or_insert_with(|| Register::new(None))
                    .write(None, o, i);
            }
            Write::Scale {
                service,
                replicas: n,
            } => {
                replicas
                    .entry(service.clone())
                    .or_insert_with(|| Register::new(None))
                    .write(Some(*n), o, i);
            }
            Write::Update { service, seq: n } => {
                seq.entry(service.clone())
                    .or_insert_with(|| Register::new(None))
                    .write(Some(n.to_string()), o, i);
            }
            Write::Rm { service } => {
                exists
                    .entry(service.clone())
                    .or_insert_with(|| Register::new(false))
                    .write(false, o, i);
            }
            Write::Label { node, seq: n } => {
                labels
                    .entry(nodes[*node].clone())
                    .or_insert_with(|| Register::new(None))
                    .write(Some(n.to_string()), o, i);
            }
        }
    }
    let why = |reg: &str, last: Option<usize>| match last {
        Some(i) => format!(
            "{reg}: last acknowledged write #{i} at {:.3}s ({:?})",
            history[i].at.as_secs_f64(),
            history[i].write
        ),
        None => format!("{reg}: no acknowledged write"),
    };
    for (s, reg) in &exists {
        let present = fin.services.contains_key(s);
        if !reg.candidates.contains(&present) {
            verdict.lost.push(format!(
                "service {s} {} at the end, allowed {:?}; {}",
                if present { "exists" } else { "is missing" },
                reg.candidates,
                why("existence", reg.last_ok)
            ));
        }
    }
    for (s, (n, env)) in &fin.services {
        if let Some(reg) = replicas.get(s)
            && !reg.candidates.contains(&Some(*n))
        {
            verdict.lost.push(format!(
                "service {s} has {n} replicas, allowed {:?}; {}",
                reg.candidates,
                why("replicas", reg.last_ok)
            ));
        }
        if let Some(reg) = seq.get(s)
            && !reg.candidates.contains(env)
        {
            verdict.lost.push(format!(
                "service {s} has SEQ={env:?}, allowed {:?}; {}",
                reg.candidates,
                why("SEQ", reg.last_ok)
            ));
        }
    }
    for (n, reg) in &labels {
        let v = fin.labels.get(n).cloned().flatten();
        if !reg.candidates.contains(&v) {
            verdict.lost.push(format!(
                "node {n} has chaos={v:?}, allowed {:?}; {}",
                reg.candidates,
                why("label", reg.last_ok)
            ));
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(write: Write, outcome: Outcome) -> Record {
        Record {
            at: Duration::ZERO,
            write,
            outcome,
        }
    }

    #[test]
    fn the_register_check_allows_the_last_ack_or_a_later_maybe_and_nothing_else() {
        let nodes = vec!["n1".to_string()];
        let base = [("echo", 2)];
        let scale = |n| Write::Scale {
            service: "echo".into(),
            replicas: n,
        };
        let history = vec![
            rec(scale(3), Outcome::Ok),
            rec(scale(1), Outcome::Unknown("timeout".into())),
            rec(
                Write::Create {
                    service: "x1".into(),
                    replicas: 1,
                },
                Outcome::Ok,
            ),
            rec(
                Write::Rm {
                    service: "x1".into(),
                },
                Outcome::NotApplied,
            ),
            rec(Write::Label { node: 0, seq: 7 }, Outcome::Ok),
        ];
        let mut fin = Final::default();
        fin.services.insert("echo".into(), (1, None));
        fin.services.insert("x1".into(), (1, None));
        fin.labels.insert("n1".into(), Some("7".into()));
        let v = check(&history, &base, &nodes, &fin);
        assert!(v.lost.is_empty(), "{:?}", v.lost);
        assert_eq!(v.acknowledged, 3);

        // An acknowledged value replaced by an older one, a vanished create, a lost label.
        fin.services.insert("echo".into(), (2, None));
        fin.services.remove("x1");
        fin.labels.insert("n1".into(), None);
        let v = check(&history, &base, &nodes, &fin);
        assert_eq!(v.lost.len(), 3, "{:?}", v.lost);

        // A cleanly refused write must not show.
        let mut history = history;
        history.push(rec(scale(4), Outcome::Refused("not the leader".into())));
        let mut fin = Final::default();
        fin.services.insert("echo".into(), (4, None));
        fin.services.insert("x1".into(), (1, None));
        fin.labels.insert("n1".into(), Some("7".into()));
        let v = check(&history, &base, &nodes, &fin);
        assert_eq!(v.lost.len(), 1, "{:?}", v.lost);
    }
}
