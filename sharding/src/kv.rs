//! Per-session key/value cache of one shard, stored as f16 like llama.cpp's default cache.
//!
//! Storage grows in steps of [`GROW_POSITIONS`] up to the session's limit, so a short chat does
//! not pay for the model's whole context, and the decode loop reallocates only once every
//! few hundred tokens.

use half::f16;

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
        self.capacity * (self.k_dim + self.v_dim) * 2 * self.layers.len()
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
}
