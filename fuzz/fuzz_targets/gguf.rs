//! Any byte string given to the GGUF reader, and then to the model loader, must give a
//! model or an error: never a panic, never an allocation sized by an unchecked number.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(g) = webmoe::gguf::Gguf::parse("fuzz.gguf", data.to_vec()) {
        let _ = webmoe::model::ModelFiles::from_gguf(g);
    }
});
