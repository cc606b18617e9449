// Decode matmul (GEMV): y[t, y_off + n] (+)= alpha * (sum_k W[n, k] * x[t, k] + biases[y_off + n])
//   W: [N, K] in WDTYPE (HF Linear layout, any format of lib/weights.wgsl),
//   x: [T, K] f32, y: [T, y_stride] f32 (y_off/y_stride let q, k, v write one buffer),
//   biases: by output column (read only with `bias`).
// The work split is lib/gemv_rows.wgsl's: ROWS consecutive outputs of one token per
// workgroup. With `accumulate` the result is added into y (fuses the residual add);
// alpha is the residual or logit scale (1 for most models).
// Grid: x = ceil(N / ROWS) (folded), y = T.

struct Params {
    n: u32,
    k: u32,
    accumulate: u32,
    y_stride: u32,
    y_off: u32,
    s_off: u32,    // weight layout: scales at word s_off,
    h_off: u32,    // Q6_K high bits at word h_off
    bias: u32,
    alpha: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read> biases: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row0 = linear_x(wid, nwg) * ROWS;
    if (row0 >= p.n) {
        return;
    }
    let t = wid.y;
    let v = gemv_rows(WLayout(0u, p.s_off, p.h_off), row0, p.n, p.k, t, lid);
    if (lid % LANES == 0u) {
        for (var r = 0u; r < NR; r++) {
            let row = row0 + (lid / LANES) * NR + r;
            if (row < p.n) {
                let i = t * p.y_stride + p.y_off + row;
                var o = v[r];
                if (p.bias != 0u) {
                    o += biases[p.y_off + row];
                }
                o *= p.alpha;
                if (p.accumulate != 0u) {
                    y[i] += o;
                } else {
                    y[i] = o;
                }
            }
        }
    }
}
