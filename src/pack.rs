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
}

impl ShardWriter {
    /// Starts a new shard unless `n` bytes fit the current one (or could fit no shard).
    fn keep_together(&mut self, n: usize) {
        let room = self.shards.last().map_or(0, |s| self.limit.saturating_sub(s.len()));
        if n > room && n <= self.limit {
            self.shards.push(Vec::new());
        }
    }

    fn put(&mut self, mut bytes: &[u8], expert: Option<u32>, pieces: &mut Vec<Piece>) {
        // A unit that fits a shard is never split; start a new shard when it does not fit.
        let room = self.shards.last().map_or(0, |s| self.limit.saturating_sub(s.len()));
        if bytes.len() > room && bytes.len() <= self.limit || self.shards.is_empty() {
            self.shards.push(Vec::new());
        }
        while !bytes.is_empty() {
            let cur = self.shards.len() - 1;
            let room = self.limit.saturating_sub(self.shards[cur].len());
            if room == 0 {
                self.shards.push(Vec::new());
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
    let cfg = src.config().clone();
    let mut w = ShardWriter { limit: shard_bytes.max(4096).next_multiple_of(4), shards: Vec::new() };
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
                for e in 0..up.experts as usize {
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
        .enumerate()
        .map(|(i, s)| ShardInfo { file: format!("shard-{i:05}.bin"), bytes: s.len() as u64, sha256: sha256_hex(s) })
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
}

impl Assembler {
    pub fn new(manifest: Manifest) -> Assembler {
        let seen = vec![false; manifest.shards.len()];
        Assembler { manifest, buffers: HashMap::new(), seen }
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
        if let Some(i) = self.seen.iter().position(|s| !s) {
            return Err(Error::io(&self.manifest.shards[i].file, "was never added"));
        }
        let mut buffers = HashMap::new();
        for t in &self.manifest.tensors {
            let slot = Slot::parse(&t.slot).ok_or_else(|| Error::format(MANIFEST, "bad slot"))?;
            let bytes = self.buffers.get(&slot).cloned().unwrap_or_default();
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
        Ok(PackedModel { manifest: self.manifest, buffers: std::cell::RefCell::new(buffers) })
    }
}

/// A packed model in memory, ready to upload. Each buffer is handed out once (and freed
/// from host memory as it goes to the GPU).
pub struct PackedModel {
    pub manifest: Manifest,
    buffers: std::cell::RefCell<HashMap<Slot, PackedBuffer>>,
}

impl WeightSource for PackedModel {
    fn config(&self) -> &ModelConfig {
        &self.manifest.config
    }
    fn buffer(&self, slot: Slot) -> Result<Option<PackedBuffer>> {
        Ok(self.buffers.borrow_mut().remove(&slot))
    }
}

/// Reads and verifies a packed model from a source whose single file is its manifest.
pub async fn load<S: crate::platform::ModelSource>(src: &S, manifest_name: &str) -> Result<PackedModel> {
    let m = src.read(manifest_name).await?.ok_or_else(|| Error::io(src.describe(manifest_name), "not found"))?;
    let manifest = Manifest::parse(&m)?;
    let shards = manifest.shards.clone();
    let mut a = Assembler::new(manifest);
    for (i, s) in shards.iter().enumerate() {
        let bytes = src.read(&s.file).await?.ok_or_else(|| Error::io(src.describe(&s.file), "not found"))?;
        let got = sha256_hex(&bytes);
        if got != s.sha256 {
            return Err(Error::io(
                src.describe(&s.file),
                format!("SHA-256 {got} does not match the manifest's {}", s.sha256),
            ));
        }
        a.add_shard(i, &bytes)?;
    }
    a.finish()
}
