// The prefill matmuls' tile, shared by gemm.wgsl, moe_gemm_gate_up.wgsl and
// moe_gemm_down.wgsl: a workgroup of 64 threads computes a TILE x TILE (32x32) block of
// outputs, a 4x4 block per thread (thread lid: rows 4 * (lid / 8) .., columns
// 4 * (lid % 8) ..), from BK-wide slices along k staged in workgroup memory:
//   xs: [TILE rows of activations][BK / 4 vec4s], row stride PAD (9, against bank conflicts)
//   ws: [W_ROWS rows of weights][BK / 4 vec4s], same layout; W_ROWS (from the kernel) is
//       TILE, or 2 * TILE where a kernel stages two matrices' rows (an expert's gate and up)
// so each weight is read from memory once per TILE activation rows; each thread does 16
// vec4 dot products per 8 vec4 reads of workgroup memory.

const TILE: u32 = 32u;
const BK: u32 = 32u;
const PAD: u32 = 9u;

var<workgroup> xs: array<vec4<f32>, TILE * PAD>;
var<workgroup> ws: array<vec4<f32>, W_ROWS * PAD>;

// The slot (row, k-quad) of a TILE x BK/4 stage that thread lid fills in round j of 4.
fn stage_slot(lid: u32, j: u32) -> vec2<u32> {
    let idx = lid + 64u * j;
    return vec2<u32>(idx / 8u, idx % 8u);
}

// acc[i][j] += xs[4 ty + i] . ws[w0 + 4 tx + j] over the staged slice.
fn tile_fma(acc: ptr<function, array<vec4<f32>, 4>>, w0: u32, tx: u32, ty: u32) {
    for (var kq = 0u; kq < BK / 4u; kq++) {
        let wr = (w0 + 4u * tx) * PAD + kq;
        let b = array<vec4<f32>, 4>(ws[wr], ws[wr + PAD], ws[wr + 2u * PAD], ws[wr + 3u * PAD]);
        for (var i = 0u; i < 4u; i++) {
            let a = xs[(4u * ty + i) * PAD + kq];
            (*acc)[i] += vec4<f32>(dot(a, b[0]), dot(a, b[1]), dot(a, b[2]), dot(a, b[3]));
        }
    }
}

// tile_fma for two weight tiles at once (ws rows w0.. into a, w1.. into b), reading each
// activation vec4 once for both.
fn tile_fma2(a: ptr<function, array<vec4<f32>, 4>>, b: ptr<function, array<vec4<f32>, 4>>,
             w0: u32, w1: u32, tx: u32, ty: u32) {
    for (var kq = 0u; kq < BK / 4u; kq++) {
        let r0 = (w0 + 4u * tx) * PAD + kq;
        let r1 = (w1 + 4u * tx) * PAD + kq;
        let wa = array<vec4<f32>, 4>(ws[r0], ws[r0 + PAD], ws[r0 + 2u * PAD], ws[r0 + 3u * PAD]);
        let wb = array<vec4<f32>, 4>(ws[r1], ws[r1 + PAD], ws[r1 + 2u * PAD], ws[r1 + 3u * PAD]);
        for (var i = 0u; i < 4u; i++) {
            let x = xs[(4u * ty + i) * PAD + kq];
            (*a)[i] += vec4<f32>(dot(x, wa[0]), dot(x, wa[1]), dot(x, wa[2]), dot(x, wa[3]));
            (*b)[i] += vec4<f32>(dot(x, wb[0]), dot(x, wb[1]), dot(x, wb[2]), dot(x, wb[3]));
        }
    }
}
