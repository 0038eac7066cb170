//! Reading `/proc/PID/stat` to tell a live process from a reused pid.

use std::fs;

use nix::unistd::Pid;

/// What `/proc/PID/stat` says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// State letter (`R`, `S`, `Z`, ...).
    pub(crate) state: char,
    /// Process group id.
    pub(crate) pgrp: i32,
    /// Start time in clock ticks after boot (field 22).
    pub(crate) start_ticks: u64,
}

/// Parses `/proc/PID/stat`; `None` when the process does not exist.
pub(crate) fn stat(pid: i32) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

fn parse_stat(text: &str) -> Option<ProcStat> {
    // The command name (field 2) is in parentheses and may itself contain ") ", so split after
    // the last ')'. Fields from 3 on follow, whitespace separated.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let pgrp = fields.get(2)?.parse().ok()?; // field 5
    let start_ticks = fields.get(19)?.parse().ok()?; // field 22
    Some(ProcStat {
        state,
        pgrp,
        start_ticks,
    })
}

/// The start time of a live (non-zombie) process.
pub(crate) fn start_ticks(pid: i32) -> Option<u64> {
    stat(pid)
        .filter(|s| s.state != 'Z' && s.state != 'X')
        .map(|s| s.start_ticks)
}

/// True when `pid` is alive (not a zombie) and started at `start_ticks`: a reused pid is not.
pub(crate) fn is_same_process(pid: i32, start_ticks: u64) -> bool {
    pid > 0 && self::start_ticks(pid) == Some(start_ticks)
}

/// Our own pid.
pub(crate) fn own_pid() -> i32 {
    Pid::this().as_raw()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_with_parentheses_and_spaces() {
        let line =
            "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        let s = parse_stat(line).expect("parse");
        assert_eq!(s.state, 'S');
        assert_eq!(s.pgrp, 1234);
        assert_eq!(s.start_ticks, 987_654);
    }

    #[test]
    fn own_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = own_pid();
        let ticks = start_ticks(me).expect("own stat");
        assert!(is_same_process(me, ticks));
        assert!(!is_same_process(me, ticks + 1));
        assert!(!is_same_process(i32::MAX, ticks));
    }
}
