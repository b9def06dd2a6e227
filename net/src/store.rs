//! The updates a node can serve to peers that pull them: its own, and those it pulled and
//! validated (so that a peer that heard an announcement through a forwarder can pull from it).
//!
//! Each chunk of an update is served to each requester at most [`SERVES_PER_REQUESTER`] times: an
//! honest peer pulls an update once (and asks another peer if that fails), so asking on and on is
//! a stranger using this node's upload as an amplifier (issue 26, attack 17: ~70-byte requests
//! made a peer serve ~400 MB in 30 s).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use gradswarm_core::Digest;
use gradswarm_core::wire::{UPDATE_CHUNK_BYTES, update_chunks};

/// (requester, digest, chunk) served lately, at most: ~4 MB of bookkeeping, many rounds of a large
/// swarm's pulls. One forgotten can be asked for again.
const MAX_SERVED: usize = 65_536;

/// Times one chunk is served to one requester: once, and once more for a pull that a second
/// announcement of the same digest started (a liar's, whose header is then found out).
pub const SERVES_PER_REQUESTER: u8 = 2;

/// Why a pull was not served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// This node does not hold that update (never had it, or evicted it).
    Missing,
    /// That chunk was already served to this requester [`SERVES_PER_REQUESTER`] times.
    Again,
    /// The update has no such chunk.
    NoSuchChunk,
}

impl Refusal {
    /// The error text a requester gets.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "no such update here",
            Self::Again => "already served to you",
            Self::NoSuchChunk => "no such chunk",
        }
    }
}

/// One chunk of an encoded update, as served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Its index.
    pub chunk: u32,
    /// The update's chunk count.
    pub chunks: u32,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// Encoded updates by digest, oldest evicted first once `max_bytes` or `max_entries` is passed.
#[derive(Debug)]
pub struct UpdateStore {
    by_digest: HashMap<Digest, Arc<Vec<u8>>>,
    order: VecDeque<Digest>,
    bytes: usize,
    max_bytes: usize,
    max_entries: usize,
    served: HashMap<(u64, Digest, u32), u8>,
    served_order: VecDeque<(u64, Digest, u32)>,
}

impl UpdateStore {
    /// An empty store holding at most `max_bytes` in at most `max_entries` updates.
    pub fn new(max_bytes: usize, max_entries: usize) -> Self {
        Self {
            by_digest: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            max_bytes,
            max_entries: max_entries.max(1),
            served: HashMap::new(),
            served_order: VecDeque::new(),
        }
    }

    /// Chunk `chunk` of the update with `digest`, for the requester `requester` (a stable hash
    /// of its peer id): each chunk at most [`SERVES_PER_REQUESTER`] times per requester.
    pub fn serve(&mut self, digest: &Digest, requester: u64, chunk: u32) -> Result<Chunk, Refusal> {
        let bytes = self.by_digest.get(digest).ok_or(Refusal::Missing)?;
        let chunks = update_chunks(bytes.len());
        let index = chunk as usize;
        if index >= chunks {
            return Err(Refusal::NoSuchChunk);
        }
        let key = (requester, *digest, chunk);
        let times = self.served.entry(key).or_insert(0);
        if *times >= SERVES_PER_REQUESTER {
            return Err(Refusal::Again);
        }
        *times += 1;
        let first = *times == 1;
        let start = index * UPDATE_CHUNK_BYTES;
        let end = (start + UPDATE_CHUNK_BYTES).min(bytes.len());
        let served = Chunk {
            chunk,
            chunks: chunks as u32,
            bytes: bytes[start..end].to_vec(),
        };
        if first {
            self.served_order.push_back(key);
        }
        while self.served_order.len() > MAX_SERVED {
            if let Some(old) = self.served_order.pop_front() {
                self.served.remove(&old);
            }
        }
        Ok(served)
    }

    /// Keeps `bytes` under `digest` (a second insert of the same digest changes nothing).
    pub fn insert(&mut self, digest: Digest, bytes: Arc<Vec<u8>>) {
        if self.by_digest.contains_key(&digest) {
            return;
        }
        self.bytes += bytes.len();
        self.by_digest.insert(digest, bytes);
        self.order.push_back(digest);
        // The newest entry always stays, even alone over the budget: it is the one being announced.
        while self.order.len() > 1
            && (self.bytes > self.max_bytes || self.order.len() > self.max_entries)
        {
            if let Some(old) = self.order.pop_front()
                && let Some(b) = self.by_digest.remove(&old)
            {
                self.bytes -= b.len();
            }
        }
    }

    /// The update with `digest`, if still held.
    pub fn get(&self, digest: &Digest) -> Option<Arc<Vec<u8>>> {
        self.by_digest.get(digest).cloned()
    }

    /// Whether the update with `digest` is held.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.by_digest.contains_key(digest)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_within_budget() {
        let mut store = UpdateStore::new(250, 3);
        for i in 0..5u8 {
            store.insert([i; 32], Arc::new(vec![i; 100]));
        }
        // 250 bytes hold two updates of 100.
        assert!(!store.contains(&[2; 32]));
        assert!(store.contains(&[3; 32]) && store.contains(&[4; 32]));
        assert_eq!(store.bytes(), 200);
        assert_eq!(store.get(&[4; 32]).map(|b| b[0]), Some(4));
        // One update larger than the budget is still held until the next.
        store.insert([9; 32], Arc::new(vec![9; 1000]));
        assert!(store.contains(&[9; 32]));
        assert_eq!(store.bytes(), 1000);
        store.insert([9; 32], Arc::new(vec![0; 10]));
        assert_eq!(store.get(&[9; 32]).map(|b| b.len()), Some(1000));
        let mut few = UpdateStore::new(usize::MAX, 2);
        for i in 0..3u8 {
            few.insert([i; 32], Arc::new(vec![i]));
        }
        assert!(!few.contains(&[0; 32]) && few.contains(&[2; 32]));
    }

    #[test]
    fn each_chunk_is_served_twice_at_most_to_each_requester() {
        let mut store = UpdateStore::new(usize::MAX, 8);
        let big: Vec<u8> = (0..2 * UPDATE_CHUNK_BYTES + 10).map(|i| i as u8).collect();
        store.insert([1; 32], Arc::new(big.clone()));
        let (a, b) = (1, 2);
        let mut whole = Vec::new();
        for chunk in 0..3 {
            let got = store
                .serve(&[1; 32], a, chunk)
                .expect("first ask is served");
            assert_eq!((got.chunk, got.chunks), (chunk, 3));
            whole.extend(got.bytes);
        }
        assert_eq!(whole, big);
        assert!(
            store.serve(&[1; 32], a, 1).is_ok(),
            "a second pull is served"
        );
        assert_eq!(store.serve(&[1; 32], a, 1), Err(Refusal::Again));
        assert_eq!(store.serve(&[1; 32], a, 3), Err(Refusal::NoSuchChunk));
        assert_eq!(store.serve(&[2; 32], a, 0), Err(Refusal::Missing));
        assert!(
            store.serve(&[1; 32], b, 1).is_ok(),
            "another requester is served"
        );
        // The bookkeeping stays bounded; what it forgot may be asked for once more.
        store.insert([3; 32], Arc::new(vec![3; 10]));
        for requester in 10..10 + MAX_SERVED as u64 {
            store.serve(&[3; 32], requester, 0).expect("served");
        }
        assert_eq!(store.served.len(), MAX_SERVED);
        assert!(store.serve(&[1; 32], a, 0).is_ok());
    }
}
