//! A chat template, NUL, a message: rendered within the limits: `webmoe::fuzz::chat_template` says what must hold.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| webmoe::fuzz::chat_template(data));
