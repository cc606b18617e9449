// MoE expert up-projection for decode: for each (token t, slot s) with expert e = ids[t*K+s]
// read on the GPU, act[t*K+s, f] = silu(W1[e, f] . x[t]) * (W3[e, f] . x[t]).
//   w: E blocks `e_stride` words apart, each one [2F, D] matrix in WDTYPE: the expert's
//   gate (W1) rows, then its up (W3) rows,
//   x: [T, D] f32 (normed hidden), ids: [T*K] u32 from the router, act: [T*K, F] f32.
// Same structure as gemv.wgsl (ROWS rows per workgroup, LANES threads sharing NR rows and
// splitting D), with the gate and up rows computed together so x is read once for both.
// Grid: x = ceil(F / ROWS), y = T*K.

struct Params {
    dim: u32,   // D
    ff: u32,    // F
    k: u32,     // K
    s_off: u32, // weight layout within an expert block (lib/weights.wgsl)
    h_off: u32,
    e_stride: u32, // words from one expert's block to the next
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> ids: array<u32>;
@group(0) @binding(4) var<storage, read_write> act: array<f32>;

const WG: u32 = 128u;
const LANES: u32 = 8u;
const NR: u32 = 4u;
const ROWS: u32 = WG / LANES * NR;

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
    let d4 = p.dim / 4u;
    let o = WLayout(e * p.e_stride, p.s_off, p.h_off);
    let up = p.ff * p.dim;   // W3 rows follow the F rows of W1
    let grp = lid / LANES;
    let lane = lid % LANES;
    var rows: array<u32, NR>;
    for (var r = 0u; r < NR; r++) {
        rows[r] = min(f0 + grp * NR + r, p.ff - 1u) * p.dim;
    }
    var g = vec4<f32>(0.0);
    var u = vec4<f32>(0.0);
    if (p.dim % 32u == 0u) {
        for (var b = lane; b < p.dim / 32u; b += LANES) {
            var xv: array<vec4<f32>, 8>;
            for (var j = 0u; j < 8u; j++) {
                xv[j] = x[t * d4 + 8u * b + j];
            }
            let sx = xsum32(xv);
            for (var r = 0u; r < NR; r++) {
                g[r] += wdot32(o, rows[r] + 32u * b, xv, sx);
                u[r] += wdot32(o, up + rows[r] + 32u * b, xv, sx);
            }
        }
    } else {
        for (var c = lane; c < d4; c += LANES) {
            let xv = x[t * d4 + c];
            for (var r = 0u; r < NR; r++) {
                g[r] += dot(w4(o, rows[r] + c * 4u), xv);
                u[r] += dot(w4(o, up + rows[r] + c * 4u), xv);
            }
        }
    }
    let sums = lanes_sum2(g, u, lid);
    if (lane == 0u) {
        let gs = sums[0];
        let us = sums[1];
        for (var r = 0u; r < NR; r++) {
            let f = f0 + grp * NR + r;
            if (f < p.ff) {
                act[a * p.ff + f] = silu(gs[r]) * us[r];
            }
        }
    }
}
