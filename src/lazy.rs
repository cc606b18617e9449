//! Experts fetched when the router first asks for them. A model packed with
//! `--expert-files` keeps each expert (its gate/up and down blocks) in a shard of its own,
//! with its own SHA-256 in the manifest, so it can be fetched and verified alone. A lazy
//! load assembles only the other shards (the skeleton: embeddings, attention, routers,
//! norms, dense and shared FFNs, the LM head); every MoE layer is then paged
//! (src/gpu/paging.rs), and an expert that is not resident is fetched through `FetchShard`:
//! from browser storage or the network in the page (pkg/storage.js), from the model
//! directory natively. A model packed without expert files works the same way, reading
//! the shards that hold an expert (the page pages experts from storage so, never keeping
//! them all in the wasm heap). Host memory holds the skeleton's shards one at a time while
//! they upload, then only what one upload round needs.

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

/// Checks that each expert's own shard (`ShardInfo::expert`) holds exactly that expert's
/// whole gate/up block and whole down block, nothing else, and that no expert has two.
pub fn expert_files(m: &Manifest) -> Result<()> {
    // [layer, expert] -> (its shard, (offset, length) of gate/up and of down).
    type Found = HashMap<[u32; 2], (usize, [Option<(u64, u64)>; 2])>;
    let mut found: Found = HashMap::new();
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
    let mut seen = std::collections::HashSet::new();
    for (i, sh) in m.shards.iter().enumerate() {
        let Some(tag) = sh.expert else { continue };
        let whole = matches!(found.get(&tag), Some(&(s, [Some(a), Some(b)])) if s == i && a.1 + b.1 == sh.bytes);
        if !whole {
            return Err(Error::format(
                MANIFEST,
                format!("{}: expert {} of layer {}'s file does not hold exactly its gate/up and down blocks", sh.file, tag[1], tag[0]),
            ));
        }
        if !seen.insert(tag) {
            return Err(Error::format(MANIFEST, format!("expert {} of layer {} has two files", tag[1], tag[0])));
        }
    }
    Ok(())
}

/// The MoE layers' expert slots (gate/up and down): what a lazy load fetches when needed.
/// A dense layer's FFN uses the same slots but is part of the skeleton.
pub fn expert_slots(c: &crate::config::ModelConfig) -> Vec<Slot> {
    let moe = c.plan.iter().enumerate().filter(|(_, lp)| lp.moe().is_some());
    moe.flat_map(|(l, _)| [Slot::GateUp(l as u32), Slot::Down(l as u32)]).collect()
}

/// Whether shard `s` belongs to the skeleton (everything a lazy load fetches up front).
pub fn is_skeleton(s: &ShardInfo) -> bool {
    s.expert.is_none()
}

/// Where one expert's gate/up and down blocks are: (shard, offset, length) pieces, in order.
type Blocks = [Vec<(usize, u64, u64)>; 2];

/// Every expert's pieces, from the manifest's expert tags: each expert's block must be
/// whole, in order and at its place in the stacked tensor.
fn expert_pieces(m: &Manifest) -> Result<HashMap<[u32; 2], Blocks>> {
    let mut out: HashMap<[u32; 2], Blocks> = HashMap::new();
    let slots = expert_slots(&m.config);
    for t in &m.tensors {
        let (l, which) = match Slot::parse(&t.slot).filter(|s| slots.contains(s)) {
            Some(Slot::GateUp(l)) => (l, 0),
            Some(Slot::Down(l)) => (l, 1),
            _ => continue,
        };
        let stride = t.expert_stride as u64 * 4;
        let mut at = 0u64;
        for p in &t.pieces {
            let bad = |r: &str| Error::format(MANIFEST, format!("tensor {}: the piece at byte {at} {r}", t.slot));
            let e = p.expert.ok_or_else(|| bad("names no expert"))?;
            if stride == 0 || at / stride != e as u64 || at + p.length > (e as u64 + 1) * stride {
                return Err(bad(&format!("is not within expert {e}'s block")));
            }
            out.entry([l, e]).or_default()[which].push((p.shard as usize, p.offset, p.length));
            at += p.length;
        }
    }
    Ok(out)
}

/// A model's experts fetched when first needed: from their own files (a model packed with
/// `--expert-files`), or from the shards that hold them (then each fetch reads whole
/// shards, as the page does when paging experts from storage).
pub struct LazyExperts {
    blocks: HashMap<[u32; 2], Blocks>,
    /// Bytes of each layer's gate/up and down blocks.
    strides: HashMap<u32, [u64; 2]>,
    shards: Vec<ShardInfo>,
    fetch: FetchShard,
    /// Experts fetched so far, and the bytes of the shards read for them (lastStats, tests).
    pub fetched: Cell<(u64, u64)>,
}

impl LazyExperts {
    /// `m` was checked by `Manifest::parse` (expert files included).
    pub fn new(m: &Manifest, fetch: FetchShard) -> Result<LazyExperts> {
        let blocks = expert_pieces(m)?;
        let mut strides = HashMap::new();
        for t in &m.tensors {
            match Slot::parse(&t.slot) {
                Some(Slot::GateUp(l)) => strides.entry(l).or_insert([0, 0])[0] = t.expert_stride as u64 * 4,
                Some(Slot::Down(l)) => strides.entry(l).or_insert([0, 0])[1] = t.expert_stride as u64 * 4,
                _ => {}
            }
        }
        for (l, lp) in m.config.plan.iter().enumerate() {
            let Some(moe) = lp.moe() else { continue };
            let want = strides.get(&(l as u32)).copied().unwrap_or([0, 0]);
            for e in 0..moe.experts as u32 {
                let whole = blocks.get(&[l as u32, e]).is_some_and(|b| {
                    (0..2).all(|i| b[i].iter().map(|p| p.2).sum::<u64>() == want[i] && want[i] > 0)
                });
                if !whole {
                    return Err(Error::format(
                        MANIFEST,
                        format!("layer {l} expert {e}: the manifest does not say where all its bytes are"),
                    ));
                }
            }
        }
        Ok(LazyExperts { blocks, strides, shards: m.shards.clone(), fetch, fetched: Cell::new((0, 0)) })
    }

    /// The gate/up and down blocks of each of `experts` in layer `layer`, in order. Each
    /// shard they need is fetched once, and all fetches start before the first is awaited
    /// (in the page they overlap).
    pub async fn get(&self, layer: usize, experts: &[u32]) -> Result<Vec<[Vec<u8>; 2]>> {
        let mut wanted: Vec<&Blocks> = Vec::with_capacity(experts.len());
        for &e in experts {
            wanted.push(
                self.blocks
                    .get(&[layer as u32, e])
                    .ok_or_else(|| Error::input(format!("layer {layer} has no expert {e} in the manifest")))?,
            );
        }
        let mut shards: Vec<usize> = wanted.iter().flat_map(|b| b.iter().flatten().map(|p| p.0)).collect();
        shards.sort_unstable();
        shards.dedup();
        let started: Vec<(usize, ShardFuture)> = shards.iter().map(|&i| (i, (self.fetch)(i))).collect();
        let mut got: HashMap<usize, Vec<u8>> = HashMap::new();
        let mut read = 0u64;
        for (i, fut) in started {
            let bytes = fut.await?;
            let info = &self.shards[i];
            if bytes.len() as u64 != info.bytes {
                return Err(Error::io(&info.file, format!("{} bytes, the manifest says {}", bytes.len(), info.bytes)));
            }
            read += info.bytes;
            got.insert(i, bytes);
        }
        let stride = self.strides.get(&(layer as u32)).copied().unwrap_or([0, 0]);
        let mut out = Vec::with_capacity(experts.len());
        for b in wanted {
            let block = |i: usize| {
                let mut v = Vec::with_capacity(stride[i] as usize);
                for &(s, o, n) in &b[i] {
                    v.extend_from_slice(&got[&s][o as usize..(o + n) as usize]);
                }
                v
            };
            out.push([block(0), block(1)]);
        }
        let (n, bytes) = self.fetched.get();
        self.fetched.set((n + experts.len() as u64, bytes + read));
        Ok(out)
    }
}
