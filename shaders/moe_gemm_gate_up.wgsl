// MoE expert up-projection for prefill, grouped by expert (after moe_group.wgsl):
//   act[q, f] = silu(W1[e, f] . x[t]) * (W3[e, f] . x[t])   for q in expert e's segment,
//   t = sorted[q] / K.  Rows of act follow the sorted order.
//   w: [E, 2, F, D] in WDTYPE (each expert's W1 rows, then its W3 rows), x: [T, D] f32,
//   sorted: [T*K], starts: [E+1], act: [T*K, F].
// Tiling as gemm.wgsl (32x32 tile, 2x2 per thread) with gate and up tiles side by side.
// The grid covers the worst case, ceil(T*K/32) + E row tiles; each workgroup finds its
// (expert, tile) from `starts`, and spare workgroups exit. No host read-back of routing.
// Grid: x = ceil(F / 32) (folded), y = ceil(T*K / 32) + E.

struct Params {
    dim: u32,      // D
    ff: u32,       // F
    k: u32,        // K
    experts: u32,  // E
    s_off: u32,    // weight layout (lib/weights.wgsl)
    h_off: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> sorted: array<u32>;
@group(0) @binding(4) var<storage, read> starts: array<u32>;
@group(0) @binding(5) var<storage, read_write> act: array<f32>;

const TILE: u32 = 32u;
const BK: u32 = 32u;

var<workgroup> xs: array<array<f32, 33>, TILE>;
var<workgroup> gs: array<array<f32, 33>, TILE>;
var<workgroup> us: array<array<f32, 33>, TILE>;
// (expert, first row, end row) of this workgroup's tile; expert = E when idle.
var<workgroup> job: vec3<u32>;

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid3: vec3<u32>,
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
    let gate = e * 2u * p.ff * p.dim;   // W1[e]; W3[e] follows F rows later
    let up = gate + p.ff * p.dim;
    let o = vec2<u32>(p.s_off, p.h_off);
    let lr = lid / 8u;
    let lq = lid % 8u;
    let tx = lid3.x;
    let ty = lid3.y;
    // The x row staged by this thread: token of sorted assignment q0 + lr.
    var xrow = 0u;
    if (lr < rows) {
        xrow = sorted[q0 + lr] / p.k;
    }
    var g = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    var u = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    for (var kb = 0u; kb < p.dim; kb += BK) {
        let kq = kb / 4u + lq;
        var xv = vec4<f32>(0.0);
        if (lr < rows && kq < d4) {
            xv = x[xrow * d4 + kq];
        }
        var gv = vec4<f32>(0.0);
        var uv = vec4<f32>(0.0);
        if (f0 + lr < p.ff && kq < d4) {
            let off = (f0 + lr) * p.dim + kq * 4u;
            gv = w4(gate + off, o);
            uv = w4(up + off, o);
        }
        for (var i = 0u; i < 4u; i++) {
            xs[lr][lq * 4u + i] = xv[i];
            gs[lr][lq * 4u + i] = gv[i];
            us[lr][lq * 4u + i] = uv[i];
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let a0 = xs[ty][kk];
            let a1 = xs[ty + 16u][kk];
            let g0 = gs[tx][kk];
            let g1 = gs[tx + 16u][kk];
            let u0 = us[tx][kk];
            let u1 = us[tx + 16u][kk];
            g[0] += a0 * g0;
            g[1] += a0 * g1;
            g[2] += a1 * g0;
            g[3] += a1 * g1;
            u[0] += a0 * u0;
            u[1] += a0 * u1;
            u[2] += a1 * u0;
            u[3] += a1 * u1;
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let r = ty + (i / 2u) * 16u;
        let f = f0 + tx + (i % 2u) * 16u;
        if (r < rows && f < p.ff) {
            act[(q0 + r) * p.ff + f] = silu(g[i]) * u[i];
        }
    }
}
