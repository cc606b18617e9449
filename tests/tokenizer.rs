//! Tokenizers built from GGUF vocabularies against transformers (tests/fixtures/
//! generate_tokenizers.py): byte-level BPE (SmolLM2's real vocabulary) and SentencePiece
//! with byte fallback, encode and decode on 62 strings each.

mod common;

use common::fixtures_dir;
use serde_json::Value;
use webmoe::gguf::Gguf;
use webmoe::tokenizer::Tokenizer;

pub fn load(name: &str) -> Tokenizer {
    let path = fixtures_dir().join("tokenizers").join(name);
    let g = Gguf::parse(name, std::fs::read(&path).expect("fixture")).expect("gguf");
    Tokenizer::from_gguf(&g.metadata).expect("tokenizer")
}

pub fn cases(name: &str) -> Value {
    let v: Value =
        serde_json::from_slice(&std::fs::read(fixtures_dir().join("tokenizers/cases.json")).unwrap()).unwrap();
    v[name].clone()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn check(name: &str) {
    let tok = load(name);
    let c = cases(name);
    let strings = c["strings"].as_array().unwrap();
    assert!(strings.len() >= 50);
    let mut failures = Vec::new();
    for case in strings {
        let text = case["text"].as_str().unwrap();
        let want = ids(&case["ids"]);
        let got = tok.encode(text, true).unwrap();
        if got != want {
            failures.push(format!("encode {text:?}: {got:?} != transformers {want:?}"));
        }
        for (skip, key) in [(false, "decoded"), (true, "decoded_skip_special")] {
            let got = tok.decode(&want, skip).unwrap();
            if got != case[key].as_str().unwrap() {
                failures.push(format!("decode(skip_special={skip}) {want:?}: {got:?} != transformers {:?}", case[key]));
            }
        }
    }
    assert!(failures.is_empty(), "{name}: {} mismatches:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn gguf_byte_level_bpe_matches_transformers() {
    check("bpe-smollm2.gguf");
}

#[test]
fn gguf_sentencepiece_matches_transformers() {
    check("spm-llama.gguf");
}

#[test]
fn special_ids_and_stop_tokens() {
    let t = load("bpe-smollm2.gguf");
    assert_eq!((t.bos, t.eos), (Some(1), Some(2)));
    assert!(t.stop_ids.contains(&2));
    assert!(t.chat_template.as_deref().unwrap_or("").contains("<|im_start|>"));
    let s = load("spm-llama.gguf");
    assert_eq!((s.bos_token.as_str(), s.eos_token.as_str()), ("<s>", "</s>"));
}

/// Multi-turn conversations with and without a system message, rendered by the model's
/// template as transformers' apply_chat_template renders them, and tokenized the same.
#[test]
fn chat_templates_match_transformers() {
    use webmoe::chat::{ChatTemplate, Message};
    for name in ["bpe-smollm2.gguf", "spm-llama.gguf"] {
        let tok = load(name);
        let tpl = ChatTemplate::new(tok.chat_template.as_deref().unwrap(), &tok.bos_token, &tok.eos_token).unwrap();
        for case in cases(name)["chats"].as_array().unwrap() {
            let messages: Vec<Message> = case["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| Message::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
                .collect();
            let gen_prompt = case["add_generation_prompt"].as_bool().unwrap();
            let text = tpl.render(&messages, gen_prompt).unwrap();
            assert_eq!(text, case["text"].as_str().unwrap(), "{name}: {messages:?}");
            // apply_chat_template(tokenize=True) adds no special tokens of its own.
            assert_eq!(tok.encode(&text, false).unwrap(), ids(&case["ids"]), "{name}: ids of {text:?}");
        }
    }
}

#[test]
fn template_errors_are_errors() {
    use webmoe::chat::{ChatTemplate, Message};
    assert!(ChatTemplate::new("{% for %}", "", "").is_err());
    let t = ChatTemplate::new("{{ raise_exception('roles must alternate') }}", "", "").unwrap();
    let err = t.render(&[Message::new("user", "x")], true).unwrap_err().to_string();
    assert!(err.contains("roles must alternate"), "{err}");
}

/// A Hugging Face `tokenizer.json` goes through the `tokenizers` crate as it is: the
/// SentencePiece tokenizer above, saved by transformers, gives the same encodings, and its
/// `chat_template.jinja` the same renderings.
#[test]
fn hf_tokenizer_json_matches_transformers() {
    use webmoe::chat::{ChatTemplate, Message};
    let dir = fixtures_dir().join("tokenizers/hf-spm");
    let files: std::collections::BTreeMap<String, Vec<u8>> =
        ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]
            .iter()
            .map(|f| (f.to_string(), std::fs::read(dir.join(f)).unwrap()))
            .collect();
    let tok = Tokenizer::from_hf_files(&files).unwrap().expect("tokenizer");
    assert_eq!((tok.bos, tok.eos), (Some(1), Some(2)));
    let c = cases("spm-llama.gguf");
    for case in c["strings"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(tok.encode(text, true).unwrap(), ids(&case["ids"]), "{text:?}");
        assert_eq!(tok.decode(&ids(&case["ids"]), false).unwrap(), case["decoded"].as_str().unwrap());
    }
    let tpl = ChatTemplate::new(tok.chat_template.as_deref().unwrap(), &tok.bos_token, &tok.eos_token).unwrap();
    for case in c["chats"].as_array().unwrap() {
        let m: Vec<Message> = case["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| Message::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
            .collect();
        assert_eq!(
            tpl.render(&m, case["add_generation_prompt"].as_bool().unwrap()).unwrap(),
            case["text"].as_str().unwrap()
        );
    }
}

/// Found by the fuzzer: NaN scores once broke the merge sort's total order (a panic).
#[test]
fn nan_scores_do_not_panic() {
    use webmoe::gguf::Value;
    let path = fixtures_dir().join("tokenizers/spm-llama.gguf");
    let mut g = Gguf::parse("spm-llama.gguf", std::fs::read(&path).unwrap()).unwrap();
    if let Some(Value::Array(scores)) = g.metadata.get_mut("tokenizer.ggml.scores") {
        for (i, s) in scores.iter_mut().enumerate() {
            if i % 3 == 0 {
                *s = Value::F32(f32::NAN);
            }
        }
    }
    let _ = Tokenizer::from_gguf(&g.metadata);
}

/// Streamed text (`stream::TextStream`): the pieces handed out one token at a time add up
/// to the whole decode, for both tokenizers and every case (byte-fallback characters split
/// over tokens included); a stop string cuts the text exactly where a whole decode would
/// find it, without ever showing any of it; and each token decodes only a short window of
/// ids, however long the reply.
#[test]
fn streamed_text_equals_whole_decode() {
    use webmoe::stream::TextStream;
    for name in ["bpe-smollm2.gguf", "spm-llama.gguf"] {
        let tok = load(name);
        let c = cases(name);
        let mut all = Vec::new();
        for case in c["strings"].as_array().unwrap() {
            let want = ids(&case["ids"]);
            let whole = tok.decode(&want, true).unwrap();
            let mut ts = TextStream::new(&[]);
            let mut pieces = String::new();
            for &id in &want {
                assert!(!ts.push(&tok, id).unwrap());
                pieces.push_str(ts.take());
            }
            ts.finish(&tok).unwrap();
            pieces.push_str(ts.take());
            assert_eq!(pieces, whole, "{name}: streamed {want:?}");
            all.extend_from_slice(&want);
        }
        // One long reply of every case's ids in a row: the window stays short.
        let long: Vec<u32> = all.iter().copied().cycle().take(3000).collect();
        let whole = tok.decode(&long, true).unwrap();
        let mut ts = TextStream::new(&[]);
        let mut widest = 0;
        for &id in &long {
            ts.push(&tok, id).unwrap();
            widest = widest.max(ts.window());
        }
        ts.finish(&tok).unwrap();
        assert_eq!(ts.text(), whole, "{name}: 3000 ids streamed");
        assert!(widest <= 16, "{name}: a token decoded a window of {widest} ids");

        // Stop strings taken from the middle of the long text, each cut where the whole
        // decode first has it, and nothing of it (or after it) shown.
        let chars: Vec<(usize, char)> = whole.char_indices().collect();
        for frac in [3, 5, 7] {
            let (at, _) = chars[chars.len() / frac];
            let end = (at + 6..whole.len()).find(|&i| whole.is_char_boundary(i)).unwrap();
            let stop = whole[at..end].to_string();
            let first = whole.find(&stop).unwrap();
            let stops = [stop.clone()];
            let mut ts = TextStream::new(&stops);
            let mut pieces = String::new();
            let mut stopped = false;
            for &id in &long {
                stopped = ts.push(&tok, id).unwrap();
                pieces.push_str(ts.take());
                if stopped {
                    break;
                }
            }
            assert!(stopped, "{name}: stop {stop:?} not found");
            assert_eq!(pieces, whole[..first], "{name}: stop {stop:?}");
        }
    }
}

/// A chat template is code that came with the model: one that loops for ever, recurses
/// without end or writes gigabytes is stopped by a limit, with an error naming it, and
/// hostile messages render as text. A real template over a long conversation stays well
/// inside the limits.
#[test]
fn hostile_chat_templates_hit_limits() {
    use webmoe::chat::{ChatTemplate, Message};
    let msgs = [Message::new("user", "hi")];
    let cases = [
        ("nested loops", "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}", "fuel"),
        ("recursion", "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "recursion"),
        ("string blow-up", "{% for i in range(100) %}{{ 'x' * 50000000 }}{% endfor %}", "limit of"),
        ("huge repeat", "{{ 'x' * 1000000000 }}", "too large"),
        (
            "growing string",
            "{% set s = namespace(v='') %}{% for i in range(9999) %}{% for j in range(9999) %}{% set s.v = s.v ~ 'x' %}{% endfor %}{% endfor %}",
            "fuel",
        ),
    ];
    for (what, src, want) in cases {
        let t = ChatTemplate::new(src, "<s>", "</s>").unwrap();
        let start = std::time::Instant::now();
        let err = t.render(&msgs, true).expect_err(what).to_string();
        eprintln!("{what}: {err} ({:.0?})", start.elapsed());
        assert!(err.contains(want), "{what}: {err}");
    }
    // Messages are data: markup and template syntax in them are copied, not run.
    let t = ChatTemplate::new("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}", "", "").unwrap();
    let evil = "{{ raise_exception('x') }}{% for i in range(9) %}";
    assert_eq!(t.render(&[Message::new("user", evil)], false).unwrap(), format!("<user>{evil}"));
    // SmolLM2's real template over 2,000 messages of 1 KB each renders within the limits.
    let tok = load("bpe-smollm2.gguf");
    let src = tok.chat_template.clone().expect("template");
    let t = ChatTemplate::new(&src, "", "").unwrap();
    let long: Vec<Message> =
        (0..2000).map(|i| Message::new(if i % 2 == 0 { "user" } else { "assistant" }, &"y".repeat(1000))).collect();
    assert!(t.render(&long, true).unwrap().len() > 2_000_000);
}
