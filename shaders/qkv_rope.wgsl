// Decode q/k/v projection fused with rotary embedding and the KV-cache write: the matmul
// of gemv.wgsl (lib/gemv_rows.wgsl) over W = [Wq; Wk; Wv] (or one of them, from column
// y_off), and instead of storing q, k, v for rope_kv.wgsl to rotate and copy:
//   q columns  -> rotated, into qkv [T, (H + 2*KVH) * d] (attention reads q there)
//   k columns  -> rotated, into k_cache [KVH, ctx, d] at position pos0 + t
//   v columns  -> into v_cache [KVH, ctx, d] at position pos0 + t
//   (caches as f32 words, or with KVF16 one word of two f16 per pair of columns)
// Rotary pairs are adjacent columns (2i, 2i + 1) of a head: GGUF's layout, and the one the
// GPU weight buffers give every model (src/weights.rs reorders Hugging Face q/k rows), so
// both halves of a pair are in the same thread's NR = 4 consecutive rows.
//   table: [ctx, d/2] of (cos, sin); biases (with `bias`) by column of q|k|v, added before
//   rotating. Grid: x = ceil(N / ROWS) (folded), y = T.

struct Params {
    n: u32,        // rows of this matmul
    k: u32,        // hidden size
    y_off: u32,    // column of the first row within q|k|v
    s_off: u32,
    h_off: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    ctx: u32,
    bias: u32,     // 1: add biases[column] before rotating (q/k/v biases)
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> table: array<vec2<f32>>;
@group(0) @binding(5) var<storage, read_write> qkv: array<f32>;
@group(0) @binding(6) var<storage, read_write> k_cache: array<u32>;
@group(0) @binding(7) var<storage, read_write> v_cache: array<u32>;
@group(0) @binding(8) var<storage, read> biases: array<f32>;   // [(H + 2*KVH) * d]

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row0 = linear_x(wid, nwg) * ROWS;
    if (row0 >= p.n) {
        return;
    }
    let t = wid.y;
    let v = gemv_rows(WLayout(0u, p.s_off, p.h_off), row0, p.n, p.k, t, lid);
    if (lid % LANES != 0u) {
        return;
    }
    let d = p.head_dim;
    let q_dim = p.heads * d;
    let kv_dim = p.kv_heads * d;
    let pos = step.pos0 + t;
    for (var r = 0u; r < NR; r += 2u) {
        let row = row0 + (lid / LANES) * NR + r;
        if (row >= p.n) {
            break;
        }
        let col = p.y_off + row;   // even: N, y_off and the group's first row are
        var a = v[r];
        var b = v[r + 1u];
        if (p.bias != 0u) {
            a += biases[col];
            b += biases[col + 1u];
        }
        if (col < q_dim + kv_dim) {
            let c = select(col - q_dim, col, col < q_dim);   // column within q or within k
            let cs = table[pos * (d / 2u) + (c % d) / 2u];
            let ra = a * cs.x - b * cs.y;
            let rb = b * cs.x + a * cs.y;
            if (col < q_dim) {
                let qi = t * (q_dim + 2u * kv_dim) + col;
                qkv[qi] = ra;
                qkv[qi + 1u] = rb;
            } else {
                let kc = col - q_dim;
                let ci = ((kc / d) * p.ctx + pos) * d + kc % d;
                store_pair_k(ci, ra, rb);
            }
        } else {
            let vc = col - q_dim - kv_dim;
            let ci = ((vc / d) * p.ctx + pos) * d + vc % d;
            store_pair_v(ci, a, b);
        }
    }
}

// Elements ci (even) and ci + 1 of a cache.
fn store_pair_k(ci: u32, a: f32, b: f32) {
    if (KVF16 != 0u) {
        k_cache[ci / 2u] = pack2x16float(vec2<f32>(a, b));
    } else {
        k_cache[ci] = bitcast<u32>(a);
        k_cache[ci + 1u] = bitcast<u32>(b);
    }
}

fn store_pair_v(ci: u32, a: f32, b: f32) {
    if (KVF16 != 0u) {
        v_cache[ci / 2u] = pack2x16float(vec2<f32>(a, b));
    } else {
        v_cache[ci] = bitcast<u32>(a);
        v_cache[ci + 1u] = bitcast<u32>(b);
    }
}
