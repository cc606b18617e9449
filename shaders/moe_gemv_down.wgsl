// MoE expert down-projection for decode, fused with the router-weighted sum and the
// residual add:  res[t, n] += alpha * sum_s weights[t*K+s] * (W2[e_s, n] . x[t*K+s] + b2[e_s, n])
// (biases only with `bias`).
//   w: E blocks `e_stride` words apart, each the expert's W2 [D, F] in WDTYPE,
//   x: [T*K, F] f32 (the experts' SwiGLU activations), ids/weights: [T*K] from the router,
//   res: [T, D] f32 residual stream (read-modify-write),
//   slot_of: [E] u32 the block holding each expert (NO_SLOT: not computed in this round,
//   so its share is left out; a paged layer's rounds add the rest).
// The work split of lib/gemv_rows.wgsl: ROWS rows per workgroup, LANES threads sharing NR
// rows and splitting F; each thread sums its share over the K experts before the one
// cross-lane sum.
// Grid: x = ceil(D / ROWS), y = T.

struct Params {
    dim: u32,      // D
    ff: u32,       // F
    k: u32,        // K
    experts: u32,  // E
    s_off: u32,    // weight layout within an expert block (lib/weights.wgsl)
    h_off: u32,
    e_stride: u32, // words from one expert's block to the next
    bias: u32,     // 1: biases [E, D]
    alpha: f32,    // multiplies what reaches the residual (the residual scale)
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> ids: array<u32>;
@group(0) @binding(4) var<storage, read> weights: array<f32>;
@group(0) @binding(5) var<storage, read_write> res: array<f32>;
@group(0) @binding(6) var<storage, read> biases: array<f32>;   // [E, D]
@group(0) @binding(7) var<storage, read> slot_of: array<u32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let n0 = linear_x(wid, nwg) * ROWS;
    if (n0 >= p.dim) {
        return;
    }
    let t = wid.y;
    let f4 = p.ff / 4u;
    let lane = lid % LANES;
    let rows = group_rows(n0, p.dim, p.ff, lid);
    var acc = vec4<f32>(0.0);
    for (var s = 0u; s < p.k; s++) {
        let a = t * p.k + s;
        let slot = slot_of[ids[a]];
        if (slot == NO_SLOT) {
            continue;
        }
        let o = WLayout(slot * p.e_stride, p.s_off, p.h_off);
        acc += weights[a] * rows_dot(o, rows, a * f4, p.ff, lane);
    }
    let v = lanes_sum(acc, lid);
    if (lane == 0u) {
        for (var r = 0u; r < NR; r++) {
            let n = n0 + (lid / LANES) * NR + r;
            if (n < p.dim) {
                var o = v[r];
                if (p.bias != 0u) {
                    for (var s = 0u; s < p.k; s++) {
                        let a = t * p.k + s;
                        if (slot_of[ids[a]] != NO_SLOT) {
                            o += weights[a] * biases[ids[a] * p.dim + n];
                        }
                    }
                }
                res[t * p.dim + n] += p.alpha * o;
            }
        }
    }
}
