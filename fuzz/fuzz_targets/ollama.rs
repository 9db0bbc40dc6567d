//! Fuzz target: see `switchyard::fuzz::ollama`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzz::ollama(data));
