//! The updates a node can serve to peers that pull them: its own, and those it pulled and
//! validated (so that a peer that heard an announcement through a forwarder can pull from it).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use gradswarm_core::Digest;

/// Encoded updates by digest, oldest evicted first once `max_bytes` or `max_entries` is passed.
#[derive(Debug)]
pub struct UpdateStore {
    by_digest: HashMap<Digest, Arc<Vec<u8>>>,
    order: VecDeque<Digest>,
    bytes: usize,
    max_bytes: usize,
    max_entries: usize,
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
        }
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
}
