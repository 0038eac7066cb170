//! Deterministic task IDs.

use crate::model::{ServiceId, Slot, TaskId, Timestamp};

use std::hash::{BuildHasherDefault, Hasher};

const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a, 64 bits: a fixed (unseeded) hash for lookup tables and the canonical task order.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(FNV_OFFSET)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0 = fnv1a(self.0, bytes);
    }
}

/// Builds [`Fnv`] hashers: deterministic, no random seed.
pub(crate) type FnvBuild = BuildHasherDefault<Fnv>;

/// FNV-1a of a string.
pub(crate) fn fnv64(s: &str) -> u64 {
    fnv1a(FNV_OFFSET, s.as_bytes())
}

fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// Derives a task ID (25 lowercase alphanumeric characters, like Docker's) from the service, slot,
/// attempt number, creation time and a salt. The same inputs always give the same ID; the
/// reconciler bumps `salt` in the rare case the ID is already taken.
#[must_use]
pub fn derive_task_id(
    service: &ServiceId,
    slot: &Slot,
    attempt: u64,
    created_at: Timestamp,
    salt: u64,
) -> TaskId {
    encode(task_hash(service, slot, attempt, created_at, salt))
}

/// The 125-bit value a task ID encodes (distinct values give distinct IDs).
pub(crate) fn task_hash(
    service: &ServiceId,
    slot: &Slot,
    attempt: u64,
    created_at: Timestamp,
    salt: u64,
) -> u128 {
    let (mut hi, mut lo) = (FNV_OFFSET, 0x6c62_272e_07bb_0142);
    let mut feed = |bytes: &[u8]| {
        hi = fnv1a(hi, bytes);
        lo = fnv1a(lo, bytes);
    };
    feed(service.0.as_bytes());
    feed(&[0]);
    match slot {
        Slot::Replica(n) => {
            feed(b"r");
            feed(&n.to_le_bytes());
        }
        Slot::Node(node) => {
            feed(b"n");
            feed(node.0.as_bytes());
            feed(&[0]);
        }
    }
    feed(&attempt.to_le_bytes());
    feed(&created_at.0.to_le_bytes());
    feed(&salt.to_le_bytes());
    // One more round mixes the halves so that near-identical inputs differ everywhere.
    let hi = fnv1a(hi, &lo.to_le_bytes());
    ((u128::from(hi) << 64) | u128::from(lo)) >> 3
}

/// 25 characters of lowercase base 32 (`0-9a-v`) for the low 125 bits of `n`.
pub(crate) fn encode(n: u128) -> TaskId {
    const DIGITS: &[u8; 32] = b"0123456789abcdefghijklmnopqrstuv";
    let id = (0..25)
        .map(|i| char::from(DIGITS[((n >> (120 - 5 * i)) & 31) as usize]))
        .collect();
    TaskId(id)
}
