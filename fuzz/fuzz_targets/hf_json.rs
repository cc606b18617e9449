//! config.json and model.safetensors.index.json: `webmoe::fuzz::hf_json` says what must hold.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| webmoe::fuzz::hf_json(data));
