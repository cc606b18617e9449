//! Experts that do not all fit on the GPU: each paged MoE layer keeps a pool of N expert
//! slots on the GPU (its gate/up and down blocks, `expert_stride` words each) and the
//! experts' packed bytes on the host. After the layer's router the step reads its ids
//! back (the one read-back paging adds), uploads the missing experts into victim slots
//! chosen by a policy, and writes the layer's slot table ([E] u32, expert -> slot or
//! NO_SLOT) that the expert kernels read. A step that needs more distinct experts than
//! there are slots runs the layer's expert kernels in rounds: each round's table names only
//! the experts computed in it, so nothing is counted twice (prefill: rows of the expert
//! outputs, combined once after the last round; decode: each round adds its experts'
//! shares to the residual stream).
//!
//! Lookahead prefetch: layer l+1's router applied to layer l's residual (after its
//! attention) predicts l+1's experts; their ids come back with layer l's, and the missing
//! ones are uploaded before layer l's experts run, so that layer l+1 finds them resident.

use crate::error::{Error, Result};
use wgpu::Buffer;

/// A slot table entry for an expert that is not computed (shaders/lib/common.wgsl).
pub const NO_SLOT: u32 = u32::MAX;

/// Which resident expert gives up its slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    /// Least recently used.
    #[default]
    Lru,
    /// Least often used (ties: least recently).
    Lfu,
    /// The `n` experts used most so far are pinned (never evicted while others can be);
    /// LRU among the rest.
    Pinned(usize),
    /// No reuse: every expert a step needs is uploaded again (the baseline without a cache).
    NoReuse,
}

impl Policy {
    pub fn parse(s: &str) -> Result<Policy> {
        match s {
            "lru" => Ok(Policy::Lru),
            "lfu" => Ok(Policy::Lfu),
            "none" | "no-reuse" => Ok(Policy::NoReuse),
            _ => match s.strip_prefix("pinned:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Policy::Pinned(n)),
                _ => Err(Error::input(format!("expert policy '{s}': expected lru, lfu, pinned:N or none"))),
            },
        }
    }

    pub fn name(self) -> String {
        match self {
            Policy::Lru => "lru".into(),
            Policy::Lfu => "lfu".into(),
            Policy::Pinned(n) => format!("pinned:{n}"),
            Policy::NoReuse => "none".into(),
        }
    }
}

/// How many experts stay on the GPU (EngineOptions, the CLI's --resident-experts and
/// --gpu-memory, the page's load options).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Residency {
    /// Slots per MoE layer (at least the layer's top-k); None: all, or what fits `gpu_memory`.
    pub experts: Option<usize>,
    /// Bytes the model may allocate on the GPU, as counted by `Gpu::allocations`.
    pub gpu_memory: Option<u64>,
    pub policy: Policy,
    /// Lookahead prefetch (decode steps).
    pub prefetch: bool,
}

/// Where a paged layer's experts come from when they are uploaded.
pub enum HostExperts {
    /// Host copies [E][stride] of the packed gate/up and down blocks.
    Memory([Vec<u8>; 2]),
    /// Fetched (and verified) when first needed, from the experts' own files (src/lazy.rs).
    Lazy(std::rc::Rc<crate::lazy::LazyExperts>),
    /// None kept: every expert was uploaded for good (a pool of all experts filled at load).
    Dropped,
}

/// Part of a layer's slot pool: as many slots as one binding holds. A pool larger than
/// one binding is split into parts, and the layer's expert kernels run once per part, each
/// with its own slot table naming only the experts in its slots (like rounds), so every
/// expert is computed once.
pub struct PoolPart {
    /// Slots `first..first + slots` of the layer: gate/up and down [slots][stride].
    pub first: u32,
    pub slots: u32,
    pub pools: [Buffer; 2],
    /// [E] u32: expert -> slot within this part, or NO_SLOT.
    pub table: Buffer,
}

/// One paged MoE layer: its GPU pool parts and tables, where the experts' bytes are, and
/// which expert each slot holds.
pub struct PagedLayer {
    /// Index in the layer plan.
    pub layer: usize,
    pub experts: usize,
    pub slots: usize,
    pub host: HostExperts,
    /// Bytes of one expert's gate/up and down blocks.
    pub strides: [usize; 2],
    pub parts: Vec<PoolPart>,
    holder: Vec<Option<u32>>,
    slot_of: Vec<u32>,
    last_use: Vec<u64>,
    uses: Vec<u64>,
}

/// One round of a paged layer: uploads (slot, expert) then the table for the round.
#[derive(Debug, Clone, PartialEq)]
pub struct Round {
    pub uploads: Vec<(u32, u32)>,
    pub table: Vec<u32>,
}

/// Counters over everything run since the last `take` (bench, lastStats).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct PagingStats {
    pub steps: u64,
    pub tokens: u64,
    /// Needed experts found resident / uploaded (per layer and step; prefetched ones that
    /// were needed count as hits).
    pub hits: u64,
    pub misses: u64,
    pub upload_bytes: u64,
    /// Experts uploaded by prefetch, and how many of the experts layers needed had been
    /// predicted (recall = predicted_needed / needed_predictable).
    pub prefetched: u64,
    pub predicted_needed: u64,
    pub needed_predictable: u64,
    /// Layer runs that needed more than one round, and rounds in all.
    pub split_layers: u64,
    pub rounds: u64,
    /// Seconds the host waited for a router's ids (submit to mapped).
    pub sync_seconds: f64,
}

impl PagingStats {
    pub fn hit_rate(&self) -> f64 {
        self.hits as f64 / (self.hits + self.misses).max(1) as f64
    }
    pub fn recall(&self) -> f64 {
        self.predicted_needed as f64 / self.needed_predictable.max(1) as f64
    }
}

impl PagedLayer {
    pub fn new(layer: usize, experts: usize, (host, strides): (HostExperts, [usize; 2]), parts: Vec<PoolPart>) -> Self {
        let slots = parts.iter().map(|p| p.slots as usize).sum();
        PagedLayer {
            layer,
            experts,
            slots,
            host,
            strides,
            parts,
            holder: vec![None; slots],
            slot_of: vec![NO_SLOT; experts],
            last_use: vec![0; experts],
            uses: vec![0; experts],
        }
    }

    /// The bytes one slot takes on the GPU (gate/up and down).
    pub fn slot_bytes(&self) -> u64 {
        (self.strides[0] + self.strides[1]) as u64
    }

    /// A victim among `free` slots (those no expert of the current round holds).
    fn victim(&self, free: &[usize], policy: Policy) -> usize {
        // An empty slot first.
        if let Some(&s) = free.iter().find(|&&s| self.holder[s].is_none()) {
            return s;
        }
        let of = |s: usize| self.holder[s].map_or(0, |e| e as usize);
        let lru = |c: &[usize]| *c.iter().min_by_key(|&&s| (self.last_use[of(s)], s)).unwrap_or(&free[0]);
        match policy {
            Policy::Lru | Policy::NoReuse => lru(free),
            Policy::Lfu => {
                *free.iter().min_by_key(|&&s| (self.uses[of(s)], self.last_use[of(s)], s)).unwrap_or(&free[0])
            }
            Policy::Pinned(n) => {
                let mut hot: Vec<usize> = (0..self.experts).collect();
                hot.sort_by_key(|&e| (std::cmp::Reverse(self.uses[e]), e));
                hot.truncate(n);
                let cold: Vec<usize> = free.iter().copied().filter(|&s| !hot.contains(&of(s))).collect();
                if cold.is_empty() { lru(free) } else { lru(&cold) }
            }
        }
    }

    /// Places `e` in a slot not holding any of `keep`; returns the slot.
    fn place(&mut self, e: u32, keep: &[u32], policy: Policy) -> Result<u32> {
        let free: Vec<usize> = (0..self.slots).filter(|&s| self.holder[s].is_none_or(|h| !keep.contains(&h))).collect();
        if free.is_empty() {
            return Err(Error::gpu(format!(
                "layer {}: no slot free for expert {e} ({} slots)",
                self.layer, self.slots
            )));
        }
        let s = self.victim(&free, policy);
        if let Some(old) = self.holder[s] {
            self.slot_of[old as usize] = NO_SLOT;
        }
        self.holder[s] = Some(e);
        self.slot_of[e as usize] = s as u32;
        Ok(s as u32)
    }

    /// The rounds that compute the distinct experts in `ids` (one step's router output),
    /// updating residency; `tick` orders uses for LRU.
    pub fn plan(&mut self, ids: &[u32], tick: u64, policy: Policy, stats: &mut PagingStats) -> Result<Vec<Round>> {
        let mut needed: Vec<u32> = Vec::new();
        for &e in ids {
            if e as usize >= self.experts {
                return Err(Error::gpu(format!(
                    "layer {}: the router chose expert {e} of {}",
                    self.layer, self.experts
                )));
            }
            if !needed.contains(&e) {
                needed.push(e);
            }
        }
        if policy == Policy::NoReuse {
            self.holder.iter_mut().for_each(|h| *h = None);
            self.slot_of.iter_mut().for_each(|s| *s = NO_SLOT);
        }
        // Resident experts first: the first round computes them without an upload.
        needed.sort_by_key(|&e| self.slot_of[e as usize] == NO_SLOT);
        for &e in &needed {
            if self.slot_of[e as usize] == NO_SLOT {
                stats.misses += 1;
            } else {
                stats.hits += 1;
            }
        }
        let mut rounds = Vec::new();
        for group in needed.chunks(self.slots) {
            let mut uploads = Vec::new();
            for &e in group {
                if self.slot_of[e as usize] == NO_SLOT {
                    uploads.push((self.place(e, group, policy)?, e));
                }
                self.last_use[e as usize] = tick;
                self.uses[e as usize] += 1;
            }
            stats.upload_bytes += uploads.len() as u64 * self.slot_bytes();
            let mut table = vec![NO_SLOT; self.experts];
            group.iter().for_each(|&e| table[e as usize] = self.slot_of[e as usize]);
            rounds.push(Round { uploads, table });
        }
        stats.rounds += rounds.len() as u64;
        stats.split_layers += (rounds.len() > 1) as u64;
        Ok(rounds)
    }

    /// Uploads the predicted experts that are not resident (evicting by `policy`, never
    /// another predicted one); returns the (slot, expert) uploads.
    pub fn prefetch(
        &mut self,
        predicted: &[u32],
        tick: u64,
        policy: Policy,
        stats: &mut PagingStats,
    ) -> Result<Vec<(u32, u32)>> {
        let mut distinct: Vec<u32> = Vec::new();
        for &e in predicted {
            if (e as usize) < self.experts && !distinct.contains(&e) {
                distinct.push(e);
            }
        }
        distinct.truncate(self.slots);
        let mut uploads = Vec::new();
        for &e in &distinct {
            if self.slot_of[e as usize] == NO_SLOT {
                uploads.push((self.place(e, &distinct, policy)?, e));
            }
            // Recently predicted counts as recently used, so the layer's own step keeps it.
            self.last_use[e as usize] = tick;
        }
        stats.prefetched += uploads.len() as u64;
        stats.upload_bytes += uploads.len() as u64 * self.slot_bytes();
        Ok(uploads)
    }

    /// Queues the uploads and the table (before the submission that reads them); lazy
    /// experts are fetched first. When a fetch fails, the slots planned for the uploads
    /// are marked empty again, so no later step takes an expert for resident that never
    /// arrived.
    pub async fn write(&mut self, g: &super::Gpu, uploads: &[(u32, u32)], table: Option<&[u32]>) -> Result<()> {
        let r = self.put(g, uploads, table).await;
        if r.is_err() {
            self.forget(uploads);
        }
        r
    }

    /// Marks the slots of planned uploads empty (they did not happen: a fetch failed in
    /// this round or an earlier one). Emptying a slot that does hold its expert is safe: it
    /// is only uploaded again.
    pub fn forget(&mut self, uploads: &[(u32, u32)]) {
        for &(slot, e) in uploads {
            if self.holder[slot as usize] == Some(e) {
                self.holder[slot as usize] = None;
                self.slot_of[e as usize] = NO_SLOT;
            }
        }
    }

    async fn put(&self, g: &super::Gpu, uploads: &[(u32, u32)], table: Option<&[u32]>) -> Result<()> {
        let put = |slot: u32, i: usize, src: &[u8]| {
            if let Some(p) = self.parts.iter().find(|p| (p.first..p.first + p.slots).contains(&slot)) {
                g.queue.write_buffer(&p.pools[i], (slot - p.first) as u64 * self.strides[i] as u64, src);
            }
        };
        match &self.host {
            HostExperts::Memory(_) => self.put_memory(g, uploads),
            HostExperts::Dropped if uploads.is_empty() => {}
            HostExperts::Dropped => {
                return Err(Error::gpu(format!("layer {}: an expert left its slot, but no copy of it was kept", self.layer)));
            }
            HostExperts::Lazy(src) => {
                // Two experts at a time: their fetches overlap, and host memory holds
                // no more than two experts' shards (a prefill round can need them all).
                for part in uploads.chunks(2) {
                    let ids: Vec<u32> = part.iter().map(|u| u.1).collect();
                    for (&(slot, _), blocks) in part.iter().zip(src.get(self.layer, &ids).await?) {
                        for (i, b) in blocks.iter().enumerate() {
                            put(slot, i, b);
                        }
                    }
                }
            }
        }
        if let Some(t) = table {
            self.write_tables(g, t);
        }
        Ok(())
    }

    /// Queues uploads from host memory (nothing to fetch: at once).
    pub fn put_memory(&self, g: &super::Gpu, uploads: &[(u32, u32)]) {
        let HostExperts::Memory(host) = &self.host else { return };
        for &(slot, e) in uploads {
            let Some(p) = self.parts.iter().find(|p| (p.first..p.first + p.slots).contains(&slot)) else { continue };
            for (i, bytes) in host.iter().enumerate() {
                let st = self.strides[i];
                let at = (slot - p.first) as u64 * st as u64;
                g.queue.write_buffer(&p.pools[i], at, &bytes[e as usize * st..(e as usize + 1) * st]);
            }
        }
    }

    /// Writes each part's table from `table` (expert -> layer slot, or NO_SLOT).
    pub fn write_tables(&self, g: &super::Gpu, table: &[u32]) {
        for p in &self.parts {
            let local: Vec<u32> = table
                .iter()
                .map(|&s| if s != NO_SLOT && (p.first..p.first + p.slots).contains(&s) { s - p.first } else { NO_SLOT })
                .collect();
            g.queue.write_buffer(&p.table, 0, bytemuck::cast_slice(&local));
        }
    }

    /// Whether every expert of the layer is resident (a lazily loaded layer whose pool
    /// holds them all, once each has been fetched).
    pub fn complete(&self) -> bool {
        self.slot_of.iter().all(|&s| s != NO_SLOT)
    }

    /// Places up to `max` experts that are not resident yet in empty slots (a pool that
    /// holds every expert, filled in the background); returns the (slot, expert) uploads.
    pub fn fill(&mut self, max: usize) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        for e in 0..self.experts as u32 {
            if out.len() >= max {
                break;
            }
            let Some(s) = self.holder.iter().position(Option::is_none) else { break };
            if self.slot_of[e as usize] == NO_SLOT {
                self.holder[s] = Some(e);
                self.slot_of[e as usize] = s as u32;
                out.push((s as u32, e));
            }
        }
        out
    }

    /// Experts a fill would still upload (none when the pool cannot hold them all).
    pub fn unfilled(&self) -> usize {
        if self.slots < self.experts { 0 } else { self.slot_of.iter().filter(|&&s| s == NO_SLOT).count() }
    }

    /// The table naming every resident expert's slot.
    pub fn full_table(&self) -> &[u32] {
        &self.slot_of
    }

    /// Whether expert `e` is resident now.
    pub fn resident(&self, e: u32) -> bool {
        self.slot_of.get(e as usize).is_some_and(|&s| s != NO_SLOT)
    }
}

/// Slots per paged MoE layer under a GPU budget: `fixed` bytes are allocated whatever the
/// residency, each layer's slot costs `slot_bytes[l]`; every layer gets the same count
/// (at least its top-k), capped at its experts. Err says the minimum budget.
pub fn plan_slots(budget: u64, fixed: u64, layers: &[(usize, usize, u64)]) -> Result<usize> {
    // layers: (experts, top_k, slot bytes)
    let per_slot: u64 = layers.iter().map(|l| l.2).sum();
    let min_k = layers.iter().map(|l| l.1).max().unwrap_or(1);
    let max_e = layers.iter().map(|l| l.0).max().unwrap_or(1);
    let minimum = fixed + min_k as u64 * per_slot;
    if budget < minimum {
        return Err(Error::input(format!(
            "--gpu-memory {budget} bytes ({}) is too small: the model needs at least {minimum} bytes ({}): {fixed} for embeddings, attention, routers, norms, the KV cache and activations, and {min_k} experts per MoE layer ({per_slot} bytes per slot across the layers)",
            mib(budget),
            mib(minimum)
        )));
    }
    let n = ((budget - fixed) / per_slot.max(1)) as usize;
    Ok(n.min(max_e))
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}
