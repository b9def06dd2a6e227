//! Int8 quantization with one power-of-two scale per block and stochastic rounding.
//!
//! Each block of `block` consecutive sent values shares a scale `2^E` (the shared-exponent idea of
//! the OCP microscaling formats, MXINT8). Power-of-two scales make quantization pure integer work
//! on the float's bits: no division, no rounding mode, no flush-to-zero of denormals can make a
//! GPU disagree with this reference, and dequantization `q · 2^E` is exact. The price is at most
//! one bit of resolution compared with a free f32 scale; error feedback carries the rest.
//!
//! `E` is stored as one byte, `E = byte − EXP_BIAS`, so every byte decodes to a finite scale and
//! `127 · 2^E` stays finite: a decoder never needs to reject a scale.

use super::rng::RngKey;

/// Largest quantized magnitude: values are in `-127..=127` (−128 is never produced, nor accepted).
pub const QMAX: i32 = 127;
/// Bias of the stored exponent byte: `E = byte − EXP_BIAS`, so `E ∈ [−135, 120]`.
pub const EXP_BIAS: i32 = 135;
/// Smallest block exponent; blocks whose values are tinier round to multiples of `2^EXP_MIN`.
pub const EXP_MIN: i32 = -EXP_BIAS;
/// Largest block exponent; `127 · 2^120 < f32::MAX`, so dequantization never overflows.
pub const EXP_MAX: i32 = 255 - EXP_BIAS;
/// Largest magnitude the quantizer accepts (`127 · 2^120 ≈ 1.7e38`); larger finite values are rejected.
pub const MAX_ABS: f32 = 127.0 * (1u128 << 120) as f32;

/// Splits the bits of a finite non-negative float into `(m, x)` with value `m · 2^x`, `m < 2^24`.
#[inline]
fn mantissa_exponent(abs_bits: u32) -> (u32, i32) {
    let field = (abs_bits >> 23) as i32;
    let frac = abs_bits & 0x007f_ffff;
    if field == 0 {
        (frac, -149)
    } else {
        (frac | 0x0080_0000, field - 150)
    }
}

/// The smallest exponent `E ≥ EXP_MIN` with `max_abs ≤ 127 · 2^E`, as its stored byte.
///
/// `None` when `max_abs` exceeds [`MAX_ABS`]. `max_abs_bits` are the bits of a finite, non-negative float.
pub fn block_exponent_byte(max_abs_bits: u32) -> Option<u8> {
    let (m, x) = mantissa_exponent(max_abs_bits);
    let e = if m == 0 {
        EXP_MIN
    } else {
        // Smallest t with m ≤ 127 · 2^t; m < 2^24 so t ∈ [−7, 18].
        let mut t: i32 = -7;
        while !fits(m, t) {
            t += 1;
        }
        (x + t).max(EXP_MIN)
    };
    (e <= EXP_MAX).then(|| (e + EXP_BIAS) as u8)
}

/// `m ≤ 127 · 2^t`, in integers.
#[inline]
fn fits(m: u32, t: i32) -> bool {
    if t >= 0 {
        u64::from(m) <= (QMAX as u64) << t
    } else {
        u64::from(m) << (-t) as u32 <= QMAX as u64
    }
}

/// Quantizes one value against its block's exponent byte, rounding up with probability equal to
/// the dropped fraction (unbiased to within 2^-32 of a quantum). `draw` is the coordinate's
/// counter-based random word. The value must be finite with `|v| ≤ 127 · 2^E`.
#[inline]
pub fn quantize(v: f32, exp_byte: u8, draw: u32) -> i8 {
    let bits = v.to_bits();
    let (m, x) = mantissa_exponent(bits & 0x7fff_ffff);
    let e = i32::from(exp_byte) - EXP_BIAS;
    // |v| / 2^E = m · 2^(x − E) = m / 2^s.
    let s = e - x;
    let mag = if s <= 0 {
        // Exact integer (at most 127 by the choice of E): no rounding happens.
        m << (-s) as u32
    } else {
        let (int, threshold) = if s < 32 {
            let int = m >> s as u32;
            let rem = m & ((1u32 << s as u32) - 1);
            // P(round up) = rem / 2^s = (rem · 2^(32−s)) / 2^32, exact in 32 bits.
            (int, u64::from(rem) << (32 - s) as u32)
        } else {
            // m < 2^24 ≤ 2^s: the integer part is 0 and the remainder is all of m.
            // P = m / 2^s, rounded up to the 2^-32 grid: ceil(m / 2^(s−32)).
            let d = (s - 32) as u32;
            let t = if m == 0 {
                0
            } else if d >= 32 {
                1
            } else {
                u64::from((m - 1) >> d) + 1
            };
            (0, t)
        };
        int + u32::from(u64::from(draw) < threshold)
    };
    let q = mag as i32;
    (if bits >> 31 == 1 { -q } else { q }) as i8
}

/// The exact value `q · 2^E` of a quantized entry (never rounds, never overflows).
#[inline]
pub fn dequantize(q: i8, exp_byte: u8) -> f32 {
    let e = i32::from(exp_byte) - EXP_BIAS;
    // 2^E may be a denormal (E < −126): split it so each factor is exact and the product is too,
    // because q has at most 7 significant bits and the result's lowest bit is ≥ 2^EXP_MIN > 2^-149.
    let (a, b) = if e < -126 { (e + 64, -64) } else { (e, 0) };
    f32::from(q) * pow2(a) * pow2(b)
}

/// `2^e` for `e ∈ [−126, 127]`, built from its bits.
#[inline]
fn pow2(e: i32) -> f32 {
    f32::from_bits(((e + 127) as u32) << 23)
}

/// Quantizes `values` in blocks of `block`, appending one exponent byte per block to `exps` and
/// one int8 per value to `qs`. `indices[j]` is the coordinate of `values[j]` (it keys the RNG).
///
/// Returns `Err(j)` with the position of the first value whose magnitude exceeds [`MAX_ABS`].
pub fn quantize_blocks(
    values: &[f32],
    indices: impl Fn(usize) -> u32,
    block: usize,
    key: RngKey,
    exps: &mut Vec<u8>,
    qs: &mut Vec<i8>,
) -> Result<(), usize> {
    quantize_blocks_coarse(values, indices, block, 0, key, exps, qs)
}

/// [`quantize_blocks`] with each block's scale `2^headroom` times the tightest: the values stay
/// within `±⌈127 / 2^headroom⌉`, so zstd packs each into about `headroom` fewer bits, at
/// `2^headroom` times the rounding error (still unbiased). The payload decodes as any other.
pub fn quantize_blocks_coarse(
    values: &[f32],
    indices: impl Fn(usize) -> u32,
    block: usize,
    headroom: u8,
    key: RngKey,
    exps: &mut Vec<u8>,
    qs: &mut Vec<i8>,
) -> Result<(), usize> {
    let block = block.max(1);
    exps.reserve(values.len().div_ceil(block));
    qs.reserve(values.len());
    for (b, chunk) in values.chunks(block).enumerate() {
        let max_bits = chunk
            .iter()
            .map(|v| v.to_bits() & 0x7fff_ffff)
            .max()
            .unwrap_or(0);
        let exp = match block_exponent_byte(max_bits) {
            // A larger exponent only shrinks the values; 255 is EXP_MAX, still finite.
            Some(e) => e.saturating_add(headroom),
            None => {
                let at = chunk
                    .iter()
                    .position(|v| v.to_bits() & 0x7fff_ffff == max_bits)
                    .unwrap_or(0);
                return Err(b * block + at);
            }
        };
        exps.push(exp);
        for (j, &v) in chunk.iter().enumerate() {
            let pos = b * block + j;
            qs.push(quantize(v, exp, key.draw(indices(pos))));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quantum(exp_byte: u8) -> f64 {
        2f64.powi(i32::from(exp_byte) - EXP_BIAS)
    }

    #[test]
    fn exponent_covers_the_block_max_tightly() {
        for v in [
            1e-45f32, 1e-40, 1e-30, 0.001, 0.5, 1.0, 126.9, 127.0, 127.5, 3e30, 1e38,
        ] {
            let e = block_exponent_byte(v.to_bits()).expect("in range");
            let q = quantum(e);
            assert!(f64::from(v) <= 127.0 * q, "{v} exceeds 127·2^E");
            if i32::from(e) - EXP_BIAS > EXP_MIN {
                assert!(f64::from(v) > 127.0 * q / 2.0, "{v}: E is not the smallest");
            }
        }
        assert_eq!(block_exponent_byte(0), Some(0));
        assert_eq!(block_exponent_byte(f32::MAX.to_bits()), None);
        assert!(block_exponent_byte(MAX_ABS.to_bits()).is_some());
    }

    #[test]
    fn dequantize_is_exact_and_finite_for_every_byte() {
        for byte in 0..=255u8 {
            for q in [-127i8, -1, 0, 1, 64, 127] {
                let d = dequantize(q, byte);
                assert!(d.is_finite());
                assert_eq!(
                    f64::from(d),
                    f64::from(q) * quantum(byte),
                    "q={q} byte={byte}"
                );
            }
        }
    }

    #[test]
    fn exact_values_do_not_round() {
        let e = block_exponent_byte(100.0f32.to_bits()).expect("in range");
        for draw in [0, 1, u32::MAX] {
            assert_eq!(quantize(100.0, e, draw), 100);
            assert_eq!(quantize(-3.0, e, draw), -3);
        }
    }

    #[test]
    fn rounding_direction_follows_the_draw() {
        // 2.25 on a quantum of 1: rounds up iff draw < 0.25 · 2^32.
        let e = block_exponent_byte(100.0f32.to_bits()).expect("in range");
        assert_eq!(quantize(2.25, e, 0), 3);
        assert_eq!(quantize(2.25, e, (1 << 30) - 1), 3);
        assert_eq!(quantize(2.25, e, 1 << 30), 2);
        assert_eq!(quantize(-2.25, e, 0), -3);
        assert_eq!(quantize(-2.25, e, u32::MAX), -2);
    }

    #[test]
    fn coarse_blocks_stay_in_range_at_the_edges() {
        let key = RngKey::new(3, 4);
        let blocks: [&[f32]; 4] = [
            &[0.0; 16],
            // Denormals, below the smallest quantum.
            &[f32::from_bits(1), -f32::from_bits(7), 0.0, 1e-40],
            // The largest exponent already (byte 255): headroom cannot raise it.
            &[MAX_ABS, -MAX_ABS, 1.0, -3.5e37],
            // Near it: headroom saturates at 255.
            &[1.0e36, -2.0e36, 7.0, 0.0],
        ];
        let quantized = |values: &[f32], headroom: u8| {
            let (mut exps, mut qs) = (Vec::new(), Vec::new());
            quantize_blocks_coarse(values, |i| i as u32, 16, headroom, key, &mut exps, &mut qs)
                .expect("in range");
            (exps, qs)
        };
        for headroom in [0u8, 2, 7] {
            for values in blocks {
                let (tight, _) = quantized(values, 0);
                let (exps, qs) = quantized(values, headroom);
                assert_eq!(exps, vec![tight[0].saturating_add(headroom)]);
                for (v, q) in values.iter().zip(&qs) {
                    assert!((-127..=127).contains(&i32::from(*q)), "{v} -> {q}");
                    let back = dequantize(*q, exps[0]);
                    assert!(
                        f64::from((back - v).abs()) <= quantum(exps[0]),
                        "{v} -> {back} (headroom {headroom}, byte {})",
                        exps[0]
                    );
                }
            }
        }
    }
}
