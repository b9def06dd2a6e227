//! A run's manifest: what defines a run, so that it travels over the network. It holds the run's
//! name, its shared settings (model, training and swarm, as the organiser's tool wrote them) and
//! its data set as the SHA-256 of each [`PIECE_BYTES`] piece. The run's id is the name plus the
//! manifest's hash, so peers with any other setting or data are in another run and never mix in.
//! A joiner that knows one address fetches the manifest ([`Request::Manifest`]), then the pieces
//! ([`Request::Piece`]), each checked against its hash; [`RunFiles`] answers both.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::{MAX_RUN_ID_LEN, Request, Response, decode_versioned, encode_versioned};
use crate::error::DecodeError;

/// Bytes of one data piece (the last may be shorter): one request-response frame each.
pub const PIECE_BYTES: usize = 1 << 20;
/// Most pieces a manifest may list: 4 GiB of data.
pub const MAX_PIECES: usize = 4096;
/// Longest settings text a manifest may carry.
pub const MAX_SETTINGS_BYTES: usize = 64 << 10;
/// Longest run name: the run id appends `-` and 16 hex digits of the manifest's hash.
pub const MAX_RUN_NAME_LEN: usize = MAX_RUN_ID_LEN - 17;
/// Largest encoded manifest.
pub const MAX_MANIFEST_BYTES: usize = MAX_SETTINGS_BYTES + 33 * MAX_PIECES + 1024;

/// SHA-256 of an encoded manifest: the run's identity.
pub type ManifestId = [u8; 32];

/// What defines a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The organiser's name for the run (the run id starts with it).
    pub name: String,
    /// The shared settings, as text the node reads (TOML); opaque here.
    pub settings: String,
    /// Total bytes of the data set.
    pub data_bytes: u64,
    /// SHA-256 of each [`PIECE_BYTES`] piece of the data set, in order.
    pub pieces: Vec<[u8; 32]>,
}

/// Why a manifest could not be made, or a piece is not the one it lists.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    /// The run name is empty, too long or has characters a topic name should not.
    #[error("run name {0:?} must be 1 to {MAX_RUN_NAME_LEN} letters, digits, '-', '_' or '.'")]
    BadName(String),
    /// The settings text is too long.
    #[error("run settings are {0} bytes, more than {MAX_SETTINGS_BYTES}")]
    SettingsTooLong(usize),
    /// The data set is empty or too large.
    #[error("the data set is {0} bytes: it must be 1 byte to {MAX_PIECES} pieces of {PIECE_BYTES}")]
    BadDataSize(u64),
    /// A piece index past the data set.
    #[error("piece {index} of a data set of {pieces}")]
    NoSuchPiece {
        /// The index asked for.
        index: u32,
        /// Pieces in the data set.
        pieces: usize,
    },
    /// A piece of the wrong size.
    #[error("piece {index} is {got} bytes, the manifest says {expected}")]
    PieceSize {
        /// The piece.
        index: u32,
        /// Bytes received.
        got: usize,
        /// Bytes listed.
        expected: usize,
    },
    /// A piece whose bytes do not hash to what the manifest lists (corrupted or forged).
    #[error("piece {0} does not match its hash in the manifest")]
    PieceHash(u32),
}

impl Manifest {
    /// The manifest of a run `name` with `settings` training on `data`.
    pub fn new(name: &str, settings: String, data: &[u8]) -> Result<Self, ManifestError> {
        let manifest = Self {
            name: name.to_string(),
            settings,
            data_bytes: data.len() as u64,
            pieces: data.chunks(PIECE_BYTES).map(sha256).collect(),
        };
        manifest.check()?;
        Ok(manifest)
    }

    /// Checks the limits every manifest meets, made here or received.
    fn check(&self) -> Result<(), ManifestError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= MAX_RUN_NAME_LEN
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !name_ok {
            return Err(ManifestError::BadName(self.name.clone()));
        }
        if self.settings.len() > MAX_SETTINGS_BYTES {
            return Err(ManifestError::SettingsTooLong(self.settings.len()));
        }
        // In u64: a 32-bit (wasm) usize cannot hold the largest data set's size.
        let expected = self.data_bytes.div_ceil(PIECE_BYTES as u64);
        if self.data_bytes == 0
            || self.data_bytes > MAX_PIECES as u64 * PIECE_BYTES as u64
            || self.pieces.len() as u64 != expected
        {
            return Err(ManifestError::BadDataSize(self.data_bytes));
        }
        Ok(())
    }

    /// The encoded manifest, as served.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode_versioned(self)
    }

    /// Parses a manifest from untrusted bytes, within every limit.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let manifest: Self = decode_versioned(bytes, MAX_MANIFEST_BYTES)?;
        manifest
            .check()
            .map_err(|e| DecodeError::Malformed(e.to_string()))?;
        Ok(manifest)
    }

    /// The run's identity: SHA-256 of the encoded manifest.
    pub fn id(&self) -> ManifestId {
        sha256(&self.to_bytes())
    }

    /// The run id peers gossip under: the name, `-`, and the first 8 bytes of [`Self::id`] in
    /// hex. Any other setting or data gives another id, hence other topics.
    pub fn run_id(&self) -> String {
        let id = self.id();
        let hex: String = id[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("{}-{hex}", self.name)
    }

    /// How many bytes piece `index` holds.
    pub fn piece_len(&self, index: u32) -> Result<usize, ManifestError> {
        let i = index as usize;
        if i >= self.pieces.len() {
            return Err(ManifestError::NoSuchPiece {
                index,
                pieces: self.pieces.len(),
            });
        }
        let start = i as u64 * PIECE_BYTES as u64;
        Ok((self.data_bytes - start).min(PIECE_BYTES as u64) as usize)
    }

    /// Checks that `bytes` are piece `index` of this run's data.
    pub fn check_piece(&self, index: u32, bytes: &[u8]) -> Result<(), ManifestError> {
        let expected = self.piece_len(index)?;
        if bytes.len() != expected {
            return Err(ManifestError::PieceSize {
                index,
                got: bytes.len(),
                expected,
            });
        }
        if sha256(bytes) != self.pieces[index as usize] {
            return Err(ManifestError::PieceHash(index));
        }
        Ok(())
    }
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// A run's manifest and data, as a node that holds them serves them.
#[derive(Clone, Debug)]
pub struct RunFiles {
    manifest: Manifest,
    encoded: Vec<u8>,
    id: ManifestId,
    data: Vec<u8>,
}

impl RunFiles {
    /// `manifest` and its `data`, checked against each other.
    pub fn new(manifest: Manifest, data: Vec<u8>) -> Result<Self, ManifestError> {
        if data.len() as u64 != manifest.data_bytes {
            return Err(ManifestError::BadDataSize(data.len() as u64));
        }
        for (i, piece) in data.chunks(PIECE_BYTES).enumerate() {
            manifest.check_piece(i as u32, piece)?;
        }
        let encoded = manifest.to_bytes();
        Ok(Self {
            id: sha256(&encoded),
            manifest,
            encoded,
            data,
        })
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The data set.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The answer to a [`Request::Manifest`] or [`Request::Piece`]; `None` for any other request.
    pub fn answer(&self, request: &Request) -> Option<Response> {
        match request {
            Request::Manifest => Some(Response::Manifest {
                bytes: self.encoded.clone(),
            }),
            Request::Piece { manifest, index } => Some(if *manifest != self.id {
                Response::Error("not the manifest this node serves".into())
            } else {
                match self.manifest.piece_len(*index) {
                    Ok(len) => {
                        let start = *index as usize * PIECE_BYTES;
                        Response::Piece {
                            index: *index,
                            bytes: self.data[start..start + len].to_vec(),
                        }
                    }
                    Err(e) => Response::Error(e.to_string()),
                }
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn any_other_setting_or_byte_of_data_is_another_run() {
        let d = data(PIECE_BYTES + 10);
        let a = Manifest::new("shakespeare", "[swarm]\ntau_max = 4\n".into(), &d).expect("a");
        assert_eq!(a.pieces.len(), 2);
        assert_eq!(a.piece_len(1), Ok(10));
        let same = Manifest::new("shakespeare", "[swarm]\ntau_max = 4\n".into(), &d).expect("b");
        assert_eq!(a.run_id(), same.run_id());
        assert!(a.run_id().starts_with("shakespeare-"));
        assert!(a.run_id().len() <= MAX_RUN_ID_LEN);
        let other = Manifest::new("shakespeare", "[swarm]\ntau_max = 5\n".into(), &d).expect("c");
        assert_ne!(a.run_id(), other.run_id());
        let mut d2 = d.clone();
        d2[PIECE_BYTES + 3] ^= 1;
        let changed = Manifest::new("shakespeare", a.settings.clone(), &d2).expect("d");
        assert_ne!(a.run_id(), changed.run_id());
    }

    #[test]
    fn a_manifest_round_trips_and_bad_ones_are_errors() {
        let m = Manifest::new("run.1", "x".into(), &data(100)).expect("manifest");
        assert_eq!(Manifest::from_bytes(&m.to_bytes()), Ok(m.clone()));
        for name in ["", "a b", "a/b", &"n".repeat(MAX_RUN_NAME_LEN + 1)] {
            assert_eq!(
                Manifest::new(name, String::new(), &data(1)),
                Err(ManifestError::BadName(name.into()))
            );
        }
        assert_eq!(
            Manifest::new("a", String::new(), &[]),
            Err(ManifestError::BadDataSize(0))
        );
        // A received manifest whose piece list disagrees with its size is refused.
        let mut lying = m.clone();
        lying.data_bytes = 5 * PIECE_BYTES as u64;
        assert!(Manifest::from_bytes(&lying.to_bytes()).is_err());
        let mut bytes = m.to_bytes();
        bytes.truncate(bytes.len() - 1);
        assert!(Manifest::from_bytes(&bytes).is_err());
    }

    #[test]
    fn pieces_are_served_and_checked() {
        let d = data(2 * PIECE_BYTES + 5);
        let m = Manifest::new("r", String::new(), &d).expect("manifest");
        let files = RunFiles::new(m.clone(), d.clone()).expect("files");
        let Some(Response::Manifest { bytes }) = files.answer(&Request::Manifest) else {
            panic!("no manifest served");
        };
        assert_eq!(Manifest::from_bytes(&bytes), Ok(m.clone()));
        for index in 0..3 {
            let Some(Response::Piece { bytes, .. }) = files.answer(&Request::Piece {
                manifest: m.id(),
                index,
            }) else {
                panic!("piece {index} not served");
            };
            assert_eq!(m.check_piece(index, &bytes), Ok(()));
        }
        let mut corrupt = d[..PIECE_BYTES].to_vec();
        corrupt[17] ^= 0x40;
        assert_eq!(m.check_piece(0, &corrupt), Err(ManifestError::PieceHash(0)));
        assert!(matches!(
            m.check_piece(2, &d[..4]),
            Err(ManifestError::PieceSize { .. })
        ));
        assert!(matches!(
            files.answer(&Request::Piece {
                manifest: m.id(),
                index: 3
            }),
            Some(Response::Error(_))
        ));
        assert!(matches!(
            files.answer(&Request::Piece {
                manifest: [0; 32],
                index: 0
            }),
            Some(Response::Error(_))
        ));
        // Data that is not the manifest's is refused when serving is set up.
        let mut wrong = d.clone();
        wrong[0] ^= 1;
        assert_eq!(
            RunFiles::new(m, wrong).err(),
            Some(ManifestError::PieceHash(0))
        );
    }
}
