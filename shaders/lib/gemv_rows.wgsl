// The decode matmul's inner loop, shared by gemv.wgsl and qkv_rope.wgsl (which differ only
// in where the results go). The kernel declares `p` (with fields n, k, s_off, h_off), the
// weights `w: array<u32>` and `x: array<vec4<f32>>` ([T, K] f32).
//
// A workgroup of WG threads computes ROWS = WG / LANES * NR consecutive outputs of one
// token. LANES threads share each group of NR rows: they split K in 32-weight blocks
// (neighbouring threads read neighbouring blocks), and each thread applies a block of x,
// loaded once, to its NR rows. Then a LANES-wide sum (lanes_sum: subgroup shuffles where
// the adapter has subgroups, else one barrier and workgroup memory). Many rows per
// workgroup keep the cost per workgroup low on every device.

const WG: u32 = 128u;
const LANES: u32 = 8u;
const NR: u32 = 4u;
const ROWS: u32 = WG / LANES * NR;

// Sums of rows row0 + (lid / LANES) * NR + 0..NR of W against x[t], valid in the group's
// first lane (lid % LANES == 0). Rows past N recompute row N-1 (never to be stored).
// Call in uniform control flow.
fn gemv_rows(row0: u32, t: u32, lid: u32) -> vec4<f32> {
    let k4 = p.k / 4u;
    let o = WLayout(0u, p.s_off, p.h_off);
    let g = lid / LANES;
    let lane = lid % LANES;
    var rows: array<u32, NR>;
    for (var r = 0u; r < NR; r++) {
        rows[r] = min(row0 + g * NR + r, p.n - 1u) * p.k;
    }
    var acc = vec4<f32>(0.0);
    if (p.k % 32u == 0u) {
        for (var b = lane; b < p.k / 32u; b += LANES) {
            var xv: array<vec4<f32>, 8>;
            for (var j = 0u; j < 8u; j++) {
                xv[j] = x[t * k4 + 8u * b + j];
            }
            let sx = xsum32(xv);
            for (var r = 0u; r < NR; r++) {
                acc[r] += wdot32(o, rows[r] + 32u * b, xv, sx);
            }
        }
    } else {
        for (var c = lane; c < k4; c += LANES) {
            let xv = x[t * k4 + c];
            for (var r = 0u; r < NR; r++) {
                acc[r] += dot(w4(o, rows[r] + c * 4u), xv);
            }
        }
    }
    return lanes_sum(acc, lid);
}
