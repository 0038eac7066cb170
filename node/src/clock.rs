//! The node's wall clock, guarded against steps.
//!
//! Shoal writes wall-clock times into the Raft state (a task's start and end, a restart's
//! delay, an update's monitor window) and the leader compares them with its own clock. A
//! clock that steps — NTP correcting a clock it finds far off, a Raspberry Pi without a
//! real-time clock booting with last week's time — would then stall the cluster (a restart
//! "due" in a day) or skip its waits. So every time the node takes goes through
//! [`GuardedClock`]: it follows the wall clock while the wall clock keeps pace with the
//! monotonic one (within [`TOLERANCE_MS`]), and when the wall clock steps it goes on from
//! where it was at the monotonic clock's pace instead:
//!
//! - a step **back** is never taken: readings never go back;
//! - a step **forward** is taken once it has lasted [`ADOPT_AFTER_MS`] (a clock that was
//!   wrong and was corrected stays corrected; a brief wrong step is ignored) — waits that
//!   were running then end early, never late;
//! - a time seen in the cluster's state ahead of this clock ([`observe`]) is taken at once,
//!   so a new leader whose clock is behind the old one's goes on from the old one's times.
//!
//! The logic is [`GuardedClock`] (no I/O, no clock of its own: readings in, time out);
//! [`now_ms`] and [`observe`] drive one per process from `SystemTime` and `Instant`.

use std::sync::{Mutex, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tracing::{info, warn};

/// How far the wall clock may drift from the guarded time and still be followed.
pub const TOLERANCE_MS: u64 = 1_000;
/// How long a forward step must last before it is taken.
pub const ADOPT_AFTER_MS: u64 = 30_000;

/// What the last reading found the wall clock doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Keeping pace: followed.
    Agrees,
    /// Ahead of the guarded time by more than the tolerance (a step forward not taken yet).
    Ahead,
    /// Behind the guarded time by more than the tolerance (a step back, never taken; or
    /// the cluster's time is ahead of this node's clock).
    Behind,
}

/// A change worth a log line, from [`GuardedClock::read`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Note {
    /// The wall clock left the guarded time by this many ms (positive: ahead).
    Left(i64),
    /// The wall clock keeps pace again.
    Rejoined,
    /// A forward step of this many ms was taken (it lasted [`ADOPT_AFTER_MS`]).
    TookStep(u64),
}

/// The guarded time: see the module docs. Times are ms since the Unix epoch (wall) and ms
/// of any monotonic clock (`mono`).
#[derive(Debug, Clone, Default)]
pub struct GuardedClock {
    /// The guarded time at a monotonic instant: `(time, mono)`.
    anchor: Option<(u64, u64)>,
    /// The last time returned.
    last: u64,
    /// Since when (mono) the wall clock has been ahead.
    ahead_since: Option<u64>,
    pace: Option<Pace>,
}

impl GuardedClock {
    /// The guarded time now, given the wall clock and the monotonic clock; never less than
    /// a time returned before.
    pub fn read(&mut self, wall: u64, mono: u64) -> (u64, Option<Note>) {
        let Some((t0, m0)) = self.anchor else {
            self.anchor = Some((wall, mono));
            self.last = self.last.max(wall);
            self.pace = Some(Pace::Agrees);
            return (self.last, None);
        };
        let projected = t0.saturating_add(mono.saturating_sub(m0));
        let (t, pace, mut note) = if wall.saturating_add(TOLERANCE_MS) >= projected
            && wall <= projected.saturating_add(TOLERANCE_MS)
        {
            self.anchor = Some((wall, mono));
            self.ahead_since = None;
            (wall, Pace::Agrees, None)
        } else if wall > projected {
            let since = *self.ahead_since.get_or_insert(mono);
            if mono.saturating_sub(since) >= ADOPT_AFTER_MS {
                self.anchor = Some((wall, mono));
                self.ahead_since = None;
                (wall, Pace::Agrees, Some(Note::TookStep(wall - projected)))
            } else {
                (projected, Pace::Ahead, None)
            }
        } else {
            self.ahead_since = None;
            (projected, Pace::Behind, None)
        };
        if note.is_none() && self.pace != Some(pace) {
            note = Some(match pace {
                Pace::Agrees => Note::Rejoined,
                _ => Note::Left(signed_diff(wall, projected)),
            });
        }
        self.pace = Some(pace);
        self.last = self.last.max(t);
        (self.last, note)
    }

    /// Takes `time` (seen in the cluster's state) when it is ahead of the guarded time.
    pub fn observe(&mut self, time: u64, mono: u64) {
        let projected = match self.anchor {
            Some((t0, m0)) => t0.saturating_add(mono.saturating_sub(m0)),
            None => 0,
        };
        if time > projected.saturating_add(TOLERANCE_MS) {
            self.anchor = Some((time, mono));
            self.ahead_since = None;
        }
    }

    /// What the last reading found.
    pub fn pace(&self) -> Option<Pace> {
        self.pace
    }
}

fn signed_diff(a: u64, b: u64) -> i64 {
    if a >= b {
        i64::try_from(a - b).unwrap_or(i64::MAX)
    } else {
        -i64::try_from(b - a).unwrap_or(i64::MAX)
    }
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn mono_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn global() -> std::sync::MutexGuard<'static, GuardedClock> {
    static CLOCK: Mutex<GuardedClock> = Mutex::new(GuardedClock {
        anchor: None,
        last: 0,
        ahead_since: None,
        pace: None,
    });
    CLOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The process's guarded time in ms since the Unix epoch.
pub fn now_ms() -> u64 {
    let (t, note) = global().read(wall_ms(), mono_ms());
    match note {
        None => {}
        Some(Note::Left(d)) if d > 0 => warn!(
            "the wall clock stepped {} s ahead: ignored unless it lasts {} s (check NTP)",
            d / 1000,
            ADOPT_AFTER_MS / 1000
        ),
        Some(Note::Left(d)) => warn!(
            "the wall clock is {} s behind this node's time: going on at the monotonic clock's pace (check NTP)",
            -d / 1000
        ),
        Some(Note::Rejoined) => info!("the wall clock keeps pace again"),
        Some(Note::TookStep(d)) => {
            warn!(
                "the wall clock stepped {} s ahead and stayed: taken",
                d / 1000
            );
        }
    }
    t
}

/// Takes a time seen in the cluster's state when it is ahead of this node's.
pub fn observe(time_ms: u64) {
    global().observe(time_ms, mono_ms());
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_780_000_000_000;

    #[test]
    fn follows_a_wall_clock_that_keeps_pace() {
        let mut c = GuardedClock::default();
        assert_eq!(c.read(T, 0).0, T);
        assert_eq!(c.read(T + 1_000, 1_000).0, T + 1_000);
        // Drift within the tolerance is followed (and re-anchors).
        assert_eq!(c.read(T + 2_500, 2_000).0, T + 2_500);
        assert_eq!(c.read(T + 3_500, 3_000), (T + 3_500, None));
    }

    #[test]
    fn issue_20_a_clock_step_forward_is_ignored_until_it_lasts() {
        let mut c = GuardedClock::default();
        c.read(T, 0);
        // The wall clock jumps a day ahead: time goes on at the monotonic pace.
        let (t, note) = c.read(T + 86_400_000 + 1_000, 1_000);
        assert_eq!(t, T + 1_000);
        assert_eq!(note, Some(Note::Left(86_400_000)));
        assert_eq!(c.read(T + 86_400_000 + 5_000, 5_000), (T + 5_000, None));
        // It steps back 5 s later (NTP corrected it): followed again.
        assert_eq!(c.read(T + 6_000, 6_000), (T + 6_000, Some(Note::Rejoined)));
        // A step that stays is taken after ADOPT_AFTER_MS.
        let mono = 10_000;
        let (t, _) = c.read(T + mono + 3_600_000, mono);
        assert_eq!(t, T + mono);
        let later = mono + ADOPT_AFTER_MS - 1;
        assert_eq!(c.read(T + later + 3_600_000, later).0, T + later);
        let later = mono + ADOPT_AFTER_MS;
        assert_eq!(
            c.read(T + later + 3_600_000, later),
            (T + later + 3_600_000, Some(Note::TookStep(3_600_000)))
        );
    }

    #[test]
    fn issue_20_a_clock_step_back_is_never_taken_and_time_never_goes_back() {
        let mut c = GuardedClock::default();
        c.read(T, 0);
        let (t, note) = c.read(T - 600_000, 2_000);
        assert_eq!(t, T + 2_000);
        assert_eq!(note, Some(Note::Left(-602_000)));
        // Still behind a minute later: the monotonic pace, not the wall clock.
        assert_eq!(c.read(T - 540_000, 62_000).0, T + 62_000);
        // A small step back within the tolerance: the reading does not go back.
        let mut c = GuardedClock::default();
        c.read(T, 0);
        c.read(T + 1_000, 1_000);
        assert_eq!(c.read(T + 500, 1_200).0, T + 1_000);
    }

    #[test]
    fn issue_20_a_time_from_the_cluster_ahead_of_this_clock_is_taken() {
        let mut c = GuardedClock::default();
        c.read(T, 0);
        // The old leader's clock was 10 min ahead of this one; its times are in the state.
        c.observe(T + 600_000, 1_000);
        let (t, note) = c.read(T + 2_000, 2_000);
        assert_eq!(t, T + 601_000);
        assert_eq!(note, Some(Note::Left(-599_000)));
        // A time behind ours changes nothing.
        c.observe(T, 3_000);
        assert_eq!(c.read(T + 3_000, 3_000).0, T + 602_000);
    }
}
