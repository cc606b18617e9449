//! Expert residency (src/gpu/paging.rs): with fewer expert slots per MoE layer than
//! experts, from top-k up, with each victim policy and with lookahead prefetch on and
//! off, the logits over a prefill and 64 decode steps equal the all-resident model's
//! (max|Δ| <= 1e-5) on every MoE fixture and on the learned-routing model; the counters
//! add up; --gpu-memory keeps the counted GPU bytes within the budget (and paging allocates nothing per step), and refuses a budget
//! below the skeleton plus top-k experts per layer, saying the minimum.

mod common;

use common::*;
use webmoe::engine::{Engine, EngineOptions};
use webmoe::gpu::model::{Pred, Want};
use webmoe::gpu::paging::{PagingStats, Policy, Residency};
use webmoe::model::ModelFiles;
use webmoe::platform::{DirSource, block_on};

const DECODE_STEPS: usize = 64;
const TOL: f32 = 1e-5;

fn load(dir: &std::path::Path) -> ModelFiles {
    block_on(ModelFiles::load(&DirSource::new(model_path(dir)))).expect("load")
}

fn engine(files: &ModelFiles, chunk: usize, ctx: usize, residency: Residency) -> webmoe::error::Result<Engine> {
    let opts = EngineOptions { prefill_chunk: chunk, context: Some(ctx), residency, ..Default::default() };
    block_on(Engine::from_files(files, opts, Some(gpu())))
}

/// Logits of the prompt (in chunks of `chunk`), then of each of `steps` decode steps fed
/// `next` (the all-resident run's greedy tokens, so both runs see the same inputs).
fn run(e: &mut Engine, prompt: &[u32], chunk: usize, next: &[u32]) -> Vec<Vec<f32>> {
    let m = e.gpu_model().expect("GPU model");
    let vocab = m.cfg.vocab;
    let all = block_on(m.logits(prompt, chunk)).expect("prefill");
    let mut rows: Vec<Vec<f32>> = all.chunks(vocab).map(|r| r.to_vec()).collect();
    for &t in next {
        match block_on(m.feed(&[t], 1, Want::Logits)).expect("decode") {
            Pred::Logits(l) => rows.push(l),
            p => panic!("expected logits, got {p:?}"),
        }
    }
    rows
}

fn argmax(v: &[f32]) -> u32 {
    v.iter().enumerate().fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b }).0 as u32
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs())).fold(0.0, f32::max)
}

fn moe_fixtures() -> Vec<(std::path::PathBuf, ModelFiles)> {
    let mut v: Vec<_> =
        fixtures().into_iter().map(|d| (d.clone(), load(&d))).filter(|(_, f)| f.config.is_moe()).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(v.len() >= 5, "expected the MoE fixtures, found {}", v.len());
    v
}

/// Every MoE fixture (learned-moe among them), every residency from top-k to all but one
/// expert with a policy, prefetch and chunk shape each: logits equal to all-resident.
#[test]
fn paged_logits_equal_all_resident() {
    let mut lines = Vec::new();
    // Whether some layer ran in rounds: [decode kernels, grouped GEMMs].
    let mut split = [false; 2];
    for (dir, mut files) in moe_fixtures() {
        let prompt = reference(&dir).tokens;
        // The prompt and 64 decode steps: most fixtures were made with 64 positions, so
        // both runs (paged and all-resident, compared with each other, not with a
        // reference) go past them; rotary positions extend as they do for any length.
        files.config.max_positions = files.config.max_positions.max(prompt.len() + DECODE_STEPS);
        let c = &files.config;
        let (k, e) = (c.max_top_k(), c.max_experts());
        let steps = DECODE_STEPS;
        let ctx = prompt.len() + steps;
        // The all-resident run picks the decode tokens (its own greedy choices), and gives
        // the logits to match for each prompt chunk (the chunk picks the kernels).
        let mut base = engine(&files, 256, ctx, Residency::default()).expect("engine");
        assert!(!base.gpu_model().unwrap().is_paged());
        let mut next = Vec::new();
        {
            let m = base.gpu_model().unwrap();
            let all = block_on(m.logits(&prompt, 256)).unwrap();
            let mut t = argmax(&all[all.len() - m.cfg.vocab..]);
            for _ in 0..steps {
                next.push(t);
                let Pred::Logits(l) = block_on(m.feed(&[t], 1, Want::Logits)).unwrap() else { panic!() };
                t = argmax(&l);
            }
        }
        let mut want_for = std::collections::HashMap::new();
        for chunk in [256, 5] {
            want_for.insert(
                chunk,
                run(&mut engine(&files, chunk, ctx, Residency::default()).unwrap(), &prompt, chunk, &next),
            );
        }
        // (slots, policy, prefetch, prompt chunk): chunk 5 runs the prompt through the
        // decode kernels with 5 rows (rounds there too), 256 through the grouped GEMMs.
        let mid = (k + e) / 2;
        // Lookahead needs an MoE layer right after another.
        let adjacent = c.plan.windows(2).any(|w| w[0].moe().is_some() && w[1].moe().is_some());
        let cases = [
            (k, Policy::Lru, false, 256),
            (k, Policy::Lru, true, 5),
            (mid, Policy::Lfu, true, 256),
            (mid, Policy::Pinned(k), false, 5),
            (e - 1, Policy::NoReuse, false, 256),
        ];
        // The quantization fixtures (two experts each) differ in storage types only.
        let quant = dir.file_name().unwrap().to_string_lossy().starts_with("quant");
        for &(slots, policy, prefetch, chunk) in &cases[..if quant { 2 } else { cases.len() }] {
            let res = Residency { experts: Some(slots), policy, prefetch, ..Default::default() };
            let mut en = engine(&files, chunk, ctx, res).expect("paged engine");
            assert!(en.gpu_model().unwrap().is_paged(), "{}: {slots} of {e} slots must page", dir.display());
            let got = run(&mut en, &prompt, chunk, &next);
            let d = max_diff(&got, &want_for[&chunk]);
            let s: PagingStats = en.take_paging_stats().expect("paging stats");
            let what = format!(
                "{} {slots}/{e} slots {} prefetch={prefetch} chunk {chunk}, prefill {} + {steps} decode steps",
                dir.file_name().unwrap().to_string_lossy(),
                policy.name(),
                prompt.len()
            );
            lines.push(format!(
                "{what}: max|Δ| {d:.2e}, hit rate {:.1}%, recall {:.1}%, {} rounds in {} split layer runs, {:.1} KB uploaded/token",
                100.0 * s.hit_rate(),
                100.0 * s.recall(),
                s.rounds,
                s.split_layers,
                s.upload_bytes as f64 / 1e3 / s.tokens as f64
            ));
            assert!(d <= TOL, "{what}: max|Δ| {d} against all-resident");
            // The counters add up.
            let moe_layers = c.plan.iter().filter(|l| l.moe().is_some()).count() as u64;
            assert_eq!(s.steps as usize, prompt.len().div_ceil(chunk) + steps, "{what}: steps");
            assert_eq!(s.tokens as usize, prompt.len() + steps, "{what}: tokens");
            assert!(s.rounds >= s.steps * moe_layers, "{what}: at least one round per layer and step");
            assert!(s.misses > 0 && s.upload_bytes > 0, "{what}: a cold cache uploads");
            if policy == Policy::NoReuse {
                assert_eq!(s.hits, 0, "{what}: without reuse nothing is found resident");
            }
            if prefetch && adjacent {
                assert!(s.needed_predictable > 0, "{what}: lookahead predicted nothing");
            } else {
                assert_eq!(s.prefetched, 0, "{what}: prefetch is off");
            }
            split[(chunk == 256) as usize] |= s.split_layers > 0;
        }
    }
    println!("{}", lines.join("\n"));
    assert!(
        split[0] && split[1],
        "rounds (more experts needed than slots) ran in decode {} and GEMM {}",
        split[0],
        split[1]
    );
}

/// The learned-routing model keeps its neighbours' experts: an LRU of half the experts
/// hits more often than no reuse, and lookahead predicts most of the next layer's experts.
#[test]
fn learned_routing_reuses_experts() {
    let dir = fixtures_dir().join("learned-moe");
    let files = load(&dir);
    let e = files.config.max_experts();
    let text = std::fs::read_to_string(dir.join("heldout.txt")).expect("heldout.txt");
    let probe = engine(&files, 256, 8, Residency::default()).unwrap();
    let tokens: Vec<u32> = probe.encode(&text).unwrap().into_iter().take(96).collect();
    let ctx = tokens.len() + 1;
    let mut rates = Vec::new();
    for (policy, prefetch) in [(Policy::NoReuse, false), (Policy::Lru, false), (Policy::Lru, true)] {
        let res = Residency { experts: Some(e / 2), policy, prefetch, ..Default::default() };
        let mut en = engine(&files, 1, ctx, res).unwrap();
        // Token by token: decode steps, as in generation.
        block_on(en.gpu_model().unwrap().logits(&tokens, 1)).unwrap();
        let s = en.take_paging_stats().unwrap();
        println!(
            "learned-moe {}/{e} {} prefetch={prefetch}: hit rate {:.1}%, recall {:.1}%, {:.1} KB/token, host sync {:.2} ms/token",
            e / 2,
            policy.name(),
            100.0 * s.hit_rate(),
            100.0 * s.recall(),
            s.upload_bytes as f64 / 1e3 / s.tokens as f64,
            1e3 * s.sync_seconds / s.tokens as f64
        );
        rates.push(s);
    }
    assert_eq!(rates[0].hit_rate(), 0.0);
    assert!(rates[1].hit_rate() > 0.5, "LRU with half the experts: {:.3}", rates[1].hit_rate());
    assert!(rates[1].upload_bytes < rates[0].upload_bytes);
    assert!(rates[2].recall() > 0.5, "lookahead recall {:.3}", rates[2].recall());
}

/// --gpu-memory: a budget below the all-resident size pages, and the counted bytes stay
/// within it; a budget below the skeleton plus top-k experts is refused with the minimum;
/// so is a residency below top-k.
#[test]
fn gpu_memory_budget_is_kept() {
    let dir = fixtures_dir().join("mixtral-e8-top2-swa5");
    let files = load(&dir);
    let prompt = reference(&dir).tokens;
    let ctx = prompt.len() + 8;
    // A device of its own: the counts are the device's, and other tests load models too.
    let g = std::sync::Arc::new(fresh_gpu());
    let engine = |res: Residency| {
        let opts = EngineOptions { context: Some(ctx), residency: res, ..Default::default() };
        block_on(Engine::from_files(&files, opts, Some(g.clone())))
    };
    let mut full = engine(Residency::default()).unwrap();
    let all = full.gpu_model().unwrap().gpu_bytes;
    let want = block_on(full.logits(&prompt)).unwrap();
    let budget = all - all / 8;
    let res = Residency { gpu_memory: Some(budget), ..Default::default() };
    let mut en = engine(res).expect("a budget 1/8 under all-resident");
    let m = en.gpu_model().unwrap();
    let slots = m.residency();
    println!("all resident: {all} bytes; budget {budget}: {} bytes, slots {slots:?}", m.gpu_bytes);
    assert!(m.gpu_bytes <= budget, "{} bytes counted over a budget of {budget}", m.gpu_bytes);
    assert!(m.is_paged() && slots.iter().all(|&(_, n, e)| n >= 2 && n < e), "{slots:?}");
    // Paging creates no GPU buffers per step: uploads go into the pools, ids through one
    // read-back buffer made at load.
    let before = g.allocations().0;
    let got = block_on(en.logits(&prompt)).unwrap();
    let d = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(d <= TOL, "budgeted logits: max|Δ| {d}");
    let m = en.gpu_model().unwrap();
    for _ in 0..6 {
        block_on(m.feed(&[3], 1, Want::Token)).unwrap();
    }
    assert_eq!(g.allocations().0, before, "GPU buffers created while paging");
    assert!(en.take_paging_stats().unwrap().misses > 0);

    let tiny = Residency { gpu_memory: Some(all / 10), ..Default::default() };
    let err = engine(tiny).err().expect("a tenth of the model must be refused").to_string();
    println!("{err}");
    assert!(err.contains("--gpu-memory") && err.contains("at least"), "{err}");
    let few = Residency { experts: Some(1), ..Default::default() };
    let err = engine(few).err().expect("1 slot for top-2 must be refused").to_string();
    assert!(err.contains("top-k"), "{err}");
}

/// Pools larger than one binding are split into parts, each bound by its own run of the
/// expert kernels with its own slot table: on an adapter whose bindings hold 3 experts,
/// 6 of 8 slots (parts of 3 and 3) and all 8 experts of a model loaded whole (parts of 3,
/// 3 and 2, filled at load, never paging) give the same logits as one binding.
#[test]
fn pools_split_over_bindings() {
    use webmoe::weights::{Slot, WeightSource};
    let dir = fixtures_dir().join("learned-moe");
    let files = load(&dir);
    let gu = files.buffer(Slot::GateUp(0)).unwrap().unwrap();
    let dn = files.buffer(Slot::Down(0)).unwrap().unwrap();
    let widest = gu.expert_stride.max(dn.expert_stride) as u64 * 4;
    let prompt = reference(&dir).tokens;
    let ctx = prompt.len() + 8;
    let mut g = fresh_gpu();
    g.limits.max_storage_buffer_binding_size = 3 * widest + widest / 2;
    let g = std::sync::Arc::new(g);
    // The prompt through the grouped GEMMs (chunk 16) and token by token (decode kernels).
    for (chunk, slots, pages) in [(16, Some(6), true), (16, None, false), (1, Some(6), true), (1, None, false)] {
        let want = {
            let mut e = engine(&files, chunk, ctx, Residency::default()).unwrap();
            block_on(e.gpu_model().unwrap().logits(&prompt, chunk)).unwrap()
        };
        let res = Residency { experts: slots, ..Default::default() };
        let opts = EngineOptions { prefill_chunk: chunk, context: Some(ctx), residency: res, ..Default::default() };
        let mut e = block_on(Engine::from_files(&files, opts, Some(g.clone()))).expect("engine with split pools");
        let m = e.gpu_model().unwrap();
        assert!(m.is_paged(), "{slots:?}: experts over one binding are pooled");
        let got = block_on(m.logits(&prompt, chunk)).unwrap();
        let d = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        let s = e.take_paging_stats().unwrap();
        println!("learned-moe, bindings of 3 experts, {slots:?} slots, chunk {chunk}: max|Δ| {d:.2e}, {} paged steps", s.steps);
        assert!(d <= TOL, "{slots:?} slots over split pools, chunk {chunk}: max|Δ| {d}");
        assert_eq!(s.steps > 0, pages, "{slots:?}: paging steps {}", s.steps);
    }
}
