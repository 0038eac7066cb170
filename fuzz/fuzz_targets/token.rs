//! A join token's text.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    shoal::fuzzing::join_token(data);
});
