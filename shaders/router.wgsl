// Fused MoE router with the FFN's RMSNorm in front: xn = rmsnorm(x) * g (written for the
// expert kernels), logits = Wg xn (+ bias), then either a softmax over all experts and the
// top-k (optionally renormalised), or the top-k logits and a softmax over those k; weights
// times `scale`. All in one kernel (one dispatch fewer per layer than norm + router); the
// chosen expert ids and weights stay on the GPU for the expert kernels to read (no host
// round trip). With `shared_gate`, sigmoid(w_shared · xn) goes to `shared_gates` for the shared
// expert (Qwen2-MoE).
//   g: [D] f32 (ffn_norm), x: [T, D] f32 (residual stream), xn: [T, D] f32 (out),
//   wg: [E, D] f32 router rows, then (with `bias`) [E] biases, then (with `shared_gate`)
//       the shared expert's gate row [D],
//   ids: [T, K] u32, weights: [T, K] f32, shared_gates: [T] f32,
//   hist: [layers, E] u32, counts of how often each expert of each layer was chosen (for
//   the statistics users see; read back only when asked, never inside the forward pass).
// One workgroup per token: threads split D (each thread normalises and then reads back only
// its own elements of xn, so no storage barrier is needed) for the sum of squares and for
// each dot product; thread 0 then does the O(E*K) selection. Ties go to the lower expert
// index (as the CPU reference).
// Grid: y = T.

struct Params {
    dim: u32,
    experts: u32,
    k: u32,
    norm: u32,         // 1: chosen softmax weights renormalised to sum to 1 (Mixtral)
    layer: u32,
    eps: f32,          // RMSNorm epsilon
    order: u32,        // 0: softmax then top-k; 1: top-k logits then softmax (gpt-oss)
    bias: u32,
    scale: f32,
    shared_gate: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> wg: array<f32>;
@group(0) @binding(2) var<storage, read> g: array<f32>;
@group(0) @binding(3) var<storage, read> x: array<f32>;
@group(0) @binding(4) var<storage, read_write> xn: array<f32>;
@group(0) @binding(5) var<storage, read_write> ids: array<u32>;
@group(0) @binding(6) var<storage, read_write> weights: array<f32>;
@group(0) @binding(7) var<storage, read_write> hist: array<atomic<u32>>;
@group(0) @binding(8) var<storage, read_write> shared_gates: array<f32>;

const WG: u32 = 64u;
const MAX_E: u32 = 256u;
const NEG_BIG: f32 = -3.0e38;

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
    // The shared expert's gate row is one more row of the same loop: a reduction (its
    // barriers) in a branch of its own cost ~20% of the kernel on lavapipe. (Lanes per row
    // with one barrier pair per 8 rows, or 8 partial sums per thread, measured slower
    // there still: 13.9 and 19.9 against 11.7 ms per decode step of the Mixtral bench.)
    let extra = p.experts * p.dim;   // where the bias, then the shared gate row, start
    let gate_row = extra + select(0u, p.experts, p.bias != 0u);
    for (var e = 0u; e < p.experts + p.shared_gate; e++) {
        let base = select(e * p.dim, gate_row, e == p.experts);
        var s = 0.0;
        for (var i = lid; i < p.dim; i += WG) {
            s += wg[base + i] * xn[xb + i];
        }
        let l = wg_sum(s, lid);
        if (lid == 0u) {
            if (e < p.experts) {
                logits[e] = l;
            } else {
                shared_gates[t] = sigmoid(l);
            }
        }
    }
    workgroupBarrier();
    if (lid != 0u) {
        return;
    }
    if (p.bias != 0u) {
        for (var e = 0u; e < p.experts; e++) {
            logits[e] += wg[extra + e];
        }
    }
    var mx = logits[0];
    for (var e = 1u; e < p.experts; e++) {
        mx = max(mx, logits[e]);
    }
    // Softmax first: logits become probabilities (>= 0) and the sum is over all experts.
    var sum = 1.0;
    if (p.order == 0u) {
        sum = 0.0;
        for (var e = 0u; e < p.experts; e++) {
            let v = exp(logits[e] - mx);
            logits[e] = v;
            sum += v;
        }
    }
    var chosen_sum = 0.0;
    for (var s = 0u; s < p.k; s++) {
        var best = 0u;
        var best_v = NEG_BIG;
        for (var e = 0u; e < p.experts; e++) {
            if (logits[e] > best_v) {
                best_v = logits[e];
                best = e;
            }
        }
        logits[best] = NEG_BIG;   // taken (below any probability or logit)
        // Softmax over the chosen k: the first chosen is their maximum.
        var w = best_v / sum;
        if (p.order != 0u) {
            w = exp(best_v - mx);
        }
        ids[t * p.k + s] = best;
        weights[t * p.k + s] = w;
        atomicAdd(&hist[p.layer * p.experts + best], 1u);
        chosen_sum += w;
    }
    let renorm = p.order != 0u || p.norm != 0u;
    for (var s = 0u; s < p.k; s++) {
        var w = weights[t * p.k + s];
        if (renorm) {
            w = w / chosen_sum;
        }
        weights[t * p.k + s] = w * p.scale;
    }
}
