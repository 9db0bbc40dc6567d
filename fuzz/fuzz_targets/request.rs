//! Fuzz target: see `switchyard::fuzz::request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzz::request(data));
