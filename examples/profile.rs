//! Per-kernel time of one prefill step and one decode step (each kernel waited for):
//!   cargo run --release --example profile -- MODEL [PROMPT_TOKENS]
use std::collections::BTreeMap;
use std::sync::Arc;
use webmoe::gpu::{Gpu, model::GpuModel};
use webmoe::model::ModelFiles;
use webmoe::platform::{DirSource, block_on};

fn main() -> webmoe::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: profile MODEL [PROMPT_TOKENS]");
    let n: u32 = args.next().and_then(|s| s.parse().ok()).unwrap_or(32);
    let files = block_on(ModelFiles::load(&DirSource::new(path)))?;
    let gpu = Arc::new(block_on(Gpu::new())?);
    let mut m = block_on(GpuModel::new(gpu, &files, 1024, None))?;
    for toks in [(1..=n).collect::<Vec<u32>>(), vec![7u32]] {
        let mut agg: BTreeMap<&str, (usize, f64)> = BTreeMap::new();
        for (k, t) in m.profile_step(&toks)? {
            let e = agg.entry(k).or_default();
            e.0 += 1;
            e.1 += t;
        }
        let total: f64 = agg.values().map(|v| v.1).sum();
        println!("{} token(s): {total:.3} s", toks.len());
        for (k, (c, t)) in agg {
            println!("  {k:18} {c:4} x  {t:8.3} s");
        }
    }
    Ok(())
}
