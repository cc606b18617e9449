// MoE expert down-projection for prefill, grouped by expert (after moe_gemm_gate_up.wgsl):
//   y[q, n] = W2[e, n] . act[q] (+ b2[e, n])   for q in expert e's segment of the sorted order.
//   w: E blocks `e_stride` words apart, each the expert's W2 [D, F] in WDTYPE, act: [T*K, F] f32, starts: [E+1], y: [T*K, D] f32,
//   slot_of: [E] u32 the block holding each expert (NO_SLOT: not computed, rows kept).
// Tiling: lib/gemm_tile.wgsl; tiles per expert: lib/expert_tiles.wgsl; moe_combine.wgsl then adds the
// router-weighted rows into the residual stream.
// Grid: x = ceil(D / 32) (folded), y = ceil(T*K / 32) + E.

struct Params {
    dim: u32,      // D
    ff: u32,       // F
    k: u32,        // K
    experts: u32,  // E
    s_off: u32,    // weight layout within an expert block (lib/weights.wgsl)
    h_off: u32,
    e_stride: u32, // words from one expert's block to the next
    bias: u32,     // 1: biases [E, D]
    alpha: f32,    // multiplies what reaches the residual (the residual scale)
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> act: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> starts: array<u32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read> biases: array<f32>;   // [E, D] (with `bias`)
@group(0) @binding(6) var<storage, read> slot_of: array<u32>;

const W_ROWS: u32 = TILE;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let n0 = linear_x(wid, nwg) * TILE;
    if (n0 >= p.dim) {
        return;
    }
    let my = expert_tile(wid.y, p.experts, lid);
    if (my.x >= p.experts) {
        return;
    }
    let e = my.x;
    let q0 = my.y;
    let rows = my.z - my.y;
    let f4 = p.ff / 4u;
    let o = WLayout(my.w * p.e_stride, p.s_off, p.h_off);
    let tx = lid % 8u;   // outputs n0 + 4*tx .. +3
    let ty = lid / 8u;   // sorted rows q0 + 4*ty .. +3
    var acc: array<vec4<f32>, 4>;
    for (var kb = 0u; kb < p.ff; kb += BK) {
        for (var j = 0u; j < 4u; j++) {
            let rq = stage_slot(lid, j);
            let kq = kb / 4u + rq.y;
            var av = vec4<f32>(0.0);
            if (rq.x < rows && kq < f4) {
                av = act[(q0 + rq.x) * f4 + kq];
            }
            var wv = vec4<f32>(0.0);
            if (n0 + rq.x < p.dim && kq < f4) {
                wv = w4(o, (n0 + rq.x) * p.ff + kq * 4u);
            }
            xs[rq.x * PAD + rq.y] = av;
            ws[rq.x * PAD + rq.y] = wv;
        }
        workgroupBarrier();
        tile_fma(&acc, 0u, tx, ty);
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let r = ty * 4u + i;
        for (var j = 0u; j < 4u; j++) {
            let n = n0 + tx * 4u + j;
            if (r < rows && n < p.dim) {
                var o = acc[i][j];
                if (p.bias != 0u) {
                    o += biases[e * p.dim + n];
                }
                y[(q0 + r) * p.dim + n] = o;
            }
        }
    }
}
