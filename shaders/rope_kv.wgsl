// Rotary embedding for Q in place, and for K on its way into the KV cache; V is copied into
// the cache beside it. Pair i of a head is (i, i + d/2) (HF rotate-half) or, with
// `interleaved`, (2i, 2i + 1) (GGUF, whose converter permuted the Q/K rows to match).
//   qkv:   [T, (H + 2*KVH) * d] f32, rows of [q heads | k heads | v heads]
//   k_cache, v_cache: [KVH, ctx, d] f32; row t goes to position pos0 + t
//   table: [ctx, d/2] of (cos, sin), precomputed on the host.
// One workgroup per (head, token): heads 0..H-1 are query heads, H..H+KVH-1 KV heads.
// Grid: x = H + KVH, y = T.

struct Params {
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    ctx: u32,
    interleaved: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

// Offsets of the two elements of rotary pair i within a head.
fn pair(i: u32, half: u32) -> vec2<u32> {
    if (p.interleaved != 0u) {
        return vec2<u32>(2u * i, 2u * i + 1u);
    }
    return vec2<u32>(i, i + half);
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> table: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read_write> qkv: array<f32>;
@group(0) @binding(4) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(5) var<storage, read_write> v_cache: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let t = wid.y;
    let d = p.head_dim;
    let half = d / 2u;
    let pos = step.pos0 + t;
    let stride = (p.heads + 2u * p.kv_heads) * d;
    let row = t * stride;
    if (h < p.heads) {
        let b = row + h * d;
        for (var i = lid; i < half; i += 64u) {
            let cs = table[pos * half + i];
            let e = pair(i, half);
            let a = qkv[b + e.x];
            let c = qkv[b + e.y];
            qkv[b + e.x] = a * cs.x - c * cs.y;
            qkv[b + e.y] = c * cs.x + a * cs.y;
        }
    } else {
        let kh = h - p.heads;
        let kb = row + (p.heads + kh) * d;
        let vb = row + (p.heads + p.kv_heads + kh) * d;
        let cb = (kh * p.ctx + pos) * d;
        for (var i = lid; i < half; i += 64u) {
            let cs = table[pos * half + i];
            let e = pair(i, half);
            let a = qkv[kb + e.x];
            let c = qkv[kb + e.y];
            k_cache[cb + e.x] = a * cs.x - c * cs.y;
            k_cache[cb + e.y] = c * cs.x + a * cs.y;
            v_cache[cb + i] = qkv[vb + i];
            v_cache[cb + i + half] = qkv[vb + i + half];
        }
    }
}
