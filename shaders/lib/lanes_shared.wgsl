// Sums across the LANES consecutive invocations that share a group of matmul rows
// (LANES from the host, WG from lib/gemv_rows.wgsl), through workgroup memory: the portable
// path, used where the adapter has no subgroups (browsers' WebGPU today) or only narrower
// ones. Wider groups (16, 32 lanes, GPUs' shape) fold to 8 partial sums first, so no thread
// adds more than 8 values in a row. Call in uniform control flow; the result is valid in
// each group's first lane (lid % LANES == 0).

var<workgroup> lanes_a: array<vec4<f32>, WG>;
var<workgroup> lanes_b: array<vec4<f32>, WG>;

// Lanes 0..8 of each group add the group's values 8 apart into their own slots.
fn lanes_fold(lid: u32) {
    if (LANES > 8u) {
        workgroupBarrier();
        let lane = lid % LANES;
        var a = vec4<f32>(0.0);
        var b = vec4<f32>(0.0);
        if (lane < 8u) {
            for (var j = lid; j < lid - lane + LANES; j += 8u) {
                a += lanes_a[j];
                b += lanes_b[j];
            }
        }
        workgroupBarrier();
        if (lane < 8u) {
            lanes_a[lid] = a;
            lanes_b[lid] = b;
        }
    }
    workgroupBarrier();
}

fn lanes_sum(v: vec4<f32>, lid: u32) -> vec4<f32> {
    lanes_a[lid] = v;
    if (LANES > 8u) {
        lanes_b[lid] = vec4<f32>(0.0);   // lanes_fold folds both
    }
    lanes_fold(lid);
    var s = vec4<f32>(0.0);
    if (lid % LANES == 0u) {
        for (var j = 0u; j < 8u; j++) {
            s += lanes_a[lid + j];
        }
    }
    return s;
}

// Two sums at once (the same barriers for both).
fn lanes_sum2(a: vec4<f32>, b: vec4<f32>, lid: u32) -> array<vec4<f32>, 2> {
    lanes_a[lid] = a;
    lanes_b[lid] = b;
    lanes_fold(lid);
    var s = array<vec4<f32>, 2>(vec4<f32>(0.0), vec4<f32>(0.0));
    if (lid % LANES == 0u) {
        for (var j = 0u; j < 8u; j++) {
            s[0] += lanes_a[lid + j];
            s[1] += lanes_b[lid + j];
        }
    }
    return s;
}
