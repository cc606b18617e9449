// Prefill matmul (tiled GEMM): Y[m, y_off + n] (+)= alpha * (sum_k X[m, k] * W[n, k] + biases[y_off + n])
//   X: [M, K] f32 with M = step.n_rows, W: [N, K] in WDTYPE (lib/weights.wgsl),
//   Y: [M, y_stride] f32, biases: by output column (read only with `bias`).
// Tiling: lib/gemm_tile.wgsl (32x32 outputs per workgroup of 64 threads, 4x4 each).
// Grid: x = ceil(N / 32) (folded), y = ceil(M / 32).

struct Params {
    n: u32,
    k: u32,
    accumulate: u32,
    y_stride: u32,
    y_off: u32,
    s_off: u32,
    h_off: u32,
    bias: u32,
    alpha: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read> biases: array<f32>;

const W_ROWS: u32 = TILE;

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
        for (var j = 0u; j < 4u; j++) {
            let rq = stage_slot(lid, j);
            let kq = kb / 4u + rq.y;
            var xv = vec4<f32>(0.0);
            if (m0 + rq.x < m && kq < k4) {
                xv = x[(m0 + rq.x) * k4 + kq];
            }
            var wv = vec4<f32>(0.0);
            if (n0 + rq.x < p.n && kq < k4) {
                wv = w4(o, (n0 + rq.x) * p.k + kq * 4u);
            }
            xs[rq.x * PAD + rq.y] = xv;
            ws[rq.x * PAD + rq.y] = wv;
        }
        workgroupBarrier();
        tile_fma(&acc, 0u, tx, ty);
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let row = m0 + ty * 4u + i;
        for (var j = 0u; j < 4u; j++) {
            let col = n0 + tx * 4u + j;
            if (row < m && col < p.n) {
                let yi = row * p.y_stride + p.y_off + col;
                var o = acc[i][j];
                if (p.bias != 0u) {
                    o += biases[p.y_off + col];
                }
                o *= p.alpha;
                if (p.accumulate != 0u) {
                    y[yi] += o;
                } else {
                    y[yi] = o;
                }
            }
        }
    }
}
