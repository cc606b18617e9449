// RMSNorm: y[r, i] (+)= alpha * x[r', i] / sqrt(mean_i(x[r', i]^2) + eps) * g[g_off + i]
//   x: [T, D] f32, g: [g_off + D] f32, y: [T, D] f32 (or [1, D] with last_only).
// One workgroup per row. With last_only, only the step's last row is normalised and
// written as row 0 (generation needs logits for the last position only).
// With accumulate the result is added into y: a post-norm (Gemma) adds its normalised
// branch to the residual stream; then `clear` zeroes the branch row x after reading it,
// so the next branch can accumulate into a zero buffer (each thread clears what it read).
// Grid: y = T (or 1).

struct Params {
    dim: u32,
    last_only: u32,
    eps: f32,
    accumulate: u32,
    alpha: f32,
    g_off: u32,
    clear: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> g: array<f32>;
@group(0) @binding(3) var<storage, read_write> x: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

const WG: u32 = 128u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    var src = wid.y;
    var dst = wid.y;
    if (p.last_only != 0u) {
        src = step.n_rows - 1u;
        dst = 0u;
    }
    let xb = src * p.dim;
    var ss = 0.0;
    for (var i = lid; i < p.dim; i += WG) {
        let v = x[xb + i];
        ss += v * v;
    }
    let r = inverseSqrt(wg_sum(ss, lid) / f32(p.dim) + p.eps);
    let yb = dst * p.dim;
    for (var i = lid; i < p.dim; i += WG) {
        let v = p.alpha * (x[xb + i] * r * g[p.g_off + i]);
        if (p.accumulate != 0u) {
            y[yb + i] += v;
        } else {
            y[yb + i] = v;
        }
        if (p.clear != 0u) {
            x[xb + i] = 0.0;
        }
    }
}
