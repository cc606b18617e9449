// MoE expert down-projection for decode, fused with the router-weighted sum and the
// residual add:  x[t, n] += sum_s weights[t*K+s] * (W2[e_s, n] . act[t*K+s])
//   w: E blocks `e_stride` words apart, each the expert's W2 [D, F] in WDTYPE, act: [T*K, F] f32, ids/weights: [T*K] from the router,
//   x: [T, D] f32 residual stream (read-modify-write).
// ROWS rows per workgroup, LANES threads sharing NR rows and splitting F (as gemv.wgsl).
// Grid: x = ceil(D / ROWS), y = T.

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
@group(0) @binding(2) var<storage, read> act: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> ids: array<u32>;
@group(0) @binding(4) var<storage, read> weights: array<f32>;
@group(0) @binding(5) var<storage, read_write> x: array<f32>;

const WG: u32 = 128u;
const LANES: u32 = 8u;
const NR: u32 = 4u;
const ROWS: u32 = WG / LANES * NR;

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
    let grp = lid / LANES;
    let lane = lid % LANES;
    var rows: array<u32, NR>;
    for (var r = 0u; r < NR; r++) {
        rows[r] = min(n0 + grp * NR + r, p.dim - 1u) * p.ff;
    }
    var acc = vec4<f32>(0.0);
    for (var s = 0u; s < p.k; s++) {
        let a = t * p.k + s;
        let o = WLayout(ids[a] * p.e_stride, p.s_off, p.h_off);
        var d = vec4<f32>(0.0);
        if (p.ff % 32u == 0u) {
            for (var b = lane; b < p.ff / 32u; b += LANES) {
                var xv: array<vec4<f32>, 8>;
                for (var j = 0u; j < 8u; j++) {
                    xv[j] = act[a * f4 + 8u * b + j];
                }
                let sx = xsum32(xv);
                for (var r = 0u; r < NR; r++) {
                    d[r] += wdot32(o, rows[r] + 32u * b, xv, sx);
                }
            }
        } else {
            for (var c = lane; c < f4; c += LANES) {
                let xv = act[a * f4 + c];
                for (var r = 0u; r < NR; r++) {
                    d[r] += dot(w4(o, rows[r] + c * 4u), xv);
                }
            }
        }
        acc += weights[a] * d;
    }
    let v = lanes_sum(acc, lid);
    if (lane == 0u) {
        for (var r = 0u; r < NR; r++) {
            let n = n0 + grp * NR + r;
            if (n < p.dim) {
                x[t * p.dim + n] += v[r];
            }
        }
    }
}
