// The decode matmul's work split and inner loop, shared by gemv.wgsl, qkv_rope.wgsl and
// the MoE expert GEMVs (which differ in whose rows they read and where results go). The
// kernel declares the activations `x: array<vec4<f32>>` and the weights
// `w: array<vec4<u32>>`; LANES comes from the host (composed above this library).
//
// A workgroup of WG threads computes ROWS = WG / LANES * NR consecutive output rows of one
// token. LANES threads share each group of NR rows: they split K in 32-weight blocks
// (neighbouring threads read neighbouring blocks), and each thread applies a block of x,
// loaded once, to its NR rows. Then a LANES-wide sum (lanes_sum: subgroup shuffles where
// the adapter has subgroups of at least LANES, else one barrier and workgroup memory).
// The host picks LANES per adapter: 8 where one thread's longer loop is cheap (CPU
// emulators), a full 32-wide subgroup on GPUs, so that small matrices (a 4096-row
// projection) still spread over hundreds of workgroups.

const WG: u32 = 128u;
const NR: u32 = 4u;
const ROWS: u32 = WG / LANES * NR;

// Word offsets (element index within the matrix) of the NR rows of this thread's group,
// rows row0 + (lid / LANES) * NR + 0..NR of an [n, k] matrix. Rows past n repeat row n-1
// (computed, never stored), so every lane runs the same loop.
fn group_rows(row0: u32, n: u32, k: u32, lid: u32) -> array<u32, NR> {
    var rows: array<u32, NR>;
    for (var r = 0u; r < NR; r++) {
        rows[r] = min(row0 + (lid / LANES) * NR + r, n - 1u) * k;
    }
    return rows;
}

// This lane's share of the NR dot products rows[r] . x[xq * 4 .. xq * 4 + k) (xq in vec4s).
// Sum across lanes with lanes_sum.
fn rows_dot(o: WLayout, rows: array<u32, NR>, xq: u32, k: u32, lane: u32) -> vec4<f32> {
    var acc = vec4<f32>(0.0);
    if (k % 32u == 0u) {
        for (var b = lane; b < k / 32u; b += LANES) {
            var xv: array<vec4<f32>, 8>;
            for (var j = 0u; j < 8u; j++) {
                xv[j] = x[xq + 8u * b + j];
            }
            let sx = xsum32(xv);
            for (var r = 0u; r < NR; r++) {
                acc[r] += wdot32(o, rows[r] + 32u * b, xv, sx);
            }
        }
    } else {
        for (var c = lane; c < k / 4u; c += LANES) {
            let xv = x[xq + c];
            for (var r = 0u; r < NR; r++) {
                acc[r] += dot(w4(o, rows[r] + c * 4u), xv);
            }
        }
    }
    return acc;
}

// rows_dot for two matrices at once, rows[r] and `second` + rows[r] (an expert's gate and
// up rows), reading each block of x once for both.
fn rows_dot2(o: WLayout, rows: array<u32, NR>, second: u32, xq: u32, k: u32, lane: u32) -> array<vec4<f32>, 2> {
    var a = vec4<f32>(0.0);
    var b = vec4<f32>(0.0);
    if (k % 32u == 0u) {
        for (var blk = lane; blk < k / 32u; blk += LANES) {
            var xv: array<vec4<f32>, 8>;
            for (var j = 0u; j < 8u; j++) {
                xv[j] = x[xq + 8u * blk + j];
            }
            let sx = xsum32(xv);
            for (var r = 0u; r < NR; r++) {
                a[r] += wdot32(o, rows[r] + 32u * blk, xv, sx);
                b[r] += wdot32(o, second + rows[r] + 32u * blk, xv, sx);
            }
        }
    } else {
        for (var c = lane; c < k / 4u; c += LANES) {
            let xv = x[xq + c];
            for (var r = 0u; r < NR; r++) {
                a[r] += dot(w4(o, rows[r] + c * 4u), xv);
                b[r] += dot(w4(o, second + rows[r] + c * 4u), xv);
            }
        }
    }
    return array<vec4<f32>, 2>(a, b);
}

// Sums of rows row0 + (lid / LANES) * NR + 0..NR of an [n, k] matrix (layout o) against
// x[t], valid in the group's first lane (lid % LANES == 0). Call in uniform control flow.
fn gemv_rows(o: WLayout, row0: u32, n: u32, k: u32, t: u32, lid: u32) -> vec4<f32> {
    return lanes_sum(rows_dot(o, group_rows(row0, n, k, lid), t * (k / 4u), k, lid % LANES), lid);
}
