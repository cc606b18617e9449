// Decode matmul (GEMV): y[t, y_off + n] (+)= sum_k W[n, k] * x[t, k]
//   W: [N, K] in WDTYPE (HF Linear layout, any format of lib/weights.wgsl),
//   x: [T, K] f32, y: [T, y_stride] f32 (y_off/y_stride let q, k, v write one buffer).
// One workgroup computes ROWS consecutive outputs of one token: LANES threads per row
// split K in vec4 steps (neighbouring threads read neighbouring words), then one barrier
// and a LANES-wide sum through workgroup memory. Many rows per workgroup and a single
// barrier keep the cost per workgroup low on every device (few workgroups, no reduction
// tree). With `accumulate` the result is added into y (fuses the residual add).
// Grid: x = ceil(N / ROWS) (folded), y = T.

struct Params {
    n: u32,
    k: u32,
    accumulate: u32,
    y_stride: u32,
    y_off: u32,
    s_off: u32,    // weight layout: scales at word s_off,
    h_off: u32,    // Q6_K high bits at word h_off
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

const WG: u32 = 128u;
const LANES: u32 = 8u;
const ROWS: u32 = WG / LANES;

var<workgroup> part: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row0 = linear_x(wid, nwg) * ROWS;
    if (row0 >= p.n) {
        return;
    }
    let t = wid.y;
    let k4 = p.k / 4u;
    let o = WLayout(0u, p.s_off, p.h_off);
    let r = lid / LANES;
    let lane = lid % LANES;
    // Rows past N recompute row N-1; their sums are never stored.
    let row = min(row0 + r, p.n - 1u);
    var acc = 0.0;
    if (p.k % 32u == 0u) {
        // Whole 32-weight blocks: scales once per block, quants a word at a time.
        for (var b = lane; b < p.k / 32u; b += LANES) {
            var xv: array<vec4<f32>, 8>;
            for (var j = 0u; j < 8u; j++) {
                xv[j] = x[t * k4 + 8u * b + j];
            }
            acc += wdot32(o, row * p.k + 32u * b, xv);
        }
    } else {
        for (var c = lane; c < k4; c += LANES) {
            acc += dot(w4(o, row * p.k + c * 4u), x[t * k4 + c]);
        }
    }
    part[lid] = acc;
    workgroupBarrier();
    if (lane == 0u && row0 + r < p.n) {
        var v = 0.0;
        for (var j = 0u; j < LANES; j++) {
            v += part[lid + j];
        }
        let i = t * p.y_stride + p.y_off + row0 + r;
        if (p.accumulate != 0u) {
            y[i] += v;
        } else {
            y[i] = v;
        }
    }
}
