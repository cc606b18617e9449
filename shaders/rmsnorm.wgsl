// RMSNorm: y[r, i] = x[r', i] / sqrt(mean_i(x[r', i]^2) + eps) * g[i]
//   x: [T, D] f32, g: [D] f32, y: [T, D] f32 (or [1, D] with last_only).
// One workgroup per row. With last_only, only the step's last row is normalised and
// written as row 0 (generation needs logits for the last position only).
// Gemma's post-norms (add into y, clear x) are post_norm.wgsl: a flag here that reads y
// or writes x made every plain norm ~12x slower on lavapipe (0.55 -> 6.9 ms per decode
// step of the Mixtral bench model), even with the flags off.
// Grid: y = T (or 1).

struct Params {
    dim: u32,
    last_only: u32,
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> g: array<f32>;
@group(0) @binding(3) var<storage, read> x: array<f32>;
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
        y[yb + i] = x[xb + i] * r * g[i];
    }
}
