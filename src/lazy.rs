//! Experts fetched when the router first asks for them. A model packed with
//! `--expert-files` keeps each expert (its gate/up and down blocks) in a shard of its own,
//! with its own SHA-256 in the manifest, so it can be fetched and verified alone. A lazy
//! load assembles only the other shards (the skeleton: embeddings, attention, routers,
//! norms, dense and shared FFNs, the LM head); every MoE layer is then paged
//! (src/gpu/paging.rs), and an expert that is not resident is fetched through `FetchShard`:
//! from browser storage or the network in the page (pkg/storage.js), from the model
//! directory natively. Host memory holds the skeleton while it uploads, then only the
//! experts one upload round needs.

use crate::error::{Error, Result};
use crate::pack::{Manifest, ShardInfo};
use crate::weights::Slot;
use std::cell::Cell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

const MANIFEST: &str = "manifest.json";

pub type ShardFuture = Pin<Box<dyn Future<Output = Result<Vec<u8>>>>>;
/// Fetches shard `i` of the manifest; the bytes must already match its SHA-256.
pub type FetchShard = Box<dyn Fn(usize) -> ShardFuture>;

/// Where one expert's blocks are: its shard, and (offset, length) of gate/up and of down.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ExpertLoc {
    pub shard: usize,
    pub blocks: [(u64, u64); 2],
}

/// The experts that have shards of their own, by [layer, expert]; checks that each such
/// shard holds exactly that expert's whole gate/up block and whole down block, and
/// nothing else.
pub fn expert_files(m: &Manifest) -> Result<HashMap<[u32; 2], ExpertLoc>> {
    let mut found: HashMap<[u32; 2], (usize, [Option<(u64, u64)>; 2])> = HashMap::new();
    for t in &m.tensors {
        let slot = Slot::parse(&t.slot).ok_or_else(|| Error::format(MANIFEST, format!("tensor {}: unknown slot", t.slot)))?;
        let (layer, which) = match slot {
            Slot::GateUp(l) => (Some(l), 0),
            Slot::Down(l) => (Some(l), 1),
            _ => (None, 0),
        };
        for p in &t.pieces {
            let Some(sh) = m.shards.get(p.shard as usize) else { continue };
            let Some(tag) = sh.expert else { continue };
            let bad = |r: &str| {
                Error::format(
                    MANIFEST,
                    format!("{} is expert {} of layer {}'s own file, but {r} of tensor {}", sh.file, tag[1], tag[0], t.slot),
                )
            };
            let (Some(l), Some(e)) = (layer, p.expert) else { return Err(bad("holds a piece")) };
            if [l, e] != tag {
                return Err(bad(&format!("holds expert {e}'s piece")));
            }
            if p.length != t.expert_stride as u64 * 4 {
                return Err(bad("holds part of the expert's block, not all"));
            }
            let entry = found.entry(tag).or_insert((p.shard as usize, [None, None]));
            if entry.0 != p.shard as usize || entry.1[which].is_some() {
                return Err(bad("is not the only file holding the expert's block"));
            }
            entry.1[which] = Some((p.offset, p.length));
        }
    }
    let mut out = HashMap::new();
    for (i, sh) in m.shards.iter().enumerate() {
        let Some(tag) = sh.expert else { continue };
        let whole = match found.get(&tag) {
            Some(&(s, [Some(a), Some(b)])) if s == i && a.1 + b.1 == sh.bytes => Some(ExpertLoc { shard: i, blocks: [a, b] }),
            _ => None,
        };
        let loc = whole.ok_or_else(|| {
            Error::format(
                MANIFEST,
                format!("{}: expert {} of layer {}'s file does not hold exactly its gate/up and down blocks", sh.file, tag[1], tag[0]),
            )
        })?;
        if out.insert(tag, loc).is_some() {
            return Err(Error::format(MANIFEST, format!("expert {} of layer {} has two files", tag[1], tag[0])));
        }
    }
    Ok(out)
}

/// Whether shard `s` belongs to the skeleton (everything a lazy load fetches up front).
pub fn is_skeleton(s: &ShardInfo) -> bool {
    s.expert.is_none()
}

/// A lazily loaded model's experts: fetched from their own shards when first needed.
pub struct LazyExperts {
    locs: HashMap<[u32; 2], ExpertLoc>,
    shards: Vec<ShardInfo>,
    fetch: FetchShard,
    /// Experts fetched so far, and their bytes (lastStats, tests).
    pub fetched: Cell<(u64, u64)>,
}

impl LazyExperts {
    /// Every expert of every MoE layer must have a file of its own.
    pub fn new(m: &Manifest, fetch: FetchShard) -> Result<LazyExperts> {
        let locs = expert_files(m)?;
        for (l, lp) in m.config.plan.iter().enumerate() {
            let Some(moe) = lp.moe() else { continue };
            if let Some(e) = (0..moe.experts as u32).find(|&e| !locs.contains_key(&[l as u32, e])) {
                return Err(Error::input(format!(
                    "{} was not packed with an expert per file (layer {l} expert {e} has none), so its experts cannot be loaded lazily: pack it with `webmoe pack --expert-files`",
                    m.source
                )));
            }
        }
        Ok(LazyExperts { locs, shards: m.shards.clone(), fetch, fetched: Cell::new((0, 0)) })
    }

    /// The gate/up and down blocks of each of `experts` in layer `layer`, in order. All
    /// fetches start before the first is awaited (in the page they overlap).
    pub async fn get(&self, layer: usize, experts: &[u32]) -> Result<Vec<[Vec<u8>; 2]>> {
        let mut started = Vec::with_capacity(experts.len());
        for &e in experts {
            let loc = *self.locs.get(&[layer as u32, e]).ok_or_else(|| {
                Error::input(format!("layer {layer} expert {e} has no file of its own in the manifest"))
            })?;
            started.push((loc, (self.fetch)(loc.shard)));
        }
        let mut out = Vec::with_capacity(experts.len());
        for (loc, fut) in started {
            let bytes = fut.await?;
            let info = &self.shards[loc.shard];
            if bytes.len() as u64 != info.bytes {
                return Err(Error::io(&info.file, format!("{} bytes, the manifest says {}", bytes.len(), info.bytes)));
            }
            let cut = |(o, n): (u64, u64)| bytes[o as usize..(o + n) as usize].to_vec();
            out.push([cut(loc.blocks[0]), cut(loc.blocks[1])]);
            let (n, b) = self.fetched.get();
            self.fetched.set((n + 1, b + info.bytes));
        }
        Ok(out)
    }
}
