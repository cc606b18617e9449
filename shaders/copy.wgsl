// Memory bandwidth probe: dst[i] = src[i] over vec4s. The fastest a kernel can stream
// bytes on this adapter; `webmoe bench` reports each decode GEMV's effective bandwidth as
// a fraction of it (a roofline).
//   src, dst: [N] vec4<f32>. Grid: x = ceil(N / 256) (folded).

struct Params {
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<f32>>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = linear_x(wid, nwg) * 256u + lid;
    if (i < p.n) {
        dst[i] = src[i];
    }
}
