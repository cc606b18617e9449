// Groups a prefill step's (token, slot) assignments by expert so each expert's weights are
// read once per tile of its tokens rather than once per token.
//   ids:    [T*K] u32 expert of assignment a = t*K + s (from the router)
//   sorted: [T*K] u32 assignments ordered by expert, then by a
//   pos_of: [T*K] u32 inverse: position of assignment a in `sorted`
//   starts: [E+1] u32 expert e owns sorted[starts[e] .. starts[e+1]]
// A single workgroup: thread e counts and then places expert e's assignments, keeping the
// order deterministic. Grid: 1.

struct Params {
    experts: u32,
    k: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> sorted: array<u32>;
@group(0) @binding(4) var<storage, read_write> pos_of: array<u32>;
@group(0) @binding(5) var<storage, read_write> starts: array<u32>;

const WG: u32 = 256u;
const MAX_E: u32 = 256u;
var<workgroup> counts: array<u32, MAX_E>;
var<workgroup> offs: array<u32, MAX_E>;

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32) {
    let n = step.n_rows * p.k;
    for (var e = lid; e < p.experts; e += WG) {
        var c = 0u;
        for (var a = 0u; a < n; a++) {
            c += select(0u, 1u, ids[a] == e);
        }
        counts[e] = c;
    }
    workgroupBarrier();
    if (lid == 0u) {
        var acc = 0u;
        for (var e = 0u; e < p.experts; e++) {
            offs[e] = acc;
            starts[e] = acc;
            acc += counts[e];
        }
        starts[p.experts] = acc;
    }
    workgroupBarrier();
    for (var e = lid; e < p.experts; e += WG) {
        var o = offs[e];
        for (var a = 0u; a < n; a++) {
            if (ids[a] == e) {
                sorted[o] = a;
                pos_of[a] = o;
                o++;
            }
        }
    }
}
