//! What each fuzz target feeds its input to (`fuzz/fuzz_targets/*.rs` call these, and
//! `tests/fuzz_corpus.rs` replays the committed corpus through them, so a case once found
//! stays fixed). Every function must return, for any bytes, without a panic, a hang or an
//! allocation sized by an unchecked number; results are thrown away.

use crate::chat::{ChatTemplate, Message};
use crate::tokenizer::Tokenizer;
use std::collections::BTreeMap;

/// A target: what it feeds its input to.
pub type Target = fn(&[u8]);

/// The targets, by the name `scripts/fuzz.sh` and the corpus folders use.
pub const TARGETS: &[(&str, Target)] = &[
    ("gguf", gguf),
    ("safetensors", safetensors),
    ("manifest", manifest),
    ("tokenizer_json", tokenizer_json),
    ("chat_template", chat_template),
    ("hf_json", hf_json),
];

/// Splits at the first NUL byte (the rest defaults to `or`).
fn split<'a>(data: &'a [u8], or: &'a [u8]) -> (&'a [u8], &'a [u8]) {
    match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, or),
    }
}

fn exercise(t: &Tokenizer) {
    if let Ok(ids) = t.encode("Hello, wörld 123 <s>\n\n", true) {
        let _ = t.decode(&ids, true);
    }
    let _ = t.decode(&[0, 1, 2, 3, u32::MAX], false);
}

/// A GGUF file, then the tokenizer builder on its metadata and the model reader.
pub fn gguf(data: &[u8]) {
    if let Ok(g) = crate::gguf::Gguf::parse("fuzz.gguf", data.to_vec()) {
        if let Ok(t) = Tokenizer::from_gguf(&g.metadata) {
            exercise(&t);
        }
        let _ = crate::model::ModelFiles::from_gguf(g);
    }
}

pub fn safetensors(data: &[u8]) {
    let _ = crate::safetensors::SafeTensors::parse("fuzz.safetensors", data.to_vec());
}

/// A packed web model's `manifest.json`, then the tokenizer it carries.
pub fn manifest(data: &[u8]) {
    let Ok(m) = crate::pack::Manifest::parse(data) else { return };
    if let Some(Ok(t)) = m.tokenizer.as_ref().map(Tokenizer::from_spec) {
        exercise(&t);
    }
}

/// `tokenizer.json`, NUL, `tokenizer_config.json`: our construction of a Hugging Face
/// tokenizer.
pub fn tokenizer_json(data: &[u8]) {
    let (json, cfg) = split(data, b"{}");
    let mut files = BTreeMap::new();
    files.insert("tokenizer.json".to_string(), json.to_vec());
    files.insert("tokenizer_config.json".to_string(), cfg.to_vec());
    if let Ok(Some(t)) = Tokenizer::from_hf_files(&files) {
        exercise(&t);
    }
}

/// A template source, NUL, a message's content: rendered within `ChatTemplate`'s limits.
pub fn chat_template(data: &[u8]) {
    let (src, msg) = split(data, b"hi");
    let (Ok(src), Ok(msg)) = (std::str::from_utf8(src), std::str::from_utf8(msg)) else { return };
    if let Ok(t) = ChatTemplate::new(src, "<s>", "</s>") {
        let msgs = [Message::new("system", msg), Message::new("user", msg), Message::new("assistant", msg)];
        let _ = t.render(&msgs, true);
    }
}

/// The same bytes as `model.safetensors.index.json` and as `config.json` (read by the
/// family it names into a validated model config).
pub fn hf_json(data: &[u8]) {
    let _ = crate::safetensors::parse_index(data);
    if let Ok(hf) = crate::model::hf::HfConfig::parse(data) {
        let _ = crate::model::ModelFiles::from_safetensors(&hf, Vec::new());
    }
}
