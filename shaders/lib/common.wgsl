// Shared by every kernel (prepended by src/gpu/kernels.rs).
//
// Step: values that change per forward step, written once per step into one uniform
// buffer that all kernels of the step share.
struct Step {
    n_rows: u32,   // tokens in this step (T)
    pos0: u32,     // position of the first of them
    _pad0: u32,
    _pad1: u32,
}

// Storage type of a weight buffer (src/tensor.rs DType::shader_code). Weights are always
// bound as array<u32>: f32 as bit patterns, f16/bf16 two per word, low half first.
// No shader-f16 anywhere: halves are widened to f32 in registers.
const DT_F32: u32 = 0u;
const DT_F16: u32 = 1u;
const DT_BF16: u32 = 2u;
override WDTYPE: u32 = 0u;

// KV cache storage (src/gpu/kernels.rs Variant::kv16): 0, f32 words; 1, f16 pairs packed
// two per word with pack2x16float (low half first). Caches are bound as u32 words either way.
override KVF16: u32 = 0u;

// Expert slot tables (the expert kernels' slot_of: [E] u32): where expert e's weights sit
// in the layer's pool of slots, or NO_SLOT when it is not resident (or not computed in this
// round of a paged layer, src/gpu/paging.rs): its rows are then left as they are.
const NO_SLOT: u32 = 0xffffffffu;

// Two 16-bit weights packed in one little-endian word.
fn half2(u: u32) -> vec2<f32> {
    if (WDTYPE == DT_BF16) {
        return vec2<f32>(bitcast<f32>(u << 16u), bitcast<f32>(u & 0xffff0000u));
    }
    return unpack2x16float(u);
}

// Large grids are folded into x and z (65535 workgroups per dimension); this is the
// unfolded x index.
fn linear_x(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.z * nwg.x;
}

fn silu(x: f32) -> f32 {
    return x / (1.0 + exp(-x));
}

fn sigmoid(x: f32) -> f32 {
    return 1.0 / (1.0 + exp(-x));
}

// GELU with the tanh approximation (transformers' gelu_pytorch_tanh).
fn gelu_tanh(x: f32) -> f32 {
    // tanh saturates long before 15; the clamp keeps drivers' exp-based tanh finite.
    return 0.5 * x * (1.0 + tanh(clamp(0.7978846 * (x + 0.044715 * x * x * x), -15.0, 15.0)));
}

// The FFN's gated activation (src/model/plan.rs Act::shader_code): 0 silu(g) * u,
// 1 gelu_tanh(g) * u, 2 gpt-oss's clamped GLU (u' + 1) * g' * sigmoid(alpha * g') with
// g' = min(g, limit), u' = clamp(u, -limit, limit).
override ACT: u32 = 0u;

fn glu(g: f32, u: f32, alpha: f32, limit: f32) -> f32 {
    if (ACT == 1u) {
        return gelu_tanh(g) * u;
    }
    if (ACT == 2u) {
        let gc = min(g, limit);
        let uc = clamp(u, -limit, limit);
        return (uc + 1.0) * (gc * sigmoid(gc * alpha));
    }
    return silu(g) * u;
}
