//! Fuzz target: see `switchyard::fuzz::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzz::config(data));
