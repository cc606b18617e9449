//! Any byte string given to the safetensors reader must give tensors or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = webmoe::safetensors::SafeTensors::parse("fuzz.safetensors", data.to_vec());
});
