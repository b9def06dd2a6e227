// Shared helpers of gradswarm's codec kernels: bit-exact ports of core's CPU reference.
//
// Why integer work on float bits: Vulkan, Metal, D3D12 and WebGPU may flush denormals to zero and
// give no control over it, so every operation whose result could differ under flushing is done
// on the bits (quantization, dequantization, multiplication) or routed around it (addition).

const SIGN: u32 = 0x80000000u;
const ABS: u32 = 0x7fffffffu;
const EXP_BIAS: i32 = 135;
const EXP_MIN: i32 = -135;
const EXP_MAX: i32 = 120;

// core::codec::rng::hash32 (Wellons' lowbias32).
fn hash32(x0: u32) -> u32 {
    var x = x0;
    x ^= x >> 16u;
    x *= 0x7feb352du;
    x ^= x >> 15u;
    x *= 0x846ca68bu;
    x ^= x >> 16u;
    return x;
}

// core::codec::rng::RngKey::draw.
fn draw(i: u32, k0: u32, k1: u32) -> u32 {
    return hash32(hash32(i + k0) ^ k1);
}

// A finite non-negative float's bits as m · 2^x with m < 2^24.
struct MantExp {
    m: u32,
    x: i32,
}

fn mant_exp(abs_bits: u32) -> MantExp {
    let field = i32(abs_bits >> 23u);
    let frac = abs_bits & 0x7fffffu;
    if field == 0 {
        return MantExp(frac, -149);
    }
    return MantExp(frac | 0x800000u, field - 150);
}

// m ≤ 127 · 2^t for m < 2^24, t ∈ [−7, 18].
fn fits(m: u32, t: i32) -> bool {
    if t >= 0 {
        return m <= (127u << u32(t));
    }
    return (m << u32(-t)) <= 127u;
}

// core::codec::quant::block_exponent_byte; 256 stands for None.
fn block_exponent_byte(max_abs_bits: u32) -> u32 {
    let me = mant_exp(max_abs_bits);
    var e = EXP_MIN;
    if me.m != 0u {
        var t = -7;
        loop {
            if fits(me.m, t) || t >= 18 {
                break;
            }
            t += 1;
        }
        e = max(me.x + t, EXP_MIN);
    }
    if e > EXP_MAX {
        return 256u;
    }
    return u32(e + EXP_BIAS);
}

// core::codec::quant::quantize: stochastic rounding against the block's exponent byte.
fn quantize(bits: u32, exp_byte: u32, d: u32) -> i32 {
    let me = mant_exp(bits & ABS);
    let e = i32(exp_byte) - EXP_BIAS;
    let s = e - me.x;
    var mag = 0u;
    if s <= 0 {
        mag = me.m << u32(min(-s, 31));
    } else if s < 32 {
        let int_part = me.m >> u32(s);
        let rem = me.m & ((1u << u32(s)) - 1u);
        // rem < 2^s, so rem · 2^(32−s) < 2^32: the u64 threshold of the reference fits in u32.
        let threshold = rem << u32(32 - s);
        mag = int_part + select(0u, 1u, d < threshold);
    } else {
        let sh = u32(s - 32);
        var t = 0u;
        if me.m != 0u {
            if sh >= 32u {
                t = 1u;
            } else {
                t = ((me.m - 1u) >> sh) + 1u;
            }
        }
        mag = select(0u, 1u, d < t);
    }
    let q = i32(mag);
    return select(q, -q, (bits & SIGN) != 0u);
}

// core::codec::quant::dequantize, built on the bits: q · 2^E exactly, denormals included.
fn dequantize_bits(q: i32, exp_byte: u32) -> u32 {
    if q == 0 {
        return 0u;
    }
    let e = i32(exp_byte) - EXP_BIAS;
    let a = u32(abs(q));
    let p = firstLeadingBit(a);
    let ex = e + i32(p);
    var bits = 0u;
    if ex >= -126 {
        bits = (u32(ex + 127) << 23u) | ((a << (23u - p)) & 0x7fffffu);
    } else {
        bits = a << u32(e + 149);
    }
    return select(bits, bits | SIGN, q < 0);
}

// x · 2^64 exactly, for |x| < 2^-100 (denormals become normals).
fn up64(b: u32) -> f32 {
    let s = b & SIGN;
    let m = b & ABS;
    if m == 0u {
        return bitcast<f32>(b);
    }
    if m < 0x800000u {
        let p = firstLeadingBit(m);
        let bits = (u32(i32(p) + 42) << 23u) | ((m << (23u - p)) & 0x7fffffu);
        return bitcast<f32>(bits | s);
    }
    return bitcast<f32>(b + (64u << 23u));
}

// y · 2^-64 for a y that up64 sums produce: a multiple of 2^-85, so the result is exact.
fn down64(y: f32) -> u32 {
    let b = bitcast<u32>(y);
    let s = b & SIGN;
    let m = b & ABS;
    if m == 0u {
        return b;
    }
    let field = m >> 23u;
    if field > 64u {
        return b - (64u << 23u);
    }
    let mant = (m & 0x7fffffu) | 0x800000u;
    return s | (mant >> min(65u - field, 31u));
}

// a + b, correctly rounded with denormals kept, whether or not the device flushes them.
// If both are below 2^-100 the sum runs 2^64 higher, where nothing is denormal, and is exact to
// scale back. Otherwise the larger one is ≥ 2^-100 (ulp ≥ 2^-123): a denormal addend is below a
// quarter ulp and cannot change the rounded sum, and no sum can land in the denormal range, so the
// hardware's IEEE addition gives the reference's bits with or without flushing.
fn add_exact(a: f32, b: f32) -> f32 {
    let ab = bitcast<u32>(a);
    let bb = bitcast<u32>(b);
    if ((ab & ABS) >> 23u) < 27u && ((bb & ABS) >> 23u) < 27u {
        return bitcast<f32>(down64(up64(ab) + up64(bb)));
    }
    return a + b;
}

// Round-to-nearest-even of (hi·2^32 + lo) / 2^s, for 1 ≤ s.
fn shr_rne(hi: u32, lo: u32, s: u32) -> u32 {
    if s >= 64u {
        return 0u;
    }
    var q = 0u;
    var gt = false;
    var eq = false;
    if s < 32u {
        q = (lo >> s) | (hi << (32u - s));
        let rem = lo & ((1u << s) - 1u);
        let half = 1u << (s - 1u);
        gt = rem > half;
        eq = rem == half;
    } else if s == 32u {
        q = hi;
        gt = lo > 0x80000000u;
        eq = lo == 0x80000000u;
    } else {
        let s2 = s - 32u;
        q = hi >> s2;
        let rh = hi & ((1u << s2) - 1u);
        let hh = 1u << (s2 - 1u);
        gt = rh > hh || (rh == hh && lo > 0u);
        eq = rh == hh && lo == 0u;
    }
    if gt || (eq && (q & 1u) == 1u) {
        q += 1u;
    }
    return q;
}

// The f32 magnitude bits nearest to (hi·2^32 + lo) · 2^x (ties to even; overflow is +inf).
fn round_to_f32(hi: u32, lo: u32, x: i32) -> u32 {
    var p = 0;
    if hi != 0u {
        p = 32 + i32(firstLeadingBit(hi));
    } else if lo != 0u {
        p = i32(firstLeadingBit(lo));
    } else {
        return 0u;
    }
    let e = p + x;
    if e >= -126 {
        if e > 127 {
            return 0x7f800000u;
        }
        let sh = p - 23;
        var mant = 0u;
        if sh <= 0 {
            mant = lo << u32(-sh);
        } else {
            mant = shr_rne(hi, lo, u32(sh));
        }
        // mant ∈ [2^23, 2^24]: adding it to the biased exponent carries into it when rounding did.
        return min((u32(e + 126) << 23u) + mant, 0x7f800000u);
    }
    let sh = -(x + 149);
    if sh <= 0 {
        return lo << u32(-sh);
    }
    return shr_rne(hi, lo, u32(sh));
}

// a · b, correctly rounded with denormals kept, on integers (a 24×24-bit product in two words).
fn mul_exact(a: f32, b: f32) -> f32 {
    let ab = bitcast<u32>(a);
    let bb = bitcast<u32>(b);
    let s = (ab ^ bb) & SIGN;
    let ma = mant_exp(ab & ABS);
    let mb = mant_exp(bb & ABS);
    if ma.m == 0u || mb.m == 0u {
        return bitcast<f32>(s);
    }
    let A = ma.m;
    let B = mb.m;
    let al = A & 0xffffu;
    let ah = A >> 16u;
    let bl = B & 0xffffu;
    let bh = B >> 16u;
    let lo0 = al * bl;
    let mid = ah * bl + al * bh;
    let lo = lo0 + (mid << 16u);
    let carry = select(0u, 1u, lo < lo0);
    let hi = ah * bh + (mid >> 16u) + carry;
    return bitcast<f32>(s | round_to_f32(hi, lo, ma.x + mb.x));
}
