// Prefill matmul (tiled GEMM): Y[m, y_off + n] (+)= sum_k X[m, k] * W[n, k]
//   X: [M, K] f32 with M = step.n_rows, W: [N, K] in WDTYPE (lib/weights.wgsl),
//   Y: [M, y_stride] f32.
// A 16x16 workgroup computes a 32x32 tile of Y, 2x2 outputs per thread, staging 32x32
// slices of X and W in workgroup memory so each weight is read from memory once per
// 32 rows of X instead of once per row.
// Grid: x = ceil(N / 32) (folded), y = ceil(M / 32).

struct Params {
    n: u32,
    k: u32,
    accumulate: u32,
    y_stride: u32,
    y_off: u32,
    s_off: u32,
    h_off: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

const TILE: u32 = 32u;
const BK: u32 = 32u;

// [row][k], padded by one to spread rows over memory banks.
var<workgroup> xs: array<array<f32, 33>, TILE>;
var<workgroup> ws: array<array<f32, 33>, TILE>;

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid3: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let n0 = linear_x(wid, nwg) * TILE;
    let m0 = wid.y * TILE;
    let m = step.n_rows;
    if (n0 >= p.n || m0 >= m) {
        return;
    }
    let k4 = p.k / 4u;
    let o = vec2<u32>(p.s_off, p.h_off);
    // Each thread stages one vec4 of X and one of W per k-step: row lid / 8, k-quad lid % 8.
    let lr = lid / 8u;
    let lq = lid % 8u;
    let tx = lid3.x;
    let ty = lid3.y;
    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    for (var kb = 0u; kb < p.k; kb += BK) {
        let kq = kb / 4u + lq;
        var xv = vec4<f32>(0.0);
        if (m0 + lr < m && kq < k4) {
            xv = x[(m0 + lr) * k4 + kq];
        }
        var wv = vec4<f32>(0.0);
        if (n0 + lr < p.n && kq < k4) {
            wv = w4((n0 + lr) * p.k + kq * 4u, o);
        }
        for (var i = 0u; i < 4u; i++) {
            xs[lr][lq * 4u + i] = xv[i];
            ws[lr][lq * 4u + i] = wv[i];
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let a0 = xs[ty][kk];
            let a1 = xs[ty + 16u][kk];
            let b0 = ws[tx][kk];
            let b1 = ws[tx + 16u][kk];
            acc[0] += a0 * b0;
            acc[1] += a0 * b1;
            acc[2] += a1 * b0;
            acc[3] += a1 * b1;
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let row = m0 + ty + (i / 2u) * 16u;
        let col = n0 + tx + (i % 2u) * 16u;
        if (row < m && col < p.n) {
            let yi = row * p.y_stride + p.y_off + col;
            if (p.accumulate != 0u) {
                y[yi] += acc[i];
            } else {
                y[yi] = acc[i];
            }
        }
    }
}
