//! Text <-> token ids with the `tokenizers` crate, built from what a model carries:
//! a Hugging Face `tokenizer.json` as is, or a GGUF vocabulary turned into the same
//! tokenizer transformers builds from it — byte-level BPE (`tokenizer.ggml.model = gpt2`,
//! merges and the pre-tokenizer named by `tokenizer.ggml.pre`) or SentencePiece
//! (`llama`: scores, byte fallback, merges recovered from the scores).

use crate::error::{Error, Result};
use crate::gguf::Value;
use crate::model::ModelFiles;
use serde_json::{Map, Value as Json, json};
use std::collections::{BTreeMap, HashMap};

/// GGUF token types (llama.cpp's llama_token_type).
const CONTROL: u64 = 3;
const USER_DEFINED: u64 = 4;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// Ids that end a turn or the text: EOS and the template's end-of-turn markers.
    pub stop_ids: Vec<u32>,
    /// The model's Jinja chat template, if it has one.
    pub chat_template: Option<String>,
    pub bos_token: String,
    pub eos_token: String,
}

/// A tokenizer as a packed web model's manifest carries it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TokenizerSpec {
    /// The `tokenizers` JSON (tokenizer.json format).
    pub json: String,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub stop_ids: Vec<u32>,
    pub chat_template: Option<String>,
    pub bos_token: String,
    pub eos_token: String,
}

fn tk_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::input(format!("tokenizer: {what}: {e}"))
}

/// GPT-2's printable spelling of the 256 byte values (transformers `bytes_to_unicode`).
pub fn bytes_to_unicode() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        map[b as usize] = if printable {
            char::from_u32(b).unwrap_or('?')
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap_or('?')
        };
    }
    map
}

/// transformers' `generate_merges(vocab, vocab_scores)`: every split of every token into
/// two tokens of the vocabulary, best score first (ties: shorter left, shorter right, then
/// file order).
fn merges_from_scores(tokens: &[String], scores: &[f32]) -> Vec<(String, String)> {
    let vocab: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
    // Python dicts keep the last score of a duplicated token, at its first position.
    let mut order: Vec<&str> = Vec::new();
    let mut score: HashMap<&str, f32> = HashMap::new();
    for (t, s) in tokens.iter().zip(scores) {
        if score.insert(t.as_str(), *s).is_none() {
            order.push(t);
        }
    }
    let mut merges: Vec<(&str, &str, f32)> = Vec::new();
    for t in order {
        let cuts: Vec<usize> = t.char_indices().map(|(i, _)| i).skip(1).collect();
        let mut local: Vec<(&str, &str, f32)> = cuts
            .into_iter()
            .map(|i| (&t[..i], &t[i..]))
            .filter(|(l, r)| vocab.contains_key(l) && vocab.contains_key(r))
            .map(|(l, r)| (l, r, score[t]))
            .collect();
        local.sort_by_key(|(l, r, _)| (vocab[l], vocab[r]));
        merges.extend(local);
    }
    let clen = |s: &str| s.chars().count();
    // Python's sorted(..., reverse=True) is stable: equal keys keep their order. Scores
    // compare as a total order (a file may hold NaN; -0 and +0 count as equal).
    let key = |x: f32| if x == 0.0 { 0.0 } else { x };
    merges
        .sort_by(|a, b| key(b.2).total_cmp(&key(a.2)).then(clen(b.0).cmp(&clen(a.0))).then(clen(b.1).cmp(&clen(a.1))));
    merges.into_iter().map(|(l, r, _)| (l.to_string(), r.to_string())).collect()
}

/// Split patterns transformers uses for GGUF `tokenizer.ggml.pre` values (others keep
/// GPT-2's own byte-level regex).
fn split_regex(pre: &str) -> Option<&'static str> {
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "smaug-bpe" | "dbrx" | "pixtral" => Some(LLAMA3),
        "qwen2" | "deepseek-r1-qwen" => Some(QWEN2),
        _ => None,
    }
}

/// `tokenizer.ggml.pre` values llama.cpp splits as single digits, then GPT-2's regex.
const DIGITS_THEN_GPT2: &[&str] = &["smollm", "codeshell", "exaone", "minerva-7b", "mellum2"];

fn meta_u32(m: &BTreeMap<String, Value>, key: &str) -> Option<u32> {
    m.get(key).and_then(|v| v.as_u64()).and_then(|v| u32::try_from(v).ok())
}

impl Tokenizer {
    /// The tokenizer a model carries, or `None` when it has none (it still runs on ids).
    pub fn from_model(files: &ModelFiles) -> Result<Option<Tokenizer>> {
        if files.metadata.contains_key("tokenizer.ggml.tokens") {
            return Self::from_gguf(&files.metadata).map(Some);
        }
        Self::from_hf_files(&files.extra)
    }

    /// From the files of a Hugging Face directory (`tokenizer.json`, and when present
    /// `tokenizer_config.json`, `chat_template.jinja`, `generation_config.json`).
    pub fn from_hf_files(extra: &BTreeMap<String, Vec<u8>>) -> Result<Option<Tokenizer>> {
        let Some(json) = extra.get("tokenizer.json") else { return Ok(None) };
        let cfg = match extra.get("tokenizer_config.json") {
            Some(b) => serde_json::from_slice(b).map_err(|e| Error::format("tokenizer_config.json", e))?,
            None => Json::Null,
        };
        let template = match extra.get("chat_template.jinja") {
            Some(t) => Some(String::from_utf8_lossy(t).into_owned()),
            None => cfg.get("chat_template").and_then(|t| t.as_str()).map(str::to_owned),
        };
        let gen_cfg: Json =
            extra.get("generation_config.json").and_then(|b| serde_json::from_slice(b).ok()).unwrap_or(Json::Null);
        Self::from_hf(json, &cfg, template, &gen_cfg).map(Some)
    }

    fn from_hf(json: &[u8], cfg: &Json, chat_template: Option<String>, gen_cfg: &Json) -> Result<Tokenizer> {
        let inner = parse_tokenizer_json(json, "tokenizer.json")?;
        let token_str = |key: &str| -> Option<String> {
            match cfg.get(key)? {
                Json::String(s) => Some(s.clone()),
                o => o.get("content").and_then(|c| c.as_str()).map(str::to_owned),
            }
        };
        let bos_token = token_str("bos_token").unwrap_or_default();
        let eos_token = token_str("eos_token").unwrap_or_default();
        let bos = inner.token_to_id(&bos_token);
        let eos = inner.token_to_id(&eos_token);
        let mut stop: Vec<u32> = eos.into_iter().collect();
        match gen_cfg.get("eos_token_id") {
            Some(Json::Number(n)) => stop.extend(n.as_u64().map(|v| v as u32)),
            Some(Json::Array(a)) => stop.extend(a.iter().filter_map(|v| v.as_u64()).map(|v| v as u32)),
            _ => {}
        }
        let mut t = Tokenizer { inner, bos, eos, stop_ids: stop, chat_template, bos_token, eos_token };
        t.add_end_of_turn_markers();
        Ok(t)
    }

    pub fn from_gguf(m: &BTreeMap<String, Value>) -> Result<Tokenizer> {
        let bad = |r: String| Error::format("GGUF tokenizer", r);
        let model = m.get("tokenizer.ggml.model").and_then(|v| v.as_str()).unwrap_or("");
        let tokens: Vec<String> = m
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.as_array())
            .ok_or_else(|| bad("no tokenizer.ggml.tokens".into()))?
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or_else(|| bad("a token is not a string".into())))
            .collect::<Result<_>>()?;
        let types: Vec<u64> = match m.get("tokenizer.ggml.token_type").and_then(|v| v.as_array()) {
            Some(a) => a.iter().map(|v| v.as_u64().unwrap_or(1)).collect(),
            None => vec![1; tokens.len()],
        };
        let id = |key: &str| meta_u32(m, key).filter(|&i| (i as usize) < tokens.len());
        let (bos, eos, unk, pad) = (
            id("tokenizer.ggml.bos_token_id"),
            id("tokenizer.ggml.eos_token_id"),
            id("tokenizer.ggml.unknown_token_id"),
            id("tokenizer.ggml.padding_token_id"),
        );
        let flag = |key: &str| m.get(key).and_then(|v| v.as_bool());
        let (mut vocab, merges, byte_level) = match model {
            "gpt2" => {
                let spell = bytes_to_unicode();
                let alphabet: std::collections::HashSet<char> = spell.iter().copied().collect();
                let vocab: Vec<String> = tokens
                    .iter()
                    .map(|t| {
                        if t.chars().all(|c| alphabet.contains(&c)) {
                            t.clone()
                        } else {
                            t.bytes().map(|b| spell[b as usize]).collect()
                        }
                    })
                    .collect();
                let merges: Vec<(String, String)> = m
                    .get("tokenizer.ggml.merges")
                    .and_then(|v| v.as_array())
                    .ok_or_else(|| bad("a gpt2 vocabulary needs tokenizer.ggml.merges".into()))?
                    .iter()
                    .filter_map(|v| v.as_str())
                    .filter_map(|s| s.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())))
                    .collect();
                (vocab, merges, true)
            }
            "llama" => {
                let merges = match m.get("tokenizer.ggml.merges").and_then(|v| v.as_array()) {
                    Some(a) => a
                        .iter()
                        .filter_map(|v| v.as_str())
                        .filter_map(|s| s.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())))
                        .collect(),
                    None => {
                        let scores: Vec<f32> = m
                            .get("tokenizer.ggml.scores")
                            .and_then(|v| v.as_array())
                            .map(|a| a.iter().map(|v| v.as_f64().unwrap_or(0.0) as f32).collect())
                            .unwrap_or_else(|| vec![0.0; tokens.len()]);
                        if scores.len() != tokens.len() {
                            return Err(bad(format!("{} scores for {} tokens", scores.len(), tokens.len())));
                        }
                        merges_from_scores(&tokens, &scores)
                    }
                };
                (tokens.clone(), merges, false)
            }
            other => return Err(bad(format!("tokenizer model '{other}' is not supported (gpt2, llama)"))),
        };
        // Token strings as the model's vocabulary spells them (later duplicates win, as in Python).
        let mut vmap = Map::new();
        for (i, t) in vocab.iter().enumerate() {
            vmap.insert(t.clone(), json!(i));
        }
        let mut added = Vec::new();
        let byte_alphabet: std::collections::HashSet<char> = bytes_to_unicode().iter().copied().collect();
        for (i, (t, ty)) in tokens.iter().zip(types.iter().chain(std::iter::repeat(&1))).enumerate() {
            let named = [bos, eos, unk, pad].contains(&Some(i as u32));
            let special = *ty == CONTROL || (!byte_level && named);
            if special && (!byte_level || t.chars().all(|c| byte_alphabet.contains(&c))) {
                added.push(json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}));
            } else if *ty == USER_DEFINED {
                added.push(json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": false}));
            }
        }
        let add_bos = flag("tokenizer.ggml.add_bos_token").unwrap_or(model == "llama");
        let add_eos = flag("tokenizer.ggml.add_eos_token").unwrap_or(false);
        let mut single = Vec::new();
        let mut specials = Map::new();
        if let (true, Some(b)) = (add_bos, bos) {
            single.push(json!({"SpecialToken": {"id": tokens[b as usize], "type_id": 0}}));
            specials.insert(
                tokens[b as usize].clone(),
                json!({"id": tokens[b as usize], "ids": [b], "tokens": [tokens[b as usize]]}),
            );
        }
        single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
        if let (true, Some(e)) = (add_eos, eos) {
            single.push(json!({"SpecialToken": {"id": tokens[e as usize], "type_id": 0}}));
            specials.insert(
                tokens[e as usize].clone(),
                json!({"id": tokens[e as usize], "ids": [e], "tokens": [tokens[e as usize]]}),
            );
        }
        let post = json!({"type": "TemplateProcessing", "single": single, "pair": single, "special_tokens": specials});
        let pre = m.get("tokenizer.ggml.pre").and_then(|v| v.as_str()).unwrap_or("default");
        let (pre_tokenizer, decoder, model_json) = if byte_level {
            let pre_tok = match split_regex(pre) {
                Some(re) => json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
                    {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]}),
                // llama.cpp's smollm group: every digit on its own, then GPT-2's split (the
                // original SmolLM2 tokenizer.json: Digits(individual) + ByteLevel).
                None if DIGITS_THEN_GPT2.contains(&pre) => json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": "\\p{N}"}, "behavior": "Isolated", "invert": false},
                    {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]}),
                None => {
                    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true})
                }
            };
            let merges: Vec<Json> = merges.iter().map(|(a, b)| json!([a, b])).collect();
            (
                pre_tok,
                json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}),
                json!({"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "", "end_of_word_suffix": "",
                       "fuse_unk": false, "byte_fallback": false, "ignore_merges": false, "vocab": vmap, "merges": merges}),
            )
        } else {
            let merges: Vec<Json> = merges.iter().map(|(a, b)| json!([a, b])).collect();
            // SentencePiece's add_dummy_prefix (llama.cpp: add_space_prefix; off for Gemma):
            // a "▁" before the text, and the decoder strips it again.
            let prefix = flag("tokenizer.ggml.add_space_prefix").unwrap_or(true);
            let mut decoders = vec![
                json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
                json!({"type": "ByteFallback"}),
                json!({"type": "Fuse"}),
            ];
            if prefix {
                decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
            }
            (
                json!({"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": if prefix { "first" } else { "never" }, "split": false}),
                json!({"type": "Sequence", "decoders": decoders}),
                json!({"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null, "end_of_word_suffix": null,
                       "fuse_unk": true, "byte_fallback": true, "ignore_merges": false, "vocab": vmap, "merges": merges}),
            )
        };
        vocab.clear();
        let doc = json!({"version": "1.0", "truncation": null, "padding": null, "added_tokens": added, "normalizer": null,
                         "pre_tokenizer": pre_tokenizer, "post_processor": post, "decoder": decoder, "model": model_json});
        let text = serde_json::to_string(&doc).map_err(|e| bad(e.to_string()))?;
        let inner = parse_tokenizer_json(text.as_bytes(), "the tokenizer built from GGUF metadata")
            .map_err(|e| bad(format!("building the tokenizer failed: {e}")))?;
        let name = |i: Option<u32>| i.map(|i| tokens[i as usize].clone()).unwrap_or_default();
        let mut stop: Vec<u32> = eos.into_iter().collect();
        stop.extend(id("tokenizer.ggml.eot_token_id"));
        stop.extend(id("tokenizer.ggml.eom_token_id"));
        let mut t = Tokenizer {
            inner,
            bos,
            eos,
            stop_ids: stop,
            chat_template: m.get("tokenizer.chat_template").and_then(|v| v.as_str()).map(str::to_owned),
            bos_token: name(bos),
            eos_token: name(eos),
        };
        t.add_end_of_turn_markers();
        Ok(t)
    }

    pub fn to_spec(&self) -> Result<TokenizerSpec> {
        Ok(TokenizerSpec {
            json: self.inner.to_string(false).map_err(|e| tk_err("serializing", e))?,
            bos: self.bos,
            eos: self.eos,
            stop_ids: self.stop_ids.clone(),
            chat_template: self.chat_template.clone(),
            bos_token: self.bos_token.clone(),
            eos_token: self.eos_token.clone(),
        })
    }

    pub fn from_spec(s: &TokenizerSpec) -> Result<Tokenizer> {
        let inner = parse_tokenizer_json(s.json.as_bytes(), "manifest.json: tokenizer")?;
        Ok(Tokenizer {
            inner,
            bos: s.bos,
            eos: s.eos,
            stop_ids: s.stop_ids.clone(),
            chat_template: s.chat_template.clone(),
            bos_token: s.bos_token.clone(),
            eos_token: s.eos_token.clone(),
        })
    }

    /// Chat templates end turns with markers other than EOS; generation stops on them too.
    fn add_end_of_turn_markers(&mut self) {
        for m in ["<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>"] {
            if let Some(id) = self.inner.token_to_id(m)
                && !self.stop_ids.contains(&id)
            {
                self.stop_ids.push(id);
            }
        }
    }

    /// Token ids of `text`; `add_special` adds what the model's post-processor adds (BOS).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, add_special).map_err(|e| tk_err("encoding failed", e))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(|e| tk_err("decoding failed", e))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, t: &str) -> Option<u32> {
        self.inner.token_to_id(t)
    }
}

/// A `tokenizers` JSON document as a tokenizer, with an error for anything the crate's own
/// reader would panic on (found by fuzzing, `fuzz/regressions/tokenizer_json/`): its
/// decoder reader unwraps a syntax error inside the decoder, and its normalizer reader
/// unwraps a `Precompiled` normalizer whose char map does not parse. So the text is
/// parsed as JSON first (a value's keys are always strings), and each `Precompiled` node
/// is read on its own before the whole.
fn parse_tokenizer_json(json: &[u8], file: &str) -> Result<tokenizers::Tokenizer> {
    fn check_precompiled(v: &Json, file: &str) -> Result<()> {
        match v {
            Json::Object(o) => {
                if o.get("type").and_then(|t| t.as_str()) == Some("Precompiled") {
                    serde_json::from_value::<tokenizers::normalizers::precompiled::Precompiled>(v.clone())
                        .map_err(|e| Error::format(file, format!("Precompiled normalizer: {e}")))?;
                }
                o.values().try_for_each(|c| check_precompiled(c, file))
            }
            Json::Array(a) => a.iter().try_for_each(|c| check_precompiled(c, file)),
            _ => Ok(()),
        }
    }
    let v: Json = serde_json::from_slice(json).map_err(|e| Error::format(file, format!("not valid JSON: {e}")))?;
    check_precompiled(&v, file)?;
    serde_json::from_value(v).map_err(|e| Error::format(file, e))
}
