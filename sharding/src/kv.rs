//! Per-session key/value cache of one shard, stored as f16 like llama.cpp's default cache.
//!
//! Storage grows in steps of [`GROW_POSITIONS`] up to the session's limit, so a short chat does
//! not pay for the model's whole context, and the decode loop reallocates only once every
//! few hundred tokens.
//!
//! A finished session's cache may be kept ([`kept`]) so that a later session starting with
//! the same tokens copies its rows instead of computing them again (prefix reuse).

use half::f16;

pub mod kept;

/// Positions added each time a session's cache grows.
pub const GROW_POSITIONS: usize = 256;

/// K and V rows of one layer, position-major: `[pos][kv_head][head_dim]`.
#[derive(Default)]
pub(crate) struct LayerCache {
    pub(crate) k: Vec<f16>,
    pub(crate) v: Vec<f16>,
}

/// The cache of one session across the layers of a shard.
pub struct KvCache {
    pub(crate) layers: Vec<LayerCache>,
    len: usize,
    capacity: usize,
    max_positions: usize,
    k_dim: usize,
    v_dim: usize,
}

impl KvCache {
    /// An empty cache for `n_layers` layers holding at most `max_positions` positions.
    pub(crate) fn new(n_layers: usize, k_dim: usize, v_dim: usize, max_positions: usize) -> Self {
        KvCache {
            layers: (0..n_layers).map(|_| LayerCache::default()).collect(),
            len: 0,
            capacity: 0,
            max_positions,
            k_dim,
            v_dim,
        }
    }

    /// Positions stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most positions this session may hold.
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// Bytes currently allocated.
    pub fn bytes(&self) -> usize {
        Self::bytes_of(self.layers.len(), self.k_dim, self.v_dim, self.capacity)
    }

    /// Bytes a cache of `n_layers` layers holding `positions` positions allocates.
    pub(crate) fn bytes_of(n_layers: usize, k_dim: usize, v_dim: usize, positions: usize) -> usize {
        positions * (k_dim + v_dim) * 2 * n_layers
    }

    /// Makes room for `n` more positions; `false` when that would pass the limit.
    pub(crate) fn reserve(&mut self, n: usize) -> bool {
        let need = self.len + n;
        if need > self.max_positions {
            return false;
        }
        if need > self.capacity {
            let cap = need
                .next_multiple_of(GROW_POSITIONS)
                .min(self.max_positions);
            for l in &mut self.layers {
                l.k.resize(cap * self.k_dim, f16::ZERO);
                l.v.resize(cap * self.v_dim, f16::ZERO);
            }
            self.capacity = cap;
        }
        true
    }

    /// Marks `n` reserved positions as written.
    pub(crate) fn commit(&mut self, n: usize) {
        debug_assert!(self.len + n <= self.capacity);
        self.len += n;
    }

    /// Forgets every position from `len` on (a rollback; storage is kept).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// A new cache holding a copy of this one's first `len` positions, which may grow to
    /// `max_positions`; `None` when this cache holds fewer than `len` positions or `len`
    /// passes `max_positions`. The rows are the same bits, so steps continuing the copy
    /// compute what they would have computed continuing this cache.
    pub fn prefix(&self, len: usize, max_positions: usize) -> Option<KvCache> {
        if len > self.len || len > max_positions {
            return None;
        }
        let mut copy = KvCache::new(self.layers.len(), self.k_dim, self.v_dim, max_positions);
        if !copy.reserve(len) {
            return None;
        }
        for (to, from) in copy.layers.iter_mut().zip(&self.layers) {
            to.k[..len * self.k_dim].copy_from_slice(&from.k[..len * self.k_dim]);
            to.v[..len * self.v_dim].copy_from_slice(&from.v[..len * self.v_dim]);
        }
        copy.commit(len);
        Some(copy)
    }

    /// Frees the storage past the stored positions (rounded up to [`GROW_POSITIONS`]): a
    /// kept cache holds no room it will never fill.
    pub(crate) fn shrink(&mut self) {
        let cap = self
            .len
            .next_multiple_of(GROW_POSITIONS)
            .min(self.max_positions);
        if cap >= self.capacity {
            return;
        }
        for l in &mut self.layers {
            l.k.truncate(cap * self.k_dim);
            l.k.shrink_to_fit();
            l.v.truncate(cap * self.v_dim);
            l.v.shrink_to_fit();
        }
        self.capacity = cap;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache of `len` positions whose every value says its layer, position and column.
    fn filled(len: usize, max: usize) -> KvCache {
        let mut c = KvCache::new(2, 3, 2, max);
        assert!(c.reserve(len));
        for (il, l) in c.layers.iter_mut().enumerate() {
            for (i, k) in l.k.iter_mut().enumerate().take(len * 3) {
                *k = f16::from_f32((il * 1000 + i) as f32);
            }
            for (i, v) in l.v.iter_mut().enumerate().take(len * 2) {
                *v = f16::from_f32(-((il * 1000 + i) as f32));
            }
        }
        c.commit(len);
        c
    }

    #[test]
    fn a_prefix_copies_exactly_its_positions() {
        let c = filled(300, 1000);
        let p = c.prefix(100, 500).expect("a prefix");
        assert_eq!((p.len(), p.max_positions()), (100, 500));
        for (a, b) in p.layers.iter().zip(&c.layers) {
            assert_eq!(a.k[..300], b.k[..300]);
            assert_eq!(a.v[..200], b.v[..200]);
        }
        // The copy grows on its own: the original is untouched.
        let mut p = p;
        assert!(p.reserve(50));
        p.layers[0].k[300] = f16::from_f32(7.0);
        assert_ne!(p.layers[0].k[300], c.layers[0].k[300]);
        assert!(c.prefix(301, 1000).is_none(), "longer than what is stored");
        assert!(c.prefix(100, 99).is_none(), "past the new limit");
    }

    #[test]
    fn shrinking_keeps_the_positions_and_frees_the_rest() {
        let mut c = filled(300, 2048);
        assert!(c.reserve(600));
        let before = c.bytes();
        c.shrink();
        assert!(c.bytes() < before);
        assert_eq!(c.bytes(), 512 * (3 + 2) * 2 * 2);
        assert_eq!(c.prefix(300, 300).map(|p| p.len()), Some(300));
        assert_eq!(filled(300, 2048).layers[1].v[..600], c.layers[1].v[..600]);
    }
}
