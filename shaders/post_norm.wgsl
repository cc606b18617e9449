// A post-norm (Gemma 2/3's "sandwich" norm on a block's output, then the residual add):
//   y[t, i] += alpha * b[t, i] / sqrt(mean_i(b[t, i]^2) + eps) * g[g_off + i]
//   b[t, i] = 0 afterwards
//   b: [T, D] f32 (the block's output), g: [g_off + D] f32, y: [T, D] f32 (the residual).
// Zeroing the branch after reading it lets the next block's kernels accumulate into a
// zero buffer, as they accumulate into the residual stream in models without post-norms
// (each thread clears what it read, after the sum, so no other thread needs it).
// One workgroup per row. Grid: y = T.

struct Params {
    dim: u32,
    eps: f32,
    alpha: f32,
    g_off: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> g: array<f32>;
@group(0) @binding(3) var<storage, read_write> b: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

const WG: u32 = 128u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    if (wid.y >= step.n_rows) {
        return;
    }
    let base = wid.y * p.dim;
    var ss = 0.0;
    for (var i = lid; i < p.dim; i += WG) {
        let v = b[base + i];
        ss += v * v;
    }
    let r = inverseSqrt(wg_sum(ss, lid) / f32(p.dim) + p.eps);
    for (var i = lid; i < p.dim; i += WG) {
        y[base + i] += p.alpha * (b[base + i] * r * g[p.g_off + i]);
        b[base + i] = 0.0;
    }
}
