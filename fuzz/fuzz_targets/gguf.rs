//! Any byte string given to the GGUF reader, and then to the tokenizer builder and the
//! model loader, must give a result or an error: never a panic, never an allocation sized
//! by an unchecked number.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(g) = webmoe::gguf::Gguf::parse("fuzz.gguf", data.to_vec()) {
        let _ = webmoe::tokenizer::Tokenizer::from_gguf(&g.metadata);
        let _ = webmoe::model::ModelFiles::from_gguf(g);
    }
});
