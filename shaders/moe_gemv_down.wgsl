// MoE expert down-projection for decode, fused with the router-weighted sum and the
// residual add:  x[t, n] += sum_s weights[t*K+s] * (W2[e_s, n] . act[t*K+s])
//   w: E blocks `e_stride` words apart, each the expert's W2 [D, F] in WDTYPE, act: [T*K, F] f32, ids/weights: [T*K] from the router,
//   x: [T, D] f32 residual stream (read-modify-write).
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
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> act: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> ids: array<u32>;
@group(0) @binding(4) var<storage, read> weights: array<f32>;
@group(0) @binding(5) var<storage, read_write> x: array<f32>;

const WG: u32 = 128u;
const ROWS: u32 = 4u;

var<workgroup> red: array<vec4<f32>, WG>;

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
    var acc = vec4<f32>(0.0);
    for (var s = 0u; s < p.k; s++) {
        let a = t * p.k + s;
        let e = ids[a];
        let wt = weights[a];
        let o = WLayout(e * p.e_stride, p.s_off, p.h_off);
        for (var c = lid; c < f4; c += WG) {
            let av = act[a * f4 + c] * wt;
            for (var r = 0u; r < ROWS; r++) {
                acc[r] += dot(w4(o, min(n0 + r, p.dim - 1u) * p.ff + c * 4u), av);
            }
        }
    }
    red[lid] = acc;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red[lid] += red[lid + s];
        }
        workgroupBarrier();
    }
    let n = n0 + lid;
    if (lid < ROWS && n < p.dim) {
        x[t * p.dim + n] += red[0][lid];
    }
}
