//! A packed model assembled straight into GPU buffers as its shards arrive (the page's
//! `loadPacked`): each weight buffer is created from the manifest's sizes up front, and a
//! shard's pieces are written into their buffers at once, so host memory holds one shard
//! at a time instead of the whole model. The program builder then takes these buffers
//! (`WeightSource::uploaded`) where it would have uploaded bytes. Buffers it needs the
//! bytes of stay on the host: one larger than a binding (split into row ranges), experts
//! that will be paged (their host copies feed the slot pools), and experts loaded lazily
//! (they have no bytes here at all: src/lazy.rs).

use super::{Gpu, GpuWeight};
use crate::error::{Error, Result};
use crate::pack::{Assembler, Manifest, PackedModel};
use crate::tensor::DType;
use crate::weights::Slot;
use std::collections::HashMap;
use std::sync::Arc;

pub struct GpuAssembler {
    gpu: Arc<Gpu>,
    /// Buffers written on the GPU as their pieces arrive, by slot.
    on_gpu: HashMap<Slot, GpuWeight>,
    /// Everything else, assembled on the host.
    host: Assembler,
}

/// Where a packed load's experts go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpertPlace {
    /// Into GPU buffers whole, as they arrive.
    Gpu,
    /// Host copies, for slot pools filled from memory (a residency, natively).
    Host,
    /// Nowhere: they are fetched when the router first asks (src/lazy.rs); layouts only.
    Fetched,
}

/// Which tensors are not assembled on the GPU: too large for one binding, of a type no
/// kernel reads, or experts that go elsewhere (`experts`: the MoE layers' expert slots);
/// a layer's gate/up and down blocks go to the same place.
fn off_gpu(m: &Manifest, max_binding: u64, place: ExpertPlace) -> Result<std::collections::HashSet<Slot>> {
    let experts = crate::lazy::expert_slots(&m.config);
    let mut off = std::collections::HashSet::new();
    for t in &m.tensors {
        let slot = Slot::parse(&t.slot).ok_or_else(|| Error::format("manifest.json", format!("tensor {}: unknown slot", t.slot)))?;
        let supported = DType::from_name(&t.dtype).is_some_and(|d| d.is_supported());
        if t.bytes > max_binding || !supported || t.bytes == 0 || (experts.contains(&slot) && place != ExpertPlace::Gpu) {
            off.insert(slot);
        }
    }
    // Paired blocks (a layer's experts, or a dense FFN) stay together.
    for t in &m.tensors {
        match Slot::parse(&t.slot) {
            Some(Slot::GateUp(l)) if off.contains(&Slot::Down(l)) => off.insert(Slot::GateUp(l)),
            Some(Slot::Down(l)) if off.contains(&Slot::GateUp(l)) => off.insert(Slot::Down(l)),
            _ => false,
        };
    }
    Ok(off)
}

impl GpuAssembler {
    pub fn new(gpu: Arc<Gpu>, manifest: Manifest, experts: ExpertPlace) -> Result<GpuAssembler> {
        let max = gpu.limits.max_storage_buffer_binding_size;
        let off = off_gpu(&manifest, max, experts)?;
        let mut on_gpu = HashMap::new();
        for t in &manifest.tensors {
            let Some(slot) = Slot::parse(&t.slot).filter(|s| !off.contains(s)) else { continue };
            let dtype = DType::from_name(&t.dtype).ok_or_else(|| Error::format("manifest.json", "bad storage type"))?;
            let buf = gpu.storage(&t.slot, t.bytes)?;
            on_gpu.insert(slot, GpuWeight { buf, dtype, s_off: t.s_off, h_off: t.h_off, expert_stride: t.expert_stride });
        }
        let fetched = if experts == ExpertPlace::Fetched { crate::lazy::expert_slots(&manifest.config) } else { Vec::new() };
        let mut host = Assembler::new(manifest);
        host.skip(&on_gpu.keys().copied().collect::<Vec<_>>());
        host.layout_only(&fetched);
        Ok(GpuAssembler { gpu, on_gpu, host })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.host.manifest
    }

    /// Adds shard `i` (verified by whoever fetched it): its pieces of GPU buffers are
    /// written now, the rest kept on the host.
    pub fn add_shard(&mut self, i: usize, bytes: &[u8]) -> Result<()> {
        self.host.add_shard(i, bytes)?;
        for t in &self.host.manifest.tensors {
            let Some(w) = Slot::parse(&t.slot).and_then(|s| self.on_gpu.get(&s)) else { continue };
            let mut at = 0u64;
            for p in &t.pieces {
                if p.shard as usize == i {
                    self.gpu.write(&w.buf, at, &bytes[p.offset as usize..(p.offset + p.length) as usize]);
                }
                at += p.length;
            }
        }
        Ok(())
    }

    /// The model, whole (`lazy`: None) or with its experts fetched when first needed.
    pub fn finish(self, lazy: Option<crate::lazy::FetchShard>) -> Result<PackedModel> {
        let mut m = match lazy {
            Some(f) => self.host.finish_lazy(f)?,
            None => self.host.finish()?,
        };
        m.set_uploaded(self.on_gpu);
        Ok(m)
    }
}
