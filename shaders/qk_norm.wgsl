// RMSNorm over the whole q projection and the whole k projection of each token, in place
// (OLMoE: before the head split and rotary, which rope_kv.wgsl then applies).
//   qkv: [T, (H + 2*KVH) * d] f32, rows of [q | k | v];
//   nw:  [(H + KVH) * d] weights, q's then k's (in the GPU weights' rotary row order).
// One workgroup per (projection, token): x = 0 normalises q's H*d values, x = 1 k's KVH*d.
// Grid: x = 2, y = T.

struct Params {
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> qkv: array<f32>;
@group(0) @binding(2) var<storage, read> nw: array<f32>;

const WG: u32 = 128u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = wid.y;
    let d = p.head_dim;
    let q_dim = p.heads * d;
    let row = t * (p.heads + 2u * p.kv_heads) * d;
    let is_k = wid.x == 1u;
    let n = select(q_dim, p.kv_heads * d, is_k);
    let base = row + select(0u, q_dim, is_k);
    let wb = select(0u, q_dim, is_k);
    var ss = 0.0;
    for (var i = lid; i < n; i += WG) {
        let v = qkv[base + i];
        ss += v * v;
    }
    let r = inverseSqrt(wg_sum(ss, lid) / f32(n) + p.eps);
    // Each thread rewrites only the elements it read itself: no barrier needed.
    for (var i = lid; i < n; i += WG) {
        qkv[base + i] = qkv[base + i] * r * nw[wb + i];
    }
}
