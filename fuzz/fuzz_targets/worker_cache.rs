//! The worker's cache file.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    shoal::fuzzing::worker_cache(data);
});
