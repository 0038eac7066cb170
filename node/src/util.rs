//! Small helpers every part of the node uses: the clock in milliseconds, RFC 3339
//! rendering (clamped, never panics), random IDs.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, from the guarded clock: steps of the wall clock are
/// not followed at once (see [`crate::clock`]).
pub fn now_ms() -> u64 {
    crate::clock::now_ms()
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    i64::try_from(now_ms() / 1000).unwrap_or(i64::MAX)
}

/// `ms` milliseconds after the Unix epoch, clamped to the last millisecond of year 9999:
/// humantime cannot format a later time (it panics), and a timestamp from a peer or the disk
/// may be anything.
pub fn epoch_ms_clamped(ms: u64) -> SystemTime {
    const MAX_MS: u64 = 253_402_300_799_999;
    UNIX_EPOCH
        .checked_add(Duration::from_millis(ms.min(MAX_MS)))
        .unwrap_or(UNIX_EPOCH)
}

/// RFC 3339 rendering of a millisecond timestamp, to the second; clamped to the end of year
/// 9999 (never panics).
pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(epoch_ms_clamped(ms)).to_string()
}

/// RFC 3339 rendering of a millisecond timestamp, to the millisecond (the API's task and
/// service times); clamped like [`rfc3339`].
pub fn rfc3339_millis(ms: u64) -> String {
    humantime::format_rfc3339_millis(epoch_ms_clamped(ms)).to_string()
}

/// A random 25-character lowercase alphanumeric ID, like Docker's (cluster and service IDs;
/// drawn by the API layer, never inside the state machine, which stays deterministic).
pub fn random_id() -> String {
    static FALLBACK_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0u8; 25];
    getrandom::fill(&mut bytes).unwrap_or_else(|_| {
        // Without OS randomness, fall back to the clock, the pid and a counter: unique, if
        // not unpredictable (these IDs are not secrets).
        let n = FALLBACK_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let seed = (now_ms() ^ u64::from(std::process::id()) << 32).wrapping_add(n << 44);
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (seed >> ((i % 8) * 8)) as u8 ^ i as u8;
        }
    });
    bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{random_id, rfc3339, rfc3339_millis};

    #[test]
    fn rfc3339_millis_never_panics() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert!(rfc3339_millis(u64::MAX).starts_with("9999-12-31"));
    }

    #[test]
    fn rfc3339_clamps_past_year_9999_instead_of_panicking() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_500), "1970-01-01T00:00:01Z");
        assert_eq!(rfc3339(253_402_300_799_999), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339(253_402_300_800_000), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339(u64::MAX), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn random_ids_are_25_lowercase_alphanumerics() {
        let a = random_id();
        assert_eq!(a.len(), 25);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        );
        assert_ne!(a, random_id());
    }
}
