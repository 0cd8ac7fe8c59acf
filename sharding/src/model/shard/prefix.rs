//! Prefix reuse on a shard: a finished session's cache is kept under a key, and a new
//! session may start from a copy of its first positions instead of computing them.
//!
//! Kept caches count against the shard's session limit together with the open sessions,
//! so the shard never holds more caches than it could hold sessions; an open that finds no
//! room evicts the least recently used kept cache first and is refused only when every
//! cache is an open session's. Together they also hold at most the bytes of one session at
//! the shard's whole context, which is what a planner reserves for a stage's KV: kept
//! caches are what a stage holds between requests, and so stay within that reservation.

use super::Shard;
use crate::kv::kept::KeptKey;
use crate::kv::KvCache;
use crate::model::StepError;

impl Shard {
    /// Ends session `id` but keeps its cache under `key` for [`Shard::open_session_from`],
    /// with at most `per_group` caches kept for `key.group` (that group's least recently
    /// used goes first). `false` if the session was not open.
    pub fn keep_session(&mut self, id: u64, key: KeptKey, per_group: usize) -> bool {
        let Some(mut cache) = self.sessions.remove(&id) else {
            return false;
        };
        self.kept.remove(key);
        while self.kept.count(key.group) >= per_group.max(1) {
            self.kept.evict(Some(key.group));
        }
        cache.shrink();
        self.kept.insert(key, cache);
        // The newest is never evicted here: one session's cache is within the budget.
        let budget = self.kept_budget();
        while self.kept.bytes() > budget && self.kept.evict(None) {}
        true
    }

    /// Opens session `id` (as [`Shard::open_session`] would, up to `max_positions`) holding
    /// a copy of the first `len` positions of the cache kept under `key`, which stays kept.
    /// The session continues at position `len`.
    pub fn open_session_from(
        &mut self,
        id: u64,
        key: KeptKey,
        len: usize,
        max_positions: usize,
    ) -> Result<(), StepError> {
        if self.sessions.contains_key(&id) {
            return Err(StepError::SessionExists(id));
        }
        let max = self.session_limit(max_positions)?;
        let missing = || StepError::PrefixMissing { key: key.key, len };
        let cache = self.kept.get(key).ok_or_else(missing)?;
        let copy = cache.prefix(len, max).ok_or_else(missing)?;
        // Room is made after the copy: the cache it came from may be the one evicted.
        self.make_room()?;
        self.sessions.insert(id, copy);
        Ok(())
    }

    /// Caches kept now.
    pub fn kept_count(&self) -> usize {
        self.kept.len()
    }

    /// Most bytes the kept caches hold together: one session's at the shard's whole
    /// context.
    pub fn kept_budget(&self) -> usize {
        let c = &self.config;
        let v_dim = c.n_head_kv * c.head_dim_v;
        KvCache::bytes_of(self.blocks.len(), c.kv_dim(), v_dim, self.opts.max_context)
    }

    /// The positions a session asking for `max_positions` may hold (0: the shard's limit).
    pub(super) fn session_limit(&self, max_positions: usize) -> Result<usize, StepError> {
        let limit = self.opts.max_context;
        let max = if max_positions == 0 {
            limit
        } else {
            max_positions
        };
        if max > limit {
            return Err(StepError::ContextTooLong {
                requested: max,
                limit,
            });
        }
        Ok(max)
    }

    /// Evicts kept caches until one more session fits under the session limit; refuses when
    /// the open sessions alone fill it.
    pub(super) fn make_room(&mut self) -> Result<(), StepError> {
        let max = self.opts.max_sessions;
        if self.sessions.len() >= max {
            return Err(StepError::TooManySessions(max));
        }
        while self.sessions.len() + self.kept.len() >= max && self.kept.evict(None) {}
        Ok(())
    }
}
