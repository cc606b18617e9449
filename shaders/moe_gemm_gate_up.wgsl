// MoE expert up-projection for prefill, grouped by expert (after moe_group.wgsl):
//   act[q, f] = silu(W1[e, f] . x[t]) * (W3[e, f] . x[t])   for q in expert e's segment,
//   t = sorted[q] / K.  Rows of act follow the sorted order.
//   w: E blocks `e_stride` words apart, each [2F, D] in WDTYPE (the expert's W1 rows, then
//   its W3 rows), x: [T, D] f32,
//   sorted: [T*K], starts: [E+1], act: [T*K, F].
// Tiling as gemm.wgsl (32x32 tile, 4x4 per thread of 64) with gate and up tiles side by side.
// The grid covers the worst case, ceil(T*K/32) + E row tiles; each workgroup finds its
// (expert, tile) from `starts`, and spare workgroups exit. No host read-back of routing.
// Grid: x = ceil(F / 32) (folded), y = ceil(T*K / 32) + E.

struct Params {
    dim: u32,      // D
    ff: u32,       // F
    k: u32,        // K
    experts: u32,  // E
    s_off: u32,    // weight layout within an expert block (lib/weights.wgsl)
    h_off: u32,
    e_stride: u32, // words from one expert's block to the next
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> sorted: array<u32>;
@group(0) @binding(4) var<storage, read> starts: array<u32>;
@group(0) @binding(5) var<storage, read_write> act: array<f32>;

const TILE: u32 = 32u;
const BK: u32 = 32u;

// [row][k / 4] with a row stride of PAD vec4s, as in gemm.wgsl.
const PAD: u32 = 9u;
var<workgroup> xs: array<vec4<f32>, 288>;
var<workgroup> gs: array<vec4<f32>, 288>;
var<workgroup> us: array<vec4<f32>, 288>;
// (expert, first row, end row) of this workgroup's tile; expert = E when idle.
var<workgroup> job: vec3<u32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let f0 = linear_x(wid, nwg) * TILE;
    if (f0 >= p.ff) {
        return;
    }
    if (lid == 0u) {
        var tile = wid.y;
        var found = vec3<u32>(p.experts, 0u, 0u);
        for (var e = 0u; e < p.experts; e++) {
            let s = starts[e];
            let n_tiles = (starts[e + 1u] - s + TILE - 1u) / TILE;
            if (tile < n_tiles) {
                found = vec3<u32>(e, s + tile * TILE, min(s + (tile + 1u) * TILE, starts[e + 1u]));
                break;
            }
            tile -= n_tiles;
        }
        job = found;
    }
    let my = workgroupUniformLoad(&job);
    if (my.x >= p.experts) {
        return;
    }
    let e = my.x;
    let q0 = my.y;
    let rows = my.z - my.y;
    let d4 = p.dim / 4u;
    let o = WLayout(e * p.e_stride, p.s_off, p.h_off);
    let up = p.ff * p.dim;   // W3 rows follow the F rows of W1
    let tx = lid % 8u;   // outputs f0 + 4*tx .. +3
    let ty = lid / 8u;   // sorted rows q0 + 4*ty .. +3
    // The x rows this thread stages (row r = (lid + 64 j) / 8): tokens of their assignments.
    var xrow: array<u32, 4>;
    for (var j = 0u; j < 4u; j++) {
        let r = (lid + 64u * j) / 8u;
        xrow[j] = select(0u, sorted[q0 + min(r, rows - 1u)] / p.k, r < rows);
    }
    var g: array<vec4<f32>, 4>;
    var u: array<vec4<f32>, 4>;
    for (var kb = 0u; kb < p.dim; kb += BK) {
        for (var j = 0u; j < 4u; j++) {
            let idx = lid + 64u * j;
            let r = idx / 8u;
            let q = idx % 8u;
            let kq = kb / 4u + q;
            var xv = vec4<f32>(0.0);
            if (r < rows && kq < d4) {
                xv = x[xrow[j] * d4 + kq];
            }
            var gv = vec4<f32>(0.0);
            var uv = vec4<f32>(0.0);
            if (f0 + r < p.ff && kq < d4) {
                let off = (f0 + r) * p.dim + kq * 4u;
                gv = w4(o, off);
                uv = w4(o, up + off);
            }
            xs[r * PAD + q] = xv;
            gs[r * PAD + q] = gv;
            us[r * PAD + q] = uv;
        }
        workgroupBarrier();
        for (var kq = 0u; kq < BK / 4u; kq++) {
            let bg = array<vec4<f32>, 4>(gs[(4u * tx) * PAD + kq], gs[(4u * tx + 1u) * PAD + kq],
                                         gs[(4u * tx + 2u) * PAD + kq], gs[(4u * tx + 3u) * PAD + kq]);
            let bu = array<vec4<f32>, 4>(us[(4u * tx) * PAD + kq], us[(4u * tx + 1u) * PAD + kq],
                                         us[(4u * tx + 2u) * PAD + kq], us[(4u * tx + 3u) * PAD + kq]);
            for (var i = 0u; i < 4u; i++) {
                let a = xs[(4u * ty + i) * PAD + kq];
                g[i] += vec4<f32>(dot(a, bg[0]), dot(a, bg[1]), dot(a, bg[2]), dot(a, bg[3]));
                u[i] += vec4<f32>(dot(a, bu[0]), dot(a, bu[1]), dot(a, bu[2]), dot(a, bu[3]));
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let r = ty * 4u + i;
        for (var j = 0u; j < 4u; j++) {
            let f = f0 + tx * 4u + j;
            if (r < rows && f < p.ff) {
                act[(q0 + r) * p.ff + f] = silu(g[i][j]) * u[i][j];
            }
        }
    }
}
