// Rotary embedding for Q in place, and for K on its way into the KV cache; V is copied into
// the cache beside it. Pair i of a head is (i, i + d/2) (HF rotate-half) or, with
// `interleaved`, (2i, 2i + 1) (the GPU weights' layout, src/weights.rs). With `norm`, each
// q and k head is first RMS-normalised over its d elements (Qwen3, Gemma 3 q/k norms).
//   qkv:   [T, (H + 2*KVH) * d] f32, rows of [q heads | k heads | v heads]
//   k_cache, v_cache: [KVH, ctx, d] f32, or with KVF16 f16 packed two per word (adjacent
//             pairs only: a thread writes a whole word); row t goes to position pos0 + t
//   table: [ctx, d/2] of (cos, sin), precomputed on the host;
//   nw:    [2 * d] norm weights, q's then k's (read only with `norm`).
// One workgroup per (head, token): heads 0..H-1 are query heads, H..H+KVH-1 KV heads.
// Grid: x = H + KVH, y = T.

struct Params {
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    ctx: u32,
    interleaved: u32,
    norm: u32,
    eps: f32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> table: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read_write> qkv: array<f32>;
@group(0) @binding(4) var<storage, read_write> k_cache: array<u32>;
@group(0) @binding(5) var<storage, read_write> v_cache: array<u32>;
@group(0) @binding(6) var<storage, read> nw: array<f32>;

const WG: u32 = 64u;

// Offsets of the two elements of rotary pair i within a head.
fn pair(i: u32, half: u32) -> vec2<u32> {
    if (p.interleaved != 0u) {
        return vec2<u32>(2u * i, 2u * i + 1u);
    }
    return vec2<u32>(i, i + half);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let t = wid.y;
    let d = p.head_dim;
    let half = d / 2u;
    let pos = step.pos0 + t;
    let row = t * (p.heads + 2u * p.kv_heads) * d;
    let is_q = h < p.heads;
    let kh = h - select(p.heads, 0u, is_q);   // KV head (unused for a query head)
    let src = select(row + (p.heads + kh) * d, row + h * d, is_q);
    // 1 / rms of this head, and where its norm weights start.
    var r = 1.0;
    if (p.norm != 0u) {
        var ss = 0.0;
        for (var i = lid; i < d; i += WG) {
            let v = qkv[src + i];
            ss += v * v;
        }
        r = inverseSqrt(wg_sum(ss, lid) / f32(d) + p.eps);
        storageBarrier();   // every read of this head precedes the in-place q writes
    }
    let wb = select(d, 0u, is_q);
    let cb = (kh * p.ctx + pos) * d;
    let vb = row + (p.heads + p.kv_heads + kh) * d;
    for (var i = lid; i < half; i += WG) {
        let cs = table[pos * half + i];
        let e = pair(i, half);
        var a = qkv[src + e.x];
        var c = qkv[src + e.y];
        if (p.norm != 0u) {
            a *= r * nw[wb + e.x];
            c *= r * nw[wb + e.y];
        }
        let ra = a * cs.x - c * cs.y;
        let rc = c * cs.x + a * cs.y;
        if (is_q) {
            qkv[src + e.x] = ra;
            qkv[src + e.y] = rc;
        } else if (KVF16 != 0u) {
            // e = (2i, 2i + 1) and cb is even: one word per pair, for k and for v.
            k_cache[(cb + e.x) / 2u] = pack2x16float(vec2<f32>(ra, rc));
            v_cache[cb / 2u + i] = pack2x16float(vec2<f32>(qkv[vb + 2u * i], qkv[vb + 2u * i + 1u]));
        } else {
            k_cache[cb + e.x] = bitcast<u32>(ra);
            k_cache[cb + e.y] = bitcast<u32>(rc);
            v_cache[cb + 2u * i] = bitcast<u32>(qkv[vb + 2u * i]);
            v_cache[cb + 2u * i + 1u] = bitcast<u32>(qkv[vb + 2u * i + 1u]);
        }
    }
}
