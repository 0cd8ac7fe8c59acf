//! Caches of finished sessions, kept so that a later session starting with the same tokens
//! copies their rows instead of computing them again.
//!
//! The store is small and bounded by its owner (a [`crate::model::Shard`] counts kept
//! caches against its session limit and evicts them before it refuses a session); it only
//! keeps order: the least recently used cache goes first.

use super::KvCache;

/// The name a kept cache is found by: who may resume it (an opaque group, e.g. the peer
/// that owned the session) and the key it was kept under. A session of one group never
/// finds another group's caches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeptKey {
    /// Who may resume it.
    pub group: u64,
    /// The name its group gave it.
    pub key: u64,
}

/// One kept cache and when it was last used.
struct Entry {
    key: KeptKey,
    cache: KvCache,
    used: u64,
}

/// Kept caches in no particular order, each with the tick of its last use. A linear scan:
/// there are at most as many as a shard has sessions.
#[derive(Default)]
pub(crate) struct Kept {
    entries: Vec<Entry>,
    tick: u64,
}

impl Kept {
    /// Caches kept.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Caches kept for `group`.
    pub(crate) fn count(&self, group: u64) -> usize {
        self.entries.iter().filter(|e| e.key.group == group).count()
    }

    /// Bytes the kept caches hold.
    pub(crate) fn bytes(&self) -> usize {
        self.entries.iter().map(|e| e.cache.bytes()).sum()
    }

    /// Keeps `cache` under `key` (replacing one kept under it before) as the most recently
    /// used.
    pub(crate) fn insert(&mut self, key: KeptKey, cache: KvCache) {
        self.remove(key);
        self.tick += 1;
        self.entries.push(Entry {
            key,
            cache,
            used: self.tick,
        });
    }

    /// The cache kept under `key`, now the most recently used.
    pub(crate) fn get(&mut self, key: KeptKey) -> Option<&KvCache> {
        self.tick += 1;
        let tick = self.tick;
        let entry = self.entries.iter_mut().find(|e| e.key == key)?;
        entry.used = tick;
        Some(&entry.cache)
    }

    /// Drops the cache kept under `key`; `false` if there was none.
    pub(crate) fn remove(&mut self, key: KeptKey) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| e.key != key);
        self.entries.len() < before
    }

    /// Drops the least recently used cache (of `group` only, if given); `false` if there
    /// was none.
    pub(crate) fn evict(&mut self, group: Option<u64>) -> bool {
        let oldest = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| group.is_none_or(|g| e.key.group == g))
            .min_by_key(|(_, e)| e.used)
            .map(|(i, _)| i);
        match oldest {
            Some(i) => {
                self.entries.swap_remove(i);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(len: usize) -> KvCache {
        let mut c = KvCache::new(1, 2, 2, 64);
        assert!(c.reserve(len));
        c.commit(len);
        c
    }

    fn key(group: u64, key: u64) -> KeptKey {
        KeptKey { group, key }
    }

    #[test]
    fn the_least_recently_used_goes_first() {
        let mut kept = Kept::default();
        kept.insert(key(1, 10), cache(1));
        kept.insert(key(1, 11), cache(2));
        kept.insert(key(2, 10), cache(3));
        assert_eq!(kept.get(key(1, 10)).map(KvCache::len), Some(1));
        assert!(kept.evict(None));
        assert!(
            kept.get(key(1, 11)).is_none(),
            "11 was the least recently used"
        );
        assert!(kept.evict(Some(1)));
        assert!(
            kept.get(key(1, 10)).is_none(),
            "the only one left of group 1"
        );
        assert!(!kept.evict(Some(1)));
        assert_eq!((kept.len(), kept.count(2)), (1, 1));
    }

    #[test]
    fn a_group_finds_only_its_own_caches() {
        let mut kept = Kept::default();
        kept.insert(key(1, 10), cache(5));
        assert!(kept.get(key(2, 10)).is_none());
        kept.insert(key(1, 10), cache(6));
        assert_eq!(kept.len(), 1, "a key kept again replaces the old cache");
        assert_eq!(kept.get(key(1, 10)).map(KvCache::len), Some(6));
        assert!(kept.remove(key(1, 10)));
        assert!(!kept.remove(key(1, 10)));
        assert_eq!(kept.bytes(), 0);
    }
}
