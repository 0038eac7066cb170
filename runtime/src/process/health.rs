//! Health checks of the process driver: the check command runs periodically in the task's
//! working directory with the task's environment.

use std::process::Stdio;
use std::sync::Weak;
use std::time::{Duration, SystemTime};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::{Inner, TaskRecord, WORK_DIR, read_json, shim};
use crate::spec::{HealthCheck, HealthTest};
use crate::status::{Health, RunState};

/// Runs `check` for the task of `record` until the task stops running or the driver is dropped.
pub(super) async fn run(inner: Weak<Inner>, record: TaskRecord, check: HealthCheck) {
    let task_id = record.spec.task_id.clone();
    let (dir, env) = {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let dir = strong.task_dir(&task_id);
        let config: Option<shim::ShimConfig> =
            read_json(&dir.join(shim::CONFIG_FILE)).unwrap_or(None);
        let Some(config) = config else { return };
        (dir, config.env)
    };
    let workdir = dir.join(WORK_DIR);
    let mut health = {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        match strong.status_of(&record) {
            Ok(s) => s.health,
            Err(_) => return,
        }
    };
    let mut failures = 0u32;
    loop {
        tokio::time::sleep(check.interval).await;
        let started_at = {
            let Some(strong) = inner.upgrade() else {
                return;
            };
            match strong.status_of(&record) {
                Ok(s) if s.state == RunState::Running => s.started_at,
                _ => return,
            }
        };
        let ok = run_check(&check, &env, &workdir).await;
        let in_start_period = started_at
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age < check.start_period);
        let next = if ok {
            failures = 0;
            Health::Healthy
        } else if in_start_period && health == Health::Starting {
            health
        } else {
            failures += 1;
            if failures >= check.retries {
                Health::Unhealthy
            } else {
                health
            }
        };
        if next != health {
            health = next;
            let Some(strong) = inner.upgrade() else {
                return;
            };
            // Do not report a health change for a task that stopped meanwhile.
            match strong.status_of(&record) {
                Ok(s) if s.state == RunState::Running => strong.set_health(&task_id, health),
                _ => return,
            }
        }
    }
}

/// Runs the check once: true when it exits 0 within the timeout.
async fn run_check(
    check: &HealthCheck,
    env: &std::collections::BTreeMap<String, String>,
    workdir: &std::path::Path,
) -> bool {
    let mut command = match &check.test {
        HealthTest::Cmd(argv) => {
            let mut c = tokio::process::Command::new(&argv[0]);
            c.args(&argv[1..]);
            c
        }
        HealthTest::Shell(script) => {
            let mut c = tokio::process::Command::new("/bin/sh");
            c.arg("-c").arg(script);
            c
        }
        // Never started for such a check (`TaskSpec::active_health`); nothing to fail.
        HealthTest::None => return true,
    };
    command
        .env_clear()
        .envs(env)
        .current_dir(workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    let Ok(mut child) = command.spawn() else {
        return false;
    };
    match tokio::time::timeout(check.timeout, child.wait()).await {
        Ok(Ok(status)) => status.success(),
        Ok(Err(_)) => false,
        Err(_) => {
            if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), child.wait()).await;
            false
        }
    }
}
