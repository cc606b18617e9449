// Split-K attention, second half: merges the per-chunk softmax partials of
// attention_split.wgsl into the attention output. With M = max_s m_s and
// c_s = exp(m_s - M):  out = (sum_s c_s acc_s) / (sum_s c_s l_s).
//   partials: [T, H, chunks, d + 2] f32 (acc[d], m, l per chunk)
//   out:      [T, H * d] f32
// The chunks used are those covering positions 0..pos0+T (as the split kernel's grid).
// Grid: x = H, y = T.

struct Params {
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    ctx: u32,
    window: u32,
    scale: f32,
    chunk: u32,
    chunks: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> partials: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

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
    var l = 0.0;
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
