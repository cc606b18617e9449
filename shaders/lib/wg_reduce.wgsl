// Workgroup-wide reductions through workgroup memory (a tree of log2(WG) steps; WG from
// the kernel, a power of two). Shared by rmsnorm, router, attention and attention_split.
// Call in uniform control flow; the result is in every thread, and `red` is free again
// when it returns.

var<workgroup> red: array<f32, WG>;

// The maximum (max_ = true) or the sum of `v` over the workgroup.
fn wg_reduce(v: f32, lid: u32, max_: bool) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var r = WG / 2u; r > 0u; r >>= 1u) {
        if (lid < r) {
            red[lid] = select(red[lid] + red[lid + r], max(red[lid], red[lid + r]), max_);
        }
        workgroupBarrier();
    }
    let out = red[0];
    workgroupBarrier();
    return out;
}

fn wg_sum(v: f32, lid: u32) -> f32 {
    return wg_reduce(v, lid, false);
}

fn wg_max(v: f32, lid: u32) -> f32 {
    return wg_reduce(v, lid, true);
}
