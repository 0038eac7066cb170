//! A row of raft.redb (first byte: which row).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    shoal::fuzzing::raft_state(data);
});
