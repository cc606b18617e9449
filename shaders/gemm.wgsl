// Prefill matmul (tiled GEMM): Y[m, y_off + n] (+)= sum_k X[m, k] * W[n, k]
//   X: [M, K] f32 with M = step.n_rows, W: [N, K] in WDTYPE (lib/weights.wgsl),
//   Y: [M, y_stride] f32.
// A workgroup of 64 threads computes a 32x32 tile of Y, a 4x4 block per thread, staging
// 32x32 slices of X and W in workgroup memory (row-major vec4s along k, rows padded to 9
// vec4s against bank conflicts) so each weight is read from memory once per 32 rows of X;
// each thread does 16 vec4 dot products per 8 vec4 reads of workgroup memory.
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
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

const TILE: u32 = 32u;
const BK: u32 = 32u;

// [row][k / 4] with a row stride of PAD vec4s.
const PAD: u32 = 9u;
var<workgroup> xs: array<vec4<f32>, 288>;
var<workgroup> ws: array<vec4<f32>, 288>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let n0 = linear_x(wid, nwg) * TILE;
    let m0 = wid.y * TILE;
    let m = step.n_rows;
    if (n0 >= p.n || m0 >= m) {
        return;
    }
    let k4 = p.k / 4u;
    let o = WLayout(0u, p.s_off, p.h_off);
    let tx = lid % 8u;   // output columns n0 + 4*tx .. +3
    let ty = lid / 8u;   // output rows    m0 + 4*ty .. +3
    var acc: array<vec4<f32>, 4>;   // acc[i][j]: row 4 ty + i, column 4 tx + j
    for (var kb = 0u; kb < p.k; kb += BK) {
        // Stage: 256 vec4 of X and of W, four each per thread (row r, k-quad q).
        for (var j = 0u; j < 4u; j++) {
            let idx = lid + 64u * j;
            let r = idx / 8u;
            let q = idx % 8u;
            let kq = kb / 4u + q;
            var xv = vec4<f32>(0.0);
            if (m0 + r < m && kq < k4) {
                xv = x[(m0 + r) * k4 + kq];
            }
            var wv = vec4<f32>(0.0);
            if (n0 + r < p.n && kq < k4) {
                wv = w4(o, (n0 + r) * p.k + kq * 4u);
            }
            xs[r * PAD + q] = xv;
            ws[r * PAD + q] = wv;
        }
        workgroupBarrier();
        for (var kq = 0u; kq < BK / 4u; kq++) {
            let b = array<vec4<f32>, 4>(ws[(4u * tx) * PAD + kq], ws[(4u * tx + 1u) * PAD + kq],
                                        ws[(4u * tx + 2u) * PAD + kq], ws[(4u * tx + 3u) * PAD + kq]);
            for (var i = 0u; i < 4u; i++) {
                let a = xs[(4u * ty + i) * PAD + kq];
                acc[i] += vec4<f32>(dot(a, b[0]), dot(a, b[1]), dot(a, b[2]), dot(a, b[3]));
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let row = m0 + ty * 4u + i;
        for (var j = 0u; j < 4u; j++) {
            let col = n0 + tx * 4u + j;
            if (row < m && col < p.n) {
                let yi = row * p.y_stride + p.y_off + col;
                if (p.accumulate != 0u) {
                    y[yi] += acc[i][j];
                } else {
                    y[yi] = acc[i][j];
                }
            }
        }
    }
}
