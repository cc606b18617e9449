// Weight loading, prepended to every kernel that reads a weight matrix. The kernel binds
// the weights as `w: array<vec4<u32>>` in the layout of src/quant.rs (every region and
// every stacked expert starts on a 16-byte boundary, so a quantization block's quants are
// one or two vector loads) and calls w4(l, i) for the
// four weights at element index i (a multiple of 4) of the matrix that starts at word
// l.base: its quants at l.base, high bits (Q6_K, Q5_*, Q3_K) at l.base + l.h_off, scales at
// l.base + l.s_off. (Stacked experts are one such matrix each, `base` apart.) Every
// format is widened to f32 in registers.

struct WLayout {
    base: u32,
    s_off: u32,
    h_off: u32,
}

// Word j of the weight buffer.
fn wu(j: u32) -> u32 {
    return w[j >> 2u][j & 3u];
}

const DT_Q8_0: u32 = 3u;
const DT_Q4_0: u32 = 4u;
const DT_Q4_1: u32 = 5u;
const DT_Q4_K: u32 = 6u;
const DT_Q6_K: u32 = 7u;
const DT_MXFP4: u32 = 8u;
const DT_Q5_0: u32 = 9u;
const DT_Q5_1: u32 = 10u;
const DT_Q5_K: u32 = 11u;
const DT_Q2_K: u32 = 12u;
const DT_Q3_K: u32 = 13u;
const DT_IQ4_NL: u32 = 14u;
const DT_IQ4_XS: u32 = 15u;

// IQ4_NL's 16 levels (ggml's kvalues_iq4nl: -127 -104 -83 -65 -49 -35 -22 -10 1 13 25 38
// 53 69 89 113) as signed bytes, four per word; a vector, so a runtime index is allowed.
const IQ4NL_LEVELS = vec4<u32>(0xBFAD9881u, 0xF6EADDCFu, 0x26190D01u, 0x71594535u);

fn iq4nl(n: u32) -> f32 {
    return sign_extend8((IQ4NL_LEVELS[n >> 2u] >> ((n & 3u) * 8u)) & 255u);
}

// The levels of the four nibbles in the low 16 bits of q.
fn iq4nl4(q: u32) -> vec4<f32> {
    return vec4<f32>(iq4nl(q & 15u), iq4nl((q >> 4u) & 15u), iq4nl((q >> 8u) & 15u), iq4nl((q >> 12u) & 15u));
}

// Four bits (the low 4 of h) as 0/1: the fifth bit of Q5_*, Q3_K's hmask bit.
fn bits4(h: u32) -> vec4<f32> {
    return vec4<f32>(f32(h & 1u), f32((h >> 1u) & 1u), f32((h >> 2u) & 1u), f32((h >> 3u) & 1u));
}

// Four 2-bit values from the low 8 bits of q (Q2_K, Q3_K).
fn crumbs4(q: u32) -> vec4<f32> {
    return vec4<f32>(f32(q & 3u), f32((q >> 2u) & 3u), f32((q >> 4u) & 3u), f32((q >> 6u) & 3u));
}

// The high bits of elements i..i+3 (the 1-bit high region: 32 per word).
fn high1(l: WLayout, i: u32) -> vec4<f32> {
    return bits4(wu(l.base + l.h_off + (i >> 5u)) >> (i & 28u));
}

// Q4_K/Q5_K: sub-block j's 6-bit (scale, min) from the 12 packed bytes at word sb.
fn k4_scale_min(sb: u32, j: u32) -> vec2<f32> {
    if (j < 4u) {
        return vec2<f32>(f32(scale_byte(sb, j) & 63u), f32(scale_byte(sb, j + 4u) & 63u));
    }
    return vec2<f32>(f32((scale_byte(sb, j + 4u) & 15u) | ((scale_byte(sb, j - 4u) >> 6u) << 4u)),
                     f32((scale_byte(sb, j + 4u) >> 4u) | ((scale_byte(sb, j) >> 6u) << 4u)));
}

// MXFP4: an E2M1 nibble's value, doubled (ggml's kvalues_mxfp4: 0 1 2 3 4 6 8 12, and
// negated with the top bit): exponent bits e = (n >> 1) & 3, mantissa bit m = n & 1.
fn e2m1x2(n: u32) -> f32 {
    let e = (n >> 1u) & 3u;
    let m = f32(n & 1u);
    let p = f32(1u << e);
    let mag = select(p + m * p * 0.5, m, e == 0u);
    return select(mag, -mag, (n & 8u) != 0u);
}

fn e2m1x2_4(q: u32) -> vec4<f32> {
    return vec4<f32>(e2m1x2(q & 15u), e2m1x2((q >> 4u) & 15u), e2m1x2((q >> 8u) & 15u), e2m1x2((q >> 12u) & 15u));
}

// Half of MXFP4's E8M0 block scale 2^(e - 127) (ggml_e8m0_to_fp32_half), from byte `b`.
fn e8m0_half(b: u32) -> f32 {
    return bitcast<f32>(select((b - 1u) << 23u, 0x00200000u << b, b < 2u));
}

// Four 4-bit values from the low 16 bits of q.
fn nibbles4(q: u32) -> vec4<f32> {
    return vec4<f32>(f32(q & 15u), f32((q >> 4u) & 15u), f32((q >> 8u) & 15u), f32((q >> 12u) & 15u));
}

// Byte k of the scale region, counting from word `base`.
fn scale_byte(base: u32, k: u32) -> u32 {
    return (wu(base + (k >> 2u)) >> ((k & 3u) * 8u)) & 255u;
}

fn sign_extend8(b: u32) -> f32 {
    return f32(bitcast<i32>(b << 24u) >> 24u);
}

// The four signed bytes of a word (Q8_0 quants), low byte first.
fn bytes4(q: u32) -> vec4<f32> {
    return vec4<f32>(sign_extend8(q & 255u), sign_extend8((q >> 8u) & 255u),
                     sign_extend8((q >> 16u) & 255u), sign_extend8(q >> 24u));
}

fn w4(l: WLayout, i: u32) -> vec4<f32> {
    let q0 = l.base;
    let s0 = l.base + l.s_off;
    switch WDTYPE {
        case 0u: {   // F32: one aligned vector (q0 and i are multiples of 4)
            return bitcast<vec4<f32>>(w[(q0 + i) >> 2u]);
        }
        case 1u, 2u: {   // F16, BF16: two per word, half of an aligned vector
            let j = q0 + (i >> 1u);
            let v = w[j >> 2u];
            let h = select(v.zw, v.xy, (j & 2u) == 0u);
            return vec4<f32>(half2(h.x), half2(h.y));
        }
        case 3u: {   // Q8_0: x * d
            let q = wu(q0 + (i >> 2u));
            let d = unpack2x16float(wu(s0 + (i >> 6u)))[(i >> 5u) & 1u];
            return vec4<f32>(sign_extend8(q & 255u), sign_extend8((q >> 8u) & 255u),
                             sign_extend8((q >> 16u) & 255u), sign_extend8(q >> 24u)) * d;
        }
        case 4u: {   // Q4_0: d * (q - 8)
            let q = nibbles4(wu(q0 + (i >> 3u)) >> ((i & 4u) * 4u));
            let d = unpack2x16float(wu(s0 + (i >> 6u)))[(i >> 5u) & 1u];
            return d * (q - vec4<f32>(8.0));
        }
        case 5u: {   // Q4_1: d * q + m
            let q = nibbles4(wu(q0 + (i >> 3u)) >> ((i & 4u) * 4u));
            let dm = unpack2x16float(wu(s0 + (i >> 5u)));
            return dm.x * q + vec4<f32>(dm.y);
        }
        case 6u, 11u: {   // Q4_K, Q5_K: (d * scale_j) * q - dmin * min_j, j the 32-element sub-block
            var q = nibbles4(wu(q0 + (i >> 3u)) >> ((i & 4u) * 4u));
            if (WDTYPE == DT_Q5_K) {
                q += 16.0 * high1(l, i);
            }
            let base = s0 + (i >> 8u) * 4u;
            let dd = unpack2x16float(wu(base));
            let sm = k4_scale_min(base + 1u, (i >> 5u) & 7u);
            return (dd.x * sm.x) * q - vec4<f32>(dd.y * sm.y);
        }
        case 7u: {   // Q6_K: (d * scale_g) * (q - 32), g the 16-element group
            let lo = wu(q0 + (i >> 3u)) >> ((i & 4u) * 4u);
            let hi = wu(l.base + l.h_off + (i >> 4u)) >> ((i & 12u) * 2u);
            let q = vec4<f32>(f32((lo & 15u) | ((hi & 3u) << 4u)), f32(((lo >> 4u) & 15u) | (((hi >> 2u) & 3u) << 4u)),
                              f32(((lo >> 8u) & 15u) | (((hi >> 4u) & 3u) << 4u)), f32(((lo >> 12u) & 15u) | (((hi >> 6u) & 3u) << 4u)));
            let base = s0 + (i >> 8u) * 5u;
            let sc = sign_extend8(scale_byte(base, (i >> 4u) & 15u));
            let d = unpack2x16float(wu(base + 4u)).x;
            return (d * sc) * (q - vec4<f32>(32.0));
        }
        case 8u: {   // MXFP4: e8m0_half(scale byte) * doubled E2M1 value
            let q = e2m1x2_4(wu(q0 + (i >> 3u)) >> ((i & 4u) * 4u));
            return e8m0_half(scale_byte(s0, i >> 5u)) * q;
        }
        case 9u: {   // Q5_0: d * (q - 16), q = nibble + 16 * high bit
            let q = nibbles4(wu(q0 + (i >> 3u)) >> ((i & 4u) * 4u)) + 16.0 * high1(l, i);
            let d = unpack2x16float(wu(s0 + (i >> 6u)))[(i >> 5u) & 1u];
            return d * (q - vec4<f32>(16.0));
        }
        case 10u: {   // Q5_1: d * q + m
            let q = nibbles4(wu(q0 + (i >> 3u)) >> ((i & 4u) * 4u)) + 16.0 * high1(l, i);
            let dm = unpack2x16float(wu(s0 + (i >> 5u)));
            return dm.x * q + vec4<f32>(dm.y);
        }
        case 12u: {   // Q2_K: (d * scale_g) * q - dmin * min_g, g the 16-element group
            let q = crumbs4(wu(q0 + (i >> 4u)) >> ((i & 12u) * 2u));
            let base = s0 + (i >> 8u) * 5u;
            let sc = scale_byte(base, (i >> 4u) & 15u);
            let dd = unpack2x16float(wu(base + 4u));
            return (dd.x * f32(sc & 15u)) * q - vec4<f32>(dd.y * f32(sc >> 4u));
        }
        case 13u: {   // Q3_K: (d * scale_g) * (q - 4 unless the hmask bit is set)
            let q = crumbs4(wu(q0 + (i >> 4u)) >> ((i & 12u) * 2u)) + 4.0 * high1(l, i) - vec4<f32>(4.0);
            let base = s0 + (i >> 8u) * 5u;
            let sc = sign_extend8(scale_byte(base, (i >> 4u) & 15u));
            let d = unpack2x16float(wu(base + 4u)).x;
            return (d * sc) * q;
        }
        case 14u: {   // IQ4_NL: d * level[q]
            let q = iq4nl4(wu(q0 + (i >> 3u)) >> ((i & 4u) * 4u));
            let d = unpack2x16float(wu(s0 + (i >> 6u)))[(i >> 5u) & 1u];
            return d * q;
        }
        case 15u: {   // IQ4_XS: (d * scale_j) * level[q], j the 32-element sub-block
            let q = iq4nl4(wu(q0 + (i >> 3u)) >> ((i & 4u) * 4u));
            let base = s0 + (i >> 8u) * 3u;
            let d = unpack2x16float(wu(base)).x;
            return (d * sign_extend8(scale_byte(base + 1u, (i >> 5u) & 7u))) * q;
        }
        default: {
            return vec4<f32>(0.0);
        }
    }
}

// Eight 4-bit values of one word as two vec4s (elements 8w..8w+3 and 8w+4..8w+7).
fn nib_lo(q: u32) -> vec4<f32> {
    return vec4<f32>(f32(q & 15u), f32((q >> 4u) & 15u), f32((q >> 8u) & 15u), f32((q >> 12u) & 15u));
}
fn nib_hi(q: u32) -> vec4<f32> {
    return vec4<f32>(f32((q >> 16u) & 15u), f32((q >> 20u) & 15u), f32((q >> 24u) & 15u), f32(q >> 28u));
}

// The 32 nibbles of q (elements in order) dotted with xv.
fn nib_dot(q: vec4<u32>, xv: array<vec4<f32>, 8>) -> f32 {
    return dot(nib_lo(q.x), xv[0]) + dot(nib_hi(q.x), xv[1]) + dot(nib_lo(q.y), xv[2])
        + dot(nib_hi(q.y), xv[3]) + dot(nib_lo(q.z), xv[4]) + dot(nib_hi(q.z), xv[5])
        + dot(nib_lo(q.w), xv[6]) + dot(nib_hi(q.w), xv[7]);
}

fn sum4(v: vec4<f32>) -> f32 {
    return v.x + v.y + v.z + v.w;
}

// The sum of 32 x values, for wdot32 (computed once per block of x, shared by all rows).
fn xsum32(xv: array<vec4<f32>, 8>) -> f32 {
    var s = vec4<f32>(0.0);
    for (var j = 0u; j < 8u; j++) {
        s += xv[j];
    }
    return sum4(s);
}

// The dot product of the 32 weights at element i (a multiple of 32) with x[0..8] (as
// vec4s; sx = xsum32 of them): one quantization block (or sub-block) per call, its scale
// read once and its quants a whole word at a time. For formats with an offset (Q4_0's 8,
// Q4_1's and Q4_K's mins) the offset is applied once to the sum of x, not to every weight.
fn wdot32(l: WLayout, i: u32, xv: array<vec4<f32>, 8>, sx: f32) -> f32 {
    let q0 = l.base;
    let s0 = l.base + l.s_off;
    switch WDTYPE {
        case 3u: {   // Q8_0
            let d = unpack2x16float(wu(s0 + (i >> 6u)))[(i >> 5u) & 1u];
            // The block's 32 bytes: two aligned vector loads.
            let qa = w[(q0 + (i >> 2u)) >> 2u];
            let qb = w[((q0 + (i >> 2u)) >> 2u) + 1u];
            let acc = dot(bytes4(qa.x), xv[0]) + dot(bytes4(qa.y), xv[1]) + dot(bytes4(qa.z), xv[2])
                + dot(bytes4(qa.w), xv[3]) + dot(bytes4(qb.x), xv[4]) + dot(bytes4(qb.y), xv[5])
                + dot(bytes4(qb.z), xv[6]) + dot(bytes4(qb.w), xv[7]);
            return d * acc;
        }
        case 4u, 5u, 6u: {   // Q4_0, Q4_1, Q4_K: 32 nibbles in 4 words, one (scale, offset)
            // The block's 16 quant bytes: one aligned vector load.
            let q = w[(q0 + (i >> 3u)) >> 2u];
            let qx = nib_dot(q, xv);
            if (WDTYPE == 4u) {
                let d = unpack2x16float(wu(s0 + (i >> 6u)))[(i >> 5u) & 1u];
                return d * (qx - 8.0 * sx);
            }
            if (WDTYPE == 5u) {
                let dm = unpack2x16float(wu(s0 + (i >> 5u)));
                return dm.x * qx + dm.y * sx;
            }
            let base = s0 + (i >> 8u) * 4u;
            let dd = unpack2x16float(wu(base));
            let sm = k4_scale_min(base + 1u, (i >> 5u) & 7u);
            return (dd.x * sm.x) * qx - (dd.y * sm.y) * sx;
        }
        case 9u, 10u, 11u: {   // Q5_0, Q5_1, Q5_K: Q4's nibbles plus 16 * the block's high bits
            let q = w[(q0 + (i >> 3u)) >> 2u];
            let h = wu(l.base + l.h_off + (i >> 5u));
            var hx = 0.0;
            for (var j = 0u; j < 8u; j++) {
                hx += dot(bits4(h >> (4u * j)), xv[j]);
            }
            let qx = nib_dot(q, xv) + 16.0 * hx;
            if (WDTYPE == DT_Q5_0) {
                let d = unpack2x16float(wu(s0 + (i >> 6u)))[(i >> 5u) & 1u];
                return d * (qx - 16.0 * sx);
            }
            if (WDTYPE == DT_Q5_1) {
                let dm = unpack2x16float(wu(s0 + (i >> 5u)));
                return dm.x * qx + dm.y * sx;
            }
            let base = s0 + (i >> 8u) * 4u;
            let dd = unpack2x16float(wu(base));
            let sm = k4_scale_min(base + 1u, (i >> 5u) & 7u);
            return (dd.x * sm.x) * qx - (dd.y * sm.y) * sx;
        }
        case 14u, 15u: {   // IQ4_NL, IQ4_XS: 32 levels from 4 words, one scale
            let q = w[(q0 + (i >> 3u)) >> 2u];
            let qx = dot(iq4nl4(q.x), xv[0]) + dot(iq4nl4(q.x >> 16u), xv[1]) + dot(iq4nl4(q.y), xv[2])
                + dot(iq4nl4(q.y >> 16u), xv[3]) + dot(iq4nl4(q.z), xv[4]) + dot(iq4nl4(q.z >> 16u), xv[5])
                + dot(iq4nl4(q.w), xv[6]) + dot(iq4nl4(q.w >> 16u), xv[7]);
            if (WDTYPE == DT_IQ4_NL) {
                return unpack2x16float(wu(s0 + (i >> 6u)))[(i >> 5u) & 1u] * qx;
            }
            let base = s0 + (i >> 8u) * 3u;
            return (unpack2x16float(wu(base)).x * sign_extend8(scale_byte(base + 1u, (i >> 5u) & 7u))) * qx;
        }
        case 8u: {   // MXFP4: 32 nibbles in 4 words, one scale byte
            let q = w[(q0 + (i >> 3u)) >> 2u];
            let qx = dot(e2m1x2_4(q.x), xv[0]) + dot(e2m1x2_4(q.x >> 16u), xv[1]) + dot(e2m1x2_4(q.y), xv[2])
                + dot(e2m1x2_4(q.y >> 16u), xv[3]) + dot(e2m1x2_4(q.z), xv[4]) + dot(e2m1x2_4(q.z >> 16u), xv[5])
                + dot(e2m1x2_4(q.w), xv[6]) + dot(e2m1x2_4(q.w >> 16u), xv[7]);
            return e8m0_half(scale_byte(s0, i >> 5u)) * qx;
        }
        default: {   // F32, F16, BF16, Q6_K, Q2_K, Q3_K (16-element scales): four at a time
            var acc = 0.0;
            for (var j = 0u; j < 8u; j++) {
                acc += dot(w4(l, i + 4u * j), xv[j]);
            }
            return acc;
        }
    }
}
