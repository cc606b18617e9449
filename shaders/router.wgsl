// Fused MoE router with the FFN's RMSNorm in front: xn = rmsnorm(x) * g (written for the
// expert kernels), logits = Wg xn, softmax over experts, top-k, optional renormalisation,
// all in one kernel (one dispatch fewer per layer than norm + router); the chosen expert
// ids and weights stay on the GPU for the expert kernels to read (no host round trip).
//   g: [D] f32 (ffn_norm), x: [T, D] f32 (residual stream), xn: [T, D] f32 (out),
//   wg: [E, D] f32, ids: [T, K] u32, weights: [T, K] f32,
//   hist: [layers, E] u32, counts of how often each expert of each layer was chosen (for
//   the statistics users see; read back only when asked, never inside the forward pass).
// One workgroup per token: threads split D (each thread normalises and then reads back only
// its own elements of xn, so no storage barrier is needed) for the sum of squares and for
// each expert's dot product; thread 0 then does the O(E*K) selection. Ties go to the lower expert index (as the CPU reference).
// Grid: y = T.

struct Params {
    dim: u32,
    experts: u32,
    k: u32,
    norm: u32,     // 1: chosen weights renormalised to sum to 1 (Mixtral)
    layer: u32,
    eps: f32,      // RMSNorm epsilon
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> wg: array<f32>;
@group(0) @binding(2) var<storage, read> g: array<f32>;
@group(0) @binding(3) var<storage, read> x: array<f32>;
@group(0) @binding(4) var<storage, read_write> xn: array<f32>;
@group(0) @binding(5) var<storage, read_write> ids: array<u32>;
@group(0) @binding(6) var<storage, read_write> weights: array<f32>;
@group(0) @binding(7) var<storage, read_write> hist: array<atomic<u32>>;

const WG: u32 = 64u;
const MAX_E: u32 = 256u;

var<workgroup> logits: array<f32, MAX_E>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = wid.y;
    let xb = t * p.dim;
    var ss = 0.0;
    for (var i = lid; i < p.dim; i += WG) {
        let v = x[xb + i];
        ss += v * v;
    }
    let r = inverseSqrt(wg_sum(ss, lid) / f32(p.dim) + p.eps);
    for (var i = lid; i < p.dim; i += WG) {
        xn[xb + i] = x[xb + i] * r * g[i];
    }
    for (var e = 0u; e < p.experts; e++) {
        var s = 0.0;
        for (var i = lid; i < p.dim; i += WG) {
            s += wg[e * p.dim + i] * xn[xb + i];
        }
        let l = wg_sum(s, lid);
        if (lid == 0u) {
            logits[e] = l;
        }
    }
    workgroupBarrier();
    if (lid != 0u) {
        return;
    }
    // Softmax over all experts (numerically stable), then pick the k largest.
    var mx = logits[0];
    for (var e = 1u; e < p.experts; e++) {
        mx = max(mx, logits[e]);
    }
    var sum = 0.0;
    for (var e = 0u; e < p.experts; e++) {
        let v = exp(logits[e] - mx);
        logits[e] = v;
        sum += v;
    }
    var chosen_sum = 0.0;
    for (var s = 0u; s < p.k; s++) {
        var best = 0u;
        var best_v = -1.0;
        for (var e = 0u; e < p.experts; e++) {
            if (logits[e] > best_v) {
                best_v = logits[e];
                best = e;
            }
        }
        logits[best] = -2.0;   // taken (probabilities are >= 0)
        let prob = best_v / sum;
        ids[t * p.k + s] = best;
        weights[t * p.k + s] = prob;
        atomicAdd(&hist[p.layer * p.experts + best], 1u);
        chosen_sum += prob;
    }
    if (p.norm != 0u) {
        for (var s = 0u; s < p.k; s++) {
            weights[t * p.k + s] = weights[t * p.k + s] / chosen_sum;
        }
    }
}
