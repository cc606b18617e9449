// Sums across the LANES consecutive invocations that share a group of matmul rows, with
// subgroup shuffles: no workgroup memory and no barrier. Used only where the adapter's
// subgroups have at least LANES invocations; a workgroup's invocations fill subgroups in
// local_invocation_index order, so a group's lanes sit in one subgroup and differ in the
// low log2(LANES) bits of their subgroup index. The result is valid in every lane.

fn lanes_sum(v: vec4<f32>, lid: u32) -> vec4<f32> {
    var s = v;
    for (var m = LANES / 2u; m > 0u; m /= 2u) {
        s += subgroupShuffleXor(s, m);
    }
    return s;
}

fn lanes_sum2(a: vec4<f32>, b: vec4<f32>, lid: u32) -> array<vec4<f32>, 2> {
    return array<vec4<f32>, 2>(lanes_sum(a, lid), lanes_sum(b, lid));
}
