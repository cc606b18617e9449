// MoE expert up-projection for decode: for each (token t, slot s) with expert e = ids[t*K+s]
// read on the GPU, act[t*K+s, f] = glu(W1[e, f] . x[t] + b1[e, f], W3[e, f] . x[t] + b3[e, f])
// (glu: the ACT activation of lib/common.wgsl; biases only with `bias`).
//   w: E blocks `e_stride` words apart, each one [2F, D] matrix in WDTYPE: the expert's
//   gate (W1) rows, then its up (W3) rows,
//   x: [T, D] f32 (normed hidden), ids: [T*K] u32 from the router, act: [T*K, F] f32,
//   slot_of: [E] u32 the block holding each expert (NO_SLOT: not computed, act rows kept).
// The work split of lib/gemv_rows.wgsl (ROWS rows per workgroup, LANES threads sharing NR
// rows and splitting D), with the gate and up rows computed together (rows_dot2) so x is
// read once for both.
// Grid: x = ceil(F / ROWS), y = T*K.

struct Params {
    dim: u32,      // D
    ff: u32,       // F
    k: u32,        // K
    experts: u32,  // E
    s_off: u32,    // weight layout within an expert block (lib/weights.wgsl)
    h_off: u32,
    e_stride: u32, // words from one expert's block to the next
    bias: u32,     // 1: biases [E, 2F], each expert's gate then up biases
    act_alpha: f32, // the clamped GLU's alpha and limit (ACT 2)
    act_limit: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> ids: array<u32>;
@group(0) @binding(4) var<storage, read_write> act: array<f32>;
@group(0) @binding(5) var<storage, read> biases: array<f32>;
@group(0) @binding(6) var<storage, read> slot_of: array<u32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let f0 = linear_x(wid, nwg) * ROWS;
    if (f0 >= p.ff) {
        return;
    }
    let a = wid.y;              // assignment = t * K + s
    let t = a / p.k;
    let e = ids[a];
    let slot = slot_of[e];
    if (slot == NO_SLOT) {
        return;
    }
    let d4 = p.dim / 4u;
    let o = WLayout(slot * p.e_stride, p.s_off, p.h_off);
    let up = p.ff * p.dim;   // W3 rows follow the F rows of W1
    let lane = lid % LANES;
    let rows = group_rows(f0, p.ff, p.dim, lid);
    let d = rows_dot2(o, rows, up, t * d4, p.dim, lane);
    let sums = lanes_sum2(d[0], d[1], lid);
    if (lane == 0u) {
        let gs = sums[0];
        let us = sums[1];
        for (var r = 0u; r < NR; r++) {
            let f = f0 + (lid / LANES) * NR + r;
            if (f < p.ff) {
                var gv = gs[r];
                var uv = us[r];
                if (p.bias != 0u) {
                    gv += biases[e * 2u * p.ff + f];
                    uv += biases[e * 2u * p.ff + p.ff + f];
                }
                act[a * p.ff + f] = glu(gv, uv, p.act_alpha, p.act_limit);
            }
        }
    }
}
