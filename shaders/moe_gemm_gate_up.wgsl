// MoE expert up-projection for prefill, grouped by expert (after moe_group.wgsl):
//   act[q, f] = glu(W1[e, f] . x[t] + b1[e, f], W3[e, f] . x[t] + b3[e, f])   for q in expert e's segment,
//   t = sorted[q] / K.  Rows of act follow the sorted order.
//   w: E blocks `e_stride` words apart, each [2F, D] in WDTYPE (the expert's W1 rows, then
//   its W3 rows), x: [T, D] f32,
//   sorted: [T*K], starts: [E+1], act: [T*K, F],
//   slot_of: [E] u32 the block holding each expert (NO_SLOT: not computed, rows kept).
// Tiling: lib/gemm_tile.wgsl (32x32 outputs, 4x4 per thread of 64), with the gate rows and
// the up rows staged one above the other (W_ROWS = 64) so one activation slice serves both.
// Tiles per expert: lib/expert_tiles.wgsl (worst-case grid, spare workgroups exit).
// Grid: x = ceil(F / 32) (folded), y = ceil(T*K / 32) + E.

struct Params {
    dim: u32,      // D
    ff: u32,       // F
    k: u32,        // K
    experts: u32,  // E
    s_off: u32,    // weight layout within an expert block (lib/weights.wgsl)
    h_off: u32,
    e_stride: u32, // words from one expert's block to the next
    bias: u32,     // 1: biases [E, 2F], each expert's gate then up biases
    act_alpha: f32, // the clamped GLU's alpha and limit (ACT 2)
    act_limit: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> sorted: array<u32>;
@group(0) @binding(4) var<storage, read> starts: array<u32>;
@group(0) @binding(5) var<storage, read_write> act: array<f32>;
@group(0) @binding(6) var<storage, read> biases: array<f32>;   // [E, 2F] (with `bias`)
@group(0) @binding(7) var<storage, read> slot_of: array<u32>;

const W_ROWS: u32 = 2u * TILE;   // gate rows, then up rows

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let f0 = linear_x(wid, nwg) * TILE;
    if (f0 >= p.ff) {
        return;
    }
    let my = expert_tile(wid.y, p.experts, lid);
    if (my.x >= p.experts) {
        return;
    }
    let e = my.x;
    let slot = my.w;
    let q0 = my.y;
    let rows = my.z - my.y;
    let d4 = p.dim / 4u;
    let o = WLayout(slot * p.e_stride, p.s_off, p.h_off);
    let up = p.ff * p.dim;   // W3 rows follow the F rows of W1
    let tx = lid % 8u;   // outputs f0 + 4*tx .. +3
    let ty = lid / 8u;   // sorted rows q0 + 4*ty .. +3
    // The x rows this thread stages (stage_slot's rows): tokens of their assignments.
    var xrow: array<u32, 4>;
    for (var j = 0u; j < 4u; j++) {
        let r = stage_slot(lid, j).x;
        xrow[j] = select(0u, sorted[q0 + min(r, rows - 1u)] / p.k, r < rows);
    }
    var g: array<vec4<f32>, 4>;
    var u: array<vec4<f32>, 4>;
    for (var kb = 0u; kb < p.dim; kb += BK) {
        for (var j = 0u; j < 4u; j++) {
            let rq = stage_slot(lid, j);
            let kq = kb / 4u + rq.y;
            var xv = vec4<f32>(0.0);
            if (rq.x < rows && kq < d4) {
                xv = x[xrow[j] * d4 + kq];
            }
            var gv = vec4<f32>(0.0);
            var uv = vec4<f32>(0.0);
            if (f0 + rq.x < p.ff && kq < d4) {
                let off = (f0 + rq.x) * p.dim + kq * 4u;
                gv = w4(o, off);
                uv = w4(o, up + off);
            }
            xs[rq.x * PAD + rq.y] = xv;
            ws[rq.x * PAD + rq.y] = gv;
            ws[(TILE + rq.x) * PAD + rq.y] = uv;
        }
        workgroupBarrier();
        tile_fma2(&g, &u, 0u, TILE, tx, ty);
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let r = ty * 4u + i;
        for (var j = 0u; j < 4u; j++) {
            let f = f0 + tx * 4u + j;
            if (r < rows && f < p.ff) {
                var gv = g[i][j];
                var uv = u[i][j];
                if (p.bias != 0u) {
                    gv += biases[e * 2u * p.ff + f];
                    uv += biases[e * 2u * p.ff + p.ff + f];
                }
                act[(q0 + r) * p.ff + f] = glu(gv, uv, p.act_alpha, p.act_limit);
            }
        }
    }
}
