//! Packed web models: a `manifest.json` and shard files holding every GPU weight buffer
//! exactly as the kernels read it (`weights::Slot`, `quant::PackedBuffer`), so a browser
//! only verifies, stores and uploads bytes. Stacked experts are written expert by expert,
//! each expert's up and down blocks side by side, so one expert can be fetched alone.
//! Each shard's SHA-256 is in the manifest and is checked before anything is stored.

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::quant::PackedBuffer;
use crate::tensor::DType;
use crate::tokenizer::TokenizerSpec;
use crate::weights::{Slot, WeightSource};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

pub const FORMAT: &str = "webmoe-packed";
/// 2: q/k rows with rotary pairs adjacent (src/weights.rs).
/// 3: the config is a layer plan (model/plan.rs); slots for biases, q/k norms, sinks and
///    shared experts.
pub const VERSION: u32 = 3;
const MANIFEST: &str = "manifest.json";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    /// Where the model came from (file or directory name).
    pub source: String,
    pub config: ModelConfig,
    pub tokenizer: Option<TokenizerSpec>,
    pub total_bytes: u64,
    pub shards: Vec<ShardInfo>,
    pub tensors: Vec<TensorEntry>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShardInfo {
    pub file: String,
    pub bytes: u64,
    /// Lower-case hex.
    pub sha256: String,
    /// [layer, expert] when the shard holds one expert alone (its gate/up and down blocks,
    /// `webmoe pack --expert-files`): it can be fetched and verified by itself, when the
    /// router first asks for it (src/lazy.rs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expert: Option<[u32; 2]>,
}

/// One GPU buffer: its layout, and where its bytes are (pieces in order).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TensorEntry {
    pub slot: String,
    pub dtype: String,
    pub bytes: u64,
    pub s_off: u32,
    pub h_off: u32,
    pub experts: u32,
    pub expert_stride: u32,
    pub pieces: Vec<Piece>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Piece {
    pub shard: u32,
    pub offset: u64,
    pub length: u64,
    /// The expert whose block (or part of it) this is, for stacked experts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expert: Option<u32>,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn dtype_of(name: &str) -> Result<DType> {
    DType::from_name(name).ok_or_else(|| {
        Error::format(MANIFEST, format!("unknown storage type '{name}' (supported: {})", DType::SUPPORTED.join(", ")))
    })
}

/// Writes shards of at most `shard_bytes` (a unit larger than that is split).
struct ShardWriter {
    limit: usize,
    shards: Vec<Vec<u8>>,
    /// Per shard: the [layer, expert] it holds alone, if it is an expert's own file.
    experts: Vec<Option<[u32; 2]>>,
}

impl ShardWriter {
    /// Starts a shard of its own for one expert: nothing else goes in it, and it is never
    /// split, whatever its size.
    fn expert_shard(&mut self, layer: u32, e: u32, blocks: [&[u8]; 2], pieces: [&mut Vec<Piece>; 2]) {
        let shard = self.shards.len() as u32;
        let mut bytes = Vec::with_capacity(blocks[0].len() + blocks[1].len());
        for (b, p) in blocks.into_iter().zip(pieces) {
            p.push(Piece { shard, offset: bytes.len() as u64, length: b.len() as u64, expert: Some(e) });
            bytes.extend_from_slice(b);
        }
        self.shards.push(bytes);
        self.experts.push(Some([layer, e]));
    }

    fn new_shard(&mut self) {
        self.shards.push(Vec::new());
        self.experts.push(None);
    }

    /// Starts a new shard unless `n` bytes fit the current one (or could fit no shard).
    fn keep_together(&mut self, n: usize) {
        let room = self.room();
        if n > room && n <= self.limit {
            self.new_shard();
        }
    }

    /// Bytes the current shard takes still (none in an expert's own shard).
    fn room(&self) -> usize {
        match (self.shards.last(), self.experts.last()) {
            (Some(s), Some(None)) => self.limit.saturating_sub(s.len()),
            _ => 0,
        }
    }

    fn put(&mut self, mut bytes: &[u8], expert: Option<u32>, pieces: &mut Vec<Piece>) {
        // A unit that fits a shard is never split; start a new shard when it does not fit.
        let room = self.room();
        if bytes.len() > room && bytes.len() <= self.limit || self.shards.is_empty() {
            self.new_shard();
        }
        while !bytes.is_empty() {
            let cur = self.shards.len() - 1;
            let room = self.room();
            if room == 0 {
                self.new_shard();
                continue;
            }
            let n = bytes.len().min(room);
            let shard = &mut self.shards[cur];
            pieces.push(Piece { shard: cur as u32, offset: shard.len() as u64, length: n as u64, expert });
            shard.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
        }
    }
}

fn entry(slot: Slot, b: &PackedBuffer, pieces: Vec<Piece>) -> TensorEntry {
    TensorEntry {
        slot: slot.name(),
        dtype: b.dtype.name().to_string(),
        bytes: b.bytes.len() as u64,
        s_off: b.s_off,
        h_off: b.h_off,
        experts: b.experts,
        expert_stride: b.expert_stride,
        pieces,
    }
}

/// Packs every weight buffer of `src` into shards of about `shard_bytes`. Returns the
/// manifest and the shard contents (named in `manifest.shards`).
pub fn pack(
    src: &dyn WeightSource,
    source_name: &str,
    tokenizer: Option<TokenizerSpec>,
    shard_bytes: usize,
    progress: Option<&crate::model::Progress>,
) -> Result<(Manifest, Vec<Vec<u8>>)> {
    pack_with(src, source_name, tokenizer, PackOptions { shard_bytes, expert_files: false }, progress)
}

#[derive(Clone, Copy, Debug)]
pub struct PackOptions {
    /// Shards of about this size (a unit larger than that is split).
    pub shard_bytes: usize,
    /// Each expert in a file of its own (`expert-LLL-EEE.bin`), for loading experts when
    /// the router first asks for them (`load(url, {experts: 'lazy'})`).
    pub expert_files: bool,
}

pub fn pack_with(
    src: &dyn WeightSource,
    source_name: &str,
    tokenizer: Option<TokenizerSpec>,
    opts: PackOptions,
    progress: Option<&crate::model::Progress>,
) -> Result<(Manifest, Vec<Vec<u8>>)> {
    let cfg = src.config().clone();
    let limit = opts.shard_bytes.max(4096).next_multiple_of(4);
    let mut w = ShardWriter { limit, shards: Vec::new(), experts: Vec::new() };
    let mut tensors = Vec::new();
    let slots = Slot::all(&cfg);
    for (i, &slot) in slots.iter().enumerate() {
        if let Some(p) = progress {
            p.report("pack", &slot.name(), i as u64, slots.len() as u64);
        }
        match slot {
            Slot::Down(_) => continue, // written with GateUp, expert by expert
            Slot::GateUp(l) => {
                let (Some(up), Some(down)) = (src.buffer(slot)?, src.buffer(Slot::Down(l))?) else {
                    return Err(Error::input(format!("layer {l} has no experts")));
                };
                let (us, ds) = (up.expert_stride as usize * 4, down.expert_stride as usize * 4);
                let (mut up_pieces, mut down_pieces) = (Vec::new(), Vec::new());
                // A dense layer's FFN (these slots, one "expert") is skeleton.
                let own_files = opts.expert_files && cfg.plan.get(l as usize).is_some_and(|lp| lp.moe().is_some());
                for e in 0..up.experts as usize {
                    if own_files {
                        let blocks = [&up.bytes[e * us..(e + 1) * us], &down.bytes[e * ds..(e + 1) * ds]];
                        w.expert_shard(l, e as u32, blocks, [&mut up_pieces, &mut down_pieces]);
                        continue;
                    }
                    w.keep_together(us + ds);
                    w.put(&up.bytes[e * us..(e + 1) * us], Some(e as u32), &mut up_pieces);
                    w.put(&down.bytes[e * ds..(e + 1) * ds], Some(e as u32), &mut down_pieces);
                }
                tensors.push(entry(slot, &up, up_pieces));
                tensors.push(entry(Slot::Down(l), &down, down_pieces));
            }
            _ => {
                if let Some(b) = src.buffer(slot)? {
                    let mut pieces = Vec::new();
                    w.put(&b.bytes, None, &mut pieces);
                    tensors.push(entry(slot, &b, pieces));
                }
            }
        }
    }
    let shards = w.shards;
    let infos: Vec<ShardInfo> = shards
        .iter()
        .zip(&w.experts)
        .enumerate()
        .map(|(i, (s, &expert))| ShardInfo {
            file: match expert {
                Some([l, e]) => format!("expert-{l:03}-{e:03}.bin"),
                None => format!("shard-{i:05}.bin"),
            },
            bytes: s.len() as u64,
            sha256: sha256_hex(s),
            expert,
        })
        .collect();
    let manifest = Manifest {
        format: FORMAT.into(),
        version: VERSION,
        source: source_name.to_string(),
        config: cfg,
        tokenizer,
        total_bytes: infos.iter().map(|s| s.bytes).sum(),
        shards: infos,
        tensors,
    };
    Ok((manifest, shards))
}

impl Manifest {
    pub fn parse(bytes: &[u8]) -> Result<Manifest> {
        // Format and version first, so an older manifest is refused by name rather than by
        // whatever field it lacks.
        #[derive(Deserialize)]
        struct Head {
            format: String,
            version: u32,
        }
        let h: Head = serde_json::from_slice(bytes)
            .map_err(|e| Error::format(MANIFEST, format!("not a webmoe manifest: {e}")))?;
        if h.format != FORMAT || h.version != VERSION {
            return Err(Error::format(
                MANIFEST,
                format!(
                    "format {} v{} is not {FORMAT} v{VERSION}: pack the model again with this version of webmoe",
                    h.format, h.version
                ),
            ));
        }
        let m: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| Error::format(MANIFEST, format!("not a webmoe manifest: {e}")))?;
        m.config.validate().map_err(|e| e.config_in(MANIFEST))?;
        let shard_sum = m.shards.iter().try_fold(0u64, |a, s| a.checked_add(s.bytes));
        if shard_sum != Some(m.total_bytes) {
            return Err(Error::format(
                MANIFEST,
                format!("total_bytes {} is not the sum of the shards' bytes", m.total_bytes),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        // Every piece of every tensor, to check that none shares bytes with another.
        let mut spans: Vec<(u32, u64, u64, &str)> = Vec::new();
        for t in &m.tensors {
            let bad = |r: String| Error::format(MANIFEST, format!("tensor {}: {r}", t.slot));
            let slot = Slot::parse(&t.slot).ok_or_else(|| bad("unknown slot".into()))?;
            if !seen.insert(slot) {
                return Err(bad("listed twice".into()));
            }
            let dtype = dtype_of(&t.dtype)?;
            let sum: u64 = t.pieces.iter().map(|p| p.length).sum();
            if sum != t.bytes {
                return Err(bad(format!("pieces add up to {sum} bytes, not {}", t.bytes)));
            }
            for p in &t.pieces {
                if p.offset % 4 != 0 || p.length % 4 != 0 {
                    return Err(bad(format!("piece at {}+{} is not in whole 4-byte words", p.offset, p.length)));
                }
                spans.push((p.shard, p.offset, p.length, &t.slot));
                let shard =
                    m.shards.get(p.shard as usize).ok_or_else(|| bad(format!("shard {} does not exist", p.shard)))?;
                if p.offset.checked_add(p.length).is_none_or(|end| end > shard.bytes) {
                    return Err(bad(format!(
                        "piece at {}+{} runs past {} ({} bytes)",
                        p.offset, p.length, shard.file, shard.bytes
                    )));
                }
            }
            if t.bytes % 4 != 0 || (t.experts > 1 && t.experts as u64 * t.expert_stride as u64 * 4 != t.bytes) {
                return Err(bad("size does not match its layout".into()));
            }
            // Each expert's regions (quants, high bits, scales) must be whole blocks of the
            // stated type, so a kernel never reads past a buffer it was told about.
            let matrix = if t.experts > 1 { t.expert_stride as u64 * 4 } else { t.bytes };
            let (h, s) = (t.h_off as u64 * 4, t.s_off as u64 * 4);
            if h > s || s > matrix || !crate::quant::regions_consistent(dtype, h, s - h, matrix - s) {
                return Err(bad(format!(
                    "{} bytes with high bits at {h} and scales at {s} are not whole {} blocks",
                    matrix, t.dtype
                )));
            }
            check_shape(&m.config, slot, dtype, t).map_err(bad)?;
        }
        // Pieces lie inside their shards (checked above) and share no byte, so the buffers
        // assembled from them never add up to more than the shards' own bytes.
        spans.sort_unstable();
        for w in spans.windows(2) {
            let ((sa, oa, la, ta), (sb, ob, _, tb)) = (w[0], w[1]);
            if sa == sb && oa + la > ob {
                let file = &m.shards[sa as usize].file;
                return Err(Error::format(
                    MANIFEST,
                    format!("tensors {ta} and {tb} overlap in {file} (bytes {ob}..{})", oa + la),
                ));
            }
        }
        // Experts' own files hold exactly their expert.
        crate::lazy::expert_files(&m)?;
        Ok(m)
    }
}

/// A manifest tensor against what its slot holds in a model of this config: present in
/// such a model at all, the stated expert count, and each expert's regions exactly the
/// layout of that many values of its type (vectors f32), so one slot cannot carry
/// another's bytes or a shape the kernels would index past.
fn check_shape(c: &ModelConfig, slot: Slot, dtype: DType, t: &TensorEntry) -> std::result::Result<(), String> {
    let want = slot.shape(c).ok_or_else(|| format!("a {} model of this config has no such tensor", c.family))?;
    if want.vector && dtype != DType::F32 {
        return Err(format!("is {}, not F32", t.dtype));
    }
    if t.experts as u64 != want.experts {
        return Err(format!("holds {} experts, the config says {}", t.experts, want.experts));
    }
    let (h, s, total) = crate::quant::layout_bytes(dtype, want.elements)
        .ok_or_else(|| format!("{} values are not whole {} blocks", want.elements, t.dtype))?;
    let matrix = if t.experts > 1 { t.expert_stride as u64 * 4 } else { t.bytes };
    if (t.h_off as u64 * 4, t.s_off as u64 * 4, matrix) != (h, s, total) {
        return Err(format!(
            "{matrix} bytes (high bits at {}, scales at {}) per expert are not the {total} bytes (at {h}, {s}) of {} {} values the config implies",
            t.h_off as u64 * 4,
            t.s_off as u64 * 4,
            want.elements,
            t.dtype
        ));
    }
    Ok(())
}

/// Assembles a packed model's buffers as its shards arrive (in any order); each shard can
/// be dropped once added, so at most one shard is held twice.
pub struct Assembler {
    pub manifest: Manifest,
    buffers: HashMap<Slot, Vec<u8>>,
    seen: Vec<bool>,
    /// Tensors assembled elsewhere (on the GPU: src/gpu/assemble.rs), not here.
    skipped: std::collections::HashSet<Slot>,
    /// Tensors whose bytes are not kept (experts fetched when needed): layouts only.
    layout_only: std::collections::HashSet<Slot>,
}

impl Assembler {
    pub fn new(manifest: Manifest) -> Assembler {
        let seen = vec![false; manifest.shards.len()];
        Assembler { manifest, buffers: HashMap::new(), seen, skipped: Default::default(), layout_only: Default::default() }
    }

    /// Keeps no bytes of `slots` (their pieces are not copied): the model gets their
    /// layouts with empty bytes (lazily fetched experts).
    pub fn layout_only(&mut self, slots: &[Slot]) {
        self.layout_only.extend(slots.iter().copied());
    }

    /// Leaves `slots` out: their pieces are not copied, and the model has no bytes for them.
    pub fn skip(&mut self, slots: &[Slot]) {
        self.skipped.extend(slots.iter().copied());
    }

    /// Adds shard `i` (already verified against its SHA-256 by whoever fetched it).
    pub fn add_shard(&mut self, i: usize, bytes: &[u8]) -> Result<()> {
        let info = self.manifest.shards.get(i).ok_or_else(|| Error::format(MANIFEST, format!("no shard {i}")))?;
        if bytes.len() as u64 != info.bytes {
            return Err(Error::io(&info.file, format!("{} bytes, the manifest says {}", bytes.len(), info.bytes)));
        }
        for t in &self.manifest.tensors {
            let mut at = 0u64;
            for p in &t.pieces {
                if p.shard as usize == i {
                    let slot = Slot::parse(&t.slot).ok_or_else(|| Error::format(MANIFEST, "bad slot"))?;
                    if self.skipped.contains(&slot) || self.layout_only.contains(&slot) {
                        break;
                    }
                    let buf = self.buffers.entry(slot).or_insert_with(|| vec![0; t.bytes as usize]);
                    buf[at as usize..(at + p.length) as usize]
                        .copy_from_slice(&bytes[p.offset as usize..(p.offset + p.length) as usize]);
                }
                at += p.length;
            }
        }
        self.seen[i] = true;
        Ok(())
    }

    pub fn finish(self) -> Result<PackedModel> {
        self.finish_with(None)
    }

    /// The skeleton only (every shard but the experts' own files, src/lazy.rs): the
    /// experts come through `fetch` when the router first asks for them.
    pub fn finish_lazy(self, fetch: crate::lazy::FetchShard) -> Result<PackedModel> {
        let lazy = crate::lazy::LazyExperts::new(&self.manifest, fetch)?;
        self.finish_with(Some(std::rc::Rc::new(lazy)))
    }

    fn finish_with(mut self, lazy: Option<std::rc::Rc<crate::lazy::LazyExperts>>) -> Result<PackedModel> {
        let needed = |i: usize| lazy.is_none() || crate::lazy::is_skeleton(&self.manifest.shards[i]);
        if let Some(i) = (0..self.seen.len()).find(|&i| !self.seen[i] && needed(i)) {
            return Err(Error::io(&self.manifest.shards[i].file, "was never added"));
        }
        let mut buffers = HashMap::new();
        for t in &self.manifest.tensors {
            let slot = Slot::parse(&t.slot).ok_or_else(|| Error::format(MANIFEST, "bad slot"))?;
            if self.skipped.contains(&slot) {
                continue;
            }
            let bytes = self.buffers.remove(&slot).unwrap_or_default();
            buffers.insert(
                slot,
                PackedBuffer {
                    dtype: dtype_of(&t.dtype)?,
                    bytes,
                    s_off: t.s_off,
                    h_off: t.h_off,
                    experts: t.experts,
                    expert_stride: t.expert_stride,
                },
            );
        }
        Ok(PackedModel { manifest: self.manifest, buffers: std::cell::RefCell::new(buffers), lazy, uploaded: Default::default() })
    }
}

/// A packed model in memory, ready to upload. Each buffer is handed out once (and freed
/// from host memory as it goes to the GPU).
pub struct PackedModel {
    pub manifest: Manifest,
    buffers: std::cell::RefCell<HashMap<Slot, PackedBuffer>>,
    lazy: Option<std::rc::Rc<crate::lazy::LazyExperts>>,
    /// Buffers already on the GPU (assembled there shard by shard).
    uploaded: std::cell::RefCell<HashMap<Slot, crate::gpu::GpuWeight>>,
}

impl PackedModel {
    pub fn set_uploaded(&mut self, on_gpu: HashMap<Slot, crate::gpu::GpuWeight>) {
        self.uploaded = std::cell::RefCell::new(on_gpu);
    }
}

impl WeightSource for PackedModel {
    fn config(&self) -> &ModelConfig {
        &self.manifest.config
    }
    fn buffer(&self, slot: Slot) -> Result<Option<PackedBuffer>> {
        Ok(self.buffers.borrow_mut().remove(&slot))
    }
    fn lazy_experts(&self) -> Option<std::rc::Rc<crate::lazy::LazyExperts>> {
        self.lazy.clone()
    }
    fn uploaded(&self, slot: Slot) -> Option<crate::gpu::GpuWeight> {
        self.uploaded.borrow_mut().remove(&slot)
    }
}

/// Shard `s` from `src`, checked against its SHA-256.
async fn read_verified<S: crate::platform::ModelSource>(src: &S, s: &ShardInfo) -> Result<Vec<u8>> {
    let bytes = src.read(&s.file).await?.ok_or_else(|| Error::io(src.describe(&s.file), "not found"))?;
    let got = sha256_hex(&bytes);
    if got != s.sha256 {
        return Err(Error::io(src.describe(&s.file), format!("SHA-256 {got} does not match the manifest's {}", s.sha256)));
    }
    Ok(bytes)
}

/// Reads and verifies a packed model from a source whose single file is its manifest.
pub async fn load<S: crate::platform::ModelSource>(src: &S, manifest_name: &str) -> Result<PackedModel> {
    let m = src.read(manifest_name).await?.ok_or_else(|| Error::io(src.describe(manifest_name), "not found"))?;
    let manifest = Manifest::parse(&m)?;
    let shards = manifest.shards.clone();
    let mut a = Assembler::new(manifest);
    for (i, s) in shards.iter().enumerate() {
        a.add_shard(i, &read_verified(src, s).await?)?;
    }
    a.finish()
}

/// The skeleton of a packed model (packed with `--expert-files`) now, each expert read
/// from `src` and verified when the router first asks for it (src/lazy.rs).
pub async fn load_lazy<S: crate::platform::ModelSource + 'static>(
    src: std::rc::Rc<S>,
    manifest_name: &str,
) -> Result<PackedModel> {
    let m = src.read(manifest_name).await?.ok_or_else(|| Error::io(src.describe(manifest_name), "not found"))?;
    let manifest = Manifest::parse(&m)?;
    let shards = manifest.shards.clone();
    let mut a = Assembler::new(manifest);
    // The experts' bytes come when needed, even from shards the skeleton shares.
    a.layout_only(&crate::lazy::expert_slots(&a.manifest.config));
    for (i, s) in shards.iter().enumerate().filter(|(_, s)| crate::lazy::is_skeleton(s)) {
        a.add_shard(i, &read_verified(&*src, s).await?)?;
    }
    let fetch: crate::lazy::FetchShard = Box::new(move |i| {
        let (src, s) = (src.clone(), shards[i].clone());
        Box::pin(async move { read_verified(&*src, &s).await })
    });
    a.finish_lazy(fetch)
}
