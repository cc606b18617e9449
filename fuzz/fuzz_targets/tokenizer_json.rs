//! tokenizer.json, NUL, tokenizer_config.json: `webmoe::fuzz::tokenizer_json` says what must hold.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| webmoe::fuzz::tokenizer_json(data));
