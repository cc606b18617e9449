//! A safetensors file: `webmoe::fuzz::safetensors` says what must hold.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| webmoe::fuzz::safetensors(data));
