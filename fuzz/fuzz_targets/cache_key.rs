//! Fuzz target: see `switchyard::fuzz::cache_key`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzz::cache_key(data));
