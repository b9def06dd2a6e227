//! Counter-based random numbers for stochastic rounding.
//!
//! The draw for coordinate `i` depends only on `(seed, round, i)`, never on the order in which
//! coordinates are visited, so a GPU kernel with thousands of threads reproduces the CPU reference
//! bit for bit. Everything per coordinate is 32-bit integer arithmetic because WGSL has no `u64`;
//! only the once-per-round key derivation uses 64-bit mixing (done on the host for the GPU too).

/// Key of one encode call: derived once per (seed, round) and handed to every coordinate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RngKey {
    /// First 32-bit key word (added to the coordinate index before the first hash).
    pub k0: u32,
    /// Second 32-bit key word (xored in between the two hashes).
    pub k1: u32,
}

impl RngKey {
    /// Derives the key for a peer's `seed` (distinct per peer, so peers round independently) and `round`.
    pub fn new(seed: u64, round: u64) -> Self {
        let a = splitmix64(seed ^ splitmix64(round));
        let b = splitmix64(a);
        Self {
            k0: a as u32 ^ (a >> 32) as u32,
            k1: b as u32 ^ (b >> 32) as u32,
        }
    }

    /// The uniform 32-bit draw for coordinate `index`.
    #[inline]
    pub fn draw(self, index: u32) -> u32 {
        hash32(hash32(index.wrapping_add(self.k0)) ^ self.k1)
    }
}

/// Chris Wellons' "lowbias32" integer hash: a bijection on u32 with low bias, cheap in WGSL.
#[inline]
pub fn hash32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// SplitMix64's finaliser: a 64-bit bijective mixer, used for host-side key derivation only.
#[inline]
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_depend_on_every_key_part() {
        let a = RngKey::new(1, 7);
        assert_eq!(a.draw(5), RngKey::new(1, 7).draw(5));
        assert_ne!(a.draw(5), RngKey::new(2, 7).draw(5));
        assert_ne!(a.draw(5), RngKey::new(1, 8).draw(5));
        assert_ne!(a.draw(5), a.draw(6));
    }

    #[test]
    fn draws_are_roughly_uniform() {
        // 16 buckets over 64k draws: each bucket expects 4096; 5 sigma is about 310.
        let key = RngKey::new(42, 3);
        let mut buckets = [0u32; 16];
        for i in 0..65_536u32 {
            buckets[(key.draw(i) >> 28) as usize] += 1;
        }
        for b in buckets {
            assert!(
                (3786..=4406).contains(&b),
                "bucket count {b} is not uniform"
            );
        }
    }

    #[test]
    fn hash32_known_values() {
        assert_eq!(hash32(0), 0);
        // Values computed independently (Python) so that the WGSL port is checked against them too.
        assert_eq!(hash32(1), 0x6889_90c0);
        assert_eq!(hash32(0xdead_beef), 0xe628_c683);
    }
}
