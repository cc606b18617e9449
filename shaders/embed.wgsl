// Token embedding lookup: x[t, :] = E[tokens[t], :] * scale
//   E: rows row0..row0+rows of the [V, D] table in WDTYPE (lib/weights.wgsl), tokens: [T]
//   u32, x: [T, D] f32.
// A table larger than one storage binding is uploaded in row ranges, one dispatch each:
// a dispatch writes only the tokens whose row it holds. Ids are validated on the host; an
// id past V (never expected) reads row V-1 rather than out of bounds. One thread per 4
// elements. Grid: x = ceil(D / 1024), y = T.

struct Params {
    dim: u32,
    vocab: u32,
    s_off: u32,
    h_off: u32,
    scale: f32,   // the model's embedding multiplier (1 for most)
    row0: u32,    // the first row this buffer holds,
    rows: u32,    // and how many
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> tokens: array<u32>;
@group(0) @binding(3) var<storage, read_write> x: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x * 4u;
    let t = gid.y;
    if (i >= p.dim) {
        return;
    }
    let tok = min(tokens[t], p.vocab - 1u);
    if (tok < p.row0 || tok >= p.row0 + p.rows) {
        return;
    }
    let v = w4(WLayout(0u, p.s_off, p.h_off), (tok - p.row0) * p.dim + i) * p.scale;
    let b = t * p.dim + i;
    x[b] = v.x;
    x[b + 1u] = v.y;
    x[b + 2u] = v.z;
    x[b + 3u] = v.w;
}
