//! Perplexity measured the way llama.cpp's `llama-perplexity` measures it, so the two
//! numbers compare: the text's tokens (with BOS where the vocabulary adds one) cut into
//! floor(tokens / ctx) non-overlapping windows of `ctx`; each window starts with BOS (its
//! first token replaced, where the vocabulary adds one) and is run as a fresh sequence;
//! the second half of each window is scored: for positions p in [ctx/2, ctx - 1), the
//! negative log-likelihood of token p + 1 under the logits at p. PPL = exp(mean nll), and
//! its ± is PPL times the standard error of the mean nll.

use crate::engine::Engine;
use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Perplexity {
    pub perplexity: f64,
    pub plus_minus: f64,
    /// Tokens of the whole text (BOS included where added).
    pub tokens: usize,
    pub windows: usize,
    /// Tokens scored (windows × (ctx - 1 - ctx/2)).
    pub scored: usize,
    pub context: usize,
}

/// -log softmax(row)[target], in f64 over f32 logits as llama.cpp computes it.
pub fn nll(row: &[f32], target: usize) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = row.iter().map(|&l| ((l - max) as f64).exp()).sum();
    -((row[target] - max) as f64 - sum.ln())
}

/// PPL and its ± from the sums of nll and nll² over `count` tokens (llama.cpp's formula).
pub fn estimate(sum: f64, sum2: f64, count: usize) -> (f64, f64) {
    let n = count as f64;
    let mean = sum / n;
    let ppl = mean.exp();
    let var = sum2 / n - mean * mean;
    let se = if var > 0.0 && count > 1 { (var / (n - 1.0)).sqrt() } else { 0.0 };
    (ppl, se * ppl)
}

/// Perplexity of `tokens` (the tokenized text) in windows of `ctx`, at most `max_windows`
/// of them; `progress(windows done, windows, perplexity so far)` after each window.
pub async fn perplexity(
    e: &mut Engine,
    tokens: &[u32],
    ctx: usize,
    max_windows: Option<usize>,
    mut progress: impl FnMut(usize, usize, f64),
) -> Result<Perplexity> {
    if ctx < 4 || ctx > e.context {
        return Err(Error::input(format!("a context of {ctx} is not in 4..={} (the engine's context)", e.context)));
    }
    if tokens.len() < 2 * ctx {
        return Err(Error::input(format!(
            "the text has {} tokens: a context of {ctx} needs at least {}",
            tokens.len(),
            2 * ctx
        )));
    }
    let windows = (tokens.len() / ctx).min(max_windows.unwrap_or(usize::MAX)).max(1);
    let bos = e.bos_added();
    let first = ctx / 2;
    let (mut sum, mut sum2, mut count) = (0.0f64, 0.0f64, 0usize);
    for w in 0..windows {
        let mut window = tokens[w * ctx..(w + 1) * ctx].to_vec();
        if let Some(b) = bos {
            window[0] = b;
        }
        // Targets are the original tokens (a replaced first token is never a target).
        let targets = &tokens[w * ctx..(w + 1) * ctx];
        e.logits_each(&window, |p, row| {
            if p >= first && p + 1 < ctx {
                let v = nll(row, targets[p + 1] as usize);
                sum += v;
                sum2 += v * v;
                count += 1;
            }
        })
        .await?;
        progress(w + 1, windows, (sum / count as f64).exp());
    }
    let (perplexity, plus_minus) = estimate(sum, sum2, count);
    Ok(Perplexity { perplexity, plus_minus, tokens: tokens.len(), windows, scored: count, context: ctx })
}
