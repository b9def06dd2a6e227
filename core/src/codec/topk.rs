//! Exact top-k selection by magnitude, by radix select on the float bits.
//!
//! For finite floats, `|x|`'s bit pattern orders like `|x|` itself, so the k largest magnitudes are
//! the k largest `u32` keys `bits & 0x7fff_ffff`. Ties at the threshold go to the lowest indices.
//! The result is therefore a pure function of the input (never of scheduling or sort stability),
//! which is what lets the GPU kernels (histogram → threshold → ordered compaction) match it.

/// The threshold of a top-k selection: every key above `key` is taken, plus the first
/// `ties_taken` coordinates (in index order) whose key equals it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Threshold {
    /// The k-th largest magnitude key.
    pub key: u32,
    /// How many coordinates with exactly that key are taken, lowest indices first.
    pub ties_taken: usize,
}

/// Magnitude key of a float: its bits without the sign.
#[inline]
pub fn magnitude_key(x: f32) -> u32 {
    x.to_bits() & 0x7fff_ffff
}

/// Finds the threshold of the `k` largest magnitudes of `values` (`0 < k ≤ values.len()`),
/// in two histogram passes over 16-bit digits (the same passes a GPU runs).
pub fn threshold(values: &[f32], k: usize) -> Threshold {
    debug_assert!(k > 0 && k <= values.len());
    // Pass 1: histogram of the high 16 bits; walk from the top to the bucket holding the k-th key.
    let mut hist = vec![0usize; 1 << 16];
    for &v in values {
        hist[(magnitude_key(v) >> 16) as usize] += 1;
    }
    let (hi, above_hi) = walk_down(&hist, k);
    // Pass 2: histogram of the low 16 bits among keys in that bucket.
    hist.iter_mut().for_each(|h| *h = 0);
    for &v in values {
        let key = magnitude_key(v);
        if key >> 16 == hi as u32 {
            hist[(key & 0xffff) as usize] += 1;
        }
    }
    let (lo, above_lo) = walk_down(&hist, k - above_hi);
    Threshold {
        key: ((hi as u32) << 16) | lo as u32,
        ties_taken: k - above_hi - above_lo,
    }
}

/// Returns the bucket holding the `k`-th largest element, and how many elements lie strictly above it.
fn walk_down(hist: &[usize], k: usize) -> (usize, usize) {
    let mut above = 0;
    for bucket in (0..hist.len()).rev() {
        if above + hist[bucket] >= k {
            return (bucket, above);
        }
        above += hist[bucket];
    }
    // Unreachable for k ≤ total; bucket 0 is the answer of last resort.
    (0, above)
}

/// Indices (strictly increasing) of the `k` largest magnitudes, ties broken by lower index.
pub fn select(values: &[f32], k: usize) -> Vec<u32> {
    let k = k.min(values.len());
    if k == 0 {
        return Vec::new();
    }
    if k == values.len() {
        return (0..values.len() as u32).collect();
    }
    let t = threshold(values, k);
    let mut out = Vec::with_capacity(k);
    let mut ties = t.ties_taken;
    for (i, &v) in values.iter().enumerate() {
        let key = magnitude_key(v);
        if key > t.key || (key == t.key && ties > 0) {
            if key == t.key {
                ties -= 1;
            }
            out.push(i as u32);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_go_to_the_lowest_indices() {
        let v = [1.0, -3.0, 2.0, 3.0, -2.0, 2.0, 0.0];
        assert_eq!(select(&v, 1), vec![1]);
        assert_eq!(select(&v, 2), vec![1, 3]);
        assert_eq!(select(&v, 3), vec![1, 2, 3]);
        assert_eq!(select(&v, 4), vec![1, 2, 3, 4]);
        assert_eq!(select(&v, 7), (0..7).collect::<Vec<_>>());
        assert!(select(&v, 0).is_empty());
    }

    #[test]
    fn denormals_and_signed_zeros_order_by_magnitude() {
        let v = [
            0.0,
            -0.0,
            f32::from_bits(1),
            -f32::from_bits(3),
            f32::from_bits(2),
        ];
        assert_eq!(select(&v, 1), vec![3]);
        assert_eq!(select(&v, 2), vec![3, 4]);
        assert_eq!(select(&v, 4), vec![0, 2, 3, 4]);
    }
}
