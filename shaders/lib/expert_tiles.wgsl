// Which tile of which expert a prefill MoE workgroup computes (moe_gemm_gate_up.wgsl,
// moe_gemm_down.wgsl). The grid covers the worst case, ceil(T*K / TILE) + E row tiles;
// workgroup row `tile` walks the experts' segments of the sorted order (`starts`, [E+1],
// from moe_group.wgsl) on the GPU: no host read-back of routing. An expert without a slot
// (`slot_of`, NO_SLOT: not resident in this round of a paged layer) gets no workgroup, and
// its rows keep what an earlier round wrote.

var<workgroup> job: vec4<u32>;

// (expert, first sorted row, end row, the expert's slot) of row tile `tile`; expert =
// `experts` when this workgroup has nothing to do. Call in uniform control flow (the
// result is uniform).
fn expert_tile(tile_y: u32, experts: u32, lid: u32) -> vec4<u32> {
    if (lid == 0u) {
        var tile = tile_y;
        var found = vec4<u32>(experts, 0u, 0u, NO_SLOT);
        for (var e = 0u; e < experts; e++) {
            let s = starts[e];
            let n_tiles = (starts[e + 1u] - s + TILE - 1u) / TILE;
            if (tile < n_tiles) {
                let slot = slot_of[e];
                if (slot != NO_SLOT) {
                    found = vec4<u32>(e, s + tile * TILE, min(s + (tile + 1u) * TILE, starts[e + 1u]), slot);
                }
                break;
            }
            tile -= n_tiles;
        }
        job = found;
    }
    return workgroupUniformLoad(&job);
}
