//! Choosing the next token from logits: logit bias, repetition / presence / frequency
//! penalties, then greedy or temperature sampling restricted by top-k, top-p and min-p
//! (applied in that order after temperature, as transformers' warpers are), from a seeded
//! generator so the same seed gives the same text on every platform.

use std::collections::HashMap;

#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 picks the most likely token (greedy).
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p; 1 keeps all.
    pub top_p: f32,
    /// Drop tokens less likely than min_p times the most likely one; 0 keeps all.
    pub min_p: f32,
    /// Divide positive (multiply negative) logits of tokens already in the context; 1 is off.
    pub repetition_penalty: f32,
    /// Subtracted once from every token generated so far (OpenAI semantics).
    pub presence_penalty: f32,
    /// Subtracted per occurrence of every token generated so far.
    pub frequency_penalty: f32,
    /// Added to the logits of these tokens (-inf bans a token).
    pub logit_bias: Vec<(u32, f32)>,
    /// Seed of the random generator; `None` seeds from the clock.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: None,
        }
    }
}

impl SamplingParams {
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
            && self.repetition_penalty == 1.0
            && self.presence_penalty == 0.0
            && self.frequency_penalty == 0.0
            && self.logit_bias.is_empty()
    }
}

/// xoshiro256** seeded through splitmix64: small, fast, identical everywhere.
#[derive(Clone, Debug)]
pub struct Rng([u64; 4]);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        Rng([next(), next(), next(), next()])
    }
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }
    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub struct Sampler {
    pub params: SamplingParams,
    rng: Rng,
    /// Every token in the context (prompt and generated), for the repetition penalty.
    context: HashMap<u32, u32>,
    /// Tokens generated so far with their counts, for presence / frequency penalties.
    generated: HashMap<u32, u32>,
}

fn clock_seed() -> u64 {
    #[cfg(not(target_arch = "wasm32"))]
    {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(42)
    }
    #[cfg(target_arch = "wasm32")]
    {
        (js_sys::Math::random() * u64::MAX as f64) as u64
    }
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Sampler {
        let rng = Rng::new(params.seed.unwrap_or_else(clock_seed));
        Sampler { params, rng, context: HashMap::new(), generated: HashMap::new() }
    }

    /// Records prompt tokens (they count for the repetition penalty only).
    pub fn add_context(&mut self, tokens: &[u32]) {
        for &t in tokens {
            *self.context.entry(t).or_default() += 1;
        }
    }

    /// Records a generated token.
    pub fn accept(&mut self, t: u32) {
        *self.context.entry(t).or_default() += 1;
        *self.generated.entry(t).or_default() += 1;
    }

    /// Logit bias and penalties, in place.
    pub fn adjust(&self, logits: &mut [f32]) {
        let p = &self.params;
        for &(t, b) in &p.logit_bias {
            if let Some(l) = logits.get_mut(t as usize) {
                *l += b;
            }
        }
        if p.repetition_penalty != 1.0 {
            for &t in self.context.keys() {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 { *l / p.repetition_penalty } else { *l * p.repetition_penalty };
                }
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            for (&t, &n) in &self.generated {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= p.presence_penalty + p.frequency_penalty * n as f32;
                }
            }
        }
    }

    /// The next token for `logits` (one row of the vocabulary).
    pub fn sample(&mut self, logits: &mut [f32]) -> u32 {
        self.adjust(logits);
        let p = self.params.clone();
        if p.temperature <= 0.0 {
            return crate::cpu::argmax(logits);
        }
        // Candidates sorted by logit, highest first (ties: lower id first).
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, &l)| (i as u32, l / p.temperature))
            .collect();
        if cand.is_empty() {
            return crate::cpu::argmax(logits);
        }
        // A total order (logits are finite here), so selecting the top k first and then
        // sorting only them gives exactly the full sort's first k: a 49k vocabulary costs
        // a linear pass instead of a sort per token.
        let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && p.top_k < cand.len() {
            cand.select_nth_unstable_by(p.top_k - 1, order);
            cand.truncate(p.top_k);
        }
        cand.sort_unstable_by(order);
        let max = cand[0].1;
        let mut probs: Vec<f64> = cand.iter().map(|c| ((c.1 - max) as f64).exp()).collect();
        let sum: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= sum);
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (i, &q) in probs.iter().enumerate() {
                acc += q;
                if acc >= p.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
        }
        if p.min_p > 0.0 {
            let floor = probs[0] * p.min_p as f64;
            let keep = probs.iter().take_while(|&&q| q >= floor).count().max(1);
            probs.truncate(keep);
        }
        let total: f64 = probs.iter().sum();
        let mut r = self.rng.next_f64() * total;
        for (i, q) in probs.iter().enumerate() {
            if r < *q {
                return cand[i].0;
            }
            r -= q;
        }
        cand[probs.len() - 1].0
    }
}

/// Where a stop string occurs in `text`, and how much of `text`'s tail could still be
/// the start of one (which a streaming caller must hold back).
pub fn find_stop(text: &str, stops: &[String]) -> (Option<usize>, usize) {
    let mut first: Option<usize> = None;
    for s in stops.iter().filter(|s| !s.is_empty()) {
        if let Some(i) = text.find(s.as_str()) {
            first = Some(first.map_or(i, |f| f.min(i)));
        }
    }
    let mut hold = 0;
    for s in stops.iter().filter(|s| !s.is_empty()) {
        for k in (1..s.len()).rev() {
            if s.is_char_boundary(k) && text.ends_with(&s[..k]) {
                hold = hold.max(k);
                break;
            }
        }
    }
    (first, hold)
}
