// Decode matmul (GEMV): y[t, y_off + n] (+)= sum_k W[n, k] * x[t, k]
//   W: [N, K] in WDTYPE (HF Linear layout, any format of lib/weights.wgsl),
//   x: [T, K] f32, y: [T, y_stride] f32 (y_off/y_stride let q, k, v write one buffer).
// One workgroup computes ROWS consecutive outputs of one token. LANES threads share each
// group of NR rows: they split K in 32-weight blocks (neighbouring threads read
// neighbouring blocks), and each thread applies a block of x, loaded once, to its NR rows.
// Then a LANES-wide sum (lanes_sum: subgroup shuffles where the adapter has subgroups, else
// one barrier and workgroup memory). Many rows per workgroup keep the cost per workgroup
// low on every device. With `accumulate`
// the result is added into y (fuses the residual add).
// Grid: x = ceil(N / ROWS) (folded), y = T.

struct Params {
    n: u32,
    k: u32,
    accumulate: u32,
    y_stride: u32,
    y_off: u32,
    s_off: u32,    // weight layout: scales at word s_off,
    h_off: u32,    // Q6_K high bits at word h_off
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

const WG: u32 = 128u;
const LANES: u32 = 8u;
const NR: u32 = 4u;
const ROWS: u32 = WG / LANES * NR;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row0 = linear_x(wid, nwg) * ROWS;
    if (row0 >= p.n) {
        return;
    }
    let t = wid.y;
    let k4 = p.k / 4u;
    let o = WLayout(0u, p.s_off, p.h_off);
    let g = lid / LANES;
    let lane = lid % LANES;
    // This thread's NR rows (rows past N recompute row N-1; their sums are never stored).
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
    let v = lanes_sum(acc, lid);
    if (lane == 0u) {
        for (var r = 0u; r < NR; r++) {
            let row = row0 + g * NR + r;
            if (row < p.n) {
                let i = t * p.y_stride + p.y_off + row;
                if (p.accumulate != 0u) {
                    y[i] += v[r];
                } else {
                    y[i] = v[r];
                }
            }
        }
    }
}
