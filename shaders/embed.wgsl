// Token embedding lookup: x[t, :] = E[tokens[t], :]
//   E: [V, D] in WDTYPE, tokens: [T] u32, x: [T, D] f32.
// Ids are validated on the host; an id past V (never expected) reads row V-1 rather than
// out of bounds. Grid: x = ceil(D / 256), y = T.

struct Params {
    dim: u32,
    vocab: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> e: array<u32>;
@group(0) @binding(2) var<storage, read> tokens: array<u32>;
@group(0) @binding(3) var<storage, read_write> x: array<f32>;

fn e_at(i: u32) -> f32 {
    if (WDTYPE == DT_F32) {
        return bitcast<f32>(e[i]);
    }
    return half2(e[i >> 1u])[i & 1u];
}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let t = gid.y;
    if (i >= p.dim) {
        return;
    }
    let tok = min(tokens[t], p.vocab - 1u);
    x[t * p.dim + i] = e_at(tok * p.dim + i);
}
