// Router-weighted sum of a token's expert outputs into the residual stream (prefill):
//   x[t, n] += alpha * sum_s weights[t*K+s] * y[pos_of[t*K+s], n]
//   y: [T*K, D] f32 in sorted order, pos_of/weights: [T*K], x: [T, D] f32.
// Grid: x = ceil(D / 256), y = T.

struct Params {
    dim: u32,
    k: u32,
    alpha: f32,   // the residual scale
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> y: array<f32>;
@group(0) @binding(2) var<storage, read> pos_of: array<u32>;
@group(0) @binding(3) var<storage, read> weights: array<f32>;
@group(0) @binding(4) var<storage, read_write> x: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let n = gid.x;
    let t = gid.y;
    if (n >= p.dim) {
        return;
    }
    var s_ = 0.0;
    for (var s = 0u; s < p.k; s++) {
        let a = t * p.k + s;
        s_ += weights[a] * y[pos_of[a] * p.dim + n];
    }
    x[t * p.dim + n] += p.alpha * s_;
}
