//! Experts loaded lazily (src/lazy.rs): a model packed with an expert per file loads its
//! skeleton alone, fetches each expert the first time the router asks for it, and gives
//! the same logits as the model loaded whole, over a prefill and 64 decode steps, with
//! every expert resident in the end and with only top-k slots (with prefetch). The first
//! token fetches only the experts it routes to. Without expert files, experts are read
//! from the shards that hold them (even split over two). An expert file that does not
//! match its SHA-256, or a manifest whose expert file holds other bytes, is a clear error.

mod common;

use common::*;
use std::path::Path;
use std::rc::Rc;
use webmoe::engine::{Engine, EngineOptions};
use webmoe::gpu::model::{Pred, Want};
use webmoe::gpu::paging::Residency;
use webmoe::model::ModelFiles;
use webmoe::pack::{Manifest, PackOptions, pack_with};
use webmoe::platform::{DirSource, block_on};
use webmoe::tokenizer::Tokenizer;

const DECODE_STEPS: usize = 64;
const TOL: f32 = 1e-5;

fn write_packed(src: &Path, out: &Path, expert_files: bool) -> Manifest {
    write_packed_in(src, out, expert_files, 1 << 20)
}

fn write_packed_in(src: &Path, out: &Path, expert_files: bool, shard_bytes: usize) -> Manifest {
    let mut files = block_on(ModelFiles::load(&DirSource::new(model_path(src)))).expect("load");
    // Room for the prompt and 64 decode steps (most fixtures were made with 64 positions;
    // lazy and whole runs are compared with each other, and rotary positions extend).
    files.config.max_positions = files.config.max_positions.max(128);
    let tok = Tokenizer::from_model(&files).unwrap().map(|t| t.to_spec().unwrap());
    let opts = PackOptions { shard_bytes, expert_files };
    let (m, shards) = pack_with(&files, "fixture", tok, opts, None).expect("pack");
    std::fs::create_dir_all(out).unwrap();
    for (info, b) in m.shards.iter().zip(&shards) {
        std::fs::write(out.join(&info.file), b).unwrap();
    }
    std::fs::write(out.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    m
}

fn opts(ctx: usize, chunk: usize, residency: Residency) -> EngineOptions {
    EngineOptions { prefill_chunk: chunk, context: Some(ctx), residency, ..Default::default() }
}

fn lazy(dir: &Path, o: EngineOptions) -> webmoe::Result<Engine> {
    block_on(async {
        let packed = webmoe::pack::load_lazy(Rc::new(DirSource::new(dir.join("manifest.json"))), "manifest.json").await?;
        Engine::from_packed(packed, o, Some(gpu())).await
    })
}

fn whole(dir: &Path, o: EngineOptions) -> Engine {
    block_on(Engine::load(&DirSource::new(dir.join("manifest.json")), o, Some(gpu()))).expect("whole model")
}

/// The prompt's logits, then `steps` greedy decode steps' (tokens from `next` when given).
fn run(e: &mut Engine, prompt: &[u32], chunk: usize, next: Option<&[u32]>, steps: usize) -> (Vec<Vec<f32>>, Vec<u32>) {
    let m = e.gpu_model().expect("GPU model");
    let vocab = m.cfg.vocab;
    let all = block_on(m.logits(prompt, chunk)).expect("prefill");
    let mut rows: Vec<Vec<f32>> = all.chunks(vocab).map(|r| r.to_vec()).collect();
    let mut fed = Vec::new();
    for i in 0..steps {
        let t = match next {
            Some(n) => n[i],
            None => argmax(rows.last().unwrap()),
        };
        fed.push(t);
        match block_on(m.feed(&[t], 1, Want::Logits)).expect("decode") {
            Pred::Logits(l) => rows.push(l),
            p => panic!("expected logits, got {p:?}"),
        }
    }
    (rows, fed)
}

/// The error's message (the call must fail).
fn refused<T>(r: webmoe::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn argmax(v: &[f32]) -> u32 {
    v.iter().enumerate().fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b }).0 as u32
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs())).fold(0.0, f32::max)
}

#[test]
fn lazy_experts_equal_the_whole_model() {
    let tmp = tempfile::tempdir().unwrap();
    // qwen2moe-mixed: a dense layer between MoE layers (its FFN is skeleton, not experts).
    for name in ["learned-moe", "mixtral-e8-top2-swa5", "qwen3moe", "qwen2moe-mixed"] {
        let src = fixtures_dir().join(name);
        let out = tmp.path().join(name);
        let m = write_packed(&src, &out, true);
        let c = &m.config;
        let expert_files = m.shards.iter().filter(|s| s.expert.is_some()).count();
        let expert_bytes: u64 = m.shards.iter().filter(|s| s.expert.is_some()).map(|s| s.bytes).sum();
        let total: usize = c.plan.iter().filter_map(|l| l.moe().map(|m| m.experts)).sum();
        assert_eq!(expert_files, total, "{name}: one file per expert");
        let prompt = reference(&src).tokens;
        let steps = DECODE_STEPS;
        let ctx = prompt.len() + steps;
        let k = c.max_top_k();
        for chunk in [256, 1] {
            let mut base = whole(&out, opts(ctx, chunk, Residency::default()));
            let (want, next) = run(&mut base, &prompt, chunk, None, steps);
            for res in [
                Residency::default(),
                Residency { experts: Some(k), prefetch: true, ..Default::default() },
            ] {
                let what = format!("{name} chunk {chunk} slots {:?} prefetch {}", res.experts, res.prefetch);
                let mut en = lazy(&out, opts(ctx, chunk, res.clone())).expect("lazy load");
                let m = en.gpu_model().unwrap();
                assert!(m.is_paged(), "{what}: lazy experts are paged");
                assert_eq!(m.lazy_fetched(), Some((0, 0)), "{what}: nothing fetched before the first step");
                let (got, _) = run(&mut en, &prompt, chunk, Some(&next), steps);
                let d = max_diff(&got, &want);
                let m = en.gpu_model().unwrap();
                let (n, bytes) = m.lazy_fetched().unwrap();
                println!("{what}: max|Δ| {d:.2e}, {n} expert fetches ({bytes} bytes) of {total} experts ({expert_bytes} bytes), all resident {}", m.all_resident());
                assert!(d <= TOL, "{what}: max|Δ| {d}");
                if res.experts.is_none() {
                    // Each expert fetched once, at most.
                    assert!(n as usize <= total, "{what}: {n} fetches");
                    // The background fill brings the rest; from then on a step has no
                    // read-back (the paging counters stay still), and the logits hold.
                    assert_eq!(block_on(m.fill_experts(usize::MAX)).unwrap(), 0, "{what}: filled");
                    assert!(m.all_resident() && m.lazy_fetched().unwrap().0 as usize == total, "{what}: all fetched once");
                    en.take_paging_stats();
                    let mut again = lazy(&out, opts(ctx, chunk, res.clone())).unwrap();
                    let m2 = again.gpu_model().unwrap();
                    assert_eq!(block_on(m2.fill_experts(3)).unwrap(), total - 3, "{what}: a fill of 3");
                    assert_eq!(block_on(m2.fill_experts(usize::MAX)).unwrap(), 0);
                    let (got2, _) = run(&mut again, &prompt, chunk, Some(&next), steps);
                    assert_eq!(again.take_paging_stats().unwrap().steps, 0, "{what}: a complete pool pages no more");
                    assert!(max_diff(&got2, &want) <= TOL, "{what}: filled first");
                }
            }
        }
    }
}

/// The first token of the learned model routes to top-k experts per layer: that is all
/// a lazy load fetches before it has its logits.
#[test]
fn first_token_fetches_only_its_experts() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixtures_dir().join("learned-moe");
    let m = write_packed(&src, tmp.path(), true);
    let layers = m.config.plan.iter().filter(|l| l.moe().is_some()).count() as u64;
    let k = m.config.max_top_k() as u64;
    let mut en = lazy(tmp.path(), opts(16, 256, Residency::default())).unwrap();
    let prompt = reference(&src).tokens;
    let mut base = whole(tmp.path(), opts(16, 256, Residency::default()));
    let want = block_on(base.gpu_model().unwrap().logits(&prompt[..1], 256)).unwrap();
    let got = block_on(en.gpu_model().unwrap().logits(&prompt[..1], 256)).unwrap();
    assert_eq!(got, want);
    let (n, bytes) = en.gpu_model().unwrap().lazy_fetched().unwrap();
    let all: u64 = m.shards.iter().filter(|s| s.expert.is_some()).map(|s| s.bytes).sum();
    println!("first token: {n} experts fetched ({bytes} of {all} expert bytes, {} of {} model bytes)", bytes, m.total_bytes);
    assert_eq!(n, layers * k, "top-k experts per layer");
}

#[test]
fn lazy_loading_refuses_what_it_cannot_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixtures_dir().join("mixtral-e8-top2-swa5");
    // Packed without expert files, in shards small enough to split experts over two: a
    // lazy load reads the shards that hold each expert, and gives the same logits.
    let plain = tmp.path().join("plain");
    let pm = write_packed_in(&src, &plain, false, 12 << 10);
    assert!(
        pm.tensors.iter().any(|t| t.pieces.windows(2).any(|w| w[0].expert == w[1].expert && w[0].expert.is_some())),
        "some expert's block spans two shards"
    );
    let prompt = reference(&src).tokens;
    let want = block_on(whole(&plain, opts(64, 256, Residency::default())).logits(&prompt)).unwrap();
    let mut en = lazy(&plain, opts(64, 256, Residency { experts: Some(2), ..Default::default() })).unwrap();
    assert_eq!(block_on(en.logits(&prompt)).unwrap(), want, "lazy from shared shards");
    // An expert file that does not match its SHA-256: the step that needs it fails, naming it.
    let out = tmp.path().join("experts");
    let m = write_packed(&src, &out, true);
    for s in m.shards.iter().filter(|s| s.expert.is_some()) {
        let p = out.join(&s.file);
        let mut b = std::fs::read(&p).unwrap();
        b[0] ^= 1;
        std::fs::write(&p, b).unwrap();
    }
    let mut en = lazy(&out, opts(16, 256, Residency::default())).expect("the skeleton is intact");
    let e = refused(block_on(en.gpu_model().unwrap().logits(&[1, 2, 3], 256)));
    assert!(e.contains("SHA-256") && e.contains("expert-"), "{e}");
    // A manifest whose expert file also holds another tensor's bytes is refused on parse.
    let mut bad = m.clone();
    let i = bad.shards.iter().position(|s| s.expert.is_some()).unwrap();
    let t = bad.tensors.iter_mut().find(|t| t.slot == "final_norm").unwrap();
    let (at, n) = (bad.shards[i].bytes, t.bytes);
    t.pieces = vec![webmoe::pack::Piece { shard: i as u32, offset: at, length: n, expert: None }];
    bad.shards[i].bytes += n;
    bad.total_bytes += n;
    let e = refused(Manifest::parse(&serde_json::to_vec(&bad).unwrap()));
    assert!(e.contains("own file"), "{e}");
}

/// A fetch that fails (the network went away) fails its step with the fetcher's error;
/// the experts it was to bring are not taken for resident, so the same step run again,
/// once fetches work, gives the whole model's logits.
#[test]
fn a_failed_fetch_leaves_nothing_half_resident() {
    use std::cell::Cell;
    let tmp = tempfile::tempdir().unwrap();
    let src = fixtures_dir().join("mixtral-e8-top2-swa5");
    let m = write_packed(&src, tmp.path(), true);
    let prompt = reference(&src).tokens;
    let want = {
        let mut e = whole(tmp.path(), opts(64, 256, Residency::default()));
        block_on(e.gpu_model().unwrap().logits(&prompt, 256)).unwrap()
    };
    for res in [Residency::default(), Residency { experts: Some(2), ..Default::default() }] {
        let mut a = webmoe::pack::Assembler::new(m.clone());
        for (i, s) in m.shards.iter().enumerate().filter(|(_, s)| s.expert.is_none()) {
            a.add_shard(i, &std::fs::read(tmp.path().join(&s.file)).unwrap()).unwrap();
        }
        let (dir, shards) = (tmp.path().to_path_buf(), m.shards.clone());
        let calls = Rc::new(Cell::new(0usize));
        let seen = calls.clone();
        let fetch: webmoe::lazy::FetchShard = Box::new(move |i| {
            seen.set(seen.get() + 1);
            let n = seen.get();
            let path = dir.join(&shards[i].file);
            Box::pin(async move {
                if n == 3 {
                    return Err(webmoe::Error::input("network error (test)"));
                }
                Ok(std::fs::read(path).unwrap())
            })
        });
        let packed = a.finish_lazy(fetch).unwrap();
        let mut en = block_on(Engine::from_packed(packed, opts(64, 256, res.clone()), Some(gpu()))).unwrap();
        let m = en.gpu_model().unwrap();
        let e = refused(block_on(m.logits(&prompt, 256)));
        assert!(e.contains("network error"), "{e}");
        let got = block_on(m.logits(&prompt, 256)).expect("the step again");
        let d = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(d <= TOL, "{:?} slots: after a failed fetch, max|Δ| {d}", res.experts);
        assert!(calls.get() > 3);
    }
}
