// Causal grouped-query attention over the KV cache.
//   q:  read from qkv [T, (H + 2*KVH) * d] (already rotated), query t at position pos0 + t
//   k_cache, v_cache: [KVH, ctx, d] f32, or with KVF16 f16 packed two per word
//   out: [T, H * d] f32
// Query head h reads KV head h / (H / KVH). Keys j <= pos are visible, and with a sliding
// window W only j > pos - W; with sinks, head h's sink logit joins the softmax (and adds
// nothing to the output). One workgroup per (head, token) walks the visible keys in
// chunks of WG with an online softmax (running max m, sum l, output acc), so any context
// length fits in fixed workgroup memory. Grid: x = H, y = T.

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
@group(0) @binding(3) var<storage, read> k_cache: array<u32>;
@group(0) @binding(4) var<storage, read> v_cache: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read> sinks: array<f32>;   // [H]

const WG: u32 = 64u;
const MAX_D: u32 = 256u;
const PER_T: u32 = MAX_D / WG;   // output dims owned per thread
const NEG_BIG: f32 = -3.0e38;

var<workgroup> qs: array<f32, MAX_D>;
var<workgroup> ps: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let t = wid.y;
    let d = p.head_dim;
    let pos = step.pos0 + t;
    var lo = 0u;
    if (p.window > 0u && pos + 1u > p.window) {
        lo = pos + 1u - p.window;
    }
    let kvh = h / (p.heads / p.kv_heads);
    let qb = t * (p.heads + 2u * p.kv_heads) * d + h * d;
    for (var i = lid; i < d; i += WG) {
        qs[i] = qkv[qb + i] * p.scale;
    }
    workgroupBarrier();

    // A sink is one more score with no value: start the running softmax from it.
    var m = NEG_BIG;
    var l = 0.0;
    if (p.sinks != 0u) {
        m = sinks[h];
        l = 1.0;
    }
    var acc = array<f32, PER_T>(0.0, 0.0, 0.0, 0.0);
    let cache0 = kvh * p.ctx;
    for (var c = lo; c <= pos; c += WG) {
        // Score of key j = c + lid.
        let j = c + lid;
        var s = NEG_BIG;
        if (j <= pos) {
            let kb = (cache0 + j) * d;
            var dot_ = 0.0;
            for (var i = 0u; i < d; i++) {
                dot_ += qs[i] * k_at(kb + i);
            }
            s = dot_;
        }
        let m_new = max(m, wg_max(s, lid));
        var e = 0.0;
        if (j <= pos) {
            e = exp(s - m_new);
        }
        ps[lid] = e;   // visible to all after wg_sum's barriers
        let rescale = exp(m - m_new);
        l = l * rescale + wg_sum(e, lid);
        let n = min(WG, pos + 1u - c);
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
    let ob = t * p.heads * d + h * d;
    for (var i = 0u; i < PER_T; i++) {
        let di = lid + i * WG;
        if (di < d) {
            out[ob + di] = acc[i] / l;
        }
    }
}

// Element i of a cache.
fn k_at(i: u32) -> f32 {
    if (KVF16 != 0u) {
        return unpack2x16float(k_cache[i / 2u])[i % 2u];
    }
    return bitcast<f32>(k_cache[i]);
}

fn v_at(i: u32) -> f32 {
    if (KVF16 != 0u) {
        return unpack2x16float(v_cache[i / 2u])[i % 2u];
    }
    return bitcast<f32>(v_cache[i]);
}
