//! A DNS query to a node's service-discovery server (issue 22).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    shoal::fuzzing::dns(data);
});
