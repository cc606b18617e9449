//! A GGUF file, its tokenizer and its model reader: `webmoe::fuzz::gguf` says what must hold.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| webmoe::fuzz::gguf(data));
