//! The update codec: top-k sparsification → int8 quantization → zstd, with error feedback.
//!
//! [`Codec`] is the one interface; [`CpuCodec`] is the reference implementation that the GPU codec
//! (`gradswarm-shaders`) must match byte for byte. A codec is configured by a [`CodecDescriptor`],
//! which travels in every update so that a receiver knows how to decode the payload.
//!
//! Error feedback keeps compression lossless over time: with residual `e`, one encode computes
//! `u = Δ + e`, sends `c = C(u)` and keeps `e ← u − D(c)`. Whatever top-k or rounding held back now is
//! sent in a later round (Seide et al. 2014; Lin et al. 2018, "Deep Gradient Compression").

mod payload;
pub mod quant;
pub mod rng;
pub mod topk;

use serde::{Deserialize, Serialize};

pub use payload::{
    DecodedUpdate, ParsedPayload, ParsedValues, decode_payload, pack_payload, parse_payload,
    raw_size_bound,
};
pub use rng::RngKey;

use crate::error::{DecodeError, EncodeError};

/// How the coordinates to send are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Sparsify {
    /// Every coordinate is sent.
    Dense,
    /// The `k = ceil(len · per_million / 10^6)` largest magnitudes are sent (at least one).
    TopK {
        /// Fraction of coordinates sent, in parts per million (10_000 = 1%).
        per_million: u32,
    },
}

/// How the sent values are represented.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Quantize {
    /// Raw little-endian f32.
    F32,
    /// Int8 with one power-of-two scale per `block` values and stochastic rounding (see [`quant`]).
    Int8 {
        /// Values per shared scale.
        block: u16,
    },
}

/// The entropy stage applied to the packed payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compress {
    /// No compression.
    None,
    /// One zstd frame at this level.
    Zstd {
        /// zstd compression level (1–22; 3 is zstd's default).
        level: i8,
    },
}

/// The codec chain's configuration; carried in every update so receivers can decode it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodecDescriptor {
    /// Sparsification stage.
    pub sparsify: Sparsify,
    /// Quantization stage.
    pub quantize: Quantize,
    /// Entropy stage.
    pub compress: Compress,
}

/// Largest block accepted by decoders, so a hostile descriptor cannot make block bookkeeping odd.
pub const MAX_BLOCK: u16 = 4096;

impl CodecDescriptor {
    /// Dense f32 without compression: what a plain all-reduce would send.
    pub const DENSE_F32: Self = Self {
        sparsify: Sparsify::Dense,
        quantize: Quantize::F32,
        compress: Compress::None,
    };

    /// The default chain: top-k at `per_million`, int8 in blocks of 32, zstd level 3.
    pub fn top_k_int8_zstd(per_million: u32) -> Self {
        Self {
            sparsify: Sparsify::TopK { per_million },
            quantize: Quantize::Int8 { block: 32 },
            compress: Compress::Zstd { level: 3 },
        }
    }

    /// Checks the descriptor's parameters are in range (a decoder calls this on hostile input).
    pub fn validate(&self) -> Result<(), DecodeError> {
        if let Sparsify::TopK { per_million } = self.sparsify
            && !(1..=1_000_000).contains(&per_million)
        {
            return Err(DecodeError::BadCodec(
                "top-k fraction must be in 1..=1000000 ppm",
            ));
        }
        if let Quantize::Int8 { block } = self.quantize
            && !(1..=MAX_BLOCK).contains(&block)
        {
            return Err(DecodeError::BadCodec("int8 block must be in 1..=4096"));
        }
        if let Compress::Zstd { level } = self.compress
            && !(1..=22).contains(&level)
        {
            return Err(DecodeError::BadCodec("zstd level must be in 1..=22"));
        }
        Ok(())
    }

    /// How many coordinates an update of a `len`-long vector carries at most.
    pub fn max_entries(&self, len: usize) -> usize {
        match self.sparsify {
            Sparsify::Dense => len,
            Sparsify::TopK { per_million } => {
                let k = (len as u64 * u64::from(per_million)).div_ceil(1_000_000) as usize;
                k.clamp(len.min(1), len)
            }
        }
    }
}

/// One codec chain on some device: encodes with error feedback and decodes by scatter-add.
pub trait Codec {
    /// The configuration this codec encodes with.
    fn descriptor(&self) -> CodecDescriptor;

    /// Encodes `u = delta + residual` and leaves `residual ← u − D(C(u))`; returns the payload.
    ///
    /// On error the residual is unchanged, so a bad delta (NaN, ±inf, > 1.7e38) loses nothing.
    fn encode(
        &mut self,
        delta: &[f32],
        residual: &mut [f32],
        key: RngKey,
    ) -> Result<Vec<u8>, EncodeError>;

    /// [`Codec::encode`] without blocking on a device: a browser's WebGPU answers a readback only
    /// once the page's event loop runs, so a codec that reads back from a GPU awaits it there.
    /// The default encodes at once.
    fn encode_async<'a>(
        &'a mut self,
        delta: &'a [f32],
        residual: &'a mut [f32],
        key: RngKey,
    ) -> EncodeFuture<'a> {
        let result = self.encode(delta, residual, key);
        Box::pin(std::future::ready(result))
    }

    /// Decodes `payload` (made with `descriptor`) and adds `weight · D(payload)` into `out`.
    fn decode_add(
        &mut self,
        descriptor: &CodecDescriptor,
        payload: &[u8],
        weight: f32,
        out: &mut [f32],
    ) -> Result<(), DecodeError>;
}

/// What [`Codec::encode_async`] returns: the payload, once the device has answered.
pub type EncodeFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<u8>, EncodeError>> + Send + 'a>>;

/// The CPU reference codec.
#[derive(Clone, Debug)]
pub struct CpuCodec {
    descriptor: CodecDescriptor,
    exps: Vec<u8>,
    qs: Vec<i8>,
    values: Vec<f32>,
}

impl CpuCodec {
    /// A CPU codec for `descriptor` (which must be valid, see [`CodecDescriptor::validate`]).
    pub fn new(descriptor: CodecDescriptor) -> Result<Self, EncodeError> {
        descriptor.validate().map_err(EncodeError::BadCodec)?;
        Ok(Self {
            descriptor,
            exps: Vec::new(),
            qs: Vec::new(),
            values: Vec::new(),
        })
    }
}

impl Codec for CpuCodec {
    fn descriptor(&self) -> CodecDescriptor {
        self.descriptor
    }

    fn encode(
        &mut self,
        delta: &[f32],
        residual: &mut [f32],
        key: RngKey,
    ) -> Result<Vec<u8>, EncodeError> {
        if delta.len() != residual.len() {
            return Err(EncodeError::LengthMismatch {
                delta: delta.len(),
                residual: residual.len(),
            });
        }
        if delta.len() > u32::MAX as usize {
            return Err(EncodeError::TooLong(delta.len()));
        }
        // Check before writing so that a bad delta leaves the residual untouched.
        let limit = match self.descriptor.quantize {
            Quantize::F32 => f32::MAX,
            Quantize::Int8 { .. } => quant::MAX_ABS,
        };
        if let Some(i) = residual.iter().zip(delta).position(|(&e, &d)| {
            let u = e + d;
            !(u.is_finite() && u.abs() <= limit)
        }) {
            return Err(EncodeError::OutOfRange {
                index: i,
                value: delta[i],
            });
        }
        residual.iter_mut().zip(delta).for_each(|(e, &d)| *e += d);
        let u: &mut [f32] = residual;

        let k = self.descriptor.max_entries(u.len());
        let indices = match self.descriptor.sparsify {
            Sparsify::Dense => None,
            Sparsify::TopK { .. } => Some(topk::select(u, k)),
        };
        let at = |j: usize| indices.as_ref().map_or(j as u32, |ix| ix[j]);
        self.values.clear();
        match &indices {
            Some(ix) => self.values.extend(ix.iter().map(|&i| u[i as usize])),
            None => self.values.extend_from_slice(u),
        }

        self.exps.clear();
        self.qs.clear();
        match self.descriptor.quantize {
            Quantize::F32 => {
                // Everything sent is sent exactly: the residual of sent coordinates is zero.
                for j in 0..self.values.len() {
                    u[at(j) as usize] = 0.0;
                }
            }
            Quantize::Int8 { block } => {
                let block = usize::from(block);
                quant::quantize_blocks(&self.values, at, block, key, &mut self.exps, &mut self.qs)
                    .map_err(|j| EncodeError::OutOfRange {
                        index: at(j) as usize,
                        value: self.values[j],
                    })?;
                for (j, &q) in self.qs.iter().enumerate() {
                    let i = at(j) as usize;
                    u[i] -= quant::dequantize(q, self.exps[j / block]);
                }
            }
        }
        pack_payload(
            &self.descriptor,
            u.len(),
            indices.as_deref(),
            &self.values,
            &self.exps,
            &self.qs,
        )
    }

    fn decode_add(
        &mut self,
        descriptor: &CodecDescriptor,
        payload: &[u8],
        weight: f32,
        out: &mut [f32],
    ) -> Result<(), DecodeError> {
        let decoded = decode_payload(descriptor, payload, out.len())?;
        decoded.add_to(weight, out);
        Ok(())
    }
}

/// Error-feedback state of one peer: the residual `e` that compression has not sent yet.
#[derive(Clone, Debug, Default)]
pub struct ErrorFeedback {
    residual: Vec<f32>,
    decay: f32,
}

impl ErrorFeedback {
    /// A zero residual for a vector of `len` coordinates, kept whole (decay 1).
    pub fn new(len: usize) -> Self {
        Self::with_decay(len, 1.0)
    }

    /// A zero residual that decays by `decay` before each encode: `u = Δ + decay · e`.
    ///
    /// Why: with local steps, a sparse codec sends few coordinates per round and the local
    /// optimizer re-discovers the unsent part next round, so a whole residual keeps counting it
    /// again; a decaying one (SparseLoCo, Sarfi et al. 2025) acts as the outer momentum instead.
    /// `decay` outside (0, 1] is taken as 1.
    pub fn with_decay(len: usize, decay: f32) -> Self {
        Self {
            residual: vec![0.0; len],
            decay: if decay > 0.0 && decay <= 1.0 {
                decay
            } else {
                1.0
            },
        }
    }

    /// Encodes `delta` plus the (decayed) residual with `codec`, keeping what was not sent. On
    /// error the residual is left as it was, decay included.
    pub fn encode(
        &mut self,
        codec: &mut dyn Codec,
        delta: &[f32],
        key: RngKey,
    ) -> Result<Vec<u8>, EncodeError> {
        let kept = self.decay_residual();
        let result = codec.encode(delta, &mut self.residual, key);
        self.restore_on_error(kept, &result);
        result
    }

    /// [`ErrorFeedback::encode`] through [`Codec::encode_async`].
    pub async fn encode_async(
        &mut self,
        codec: &mut (dyn Codec + Send),
        delta: &[f32],
        key: RngKey,
    ) -> Result<Vec<u8>, EncodeError> {
        let kept = self.decay_residual();
        let result = codec.encode_async(delta, &mut self.residual, key).await;
        self.restore_on_error(kept, &result);
        result
    }

    /// Decays the residual before an encode; returns it as it was when the decay changed it.
    fn decay_residual(&mut self) -> Option<Vec<f32>> {
        if self.decay == 1.0 {
            return None;
        }
        let kept = self.residual.clone();
        self.residual.iter_mut().for_each(|e| *e *= self.decay);
        Some(kept)
    }

    /// A failed encode loses nothing: the residual goes back to what it was before the decay.
    fn restore_on_error(&mut self, kept: Option<Vec<f32>>, result: &Result<Vec<u8>, EncodeError>) {
        if let (Some(kept), Err(_)) = (kept, result) {
            self.residual = kept;
        }
    }

    /// `θ − c · e`: where θ will stand once this peer's unsent residual has been sent and
    /// applied with weight `c` (the outer step times this peer's share of the mean).
    ///
    /// Why: local steps taken from θ itself re-discover the direction the residual already owes,
    /// and once the residual is sent that direction is applied twice; with top-0.1% a coordinate
    /// waits hundreds of rounds, so the double count is large. Local steps taken from here see
    /// their own pending work as done (the other peers' pending work stays unseen).
    pub fn ahead_of(&self, theta: &[f32], c: f32) -> Result<Vec<f32>, EncodeError> {
        if theta.len() != self.residual.len() {
            return Err(EncodeError::LengthMismatch {
                delta: theta.len(),
                residual: self.residual.len(),
            });
        }
        Ok(theta
            .iter()
            .zip(&self.residual)
            .map(|(t, e)| t - c * e)
            .collect())
    }

    /// What has been computed but not yet sent.
    pub fn residual(&self) -> &[f32] {
        &self.residual
    }

    /// Restores a residual (from a checkpoint).
    pub fn set_residual(&mut self, residual: Vec<f32>) {
        self.residual = residual;
    }
}
