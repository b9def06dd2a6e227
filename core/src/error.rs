//! Typed errors of the core algorithms.

use thiserror::Error;

/// Why a message or payload from the network was rejected. Every variant is a clean rejection:
/// decoders return one of these instead of panicking or allocating what the input asks for.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The input is larger than the limit for its kind.
    #[error("{size} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Size the input has or declares.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The input is empty.
    #[error("empty message")]
    Empty,
    /// The format version byte is not one this peer speaks.
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u8),
    /// The serde body did not parse.
    #[error("malformed message body: {0}")]
    Malformed(String),
    /// A string or byte field is longer than allowed.
    #[error("field {field} is {len} bytes, more than {max}")]
    FieldTooLong {
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A header field holds an impossible value.
    #[error("invalid header: {0}")]
    BadHeader(&'static str),
    /// The codec descriptor has out-of-range parameters.
    #[error("invalid codec descriptor: {0}")]
    BadCodec(&'static str),
    /// The zstd stage failed.
    #[error("compression: {0}")]
    Compression(&'static str),
    /// The payload is for a vector of another length than this model's.
    #[error("payload is for {got} coordinates, the model has {expected}")]
    WrongLength {
        /// Length the payload declares.
        got: u64,
        /// This model's parameter count.
        expected: usize,
    },
    /// More entries than the descriptor allows (or, for dense payloads, not exactly `len`).
    #[error("{count} entries where at most {max} are allowed")]
    TooManyEntries {
        /// Entries declared.
        count: u64,
        /// Entries allowed.
        max: usize,
    },
    /// A coordinate is past the end of the vector (indices must also strictly increase).
    #[error("index {index} out of range for length {len}")]
    IndexOutOfRange {
        /// The offending index.
        index: u64,
        /// The vector length.
        len: usize,
    },
    /// A value is NaN or infinite.
    #[error("non-finite value at entry {at}")]
    NonFinite {
        /// Entry position.
        at: usize,
    },
    /// An int8 value outside −127..=127.
    #[error("quantized value out of range at entry {at}")]
    BadQuantValue {
        /// Entry position.
        at: usize,
    },
    /// A varint overflows or is not in canonical form.
    #[error("bad varint")]
    BadVarint,
    /// The input ended early.
    #[error("truncated payload")]
    Truncated,
    /// Bytes remain after the last field.
    #[error("{0} trailing bytes")]
    TrailingBytes(usize),
    /// An update claims no samples, or more than one honest round of the run can train on.
    #[error("claims {samples} samples, the run allows 1..={max}")]
    Overclaimed {
        /// What it claims.
        samples: u64,
        /// The run's bound.
        max: u64,
    },
}

impl DecodeError {
    /// A short stable name for counting rejections by kind in reports and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::Empty => "empty",
            Self::UnsupportedVersion(_) => "unsupported_version",
            Self::Malformed(_) => "malformed",
            Self::FieldTooLong { .. } => "field_too_long",
            Self::BadHeader(_) => "bad_header",
            Self::BadCodec(_) => "bad_codec",
            Self::Compression(_) => "compression",
            Self::WrongLength { .. } => "wrong_length",
            Self::TooManyEntries { .. } => "too_many_entries",
            Self::IndexOutOfRange { .. } => "index_out_of_range",
            Self::NonFinite { .. } => "non_finite",
            Self::BadQuantValue { .. } => "bad_quant_value",
            Self::BadVarint => "bad_varint",
            Self::Truncated => "truncated",
            Self::TrailingBytes(_) => "trailing_bytes",
            Self::Overclaimed { .. } => "overclaimed",
        }
    }
}

/// Why encoding an update failed; the error-feedback residual is left as it was.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum EncodeError {
    /// The delta and the residual have different lengths.
    #[error("delta has {delta} coordinates, the residual {residual}")]
    LengthMismatch {
        /// Delta length.
        delta: usize,
        /// Residual length.
        residual: usize,
    },
    /// Vectors longer than u32 indices can address.
    #[error("vector of {0} coordinates is too long for u32 indices")]
    TooLong(usize),
    /// A value is NaN, infinite, or beyond what the quantizer represents (|x| > 1.7e38).
    #[error("value {value} at coordinate {index} cannot be encoded (non-finite or out of range)")]
    OutOfRange {
        /// Coordinate.
        index: usize,
        /// Its value in the delta.
        value: f32,
    },
    /// The codec configuration is invalid.
    #[error("invalid codec configuration: {0}")]
    BadCodec(DecodeError),
    /// zstd failed.
    #[error("compression failed: {0}")]
    Compress(String),
}
