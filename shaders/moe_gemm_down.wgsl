// MoE expert down-projection for prefill, grouped by expert (after moe_gemm_gate_up.wgsl):
//   y[q, n] = W2[e, n] . act[q]   for q in expert e's segment of the sorted order.
//   w: E blocks `e_stride` words apart, each the expert's W2 [D, F] in WDTYPE, act: [T*K, F] f32, starts: [E+1], y: [T*K, D] f32.
// Tiling and worst-case grid as moe_gemm_gate_up.wgsl; moe_combine.wgsl then adds the
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
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> act: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> starts: array<u32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

const TILE: u32 = 32u;
const BK: u32 = 32u;

// [row][k / 4] with a row stride of PAD vec4s, as in gemm.wgsl.
const PAD: u32 = 9u;
var<workgroup> as_: array<vec4<f32>, 288>;
var<workgroup> ws: array<vec4<f32>, 288>;
var<workgroup> job: vec3<u32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let n0 = linear_x(wid, nwg) * TILE;
    if (n0 >= p.dim) {
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
    let f4 = p.ff / 4u;
    let o = WLayout(e * p.e_stride, p.s_off, p.h_off);
    let tx = lid % 8u;   // outputs n0 + 4*tx .. +3
    let ty = lid / 8u;   // sorted rows q0 + 4*ty .. +3
    var acc: array<vec4<f32>, 4>;
    for (var kb = 0u; kb < p.ff; kb += BK) {
        for (var j = 0u; j < 4u; j++) {
            let idx = lid + 64u * j;
            let r = idx / 8u;
            let q = idx % 8u;
            let kq = kb / 4u + q;
            var av = vec4<f32>(0.0);
            if (r < rows && kq < f4) {
                av = act[(q0 + r) * f4 + kq];
            }
            var wv = vec4<f32>(0.0);
            if (n0 + r < p.dim && kq < f4) {
                wv = w4(o, (n0 + r) * p.ff + kq * 4u);
            }
            as_[r * PAD + q] = av;
            ws[r * PAD + q] = wv;
        }
        workgroupBarrier();
        for (var kq = 0u; kq < BK / 4u; kq++) {
            let b = array<vec4<f32>, 4>(ws[(4u * tx) * PAD + kq], ws[(4u * tx + 1u) * PAD + kq],
                                        ws[(4u * tx + 2u) * PAD + kq], ws[(4u * tx + 3u) * PAD + kq]);
            for (var i = 0u; i < 4u; i++) {
                let a = as_[(4u * ty + i) * PAD + kq];
                acc[i] += vec4<f32>(dot(a, b[0]), dot(a, b[1]), dot(a, b[2]), dot(a, b[3]));
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let r = ty * 4u + i;
        for (var j = 0u; j < 4u; j++) {
            let n = n0 + tx * 4u + j;
            if (r < rows && n < p.dim) {
                y[(q0 + r) * p.dim + n] = acc[i][j];
            }
        }
    }
}
