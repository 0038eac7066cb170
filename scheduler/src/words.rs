//! Parsing and printing the CLI words of the model (`drain`, `on-failure`, `512M`, `0.5`), with
//! typed errors, so that the CLI and the API reject bad input the same way.

use crate::model::{
    Availability, DesiredState, NodeRole, NodeStatus, RestartCondition, TaskHealth, TaskState,
};

/// A word that is not one of the accepted values.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} `{value}`: expected {expected}")]
pub struct UnknownWord {
    /// What was being parsed (e.g. `availability`).
    pub what: &'static str,
    /// The input.
    pub value: String,
    /// The accepted values, e.g. `active, pause or drain`.
    pub expected: &'static str,
}

/// Gives a unit-variant enum its words: `as_str`, `Display` and a `FromStr` whose error is an
/// [`UnknownWord`] naming `what` and the `expected` words. Exported so that `shoal` gives its own
/// words the same shape.
#[macro_export]
macro_rules! words {
    ($ty:ty, $what:literal, $expected:literal, { $($variant:path => $word:literal),+ $(,)? }) => {
        impl $ty {
            /// The lowercase word used in the CLI and JSON.
            #[must_use]
            pub fn as_str(self) -> &'static str {
                match self {
                    $($variant => $word,)+
                }
            }
        }

        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $ty {
            type Err = $crate::UnknownWord;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($word => Ok($variant),)+
                    _ => Err($crate::UnknownWord { what: $what, value: s.to_owned(), expected: $expected }),
                }
            }
        }
    };
}

words!(Availability, "availability", "active, pause or drain", {
    Availability::Active => "active",
    Availability::Pause => "pause",
    Availability::Drain => "drain",
});
words!(NodeRole, "role", "manager or worker", {
    NodeRole::Manager => "manager",
    NodeRole::Worker => "worker",
});
words!(NodeStatus, "node status", "ready, down or unknown", {
    NodeStatus::Ready => "ready",
    NodeStatus::Down => "down",
    NodeStatus::Unknown => "unknown",
});
words!(RestartCondition, "restart condition", "any, on-failure or none", {
    RestartCondition::Any => "any",
    RestartCondition::OnFailure => "on-failure",
    RestartCondition::None => "none",
});
words!(DesiredState, "desired state", "running or shutdown", {
    DesiredState::Running => "running",
    DesiredState::Shutdown => "shutdown",
});

words!(TaskState, "task state",
    "new, pending, assigned, preparing, starting, running, complete, failed, shutdown, rejected \
     or orphaned", {
    TaskState::New => "new",
    TaskState::Pending => "pending",
    TaskState::Assigned => "assigned",
    TaskState::Preparing => "preparing",
    TaskState::Starting => "starting",
    TaskState::Running => "running",
    TaskState::Complete => "complete",
    TaskState::Failed => "failed",
    TaskState::Shutdown => "shutdown",
    TaskState::Rejected => "rejected",
    TaskState::Orphaned => "orphaned",
});

words!(TaskHealth, "task health", "none, starting, healthy or unhealthy", {
    TaskHealth::None => "none",
    TaskHealth::Starting => "starting",
    TaskHealth::Healthy => "healthy",
    TaskHealth::Unhealthy => "unhealthy",
});

/// A memory or CPU amount that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    /// Not a number with an optional unit.
    #[error(
        "invalid memory size `{0}`: expected a number with an optional unit b, k, m, g or t \
         (powers of 1024), e.g. 512m or 1.5g"
    )]
    Memory(String),
    /// Not a non-negative decimal number of CPUs.
    #[error("invalid CPU amount `{0}`: expected a number of CPUs such as 0.5 or 2")]
    Cpus(String),
    /// Larger than can be represented.
    #[error("`{0}` is too large")]
    TooLarge(String),
}

/// Splits a non-negative decimal `int[.frac]` into integer part and up to `scale_digits`
/// fractional digits scaled to `10^scale_digits` (extra digits are truncated).
fn decimal(s: &str, scale_digits: u32) -> Option<(u64, u64)> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let int: u64 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut scaled = 0u64;
    let mut digits = frac.bytes();
    for _ in 0..scale_digits {
        let d = digits.next().map_or(0, |b| u64::from(b - b'0'));
        scaled = scaled * 10 + d;
    }
    Some((int, scaled))
}

/// Parses a memory size as Docker does (`--reserve-memory 512m`): a number, optionally with a
/// fraction, and an optional unit `b`, `k`, `m`, `g`, `t` (powers of 1024, any case, optionally
/// followed by `b` or `ib`: `512M`, `1.5GiB`, `1024kb`). No unit means bytes.
///
/// # Errors
/// [`AmountError`] for anything else.
pub fn parse_memory(s: &str) -> Result<u64, AmountError> {
    let bad = || AmountError::Memory(s.to_owned());
    let t = s.trim().to_ascii_lowercase();
    let body = t
        .strip_suffix("ib")
        .or_else(|| t.strip_suffix('b'))
        .unwrap_or(&t);
    let (num, shift) = match body.char_indices().last() {
        Some((i, 'k')) => (&body[..i], 10),
        Some((i, 'm')) => (&body[..i], 20),
        Some((i, 'g')) => (&body[..i], 30),
        Some((i, 't')) => (&body[..i], 40),
        _ => (body, 0),
    };
    if t.ends_with("ib") && shift == 0 {
        return Err(bad());
    }
    let (int, frac) = decimal(num.trim_end(), 9).ok_or_else(bad)?;
    let unit = 1u128 << shift;
    let bytes = u128::from(int) * unit + u128::from(frac) * unit / 1_000_000_000;
    u64::try_from(bytes).map_err(|_| AmountError::TooLarge(s.to_owned()))
}

/// Parses a CPU amount (`--reserve-cpu 0.5`) into nano-CPUs (1 CPU = 10^9), to at most 9
/// decimals.
///
/// # Errors
/// [`AmountError`] if it is not a non-negative decimal number.
pub fn parse_cpus(s: &str) -> Result<u64, AmountError> {
    let (int, frac) = decimal(s.trim(), 9).ok_or_else(|| AmountError::Cpus(s.to_owned()))?;
    int.checked_mul(1_000_000_000)
        .and_then(|n| n.checked_add(frac))
        .ok_or_else(|| AmountError::TooLarge(s.to_owned()))
}

#[cfg(test)]
mod health_words {
    use super::*;

    #[test]
    fn task_health_words_round_trip_in_order() {
        let all = [
            TaskHealth::None,
            TaskHealth::Starting,
            TaskHealth::Healthy,
            TaskHealth::Unhealthy,
        ];
        let words: Vec<&str> = all.iter().map(|h| h.as_str()).collect();
        assert_eq!(words, ["none", "starting", "healthy", "unhealthy"]);
        for h in all {
            assert_eq!(h.as_str().parse::<TaskHealth>(), Ok(h));
        }
        assert_eq!(TaskHealth::default(), TaskHealth::None);
        assert!("sick".parse::<TaskHealth>().is_err());
    }
}
