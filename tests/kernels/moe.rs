//! Reference checks for the router and the MoE expert kernels (decode GEMVs, prefill
//! grouping, grouped GEMMs, combine).

use super::*;
use webmoe::gpu::paging::NO_SLOT;
use webmoe::model::plan::{Act, RouterOrder, RouterPlan};
use webmoe::quant::{PackedBuffer, pack_experts};

pub fn check_router(g: &Gpu, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let (t, dim, e, k, eps) = (6, 40, 16, 4, 1e-5);
    // (order, renorm, bias, scale, shared gate): Mixtral; Qwen2-MoE (no renorm, shared
    // gate); gpt-oss (bias, top-k then softmax); a routed scale.
    let cases = [
        (RouterOrder::SoftmaxTopK, true, false, 1.0, false),
        (RouterOrder::SoftmaxTopK, false, false, 1.0, true),
        (RouterOrder::TopKSoftmax, false, true, 1.0, false),
        (RouterOrder::SoftmaxTopK, true, true, 2.5, true),
    ];
    for (order, renorm, with_bias, scale, gate) in cases {
        let plan = RouterPlan { order, bias: with_bias, renorm, scale };
        let (x, wg, norm) = (rng.vec(t * dim, 1.0), rng.vec(e * dim, 0.5), rng.vec(dim, 1.0));
        let bias = rng.vec(e, 1.0);
        let gate_w = rng.vec(dim, 0.5);
        // The router buffer: rows, then the bias, then the shared gate row.
        let mut packed = wg.clone();
        if with_bias {
            packed.extend(&bias);
        }
        if gate {
            packed.extend(&gate_w);
        }
        let (xb, wb, nb, xnb, ib, wsb, shb) = (
            upload_f32(g, "x", &x),
            upload_f32(g, "wg", &packed),
            upload_f32(g, "norm", &norm),
            poisoned(g, "xn", t * dim),
            poisoned_u32(g, "ids", t * k),
            poisoned(g, "w", t * k),
            poisoned(g, "shared", t),
        );
        // Counts of layer 1 of 3 start from arbitrary values and gain one per choice.
        let hist0: Vec<u32> = (0..3 * e as u32).collect();
        let hb = upload_u32(g, "hist", &hist0);
        let spec = ops::RouterSpec { dim, experts: e, k, layer: 1, plan: &plan, shared_gate: gate };
        let d = ops::router(g, &wb, (&nb, eps), &xb, &xnb, (&ib, &wsb, &hb, gate.then_some(&shb)), &spec)
            .map_err(|e| e.to_string())?;
        g.run(&[&d], t as u32);
        let what = format!("router {order:?} renorm={renorm} bias={with_bias} scale={scale} shared gate={gate}");
        // The normalised rows (the experts' input) first; routing is then checked on the
        // GPU's own rows, so a near-tie cannot flip on a last-bit difference.
        let xn = read_f32(g, &xnb, t * dim);
        let want = cpu::rms_norm(&x, &norm, eps);
        close(&format!("{what}: rmsnorm"), &xn, &want, 1e-5, 1e-5)?;
        let (ids, ws) = cpu::route(&xn, dim, (&wg, with_bias.then_some(bias.as_slice())), e, k, &plan);
        same_u32(&format!("{what}: ids"), &read_u32(g, &ib, t * k), &ids)?;
        let mut hist = hist0.clone();
        ids.iter().for_each(|&i| hist[e + i as usize] += 1);
        same_u32(&format!("{what}: choice counts"), &read_u32(g, &hb, 3 * e), &hist)?;
        close(&format!("{what}: weights"), &read_f32(g, &wsb, t * k), &ws, 1e-6, 1e-5)?;
        if gate {
            let want: Vec<f32> = xn.chunks(dim).map(|r| cpu::sigmoid(cpu::matmul(r, 1, dim, &gate_w, 1)[0])).collect();
            close(&format!("{what}: shared gate"), &read_f32(g, &shb, t), &want, 1e-6, 1e-5)?;
        }
    }
    Ok(())
}

/// Random routing: k distinct experts per token, weights summing to 1.
pub fn routing(rng: &mut Rng, t: usize, e: usize, k: usize) -> (Vec<u32>, Vec<f32>) {
    let mut ids = Vec::new();
    let mut ws = Vec::new();
    for _ in 0..t {
        let mut chosen: Vec<u32> = Vec::new();
        while chosen.len() < k {
            let c = rng.below(e) as u32;
            if !chosen.contains(&c) {
                chosen.push(c);
            }
        }
        let w: Vec<f32> = (0..k).map(|_| rng.f32(0.5) + 0.6).collect();
        let s: f32 = w.iter().sum();
        ids.extend(chosen);
        ws.extend(w.iter().map(|x| x / s));
    }
    (ids, ws)
}

pub struct Experts {
    /// Per expert: gate [ff, dim], up [ff, dim], down [dim, ff].
    w1: Vec<Vec<f32>>,
    w3: Vec<Vec<f32>>,
    w2: Vec<Vec<f32>>,
    /// Stacked expert blocks: gate and up rows [2 ff, dim]; down [dim, ff].
    gate_up: GpuWeight,
    down: GpuWeight,
    /// Biases [E, 2 ff] (gate then up) and [E, dim], large enough to cross the clamped
    /// GLU's limit, and on the GPU.
    b13: Vec<f32>,
    b2: Vec<f32>,
    b13_buf: wgpu::Buffer,
    b2_buf: wgpu::Buffer,
    /// The packed blocks (host), for pools in another order.
    packed: [PackedBuffer; 2],
}

/// How the expert kernels find the experts: every expert in its own block (the identity
/// table of an all-resident layer), or a paged layer's pool: a random permutation of the
/// experts over fewer slots, with the rest (at least one) NO_SLOT, whose rows the kernels
/// must leave alone.
pub struct Slots {
    pub table: Vec<u32>,
    pub buf: wgpu::Buffer,
    pub gate_up: GpuWeight,
    pub down: GpuWeight,
}

impl Slots {
    pub fn present(&self, e: u32) -> bool {
        self.table[e as usize] != NO_SLOT
    }
}

pub fn slots(g: &Gpu, rng: &mut Rng, ex: &Experts, e: usize, paged: bool) -> Slots {
    if !paged {
        let table: Vec<u32> = (0..e as u32).collect();
        return Slots {
            buf: upload_u32(g, "slots", &table),
            table,
            gate_up: ex.gate_up.clone(),
            down: ex.down.clone(),
        };
    }
    let mut order: Vec<u32> = (0..e as u32).collect();
    for i in (1..e).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let n = (e * 2).div_ceil(3).min(e - 1); // slots
    let mut table = vec![NO_SLOT; e];
    // Expert order[i] sits in slot n-1-i (a reversal on top of the shuffle).
    order.iter().take(n).enumerate().for_each(|(i, &x)| table[x as usize] = (n - 1 - i) as u32);
    let pool = |p: &PackedBuffer| {
        let stride = p.expert_stride as usize * 4;
        let mut bytes = vec![0xffu8; n * stride]; // unused slots hold garbage
        for (x, &s) in table.iter().enumerate() {
            if s != NO_SLOT {
                bytes[s as usize * stride..(s as usize + 1) * stride]
                    .copy_from_slice(&p.bytes[x * stride..(x + 1) * stride]);
            }
        }
        g.upload_packed("pool", &PackedBuffer { bytes, experts: n as u32, ..p.clone() }).unwrap()
    };
    Slots { buf: upload_u32(g, "slots", &table), gate_up: pool(&ex.packed[0]), down: pool(&ex.packed[1]), table }
}

/// The activations the expert kernels have, cycled through by the checks.
pub const ACTS: [Act; 3] = [Act::SiluGlu, Act::GeluTanhGlu, Act::ClampedSwiGlu { alpha: 1.702, limit: 7.0 }];

pub fn experts(g: &Gpu, rng: &mut Rng, e: usize, dim: usize, ff: usize, dt: DType) -> Experts {
    let mut raw = |n| random_blocks(rng, dt, n, 0.3);
    let blocks: Vec<[Vec<u8>; 3]> = (0..e).map(|_| [raw(ff * dim), raw(ff * dim), raw(dim * ff)]).collect();
    let gu: Vec<Vec<&[u8]>> = blocks.iter().map(|b| vec![b[0].as_slice(), b[1].as_slice()]).collect();
    let dn: Vec<Vec<&[u8]>> = blocks.iter().map(|b| vec![b[2].as_slice()]).collect();
    let vals = |i: usize| blocks.iter().map(|b| to_f32(dt, &b[i])).collect();
    let (b13, b2) = (rng.vec(e * 2 * ff, 10.0), rng.vec(e * dim, 1.0));
    let packed = [pack_experts(dt, &gu).unwrap(), pack_experts(dt, &dn).unwrap()];
    Experts {
        w1: vals(0),
        w3: vals(1),
        w2: vals(2),
        gate_up: g.upload_packed("gate|up", &packed[0]).unwrap(),
        down: g.upload_packed("down", &packed[1]).unwrap(),
        packed,
        b13_buf: upload_f32(g, "gate/up biases", &b13),
        b2_buf: upload_f32(g, "down biases", &b2),
        b13,
        b2,
    }
}

/// Reference activation of assignment (token t, expert id).
pub fn act_ref(
    x: &[f32],
    t: usize,
    id: u32,
    ex: &Experts,
    (dim, ff): (usize, usize),
    act: Act,
    bias: bool,
) -> Vec<f32> {
    let e = id as usize;
    let b = bias.then(|| &ex.b13[e * 2 * ff..(e + 1) * 2 * ff]);
    cpu::glu_act(&x[t * dim..(t + 1) * dim], &ex.w1[e], &ex.w3[e], ff, act, b)
}

pub fn down_ref(a: &[f32], id: u32, ex: &Experts, dim: usize, ff: usize, bias: bool) -> Vec<f32> {
    let mut y = cpu::matmul(a, 1, ff, &ex.w2[id as usize], dim);
    if bias {
        let e = id as usize;
        y.iter_mut().zip(&ex.b2[e * dim..(e + 1) * dim]).for_each(|(y, b)| *y += b);
    }
    y
}

fn spec(dim: usize, ff: usize, k: usize, e: usize, act: Act) -> ops::ExpertSpec {
    ops::ExpertSpec { dim, ff, k, experts: e, act }
}

pub fn check_moe_gemv_gate_up(g: &Gpu, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let (t, e, k) = (3, 6, 2);
    // dim 40 takes the 4-wide loop for plain floats, 64 the whole-block path; the
    // activation and the biases vary with the type.
    for (i, (dt, base)) in DTYPES.iter().flat_map(|&d| [(d, 40), (d, 64)]).enumerate() {
        let (act, bias) = (ACTS[i % 3], i % 2 == 0 || i % 3 == 2);
        let (dim, ff) = (inner_dim(dt, base), 52);
        let ex = experts(g, &mut rng, e, dim, inner_dim(dt, ff), dt);
        let ff = inner_dim(dt, ff);
        let x = rng.vec(t * dim, 1.0);
        let (ids, _) = routing(&mut rng, t, e, k);
        let sl = slots(g, &mut rng, &ex, e, i % 2 == 1);
        // Assignments of experts without a slot keep their (poisoned) rows.
        let want: Vec<f32> = (0..t * k)
            .flat_map(|a| match sl.present(ids[a]) {
                true => act_ref(&x, a / k, ids[a], &ex, (dim, ff), act, bias),
                false => vec![f32::NAN; ff],
            })
            .collect();
        let (xb, ib, ab) = (upload_f32(g, "x", &x), upload_u32(g, "ids", &ids), poisoned(g, "act", t * k * ff));
        let bb = bias.then_some(&ex.b13_buf);
        let d = ops::moe_gemv_gate_up(g, (&sl.gate_up, &sl.buf), &xb, &ib, &ab, bb, &spec(dim, ff, k, e, act))
            .map_err(|e| e.to_string())?;
        g.run(&[&d], t as u32);
        let what = format!("moe_gemv_gate_up {dt:?} {act:?} bias={bias} slots {:?}", sl.table);
        close_kept(&what, &read_f32(g, &ab, t * k * ff), &want, 1e-5, 1e-4)?;
    }
    Ok(())
}

pub fn check_moe_gemv_down(g: &Gpu, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let (t, e, k) = (3, 6, 2);
    for (i, (dt, base)) in DTYPES.iter().flat_map(|&d| [(d, 52), (d, 64)]).enumerate() {
        let (bias, alpha) = (i % 2 == 0, if i % 3 == 1 { 0.5 } else { 1.0 });
        let (dim, ff) = (40, inner_dim(dt, base));
        let ex = experts(g, &mut rng, e, inner_dim(dt, dim), ff, dt);
        let dim = inner_dim(dt, dim);
        let act = rng.vec(t * k * ff, 1.0);
        let x0 = rng.vec(t * dim, 1.0);
        let (ids, ws) = routing(&mut rng, t, e, k);
        let sl = slots(g, &mut rng, &ex, e, (i / 2) % 2 == 1); // with and without biases
        let mut want = x0.clone();
        // Experts without a slot add nothing (another round adds their share).
        for a in (0..t * k).filter(|&a| sl.present(ids[a])) {
            let y = down_ref(&act[a * ff..(a + 1) * ff], ids[a], &ex, dim, ff, bias);
            let tt = a / k;
            want[tt * dim..(tt + 1) * dim].iter_mut().zip(&y).for_each(|(w, y)| *w += alpha * ws[a] * y);
        }
        let (ab, ib, wb, xb) =
            (upload_f32(g, "act", &act), upload_u32(g, "ids", &ids), upload_f32(g, "w", &ws), upload_f32(g, "x", &x0));
        let es = spec(dim, ff, k, e, Act::SiluGlu);
        let d =
            ops::moe_gemv_down(g, (&sl.down, &sl.buf), &ab, (&ib, &wb), &xb, bias.then_some(&ex.b2_buf), &es, alpha)
                .map_err(|e| e.to_string())?;
        g.run(&[&d], t as u32);
        let what = format!("moe_gemv_down {dt:?} bias={bias} alpha={alpha} slots {:?}", sl.table);
        close(&what, &read_f32(g, &xb, t * dim), &want, 1e-5, 1e-4)?;
    }
    Ok(())
}

pub fn check_moe_group(g: &Gpu, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let (t, e, k) = (37, 8, 3);
    let (mut ids, _) = routing(&mut rng, t, e, k);
    // Leave one expert unused to cover empty groups.
    ids.iter_mut().for_each(|i| {
        if *i == 5 {
            *i = 6
        }
    });
    let (sorted, pos_of, starts) = cpu::group_by_expert(&ids, e);
    let (ib, sb, pb, stb, s) = (
        upload_u32(g, "ids", &ids),
        poisoned_u32(g, "sorted", t * k),
        poisoned_u32(g, "pos", t * k),
        poisoned_u32(g, "starts", e + 1),
        step(g, t, 0),
    );
    let d = ops::moe_group(g, &s, &ib, &sb, &pb, &stb, e, k).map_err(|e| e.to_string())?;
    g.run(&[&d], t as u32);
    same_u32("moe_group sorted", &read_u32(g, &sb, t * k), &sorted)?;
    same_u32("moe_group pos_of", &read_u32(g, &pb, t * k), &pos_of)?;
    same_u32("moe_group starts", &read_u32(g, &stb, e + 1), &starts)
}

pub fn check_moe_gemm_gate_up(g: &Gpu, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    // 37 tokens x 2 = 74 assignments over 5 experts: several experts span 2-3 row tiles.
    let (t, e, k) = (37, 5, 2);
    for (i, dt) in DTYPES.iter().copied().enumerate() {
        let (act, bias) = (ACTS[i % 3], i % 2 == 0 || i % 3 == 2);
        let (dim, ff) = (inner_dim(dt, 40), inner_dim(dt, 52));
        let ex = experts(g, &mut rng, e, dim, ff, dt);
        let x = rng.vec(t * dim, 1.0);
        let (ids, _) = routing(&mut rng, t, e, k);
        let (sorted, _, starts) = cpu::group_by_expert(&ids, e);
        let sl = slots(g, &mut rng, &ex, e, i % 2 == 1);
        let want: Vec<f32> = sorted
            .iter()
            .flat_map(|&a| match sl.present(ids[a as usize]) {
                true => act_ref(&x, a as usize / k, ids[a as usize], &ex, (dim, ff), act, bias),
                false => vec![f32::NAN; ff],
            })
            .collect();
        let (xb, sb, stb, ab) = (
            upload_f32(g, "x", &x),
            upload_u32(g, "sorted", &sorted),
            upload_u32(g, "starts", &starts),
            poisoned(g, "act", t * k * ff),
        );
        let bb = bias.then_some(&ex.b13_buf);
        let d = ops::moe_gemm_gate_up(g, (&sl.gate_up, &sl.buf), &xb, (&sb, &stb), &ab, bb, &spec(dim, ff, k, e, act))
            .map_err(|e| e.to_string())?;
        g.run(&[&d], t as u32);
        let what = format!("moe_gemm_gate_up {dt:?} {act:?} bias={bias} slots {:?}", sl.table);
        close_kept(&what, &read_f32(g, &ab, t * k * ff), &want, 1e-5, 1e-4)?;
    }
    Ok(())
}

pub fn check_moe_gemm_down(g: &Gpu, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let (t, e, k) = (37, 5, 2);
    for (i, dt) in DTYPES.iter().copied().enumerate() {
        let bias = i % 2 == 0;
        let (dim, ff) = (inner_dim(dt, 40), inner_dim(dt, 52));
        let ex = experts(g, &mut rng, e, dim, ff, dt);
        let (ids, _) = routing(&mut rng, t, e, k);
        let (sorted, _, starts) = cpu::group_by_expert(&ids, e);
        let act = rng.vec(t * k * ff, 1.0); // rows in sorted order
        let sl = slots(g, &mut rng, &ex, e, (i / 2) % 2 == 1); // with and without biases
        let want: Vec<f32> = (0..t * k)
            .flat_map(|q| match sl.present(ids[sorted[q] as usize]) {
                true => down_ref(&act[q * ff..(q + 1) * ff], ids[sorted[q] as usize], &ex, dim, ff, bias),
                false => vec![f32::NAN; dim],
            })
            .collect();
        let (ab, stb, yb) =
            (upload_f32(g, "act", &act), upload_u32(g, "starts", &starts), poisoned(g, "y", t * k * dim));
        let es = spec(dim, ff, k, e, Act::SiluGlu);
        let d = ops::moe_gemm_down(g, (&sl.down, &sl.buf), &ab, &stb, &yb, bias.then_some(&ex.b2_buf), &es)
            .map_err(|e| e.to_string())?;
        g.run(&[&d], t as u32);
        let what = format!("moe_gemm_down {dt:?} bias={bias} slots {:?}", sl.table);
        close_kept(&what, &read_f32(g, &yb, t * k * dim), &want, 1e-5, 1e-4)?;
    }
    Ok(())
}

pub fn check_moe_combine(g: &Gpu, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let (t, e, k, dim, alpha) = (9, 4, 2, 300, 0.75);
    let (ids, ws) = routing(&mut rng, t, e, k);
    let (_, pos_of, _) = cpu::group_by_expert(&ids, e);
    let y = rng.vec(t * k * dim, 1.0);
    let x0 = rng.vec(t * dim, 1.0);
    let mut want = x0.clone();
    for a in 0..t * k {
        let q = pos_of[a] as usize;
        for n in 0..dim {
            want[(a / k) * dim + n] += alpha * ws[a] * y[q * dim + n];
        }
    }
    let (yb, pb, wb, xb) =
        (upload_f32(g, "y", &y), upload_u32(g, "pos", &pos_of), upload_f32(g, "w", &ws), upload_f32(g, "x", &x0));
    let d = ops::moe_combine(g, &yb, &pb, &wb, &xb, dim, k, alpha).map_err(|e| e.to_string())?;
    g.run(&[&d], t as u32);
    close("moe_combine", &read_f32(g, &xb, t * dim), &want, 1e-5, 1e-5).map(|_| ())
}

/// `close`, where a NaN expected means the kernel must have left the poisoned value.
pub fn close_kept(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) -> Result<f32, String> {
    if let Some(i) = want.iter().zip(got).position(|(w, g)| w.is_nan() && !g.is_nan()) {
        return Err(format!("{what}: element {i} is {}, but its expert has no slot: it should be left alone", got[i]));
    }
    let (g, w): (Vec<f32>, Vec<f32>) = got.iter().zip(want).filter(|(_, w)| !w.is_nan()).map(|(g, w)| (*g, *w)).unzip();
    close(what, &g, &w, atol, rtol)
}
