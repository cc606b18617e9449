//! `webmoe info`: what a model file holds and how it will run (family, shapes, experts,
//! the layer plan, KV cache bytes per token, tensor types, parameters total and active).

use webmoe::Result;
use webmoe::model::ModelFiles;
use webmoe::platform::{DirSource, block_on};

pub fn info(path: &std::path::Path) -> Result<()> {
    let files = block_on(ModelFiles::load(&DirSource::new(path)))?;
    let c = &files.config;
    let s = files.summary();
    let human = |n: u64| -> String {
        match n {
            n if n >= 1 << 30 => format!("{:.2} GiB", n as f64 / (1u64 << 30) as f64),
            n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
            n => format!("{:.1} KiB", n as f64 / 1024.0),
        }
    };
    let count = |n: u64| -> String {
        match n {
            n if n >= 1_000_000_000 => format!("{:.2}B", n as f64 / 1e9),
            n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
            n => format!("{:.1}K", n as f64 / 1e3),
        }
    };
    println!("model:          {}", path.display());
    if let Some(n) = files.meta_str("general.name") {
        println!("name:           {n}");
    }
    println!(
        "family:         {} ({}, {})",
        c.family,
        c.arch,
        if files.metadata.is_empty() { "Hugging Face safetensors" } else { "GGUF" }
    );
    println!("layers:         {}", c.layers);
    println!("hidden:         {}", c.hidden);
    println!("attention:      {} heads, {} KV heads, head size {}", c.heads, c.kv_heads, c.head_dim);
    match c.first_moe() {
        Some(m) => println!(
            "experts:        {} per MoE layer, {} chosen per token ({} of {} layers MoE)",
            m.experts,
            m.top_k,
            c.plan.iter().filter(|l| l.moe().is_some()).count(),
            c.layers
        ),
        None => println!("experts:        dense (one FFN)"),
    }
    if c.embed_scale != 1.0 || c.residual_scale != 1.0 || c.logit_scale != 1.0 {
        println!(
            "multipliers:    embedding {}, residual {}, logits {}",
            c.embed_scale, c.residual_scale, c.logit_scale
        );
    }
    println!("vocabulary:     {}", c.vocab);
    println!("context:        {} positions", c.max_positions);
    // The plan, one line per run of identical layers.
    println!("layer plan:");
    let mut i = 0;
    while i < c.layers {
        let j = (i..c.layers).find(|&j| c.plan[j] != c.plan[i]).unwrap_or(c.layers);
        let at = if j - i == 1 { format!("{i}") } else { format!("{i}-{}", j - 1) };
        println!("  {at:<8} {}", c.plan[i].describe());
        i = j;
    }
    println!("parameters:     {} total, {} active per token", count(s.params), count(s.active_params));
    println!("weights:        {}", human(s.weight_bytes));
    for (t, (n, b)) in &s.types {
        println!("  {t:<6} {n:>5} tensors  {}", human(*b));
    }
    let kv16 = c.kv_bytes_per_token(true);
    println!(
        "KV cache:       {} per token with --kv f32, {} with --kv f16 ({} / {} for 4096 positions)",
        human(s.kv_bytes_per_token),
        human(kv16),
        human(s.kv_bytes_per_token * 4096),
        human(kv16 * 4096)
    );
    match webmoe::tokenizer::Tokenizer::from_model(&files)? {
        Some(t) => println!(
            "tokenizer:      {} tokens, BOS {:?}, EOS {:?}, chat template {}",
            t.vocab_size(),
            t.bos_token,
            t.eos_token,
            if t.chat_template.is_some() { "yes" } else { "no" }
        ),
        None => println!("tokenizer:      none (token ids only)"),
    }
    Ok(())
}
