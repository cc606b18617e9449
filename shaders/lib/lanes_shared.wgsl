// Sums across the LANES consecutive invocations that share a group of matmul rows
// (LANES, WG from the kernel), through workgroup memory: the portable path, used where the
// adapter has no subgroups (browsers' WebGPU today). Call in uniform control flow; the
// result is valid in each group's first lane (lid % LANES == 0).

var<workgroup> lanes_a: array<vec4<f32>, WG>;
var<workgroup> lanes_b: array<vec4<f32>, WG>;

fn lanes_sum(v: vec4<f32>, lid: u32) -> vec4<f32> {
    lanes_a[lid] = v;
    workgroupBarrier();
    var s = vec4<f32>(0.0);
    if (lid % LANES == 0u) {
        for (var j = 0u; j < LANES; j++) {
            s += lanes_a[lid + j];
        }
    }
    return s;
}

// Two sums at once (one barrier for both).
fn lanes_sum2(a: vec4<f32>, b: vec4<f32>, lid: u32) -> array<vec4<f32>, 2> {
    lanes_a[lid] = a;
    lanes_b[lid] = b;
    workgroupBarrier();
    var s = array<vec4<f32>, 2>(vec4<f32>(0.0), vec4<f32>(0.0));
    if (lid % LANES == 0u) {
        for (var j = 0u; j < LANES; j++) {
            s[0] += lanes_a[lid + j];
            s[1] += lanes_b[lid + j];
        }
    }
    return s;
}
