//! Routing traces and what they say about temporal locality: which experts each token chose
//! in every MoE layer, recorded as the model runs (the GPU copies each layer's router ids
//! into the step's one read-back; the CPU reference records its own), and per layer the
//! numbers an expert cache lives on: how evenly experts are used, how often consecutive
//! tokens keep the same first choice or share an expert, each beside what routing at random
//! would give, and the hit rate an LRU cache of every size would have had on this trace.

use crate::config::ModelConfig;
use crate::engine::Engine;
use crate::error::{Error, Result};
use serde::Serialize;

/// One MoE layer's choices: `ids` is [tokens, k], each token's experts in the router's
/// order (highest weight first).
#[derive(Clone, Debug, PartialEq)]
pub struct LayerRoutes {
    pub layer: usize,
    pub experts: usize,
    pub k: usize,
    pub ids: Vec<u32>,
}

impl LayerRoutes {
    pub fn tokens(&self) -> usize {
        self.ids.len() / self.k.max(1)
    }

    fn token(&self, t: usize) -> &[u32] {
        &self.ids[t * self.k..(t + 1) * self.k]
    }
}

/// Every token's choices in every MoE layer, in the order the tokens ran. A new sequence
/// (`break_sequence`) is not a neighbour of the one before: locality is counted only
/// between tokens of one sequence.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteTrace {
    pub layers: Vec<LayerRoutes>,
    /// Token indices at which a new sequence starts (0 is implied).
    pub starts: Vec<usize>,
}

impl RouteTrace {
    /// An empty trace with one entry per MoE layer of `c` (none for a dense model).
    pub fn new(c: &ModelConfig) -> RouteTrace {
        let layers = c
            .plan
            .iter()
            .enumerate()
            .filter_map(|(layer, l)| {
                l.moe().map(|m| LayerRoutes { layer, experts: m.experts, k: m.top_k, ids: Vec::new() })
            })
            .collect();
        RouteTrace { layers, starts: Vec::new() }
    }

    pub fn tokens(&self) -> usize {
        self.layers.first().map_or(0, LayerRoutes::tokens)
    }

    /// Marks that the next token starts a new sequence.
    pub fn break_sequence(&mut self) {
        let t = self.tokens();
        if t > 0 && self.starts.last() != Some(&t) {
            self.starts.push(t);
        }
    }

    /// Per-layer summaries (see `LayerStats`).
    pub fn stats(&self) -> Vec<LayerStats> {
        self.layers.iter().map(|l| LayerStats::of(l, &self.starts)).collect()
    }
}

/// Runs `tokens` through the model in windows of `window` tokens (each a fresh sequence,
/// as `perplexity` runs its windows) and returns every token's chosen experts.
/// `progress(tokens done, tokens)` after each window. Ends any recording in progress.
pub async fn trace(
    e: &mut Engine,
    tokens: &[u32],
    window: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<RouteTrace> {
    // The engine's restore prefills a fresh sequence of fewer tokens than its context.
    let window = window.min(e.context.saturating_sub(1));
    if window == 0 || tokens.is_empty() {
        return Err(Error::input("routing needs at least one token and a context of at least 2"));
    }
    // A fresh recording (any recording in progress ends here).
    e.record_routes(false);
    e.record_routes(true);
    let mut done = Ok(());
    for (i, w) in tokens.chunks(window).enumerate() {
        if let Some(t) = e.routes() {
            t.break_sequence();
        }
        done = e.restore(w).await;
        if done.is_err() {
            break;
        }
        progress((i * window + w.len()).min(tokens.len()), tokens.len());
    }
    let trace = e.record_routes(false);
    done?;
    trace.ok_or_else(|| Error::input("internal: no routing trace"))
}

/// What one layer's trace says. Shares are fractions in [0, 1].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LayerStats {
    pub layer: usize,
    pub experts: usize,
    pub k: usize,
    pub tokens: usize,
    /// How often each expert was chosen (any of the k slots).
    pub usage: Vec<u64>,
    /// Consecutive tokens (within a sequence) whose first choice is the same expert.
    pub same_first: f64,
    /// The same under uniformly random routing: 1 / experts.
    pub same_first_random: f64,
    /// The same for independent tokens with this layer's first-choice frequencies p:
    /// Σ p². Above the uniform baseline when usage is uneven; locality is the excess over it.
    pub same_first_independent: f64,
    /// Consecutive tokens whose k chosen experts overlap in at least one.
    pub overlap: f64,
    /// The same under uniformly random routing: 1 - C(E-k, k) / C(E, k).
    pub overlap_random: f64,
    /// Hit rate of a per-layer LRU cache of `size` experts replayed over the trace (cold
    /// start: every expert's first use is a miss), for every size from k to all experts.
    pub lru: Vec<CacheHits>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CacheHits {
    pub size: usize,
    pub hit_rate: f64,
}

impl LayerStats {
    fn of(l: &LayerRoutes, starts: &[usize]) -> LayerStats {
        let (e, k, n) = (l.experts, l.k, l.tokens());
        let mut usage = vec![0u64; e];
        let mut first = vec![0u64; e];
        for t in 0..n {
            for &id in l.token(t) {
                usage[id as usize] += 1;
            }
            first[l.token(t)[0] as usize] += 1;
        }
        // Neighbours: t-1 and t, unless t starts a sequence.
        let (mut pairs, mut same, mut overlap) = (0u64, 0u64, 0u64);
        for t in 1..n {
            if starts.contains(&t) {
                continue;
            }
            let (a, b) = (l.token(t - 1), l.token(t));
            pairs += 1;
            same += (a[0] == b[0]) as u64;
            overlap += a.iter().any(|x| b.contains(x)) as u64;
        }
        let share = |x: u64, of: u64| if of == 0 { 0.0 } else { x as f64 / of as f64 };
        // C(E-k, k) / C(E, k) = Π_{i<k} (E-k-i) / (E-i): the chance that two random k-sets
        // are disjoint.
        let disjoint: f64 = (0..k).map(|i| (e as f64 - k as f64 - i as f64).max(0.0) / (e - i) as f64).product();
        LayerStats {
            layer: l.layer,
            experts: e,
            k,
            tokens: n,
            same_first: share(same, pairs),
            same_first_random: 1.0 / e as f64,
            same_first_independent: first.iter().map(|&c| share(c, n as u64).powi(2)).sum(),
            overlap: share(overlap, pairs),
            overlap_random: 1.0 - disjoint,
            lru: (k..=e).map(|size| CacheHits { size, hit_rate: lru_hit_rate(l, size) }).collect(),
            usage,
        }
    }
}

/// Replays `l` through an LRU cache of `size` experts (size ≥ k): a token's k experts are
/// needed together, so a miss evicts the least recently used expert that this token does
/// not need. Returns hits / uses.
pub fn lru_hit_rate(l: &LayerRoutes, size: usize) -> f64 {
    let n = l.tokens();
    if n == 0 {
        return 0.0;
    }
    // last[e]: the last token that used expert e; resident[e]: in the cache.
    let mut last = vec![0usize; l.experts];
    let mut resident = vec![false; l.experts];
    let (mut held, mut hits) = (0usize, 0u64);
    for t in 0..n {
        let ids = l.token(t);
        for &id in ids {
            let id = id as usize;
            if resident[id] {
                hits += 1;
            } else {
                // A full cache of at least k experts holds one this token does not need.
                let victim =
                    (0..l.experts).filter(|&v| resident[v] && !ids.contains(&(v as u32))).min_by_key(|&v| last[v]);
                if let (true, Some(v)) = (held >= size.max(l.k), victim) {
                    resident[v] = false;
                    held -= 1;
                }
                resident[id] = true;
                held += 1;
            }
            last[id] = t;
        }
    }
    hits as f64 / (n * l.k) as f64
}

/// The per-layer table `webmoe route` prints.
pub fn table(stats: &[LayerStats]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let Some(first) = stats.first() else { return "the model has no MoE layers: nothing is routed\n".into() };
    let _ = writeln!(
        s,
        "{} tokens; same first choice and top-{} overlap of consecutive tokens, beside uniformly random routing \
         and independent tokens with the layer's own usage",
        first.tokens, first.k
    );
    let _ =
        writeln!(s, "layer  same first (random, indep.)   overlap (random)   usage min..max   LRU hit rate by size");
    for l in stats {
        let (lo, hi) = (l.usage.iter().min().copied().unwrap_or(0), l.usage.iter().max().copied().unwrap_or(0));
        let lru: Vec<String> = l.lru.iter().map(|c| format!("{}:{:.0}%", c.size, 100.0 * c.hit_rate)).collect();
        let _ = writeln!(
            s,
            "{:5}  {:5.1}% ({:4.1}%, {:4.1}%) {:4.2}x   {:5.1}% ({:4.1}%)    {:6}..{:<6}   {}",
            l.layer,
            100.0 * l.same_first,
            100.0 * l.same_first_random,
            100.0 * l.same_first_independent,
            l.same_first / l.same_first_random,
            100.0 * l.overlap,
            100.0 * l.overlap_random,
            lo,
            hi,
            lru.join(" ")
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(experts: usize, k: usize, ids: &[u32]) -> LayerRoutes {
        LayerRoutes { layer: 0, experts, k, ids: ids.to_vec() }
    }

    #[test]
    fn locality_counts_neighbours_within_a_sequence() {
        // Tokens: (0,1) (0,2) (3,1) | (3,4) (5,6): pairs (0,1)-(0,2) same first and overlap;
        // (0,2)-(3,1) neither; the break hides (3,1)-(3,4); (3,4)-(5,6) neither.
        let l = layer(8, 2, &[0, 1, 0, 2, 3, 1, 3, 4, 5, 6]);
        let s = LayerStats::of(&l, &[3]);
        assert_eq!(s.tokens, 5);
        assert!((s.same_first - 1.0 / 3.0).abs() < 1e-12);
        assert!((s.overlap - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(s.usage, vec![2, 2, 1, 2, 1, 1, 1, 0]);
        assert!((s.same_first_random - 0.125).abs() < 1e-12);
        // Mixtral's paper: about 46% for top-2 of 8 at random.
        assert!((s.overlap_random - (1.0 - 15.0 / 28.0)).abs() < 1e-12);
        // First choices 0,0,3,3,5: p = (.4, .4, .2).
        assert!((s.same_first_independent - 0.36).abs() < 1e-12);
    }

    #[test]
    fn lru_replays_exactly() {
        // k=1, size 2 over 0 1 0 2 1: miss miss hit miss(evicts 1) miss(evicts 0) = 1/5.
        let l = layer(4, 1, &[0, 1, 0, 2, 1]);
        assert!((lru_hit_rate(&l, 2) - 0.2).abs() < 1e-12);
        // Size 3: only cold misses (0, 1, 2): 2 hits of 5.
        assert!((lru_hit_rate(&l, 3) - 0.4).abs() < 1e-12);
        // k=2 never evicts an expert the same token needs: (0,1) (2,0) (1,0) with size 2:
        // miss miss | 2 evicts 1, 0 hits | 1 evicts 2 (not 0, which this token needs), 0 hits.
        let l = layer(4, 2, &[0, 1, 2, 0, 1, 0]);
        assert!((lru_hit_rate(&l, 2) - 2.0 / 6.0).abs() < 1e-12);
        // All experts resident: hits are every use but the first of each expert.
        assert!((lru_hit_rate(&l, 4) - 3.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn random_routing_sits_at_its_baseline() {
        // A long trace of pseudo-random top-2 choices measures close to the formulas.
        let mut ids = Vec::new();
        let mut x = 12345u64;
        for _ in 0..20000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let a = (x >> 33) % 8;
            let b = (a + 1 + (x >> 40) % 7) % 8;
            ids.extend([a as u32, b as u32]);
        }
        let s = LayerStats::of(&layer(8, 2, &ids), &[]);
        assert!((s.same_first - s.same_first_random).abs() < 0.01, "{s:?}");
        assert!((s.overlap - s.overlap_random).abs() < 0.015, "{s:?}");
        // LRU with half the experts resident hits about half the time at random.
        let half = s.lru.iter().find(|c| c.size == 4).map(|c| c.hit_rate).unwrap_or(0.0);
        assert!((half - 0.5).abs() < 0.03, "{half}");
    }
}
