//! The measuring commands: `perplexity` (as llama.cpp's llama-perplexity) and `route`
//! (routing locality and expert-cache hit rates over a text).

use super::{ModelArgs, open};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::Path;
use webmoe::platform::block_on;
use webmoe::{Error, Result};

fn read_text(file: &Path) -> Result<String> {
    std::fs::read_to_string(file).map_err(|e| Error::input(format!("{}: {e}", file.display())))
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
fn bar(len: usize, template: &str) -> ProgressBar {
    let bar = if std::io::stderr().is_terminal() { ProgressBar::new(len as u64) } else { ProgressBar::hidden() };
    bar.set_style(ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()));
    bar
}

pub fn perplexity(mut model: ModelArgs, file: &Path, chunks: Option<usize>, json: bool) -> Result<()> {
    let text = read_text(file)?;
    // --context is the window here; the KV cache needs no more.
    let window = *model.context.get_or_insert(512);
    let mut engine = open(&model)?;
    let tokens = engine.encode(&text)?;
    let windows = (tokens.len() / window).min(chunks.unwrap_or(usize::MAX));
    eprintln!("{}: {} tokens, {windows} windows of {window}", file.display(), tokens.len());
    let bar = bar(windows, "perplexity [{bar:30}] {pos}/{len} windows {msg} (eta {eta})");
    let r = block_on(webmoe::perplexity::perplexity(&mut engine, &tokens, window, chunks, |done, _, ppl| {
        bar.set_position(done as u64);
        bar.set_message(format!("PPL {ppl:.4}"));
    }))?;
    bar.finish_and_clear();
    if json {
        println!(
            "{}",
            serde_json::json!({ "perplexity": r.perplexity, "plus_minus": r.plus_minus, "tokens": r.tokens,
                                "windows": r.windows, "scored": r.scored, "context": r.context })
        );
    } else {
        println!(
            "PPL = {:.4} +/- {:.5} ({} tokens, {} windows of {}, {} scored)",
            r.perplexity, r.plus_minus, r.tokens, r.windows, r.context, r.scored
        );
    }
    Ok(())
}

pub fn route(model: ModelArgs, file: &Path, max_tokens: Option<usize>, json: bool) -> Result<()> {
    let text = read_text(file)?;
    // Windows of --context - 1 tokens (default up to 512), each a fresh sequence.
    let given = model.context.is_some();
    let mut engine = open(&model)?;
    let mut tokens = engine.encode(&text)?;
    tokens.truncate(max_tokens.unwrap_or(usize::MAX));
    let window = if given { engine.context - 1 } else { (engine.context - 1).min(512) };
    let bar = bar(tokens.len(), "routing [{bar:30}] {pos}/{len} tokens (eta {eta})");
    let trace = block_on(webmoe::route::trace(&mut engine, &tokens, window, |done, _| bar.set_position(done as u64)))?;
    bar.finish_and_clear();
    let stats = trace.stats();
    let windows = trace.starts.len() + 1;
    if json {
        println!(
            "{}",
            serde_json::json!({ "tokens": tokens.len(), "windows": windows, "window": window, "layers": stats })
        );
    } else {
        println!("{}: {} tokens in {windows} windows of up to {window}", file.display(), tokens.len());
        print!("{}", webmoe::route::table(&stats));
    }
    Ok(())
}

/// `bench --residency`: decode with 25/50/75/100% of the experts resident per MoE layer,
/// each (bar 100%) without reuse, with LRU and with LRU + lookahead prefetch. Every
/// configuration is loaded at once and the repetitions take turns, so that a noisy
/// machine slows them alike; all decode the same tokens (of `file`, else a fixed spread).
pub fn residency_table(
    model: &ModelArgs,
    opts: &webmoe::bench::BenchOptions,
    file: Option<&Path>,
    json: bool,
) -> Result<()> {
    use webmoe::gpu::paging::Policy;
    let mut engines: Vec<(String, webmoe::engine::Engine)> = Vec::new();
    let probe = open(model)?;
    let info = probe.describe();
    let experts = info["experts"].as_u64().unwrap_or(0) as usize;
    let k = info["experts_per_token"].as_u64().unwrap_or(0) as usize;
    if experts <= 1 {
        return Err(Error::input("bench --residency needs an MoE model"));
    }
    let need = opts.prompt_tokens + opts.gen_tokens;
    let tokens: Vec<u32> = match file {
        Some(f) => probe.encode(&read_text(f)?)?.into_iter().take(need).collect(),
        None => (0..need as u32).map(|i| 1 + (i * 7919) % (probe.vocab as u32 - 1)).collect(),
    };
    if tokens.len() < need {
        return Err(Error::input(format!("the text has {} tokens; the bench needs {need}", tokens.len())));
    }
    engines.push(("all".into(), probe));
    for pct in [25, 50, 75] {
        let n = (experts * pct).div_ceil(100).max(k);
        if n >= experts {
            continue;
        }
        for (mode, policy, prefetch) in
            [("none", Policy::NoReuse, false), ("lru", Policy::Lru, false), ("lru+prefetch", Policy::Lru, true)]
        {
            let mut m = model.clone();
            (m.resident_experts, m.gpu_memory, m.expert_policy, m.prefetch) = (Some(n), None, policy, prefetch);
            eprintln!("bench: loading with {n} of {experts} experts resident, {mode}");
            engines.push((mode.into(), open(&m)?));
        }
    }
    // A warm-up repetition each, then the timed ones in turns.
    let mut reps: Vec<Vec<(f64, webmoe::gpu::paging::PagingStats)>> = vec![Vec::new(); engines.len()];
    for rep in 0..=opts.reps {
        for (i, (_, e)) in engines.iter_mut().enumerate() {
            let r = block_on(webmoe::bench::decode_rep(e, &tokens, opts.prompt_tokens))?;
            if rep > 0 {
                reps[i].push(r);
            }
        }
        eprintln!("bench: repetition {rep} of {} done", opts.reps);
    }
    let mut rows = Vec::new();
    for ((mode, e), r) in engines.iter_mut().zip(&reps) {
        rows.push(webmoe::bench::paging_row(e, mode, r)?);
    }
    rows.rotate_left(1); // all-resident last
    let all = rows.last().map_or(1.0, |r| r.decode_tokens_per_s.median);
    if json {
        let v = serde_json::json!({"model": model.model.display().to_string(), "prompt_tokens": opts.prompt_tokens,
            "gen_tokens": opts.gen_tokens, "reps": opts.reps, "text": file.map(|f| f.display().to_string()), "rows": rows});
        println!("{v}");
        return Ok(());
    }
    let what = file.map_or("a fixed spread of token ids".to_string(), |f| f.display().to_string());
    println!(
        "model {} ({experts} experts, top-{k}); decode {} tokens of {what} after {}, median of {}",
        model.model.display(),
        opts.gen_tokens,
        opts.prompt_tokens,
        opts.reps
    );
    println!(
        "| resident | mode | hit rate | prefetch recall | MB/token | host sync ms/token | rounds/token | decode tok/s | vs all | 16 GB/s bound | 32 GB/s bound |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("-".into(), f);
        println!(
            "| {}/{} ({}%) | {} | {:.1}% | {} | {:.3} | {:.2} | {:.1} | {:.2} | {:.2}x | {} | {} |",
            r.resident,
            r.experts,
            100 * r.resident / r.experts,
            r.mode,
            100.0 * r.hit_rate,
            opt(r.prefetch_recall, &|x| format!("{:.1}%", 100.0 * x)),
            r.mb_per_token,
            r.host_sync_ms_per_token,
            r.rounds_per_token,
            r.decode_tokens_per_s.median,
            r.decode_tokens_per_s.median / all,
            opt(r.pcie16_tokens_per_s, &|x| format!("{x:.0} tok/s")),
            opt(r.pcie32_tokens_per_s, &|x| format!("{x:.0} tok/s")),
        );
    }
    Ok(())
}
