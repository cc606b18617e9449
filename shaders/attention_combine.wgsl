// Split-K attention, second half: merges the per-chunk softmax partials of
// attention_split.wgsl into the attention output. With M = max_s m_s and
// c_s = exp(m_s - M):  out = (sum_s c_s acc_s) / (sum_s c_s l_s), and with a sink logit
// z both M and the denominator include it: M = max(M, z), denominator + exp(z - M).
//   partials: [T, H, chunks, d + 2] f32 (acc[d], m, l per chunk)
//   out:      [T, H * d] f32
// The chunks used are those covering positions 0..pos0+T (as the split kernel's grid).
// Grid: x = H, y = T.

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
@group(0) @binding(2) var<storage, read> partials: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> sinks: array<f32>;   // [H]

const WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let t = wid.y;
    let d = p.head_dim;
    let used = (step.pos0 + step.n_rows + p.chunk - 1u) / p.chunk;
    let base = (t * p.heads + h) * p.chunks * (d + 2u);
    var big = -3.0e38;
    for (var s = 0u; s < used; s++) {
        big = max(big, partials[base + s * (d + 2u) + d]);
    }
    // A sink joins the softmax's normaliser only (it has no value).
    var l = 0.0;
    if (p.sinks != 0u) {
        big = max(big, sinks[h]);
        l = exp(sinks[h] - big);
    }
    for (var s = 0u; s < used; s++) {
        let pb = base + s * (d + 2u);
        l += exp(partials[pb + d] - big) * partials[pb + d + 1u];
    }
    let ob = t * p.heads * d + h * d;
    for (var i = lid; i < d; i += WG) {
        var a = 0.0;
        for (var s = 0u; s < used; s++) {
            let pb = base + s * (d + 2u);
            a += exp(partials[pb + d] - big) * partials[pb + i];
        }
        out[ob + i] = a / l;
    }
}
