//! The payload's byte layout, and its hostile-input-safe decoder.
//!
//! Packed layout (then compressed as a whole if the descriptor says so):
//! ```text
//! varint len                  length of the full vector (must equal the receiver's model size)
//! varint count                entries that follow
//! [top-k]  count varints      first index, then each gap minus one (indices strictly increase)
//! [int8]   ceil(count/block)  exponent bytes, then count i8 values
//! [f32]    count × 4          little-endian values
//! ```
//! Streams of one kind are kept together so that zstd's entropy coder sees homogeneous bytes.

use super::quant::{self, QMAX};
use super::{CodecDescriptor, Compress, Quantize, Sparsify};
use crate::error::{DecodeError, EncodeError};

/// A decoded update: the values `D(c)` at their coordinates, all finite.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodedUpdate {
    /// Length of the full vector.
    pub len: usize,
    /// Coordinates of `values`, strictly increasing; `None` when every coordinate is present.
    pub indices: Option<Vec<u32>>,
    /// The decoded values.
    pub values: Vec<f32>,
}

impl DecodedUpdate {
    /// Adds `weight · self` into the dense vector `out` (of length `self.len`).
    pub fn add_to(&self, weight: f32, out: &mut [f32]) {
        match &self.indices {
            Some(ix) => {
                for (&i, &v) in ix.iter().zip(&self.values) {
                    out[i as usize] += weight * v;
                }
            }
            None => out
                .iter_mut()
                .zip(&self.values)
                .for_each(|(o, &v)| *o += weight * v),
        }
    }

    /// The update as a dense vector.
    pub fn to_dense(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.len];
        self.add_to(1.0, &mut out);
        out
    }

    /// Euclidean norm, accumulated in f64.
    pub fn norm(&self) -> f64 {
        self.values
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            .sqrt()
    }
}

/// Upper bound on the packed (uncompressed) size of a valid payload for a `len`-long vector.
pub fn raw_size_bound(descriptor: &CodecDescriptor, len: usize) -> usize {
    let k = descriptor.max_entries(len);
    let index_bytes = match descriptor.sparsify {
        Sparsify::Dense => 0,
        Sparsify::TopK { .. } => 5 * k,
    };
    let value_bytes = match descriptor.quantize {
        Quantize::F32 => 4 * k,
        Quantize::Int8 { block } => k + k.div_ceil(usize::from(block.max(1))),
    };
    20 + index_bytes + value_bytes
}

/// Packs (and compresses) the streams of one encoded update.
pub fn pack_payload(
    descriptor: &CodecDescriptor,
    len: usize,
    indices: Option<&[u32]>,
    values: &[f32],
    exps: &[u8],
    qs: &[i8],
) -> Result<Vec<u8>, EncodeError> {
    let count = values.len();
    let mut raw = Vec::with_capacity(raw_size_bound(descriptor, len));
    put_varint(&mut raw, len as u64);
    put_varint(&mut raw, count as u64);
    if let Some(ix) = indices {
        let mut next = 0u32;
        for &i in ix {
            put_varint(&mut raw, u64::from(i - next));
            next = i + 1;
        }
    }
    match descriptor.quantize {
        Quantize::F32 => values
            .iter()
            .for_each(|v| raw.extend_from_slice(&v.to_le_bytes())),
        Quantize::Int8 { .. } => {
            raw.extend_from_slice(exps);
            raw.extend(qs.iter().map(|&q| q as u8));
        }
    }
    match descriptor.compress {
        Compress::None => Ok(raw),
        Compress::Zstd { level } => zstd::bulk::compress(&raw, i32::from(level))
            .map_err(|e| EncodeError::Compress(e.to_string())),
    }
}

/// A payload's streams after parsing and validation, before dequantization: what a GPU decoder
/// uploads.
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedPayload {
    /// Length of the full vector.
    pub len: usize,
    /// Coordinates, strictly increasing and in range; `None` when every coordinate is present.
    pub indices: Option<Vec<u32>>,
    /// The values as sent.
    pub values: ParsedValues,
}

/// The value stream of a [`ParsedPayload`].
#[derive(Clone, Debug, PartialEq)]
pub enum ParsedValues {
    /// Finite f32 values.
    F32(Vec<f32>),
    /// Int8 values in `-127..=127` with one exponent byte per `block` values (see [`quant`]).
    Int8 {
        /// Values per exponent byte.
        block: usize,
        /// Exponent bytes, `ceil(qs.len() / block)` of them.
        exps: Vec<u8>,
        /// Quantized values.
        qs: Vec<i8>,
    },
}

/// Decodes a payload for a vector of `expected_len` coordinates, checking every limit before it
/// allocates: a hostile payload yields a [`DecodeError`], never a panic or an outsized allocation.
pub fn decode_payload(
    descriptor: &CodecDescriptor,
    payload: &[u8],
    expected_len: usize,
) -> Result<DecodedUpdate, DecodeError> {
    let parsed = parse_payload(descriptor, payload, expected_len)?;
    let values = match parsed.values {
        ParsedValues::F32(values) => values,
        ParsedValues::Int8 { block, exps, qs } => qs
            .iter()
            .enumerate()
            .map(|(j, &q)| quant::dequantize(q, exps[j / block]))
            .collect(),
    };
    Ok(DecodedUpdate {
        len: parsed.len,
        indices: parsed.indices,
        values,
    })
}

/// Parses and validates a payload (as [`decode_payload`]) without dequantizing it.
pub fn parse_payload(
    descriptor: &CodecDescriptor,
    payload: &[u8],
    expected_len: usize,
) -> Result<ParsedPayload, DecodeError> {
    descriptor.validate()?;
    let bound = raw_size_bound(descriptor, expected_len);
    let decompressed;
    let raw: &[u8] = match descriptor.compress {
        Compress::None => payload,
        Compress::Zstd { .. } => {
            // The frame must declare its size, and that size must be plausible, before we allocate.
            let size = match zstd::zstd_safe::get_frame_content_size(payload) {
                Ok(Some(size)) => size,
                Ok(None) => return Err(DecodeError::Compression("frame without content size")),
                Err(_) => return Err(DecodeError::Compression("not a zstd frame")),
            };
            if size > bound as u64 {
                return Err(DecodeError::TooLarge {
                    size: size as usize,
                    max: bound,
                });
            }
            decompressed = zstd::bulk::decompress(payload, size as usize)
                .map_err(|_| DecodeError::Compression("corrupt zstd frame"))?;
            if decompressed.len() as u64 != size {
                return Err(DecodeError::Compression("frame shorter than declared"));
            }
            &decompressed
        }
    };
    if raw.len() > bound {
        return Err(DecodeError::TooLarge {
            size: raw.len(),
            max: bound,
        });
    }
    let mut r = Reader { buf: raw, pos: 0 };
    let len = r.varint()?;
    if len != expected_len as u64 {
        return Err(DecodeError::WrongLength {
            got: len,
            expected: expected_len,
        });
    }
    let count = r.varint()?;
    let max = descriptor.max_entries(expected_len);
    let count_ok = match descriptor.sparsify {
        Sparsify::Dense => count == expected_len as u64,
        Sparsify::TopK { .. } => count <= max as u64,
    };
    if !count_ok {
        return Err(DecodeError::TooManyEntries { count, max });
    }
    let count = count as usize;
    let indices = match descriptor.sparsify {
        Sparsify::Dense => None,
        Sparsify::TopK { .. } => {
            // Every index takes at least one byte: a count larger than what is left is a lie.
            if count > r.remaining() {
                return Err(DecodeError::Truncated);
            }
            let mut ix = Vec::with_capacity(count);
            let mut next = 0u64;
            for _ in 0..count {
                let i = next
                    .checked_add(r.varint()?)
                    .ok_or(DecodeError::BadVarint)?;
                if i >= expected_len as u64 {
                    return Err(DecodeError::IndexOutOfRange {
                        index: i,
                        len: expected_len,
                    });
                }
                ix.push(i as u32);
                next = i + 1;
            }
            Some(ix)
        }
    };
    let values = match descriptor.quantize {
        Quantize::F32 => {
            let bytes = r.take(count.checked_mul(4).ok_or(DecodeError::Truncated)?)?;
            let mut values = Vec::with_capacity(count);
            for (j, b) in bytes.chunks_exact(4).enumerate() {
                let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                if !v.is_finite() {
                    return Err(DecodeError::NonFinite { at: j });
                }
                values.push(v);
            }
            ParsedValues::F32(values)
        }
        Quantize::Int8 { block } => {
            let block = usize::from(block);
            let exps = r.take(count.div_ceil(block))?;
            let qs = r.take(count)?;
            let mut values = Vec::with_capacity(count);
            for (j, &q) in qs.iter().enumerate() {
                let q = q as i8;
                if i32::from(q).abs() > QMAX {
                    return Err(DecodeError::BadQuantValue { at: j });
                }
                values.push(q);
            }
            ParsedValues::Int8 {
                block,
                exps: exps.to_vec(),
                qs: values,
            }
        }
    };
    if r.remaining() != 0 {
        return Err(DecodeError::TrailingBytes(r.remaining()));
    }
    Ok(ParsedPayload {
        len: expected_len,
        indices,
        values,
    })
}

/// Appends `v` as LEB128.
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A bounds-checked cursor over untrusted bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::Truncated);
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// LEB128, at most 10 bytes, rejecting values that overflow u64 and non-canonical encodings.
    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.take(1)?[0];
            let part = u64::from(b & 0x7f);
            if shift == 63 && part > 1 {
                return Err(DecodeError::BadVarint);
            }
            v |= part << shift;
            if b & 0x80 == 0 {
                if b == 0 && shift > 0 {
                    return Err(DecodeError::BadVarint);
                }
                return Ok(v);
            }
        }
        Err(DecodeError::BadVarint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_and_reject_overlong() {
        for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            let mut r = Reader { buf: &b, pos: 0 };
            assert_eq!(r.varint().expect("valid"), v);
            assert_eq!(r.remaining(), 0);
        }
        let mut r = Reader {
            buf: &[0x80, 0x00],
            pos: 0,
        };
        assert_eq!(r.varint(), Err(DecodeError::BadVarint));
        let mut r = Reader {
            buf: &[0xff; 11],
            pos: 0,
        };
        assert_eq!(r.varint(), Err(DecodeError::BadVarint));
    }
}
