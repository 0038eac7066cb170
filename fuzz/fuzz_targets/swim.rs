//! A QUIC datagram carrying a SWIM packet, into a fresh membership.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    shoal::fuzzing::swim_datagram(data);
});
