//! A control API request line and its JSON body.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    shoal::fuzzing::api(data);
});
