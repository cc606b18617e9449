//! Each kernel's uniform parameters as a `#[repr(C)]` Pod struct, field for field the
//! `struct Params` of its .wgsl file (all 4-byte scalars, padded to 16 bytes). The test
//! `params_mirror_wgsl` checks every struct's field names and order against the shader
//! source, so the two cannot drift apart.

/// A kernel parameter block: its bytes go into the kernel's binding-0 uniform.
pub trait KernelParams: bytemuck::Pod {
    /// Field names in order, as in the WGSL struct.
    const FIELDS: &'static [&'static str];
}

macro_rules! params {
    ($($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $field:ident : $ty:ty),* $(,)? })*) => {$(
        $(#[$m])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
        pub struct $name { $($(#[$fm])* pub $field: $ty),* }
        impl KernelParams for $name {
            const FIELDS: &'static [&'static str] = &[$(stringify!($field)),*];
        }
        const _: () = assert!(std::mem::size_of::<$name>() % 16 == 0, "uniform blocks are 16-byte multiples");
    )*};
}

params! {
    /// embed.wgsl: x[t] = E[tokens[t]] * scale.
    EmbedParams { dim: u32, vocab: u32, s_off: u32, h_off: u32, scale: f32, row0: u32, rows: u32, _pad0: u32 }

    /// rmsnorm.wgsl.
    RmsNormParams { dim: u32, last_only: u32, eps: f32, _pad: u32 }

    /// post_norm.wgsl: y += alpha * rmsnorm(b) * g[g_off..]; b cleared.
    PostNormParams { dim: u32, eps: f32, alpha: f32, g_off: u32 }

    /// gemv.wgsl and gemm.wgsl: y[t, y_off + n] = alpha * (W x + b)[n] (+ y when accumulating).
    MatmulParams {
        n: u32,
        k: u32,
        accumulate: u32,
        y_stride: u32,
        y_off: u32,
        s_off: u32,
        h_off: u32,
        /// 1: add bias[y_off + n] (the bias buffer is indexed by output column).
        bias: u32,
        alpha: f32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    }

    /// qkv_rope.wgsl.
    QkvRopeParams {
        n: u32,
        k: u32,
        y_off: u32,
        s_off: u32,
        h_off: u32,
        heads: u32,
        kv_heads: u32,
        head_dim: u32,
        ctx: u32,
        /// 1: add bias[y_off + n] before rotating.
        bias: u32,
        _pad0: u32,
        _pad1: u32,
    }

    /// rope_kv.wgsl.
    RopeKvParams {
        heads: u32,
        kv_heads: u32,
        head_dim: u32,
        ctx: u32,
        interleaved: u32,
        /// 1: RMSNorm each q and k head first (weights q [d] then k [d]).
        norm: u32,
        eps: f32,
        _pad0: u32,
    }

    /// qk_norm.wgsl (RMSNorm over the whole q and the whole k projection).
    QkNormParams { heads: u32, kv_heads: u32, head_dim: u32, eps: f32 }

    /// attention.wgsl, attention_split.wgsl, attention_combine.wgsl.
    AttentionParams {
        heads: u32,
        kv_heads: u32,
        head_dim: u32,
        ctx: u32,
        /// 0: no sliding window.
        window: u32,
        scale: f32,
        /// KV positions per split-K chunk, and chunk slots per (token, head).
        chunk: u32,
        chunks: u32,
        /// 1: each head's sink logit joins the softmax.
        sinks: u32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    }

    /// router.wgsl.
    RouterParams {
        dim: u32,
        experts: u32,
        k: u32,
        /// 1: renormalise the chosen softmax weights.
        norm: u32,
        layer: u32,
        eps: f32,
        /// 0: softmax then top-k; 1: top-k of the logits then a softmax over them.
        order: u32,
        /// 1: a bias [E] follows the router rows.
        bias: u32,
        scale: f32,
        /// 1: a shared-expert gate row [D] follows; sigmoid(row · xn) goes to `shared`.
        shared_gate: u32,
        _pad0: u32,
        _pad1: u32,
    }

    /// moe_gemv_gate_up.wgsl and moe_gemm_gate_up.wgsl.
    MoeGateUpParams {
        dim: u32,
        ff: u32,
        k: u32,
        experts: u32,
        s_off: u32,
        h_off: u32,
        e_stride: u32,
        /// 1: biases [E, 2 ff] (gate then up).
        bias: u32,
        act_alpha: f32,
        act_limit: f32,
        _pad0: u32,
        _pad1: u32,
    }

    /// moe_gemv_down.wgsl and moe_gemm_down.wgsl.
    MoeDownParams {
        dim: u32,
        ff: u32,
        k: u32,
        experts: u32,
        s_off: u32,
        h_off: u32,
        e_stride: u32,
        /// 1: biases [E, dim].
        bias: u32,
        /// Multiplies what is added to the residual (moe_gemv_down; the residual scale).
        alpha: f32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    }

    /// moe_group.wgsl.
    MoeGroupParams { experts: u32, k: u32, _pad0: u32, _pad1: u32 }

    /// moe_combine.wgsl.
    MoeCombineParams { dim: u32, k: u32, alpha: f32, _pad0: u32 }

    /// argmax.wgsl.
    ArgmaxParams { n: u32, _pad0: u32, _pad1: u32, _pad2: u32 }

    /// copy.wgsl.
    CopyParams { n: u32, _pad0: u32, _pad1: u32, _pad2: u32 }
}
