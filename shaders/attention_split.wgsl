// Split-K ("flash-decoding") attention, first half: for steps of few tokens over a long
// KV cache, one workgroup per (head, token) would leave most of a GPU idle. Here the
// positions are cut into chunks of `chunk`, and one workgroup per (head, token, chunk)
// computes that chunk's softmax partials; attention_combine.wgsl merges the chunks.
//   q:  read from qkv [T, (H + 2*KVH) * d] (already rotated), query t at position pos0 + t
//   k_cache, v_cache: [KVH, ctx, d] f32, or with KVF16 f16 packed two per word (d a
//             multiple of 4: keys are read four at a time, as two words or one pair)
//   partials: [T, H, chunks, d + 2] f32, per chunk: acc[d] = sum_j e_j v_j, then
//             m = max_j s_j and l = sum_j e_j with e_j = exp(s_j - m); a chunk with no
//             visible key writes m = NEG_BIG, l = 0, acc = 0.
// Visibility as in attention.wgsl: keys j <= pos, and with a window W only j > pos - W.
// Grid: x = H * (chunks covering positions 0..pos0+T) (folded), y = T.

struct Params {
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    ctx: u32,
    window: u32,   // 0: no sliding window
    scale: f32,    // multiplies q . k (1 / sqrt(d) unless the model says otherwise)
    chunk: u32,    // split-K: KV positions per chunk (a multiple of WG)
    chunks: u32,   // split-K: chunk slots per (token, head) in `partials`
    sinks: u32,    // 1: sink logit sinks[h] joins each head's softmax (gpt-oss)
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> qkv: array<f32>;
@group(0) @binding(3) var<storage, read> k_cache: array<vec2<u32>>;
@group(0) @binding(4) var<storage, read> v_cache: array<u32>;
@group(0) @binding(5) var<storage, read_write> partials: array<f32>;

const WG: u32 = 64u;
const MAX_D: u32 = 256u;
const PER_T: u32 = MAX_D / WG;   // output dims owned per thread
const SB: u32 = 256u;            // keys scored per pass: KPT per thread
const KPT: u32 = SB / WG;
const NEG_BIG: f32 = -3.0e38;

var<workgroup> qs: array<vec4<f32>, MAX_D / 4u>;
var<workgroup> ps: array<f32, SB>;
@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let lx = linear_x(wid, nwg);
    let h = lx % p.heads;
    let s = lx / p.heads;
    let t = wid.y;
    let d = p.head_dim;
    let pos = step.pos0 + t;
    // This chunk's positions, clipped to what token t sees.
    var lo = s * p.chunk;
    if (p.window > 0u && pos + 1u > p.window) {
        lo = max(lo, pos + 1u - p.window);
    }
    let hi = min(pos + 1u, (s + 1u) * p.chunk);   // exclusive
    let kvh = h / (p.heads / p.kv_heads);
    let qb = t * (p.heads + 2u * p.kv_heads) * d + h * d;
    for (var i = lid; i < d / 4u; i += WG) {
        let b = qb + 4u * i;
        qs[i] = vec4<f32>(qkv[b], qkv[b + 1u], qkv[b + 2u], qkv[b + 3u]) * p.scale;
    }
    workgroupBarrier();

    var m = NEG_BIG;
    var l = 0.0;
    var acc = array<f32, PER_T>(0.0, 0.0, 0.0, 0.0);
    let cache0 = kvh * p.ctx;
    // Passes of SB keys: each thread scores KPT keys, then one max and one sum over the
    // workgroup per pass (not per WG keys). `lo < hi` is the same for the whole
    // workgroup, so the barriers inside are uniform.
    for (var c = lo; c < hi; c += SB) {
        var local_max = NEG_BIG;
        for (var u = 0u; u < KPT; u++) {
            let jj = lid + u * WG;
            let j = c + jj;
            var sc = NEG_BIG;
            if (j < hi) {
                let kb = (cache0 + j) * (d / 4u);
                var dot_ = 0.0;
                for (var i = 0u; i < d / 4u; i++) {
                    dot_ += dot(qs[i], k4(kb + i));
                }
                sc = dot_;
            }
            ps[jj] = sc;
            local_max = max(local_max, sc);
        }
        let m_new = max(m, wg_max(local_max, lid));
        var local_sum = 0.0;
        for (var u = 0u; u < KPT; u++) {
            let jj = lid + u * WG;
            var e = 0.0;
            if (c + jj < hi) {
                e = exp(ps[jj] - m_new);
            }
            ps[jj] = e;
            local_sum += e;
        }
        let rescale = exp(m - m_new);
        l = l * rescale + wg_sum(local_sum, lid);
        let n = min(SB, hi - c);
        for (var i = 0u; i < PER_T; i++) {
            let di = lid + i * WG;
            var a = acc[i] * rescale;
            if (di < d) {
                for (var jj = 0u; jj < n; jj++) {
                    a += ps[jj] * v_at((cache0 + c + jj) * d + di);
                }
            }
            acc[i] = a;
        }
        m = m_new;
        workgroupBarrier();
    }
    let pb = ((t * p.heads + h) * p.chunks + s) * (d + 2u);
    for (var i = 0u; i < PER_T; i++) {
        let di = lid + i * WG;
        if (di < d) {
            partials[pb + di] = acc[i];
        }
    }
    if (lid == 0u) {
        partials[pb + d] = m;
        partials[pb + d + 1u] = l;
    }
}

// Key elements 4i .. 4i + 3.
fn k4(i: u32) -> vec4<f32> {
    if (KVF16 != 0u) {
        let w = k_cache[i];
        return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
    }
    return bitcast<vec4<f32>>(vec4<u32>(k_cache[2u * i], k_cache[2u * i + 1u]));
}

// Value element i.
fn v_at(i: u32) -> f32 {
    if (KVF16 != 0u) {
        return unpack2x16float(v_cache[i / 2u])[i % 2u];
    }
    return bitcast<f32>(v_cache[i]);
}
