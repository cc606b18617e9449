use std::collections::BTreeMap;
use std::sync::Arc;
use webmoe::gpu::{Gpu, model::GpuModel};
use webmoe::model::ModelFiles;
use webmoe::platform::{DirSource, block_on};
fn main() {
    let files = block_on(ModelFiles::load(&DirSource::new(std::env::args().nth(1).unwrap()))).unwrap();
    let gpu = Arc::new(block_on(Gpu::new()).unwrap());
    let mut m = block_on(GpuModel::new(gpu.clone(), &files, 4096, None)).unwrap();
    for toks in [vec![1u32, 2, 3], vec![4]] {
        let prof = m.profile_step(&toks).unwrap();
        let mut agg: BTreeMap<&str, (usize, f64)> = BTreeMap::new();
        for (k, t) in prof {
            let e = agg.entry(k).or_default();
            e.0 += 1;
            e.1 += t;
        }
        println!("{} tokens:", toks.len());
        for (k, (n, t)) in agg {
            println!("  {k:20} {n:4} x  {:8.3} s", t);
        }
    }
}
