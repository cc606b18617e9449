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
