//! A stream frame (any tag, header included), as a request and as an answer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    shoal::fuzzing::frame(data);
});
