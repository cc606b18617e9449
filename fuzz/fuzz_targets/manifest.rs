//! A packed web model's manifest.json and its tokenizer: `webmoe::fuzz::manifest` says what must hold.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| webmoe::fuzz::manifest(data));
