//! Every WGSL kernel against its plain-Rust reference in `webmoe::cpu`, on fresh random
//! inputs, with outputs poisoned (NaN / 0xFFFFFFFF) beforehand so an unwritten element
//! fails. `broken_kernels_fail` then breaks each kernel on purpose (for example, skipping
//! its last output row) and requires its check to fail: the checks can catch real bugs.

mod common;

use common::*;
use webmoe::cpu;
use webmoe::gpu::kernels::ops;
use webmoe::gpu::{Gpu, GpuOptions, GpuWeight, Out, Rows, Shader};
use webmoe::tensor::{DType, to_f32};

/// Every storage type the weight loader (shaders/lib/weights.wgsl) reads.
const DTYPES: &[DType] = DType::ALL;

/// `base` rounded up to whole blocks of `dtype` (matmul inner dimensions must be).
fn inner_dim(dtype: DType, base: usize) -> usize {
    let b = dtype.block().unwrap().0.max(4);
    base.div_ceil(b) * b
}

/// Random weights in `dtype`, uploaded as consecutive parts (each `numel` long) in the
/// kernels' layout, with the exact f32 values the CPU reference uses.
fn weight(g: &Gpu, rng: &mut Rng, dtype: DType, parts: usize, numel: usize, scale: f32) -> (GpuWeight, Vec<Vec<f32>>) {
    let raw: Vec<Vec<u8>> = (0..parts).map(|_| random_blocks(rng, dtype, numel, scale)).collect();
    let vals = raw.iter().map(|r| to_f32(dtype, r)).collect();
    let refs: Vec<&[u8]> = raw.iter().map(|r| r.as_slice()).collect();
    (g.upload_weight("w", dtype, &refs).expect("upload"), vals)
}

fn step(g: &Gpu, n_rows: usize, pos0: usize) -> wgpu::Buffer {
    g.uniform("step", &[n_rows as u32, pos0 as u32, 0, 0])
}

type Check = fn(&Gpu, u64) -> Result<(), String>;

fn check_matmul(
    g: &Gpu,
    seed: u64,
    prefill: bool,
    t: usize,
    n: usize,
    k_base: usize,
    dtypes: &[DType],
) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    for &dt in dtypes {
        let k = inner_dim(dt, k_base);
        // (accumulate, column offset, row stride, bias, alpha): plain, residual add, a
        // column slice (q|k|v) with a bias indexed by column, a scaled add with a bias.
        let cases = [
            (false, 0, n, false, 1.0),
            (true, 0, n, false, 1.0),
            (false, 3, n + 7, true, 1.0),
            (true, 0, n, true, 0.25),
        ];
        for (accumulate, off, stride, with_bias, alpha) in cases {
            let (w, wv) = weight(g, &mut rng, dt, 1, n * k, 0.5);
            let x = rng.vec(t * k, 1.0);
            let y0 = rng.vec(t * stride, 1.0);
            let bias = rng.vec(off + n, 1.0);
            let prod = cpu::matmul(&x, t, k, &wv[0], n);
            // Columns outside off..off+n keep their initial (poisoned) values.
            let mut want = if accumulate { y0.clone() } else { vec![f32::NAN; t * stride] };
            for r in 0..t {
                for j in 0..n {
                    let o = r * stride + off + j;
                    let v = alpha * (prod[r * n + j] + if with_bias { bias[off + j] } else { 0.0 });
                    want[o] = if accumulate { y0[o] + v } else { v };
                }
            }
            let yb = if accumulate { upload_f32(g, "y", &y0) } else { poisoned(g, "y", t * stride) };
            let bb = upload_f32(g, "bias", &bias);
            let out = Out { buf: &yb, stride, off, accumulate, bias: with_bias.then_some(&bb), alpha };
            let (xb, s) = (upload_f32(g, "x", &x), step(g, t, 0));
            let d =
                if prefill { ops::gemm(g, "w", &s, &w, &xb, out, n, k) } else { ops::gemv(g, "w", &w, &xb, out, n, k) }
                    .map_err(|e| e.to_string())?;
            g.run(&[&d], t as u32);
            let got = read_f32(g, &yb, t * stride);
            let (got, want): (Vec<f32>, Vec<f32>) =
                got.iter().zip(&want).filter(|(_, w)| !w.is_nan()).map(|(g, w)| (*g, *w)).unzip();
            let name = format!(
                "{} {dt:?} accumulate={accumulate} bias={with_bias} alpha={alpha} cols {off}.. of {stride} [{t}x{k}]·[{n}x{k}]^T",
                if prefill { "gemm" } else { "gemv" }
            );
            close(&name, &got, &want, 1e-4, 1e-4)?;
        }
    }
    Ok(())
}

fn check_gemv(g: &Gpu, seed: u64) -> Result<(), String> {
    // K = 68 runs the 4-wide loop for plain floats; whole 32-blocks (96) the block path.
    check_matmul(g, seed, false, 3, 37, 68, DTYPES)?;
    check_matmul(g, seed + 1, false, 2, 37, 96, DTYPES)
}

fn check_gemm(g: &Gpu, seed: u64) -> Result<(), String> {
    check_matmul(g, seed, true, 45, 70, 100, DTYPES)
}

#[path = "kernels/attention.rs"]
mod attention_checks;
#[path = "kernels/moe.rs"]
mod moe_checks;
#[path = "kernels/rows.rs"]
mod row_checks;
use attention_checks::*;
use moe_checks::*;
use row_checks::*;

/// Every kernel, its check, and deliberate breaks: (text in its .wgsl, replacement), each
/// of which alone must make the check fail. Besides an off-by-one per kernel, every
/// variant a model family needs is broken once: biases, scales, q/k norms, sinks, the
/// router's orders and shared gate, the activations.
type Mutations = &'static [(&'static str, &'static str)];
const KERNELS: &[(Shader, Check, Mutations)] = &[
    (
        Shader::Embed,
        check_embed,
        &[
            ("if (i >= p.dim) {", "if (i + 4u >= p.dim) {"),
            ("i) * p.scale;", "i);"),
            ("(tok - p.row0) * p.dim", "tok * p.dim"),
            ("tok < p.row0 || ", ""),
        ],
    ),
    (
        Shader::RmsNorm,
        check_rmsnorm,
        &[
            (
                "for (var i = lid; i < p.dim; i += WG) {\n        y[yb + i]",
                "for (var i = lid; i + 1u < p.dim; i += WG) {\n        y[yb + i]",
            ),
            ("src = step.n_rows - 1u;", "src = step.n_rows - 2u;"),
            ("x[xb + i] * r * g[i]", "x[xb + i] * g[i]"),
        ],
    ),
    (
        Shader::PostNorm,
        check_post_norm,
        &[
            ("y[base + i] += p.alpha", "y[base + i] = p.alpha"),
            ("g[p.g_off + i]", "g[i]"),
            ("b[base + i] = 0.0;", ""),
            ("p.alpha * (", "("),
            (
                "for (var i = lid; i < p.dim; i += WG) {\n        y[",
                "for (var i = lid; i + 1u < p.dim; i += WG) {\n        y[",
            ),
        ],
    ),
    (
        Shader::Gemv,
        check_gemv,
        &[
            ("if (row < p.n) {", "if (row + 1u < p.n) {"),
            ("o += biases[p.y_off + row];", "o += biases[row];"),
            ("o *= p.alpha;", ""),
        ],
    ),
    (
        Shader::Gemm,
        check_gemm,
        &[
            ("if (row < m && col < p.n) {", "if (row + 1u < m && col < p.n) {"),
            ("o += biases[p.y_off + col];", "o += biases[col];"),
            ("o *= p.alpha;", ""),
        ],
    ),
    (
        Shader::QkvRope,
        check_qkv_rope,
        &[
            ("v_cache[ci + 1u] = bitcast<u32>(b);", "v_cache[ci + 1u] = bitcast<u32>(a);"),
            ("b += biases[col + 1u];", "b += biases[col];"),
            (
                "k_cache[ci / 2u] = pack2x16float(vec2<f32>(a, b));",
                "k_cache[ci / 2u] = pack2x16float(vec2<f32>(b, a));",
            ),
            (
                "v_cache[ci / 2u] = pack2x16float(vec2<f32>(a, b));",
                "v_cache[ci / 2u] = pack2x16float(vec2<f32>(a, a));",
            ),
        ],
    ),
    (
        Shader::RopeKv,
        check_rope_kv,
        &[
            ("k_cache[cb + e.y] =", "k_cache[cb + e.x] ="),
            ("pack2x16float(vec2<f32>(ra, rc))", "pack2x16float(vec2<f32>(rc, ra))"),
            ("qkv[vb + 2u * i + 1u]))", "qkv[vb + 2u * i]))"),
            ("a *= r * nw[wb + e.x];", "a *= nw[wb + e.x];"),
            ("let wb = select(d, 0u, is_q);", "let wb = 0u;"),
        ],
    ),
    (
        Shader::QkNorm,
        check_qk_norm,
        &[
            ("qkv[base + i] = qkv[base + i] * r * nw[wb + i];", "qkv[base + i] = qkv[base + i] * nw[wb + i];"),
            ("let wb = select(0u, q_dim, is_k);", "let wb = 0u;"),
        ],
    ),
    (
        Shader::Attention,
        check_attention,
        &[
            ("if (j <= pos) {\n            let kb", "if (j < pos) {\n            let kb"),
            ("l = 1.0;", "l = 0.0;"),
            ("return unpack2x16float(k_cache[i / 2u])[i % 2u];", "return unpack2x16float(k_cache[i / 2u])[0u];"),
            ("return unpack2x16float(v_cache[i / 2u])[i % 2u];", "return unpack2x16float(v_cache[i / 2u]).x;"),
        ],
    ),
    (
        Shader::AttentionSplit,
        check_attention_split,
        &[
            ("let hi = min(pos + 1u, (s + 1u) * p.chunk);", "let hi = min(pos, (s + 1u) * p.chunk);"),
            (
                "vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y))",
                "vec4<f32>(unpack2x16float(w.y), unpack2x16float(w.x))",
            ),
            ("return unpack2x16float(v_cache[i / 2u])[i % 2u];", "return unpack2x16float(v_cache[i / 2u])[1u];"),
        ],
    ),
    (
        Shader::AttentionCombine,
        check_attention_split,
        &[
            (
                "for (var s = 0u; s < used; s++) {\n        let pb = base + s * (d + 2u);\n        l +=",
                "for (var s = 1u; s < used; s++) {\n        let pb = base + s * (d + 2u);\n        l +=",
            ),
            ("l = exp(sinks[h] - big);", "l = 0.0;"),
        ],
    ),
    (
        Shader::Router,
        check_router,
        &[
            ("var w = best_v / sum;", "var w = best_v;"),
            ("w = exp(best_v - mx);", "w = best_v;"),
            ("logits[e] += wg[extra + e];", "logits[e] += 0.0;"),
            ("shared_gates[t] = sigmoid(l);", "shared_gates[t] = l;"),
            ("weights[t * p.k + s] = w * p.scale;", "weights[t * p.k + s] = w;"),
        ],
    ),
    (
        Shader::MoeGemvGateUp,
        check_moe_gemv_gate_up,
        &[
            ("let e = ids[a];", "let e = ids[t * p.k];"),
            (
                "let o = WLayout(slot * p.e_stride, p.s_off, p.h_off);",
                "let o = WLayout(e * p.e_stride, p.s_off, p.h_off);",
            ),
            ("if (slot == NO_SLOT) {\n        return;", "if (false) {\n        return;"),
            ("gv += biases[e * 2u * p.ff + f];", "gv += biases[f];"),
            ("glu(gv, uv, p.act_alpha, p.act_limit)", "glu(gv, uv, p.act_alpha, 1e9)"),
        ],
    ),
    (
        Shader::MoeGemvDown,
        check_moe_gemv_down,
        &[
            ("acc += weights[a] * rows_dot(", "acc += weights[t * p.k] * rows_dot("),
            ("let slot = slot_of[ids[a]];", "let slot = ids[a];"),
            ("if (slot == NO_SLOT) {\n            continue;", "if (slot == 0u) {\n            continue;"),
            ("if (slot_of[ids[a]] != NO_SLOT) {", "if (true) {"),
            ("o += weights[a] * biases[ids[a] * p.dim + n];", "o += biases[ids[a] * p.dim + n];"),
            ("res[t * p.dim + n] += p.alpha * o;", "res[t * p.dim + n] += o;"),
        ],
    ),
    (Shader::MoeGroup, check_moe_group, &[("starts[p.experts] = acc;", "starts[p.experts] = acc - 1u;")]),
    (
        Shader::MoeGemmGateUp,
        check_moe_gemm_gate_up,
        &[
            ("if (r < rows && f < p.ff) {", "if (r + 1u < rows && f < p.ff) {"),
            ("let slot = my.w;", "let slot = e;"),
            ("uv += biases[e * 2u * p.ff + p.ff + f];", "uv += biases[e * 2u * p.ff + f];"),
            ("glu(gv, uv, p.act_alpha, p.act_limit)", "glu(uv, gv, p.act_alpha, p.act_limit)"),
        ],
    ),
    (
        Shader::MoeGemmDown,
        check_moe_gemm_down,
        &[
            ("if (r < rows && n < p.dim) {", "if (r + 1u < rows && n < p.dim) {"),
            ("o += biases[e * p.dim + n];", "o += biases[n];"),
            (
                "let o = WLayout(my.w * p.e_stride, p.s_off, p.h_off);",
                "let o = WLayout(my.x * p.e_stride, p.s_off, p.h_off);",
            ),
        ],
    ),
    (
        Shader::MoeCombine,
        check_moe_combine,
        &[("for (var s = 0u; s < p.k; s++) {", "for (var s = 1u; s < p.k; s++) {"), ("+= p.alpha * s_;", "+= s_;")],
    ),
    (Shader::Copy, check_copy, &[("if (i < p.n) {", "if (i + 1u < p.n) {")]),
    (Shader::Argmax, check_argmax, &[("(ov == best_v[lid] && oi < mine)", "(ov == best_v[lid] && oi > mine)")]),
];

fn seed() -> u64 {
    // Fresh inputs each run unless WEBMOE_TEST_SEED pins them (printed on failure).
    std::env::var("WEBMOE_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    })
}

fn run_check(shader: Shader) {
    let (_, check, _) = KERNELS.iter().find(|k| k.0 == shader).expect("kernel listed");
    let s = seed();
    if let Err(e) = check(&gpu(), s) {
        panic!("{e} (WEBMOE_TEST_SEED={s})");
    }
}

#[test]
fn embed() {
    run_check(Shader::Embed)
}
#[test]
fn rmsnorm() {
    run_check(Shader::RmsNorm)
}
#[test]
fn post_norm() {
    run_check(Shader::PostNorm)
}
#[test]
fn gemv() {
    run_check(Shader::Gemv)
}
#[test]
fn gemm() {
    run_check(Shader::Gemm)
}
#[test]
fn qkv_rope() {
    run_check(Shader::QkvRope)
}
#[test]
fn rope_kv() {
    run_check(Shader::RopeKv)
}
#[test]
fn attention() {
    run_check(Shader::Attention)
}
#[test]
fn attention_split() {
    run_check(Shader::AttentionSplit)
}
#[test]
fn qk_norm() {
    run_check(Shader::QkNorm)
}
#[test]
fn router() {
    run_check(Shader::Router)
}
#[test]
fn moe_gemv_gate_up() {
    run_check(Shader::MoeGemvGateUp)
}
#[test]
fn moe_gemv_down() {
    run_check(Shader::MoeGemvDown)
}
#[test]
fn moe_group() {
    run_check(Shader::MoeGroup)
}
#[test]
fn moe_gemm_gate_up() {
    run_check(Shader::MoeGemmGateUp)
}
#[test]
fn moe_gemm_down() {
    run_check(Shader::MoeGemmDown)
}
#[test]
fn moe_combine() {
    run_check(Shader::MoeCombine)
}
#[test]
fn argmax() {
    run_check(Shader::Argmax)
}
#[test]
fn copy() {
    run_check(Shader::Copy)
}

/// The decode matmuls in every GEMV shape (8, 16, 32 threads per row group), each with
/// the workgroup-memory lane sums (what browsers run today) and with subgroup shuffles
/// where the adapter's subgroups are wide enough; the other tests run the adapter's own
/// choice.
#[test]
fn matmuls_in_every_shape() {
    let _ = gpu(); // sets up the environment the adapter needs
    let s = seed();
    for lanes in [8, 16, 32] {
        for subgroups in [false, true] {
            let opts = GpuOptions { subgroups: Some(subgroups), gemv_lanes: Some(lanes) };
            let g = webmoe::platform::block_on(Gpu::with_options(opts)).expect("GPU");
            assert_eq!(g.lanes, lanes);
            assert_eq!(g.gemv_rows(), 128 / lanes * 4);
            if subgroups && !g.subgroups {
                continue; // not offered, or narrower than the row group: covered by `false`
            }
            for (name, check) in [
                ("gemv", check_gemv as Check),
                ("qkv_rope", check_qkv_rope),
                ("moe_gemv_gate_up", check_moe_gemv_gate_up),
                ("moe_gemv_down", check_moe_gemv_down),
            ] {
                if let Err(e) = check(&g, s) {
                    panic!("{name} with {lanes} lanes, subgroups {}: {e} (WEBMOE_TEST_SEED={s})", g.subgroups);
                }
            }
        }
    }
}

/// A GEMV shape the kernels do not have is an error, not a broken kernel.
#[test]
fn unsupported_gemv_shape_is_an_error() {
    let _ = gpu();
    let opts = GpuOptions { subgroups: None, gemv_lanes: Some(12) };
    let e = webmoe::platform::block_on(Gpu::with_options(opts)).err().expect("12 lanes must be refused");
    assert!(e.to_string().contains("GEMV lanes 12"), "{e}");
}

/// Where the adapter offers subgroups of at least 8 lanes, the kernels use them (so the
/// reference checks above exercise the subgroup path there).
#[test]
fn subgroups_used_where_offered() {
    let g = gpu();
    let offered = g.adapter_features().contains(wgpu::Features::SUBGROUP) && g.info.subgroup_min_size >= g.lanes;
    let wanted = std::env::var("WEBMOE_SUBGROUPS").map_or(true, |v| v != "0");
    assert_eq!(
        g.subgroups,
        offered && wanted,
        "adapter {} subgroup sizes {}..{}",
        g.adapter_name(),
        g.info.subgroup_min_size,
        g.info.subgroup_max_size
    );
    println!(
        "{}: subgroups {} (sizes {}..{}), GEMV lanes {}",
        g.adapter_name(),
        g.subgroups,
        g.info.subgroup_min_size,
        g.info.subgroup_max_size,
        g.lanes
    );
}

/// A grid wider than 65535 workgroups is folded into z; the last rows must still be written.
/// (The 32-lane shape has the fewest rows per workgroup, so the smallest matrix that folds.)
#[test]
fn gemv_folded_grid() {
    let _ = gpu();
    let s = seed();
    let opts = GpuOptions { subgroups: None, gemv_lanes: Some(32) };
    let g = webmoe::platform::block_on(Gpu::with_options(opts)).expect("GPU");
    let n = 65536 * g.gemv_rows() as usize + 9;
    if let Err(e) = check_matmul(&g, s, false, 1, n, 8, &[DType::F32]) {
        panic!("{e} (WEBMOE_TEST_SEED={s})");
    }
}

#[test]
fn every_kernel_has_a_check() {
    use std::collections::HashSet;
    let listed: HashSet<&str> = KERNELS.iter().map(|k| k.0.name()).collect();
    let files: HashSet<String> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".wgsl")).map(str::to_owned))
        .collect();
    for f in &files {
        assert!(listed.contains(f.as_str()), "shaders/{f}.wgsl has no reference check in tests/kernels.rs");
    }
}

/// Breaks in the shared weight loader (lib/weights.wgsl), one per block format at least,
/// each with the check of a kernel that runs it: the decode GEMV reads whole 32-weight
/// blocks (wdot32), the prefill GEMM four weights at a time (w4).
const WEIGHT_MUTATIONS: &[(&str, Check, Mutations)] = &[
    (
        "gemv",
        check_gemv,
        &[
            ("let qx = nib_dot(q, xv) + 16.0 * hx;", "let qx = nib_dot(q, xv) + 8.0 * hx;"),
            ("hx += dot(bits4(h >> (4u * j)), xv[j]);", "hx += dot(bits4(h >> (3u * j)), xv[j]);"),
            ("return d * (qx - 16.0 * sx);", "return d * (qx - 15.0 * sx);"),
            (
                "if (WDTYPE == DT_Q5_1) {\n                let dm = unpack2x16float(wu(s0 + (i >> 5u)));\n                return dm.x * qx + dm.y * sx;",
                "if (WDTYPE == DT_Q5_1) {\n                let dm = unpack2x16float(wu(s0 + (i >> 5u)));\n                return dm.x * qx;",
            ),
            (
                "return unpack2x16float(wu(s0 + (i >> 6u)))[(i >> 5u) & 1u] * qx;",
                "return unpack2x16float(wu(s0 + (i >> 6u)))[0u] * qx;",
            ),
            ("scale_byte(base + 1u, (i >> 5u) & 7u))) * qx;", "scale_byte(base + 1u, (i >> 5u) & 3u))) * qx;"),
        ],
    ),
    (
        "gemm",
        check_gemm,
        &[
            ("return d * (q - vec4<f32>(16.0));", "return d * (q - vec4<f32>(15.0));"),
            (
                "// Q5_1: d * q + m\n            let q = nibbles4(wu(q0 + (i >> 3u)) >> ((i & 4u) * 4u)) + 16.0",
                "// Q5_1: d * q + m\n            let q = nibbles4(wu(q0 + (i >> 3u)) >> ((i & 4u) * 4u)) + 8.0",
            ),
            ("q += 16.0 * high1(l, i);", "q += 8.0 * high1(l, i);"),
            (
                "return (dd.x * f32(sc & 15u)) * q - vec4<f32>(dd.y * f32(sc >> 4u));",
                "return (dd.x * f32(sc & 15u)) * q;",
            ),
            ("+ 4.0 * high1(l, i) - vec4<f32>(4.0);", "- vec4<f32>(4.0);"),
            (
                "// IQ4_NL: d * level[q]\n            let q = iq4nl4(wu(q0 + (i >> 3u)) >> ((i & 4u) * 4u));",
                "// IQ4_NL: d * level[q]\n            let q = iq4nl4(wu(q0 + (i >> 3u)) >> ((i & 4u) * 2u));",
            ),
            (
                "let base = s0 + (i >> 8u) * 3u;\n            let d =",
                "let base = s0 + (i >> 8u) * 2u;\n            let d =",
            ),
            ("0x26190D01u", "0x26190E01u"),
        ],
    ),
];

#[test]
fn broken_kernels_fail() {
    let g = fresh_gpu();
    let s = seed();
    for (shader, check, mutations) in KERNELS {
        let src = shader.source();
        for (from, to) in mutations.iter() {
            assert!(src.contains(from), "{}: mutation anchor {from:?} not found", shader.name());
            g.replace_kernel_source(*shader, src.replacen(from, to, 1));
            let r = check(&g, s);
            g.replace_kernel_source(*shader, src.to_string());
            assert!(r.is_err(), "{}: broken by {from:?} -> {to:?}, it passed its check (seed {s})", shader.name());
            println!("{} broken as intended ({from:?}) -> {}", shader.name(), r.unwrap_err());
        }
    }
    let src = webmoe::gpu::kernels::WEIGHTS;
    for (name, check, mutations) in WEIGHT_MUTATIONS {
        for (from, to) in mutations.iter() {
            assert!(src.contains(from), "lib/weights.wgsl: mutation anchor {from:?} not found");
            g.replace_weights_source(Some(src.replacen(from, to, 1)));
            let r = check(&g, s);
            g.replace_weights_source(None);
            assert!(r.is_err(), "lib/weights.wgsl broken by {from:?} -> {to:?}: {name} passed its check (seed {s})");
            println!("lib/weights.wgsl broken as intended ({from:?}) -> {name}: {}", r.unwrap_err());
        }
    }
}

/// Each kernel's `Params` struct in WGSL has the fields, in order, of the Rust struct
/// the host fills (src/gpu/params.rs): a field added on one side only fails here.
#[test]
fn params_mirror_wgsl() {
    for shader in Shader::ALL {
        let src = shader.source();
        let start = src.find("struct Params {").unwrap_or_else(|| panic!("{}: no struct Params", shader.name()));
        let body = &src[start + "struct Params {".len()..];
        let body = &body[..body.find('}').expect("struct end")];
        let fields: Vec<&str> = body
            .lines()
            .map(|l| l.split("//").next().unwrap_or("").trim())
            .filter(|l| !l.is_empty())
            .map(|l| l.split(':').next().unwrap_or("").trim())
            .collect();
        assert_eq!(fields, shader.params_fields(), "{}: WGSL Params and the Rust params struct differ", shader.name());
    }
}
