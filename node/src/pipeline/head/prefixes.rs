//! Which token sequences the stages of a plan hold kept caches of, so that a request
//! starting with one (a chat's earlier turns, a shared system prompt) resumes from it and
//! prefills only the rest.
//!
//! The index is the head's belief, not a promise: a stage may have evicted the cache or
//! restarted since. Such a stage fails the open with `PrefixMiss`; the request then runs
//! without resuming and the entry is forgotten. Entries belong to a plan (its epoch and
//! first stage): a new plan's stages hold nothing of an old plan's, so a request never
//! resumes across plans.

use std::collections::VecDeque;
use std::net::SocketAddr;

/// A plan as a request sees it: its epoch (0 in a static pipeline) and its first stage.
pub(super) type Plan = (u64, SocketAddr);

/// Entries kept. A first stage keeps at most its per-head share of caches (by default
/// 3/4 of `--max-sessions`, 16), least recently used first: remembering many more than that
/// would mostly remember misses.
const MAX_ENTRIES: usize = 16;
/// Tokens the entries hold in all (4 bytes each): 1 MiB.
const MAX_TOKENS: usize = 1 << 18;
/// Fewest positions worth resuming: below this the prefill saved is a few milliseconds,
/// and a miss would cost the request a second start.
pub(super) const MIN_REUSE: usize = 32;

/// A kept cache: the plan whose stages keep it, its key, and the tokens of its positions.
struct Entry {
    plan: Plan,
    key: u64,
    tokens: Vec<u32>,
}

/// The kept caches this head knows of, least recently used first.
#[derive(Default)]
pub(super) struct Prefixes {
    entries: VecDeque<Entry>,
    tokens: usize,
}

impl Prefixes {
    /// The stages of `plan` keep the positions of `tokens` under `key`. Forgets entries of
    /// older plans and entries the new one makes useless (its own prefixes).
    pub(super) fn record(&mut self, plan: Plan, key: u64, tokens: &[u32]) {
        if tokens.len() < MIN_REUSE || tokens.len() > MAX_TOKENS {
            return;
        }
        self.entries.retain(|e| {
            let stale = e.plan.0 < plan.0 || (e.plan == plan && tokens.starts_with(&e.tokens));
            !stale
        });
        self.entries.push_back(Entry {
            plan,
            key,
            tokens: tokens.to_vec(),
        });
        self.tokens = self.entries.iter().map(|e| e.tokens.len()).sum();
        while self.entries.len() > MAX_ENTRIES || self.tokens > MAX_TOKENS {
            match self.entries.pop_front() {
                Some(e) => self.tokens -= e.tokens.len(),
                None => break,
            }
        }
    }

    /// The kept cache of `plan` sharing the longest prefix with `context`, and how many
    /// positions of it to resume: at least [`MIN_REUSE`], and always fewer than the
    /// context's, so the request computes its last position (whose logits it needs).
    pub(super) fn find(&mut self, plan: Plan, context: &[u32]) -> Option<(u64, usize)> {
        let limit = context.len().saturating_sub(1);
        let (i, len) = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.plan == plan)
            .map(|(i, e)| (i, common_prefix(&e.tokens, context).min(limit)))
            .max_by_key(|&(i, len)| (len, i))?;
        if len < MIN_REUSE {
            return None;
        }
        // Now the most recently used, as it is on the stages.
        let entry = self.entries.remove(i)?;
        let key = entry.key;
        self.entries.push_back(entry);
        Some((key, len))
    }

    /// A stage of `plan` does not hold `key` any more.
    pub(super) fn forget(&mut self, plan: Plan, key: u64) {
        self.entries.retain(|e| e.plan != plan || e.key != key);
        self.tokens = self.entries.iter().map(|e| e.tokens.len()).sum();
    }
}

/// Positions at which `a` and `b` agree from the start.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(epoch: u64) -> Plan {
        (epoch, SocketAddr::from(([10, 0, 0, 1], 7601)))
    }

    fn seq(n: usize, salt: u32) -> Vec<u32> {
        (0..n as u32).map(|i| i * 31 + salt).collect()
    }

    #[test]
    fn the_longest_shared_prefix_of_the_same_plan_is_found() {
        let mut p = Prefixes::default();
        let system = seq(40, 0);
        let mut chat = system.clone();
        chat.extend(seq(100, 7));
        p.record(plan(1), 10, &system[..35]);
        p.record(plan(1), 11, &chat);
        p.record(plan(2), 12, &seq(200, 3));
        // Plan 2's entry forgot plan 1's.
        assert_eq!(p.find(plan(1), &chat), None);
        p.record(plan(1), 10, &system[..35]);
        p.record(plan(1), 11, &chat);
        // The second turn: the whole first, then more.
        let mut turn = chat.clone();
        turn.extend(seq(20, 9));
        assert_eq!(p.find(plan(1), &turn), Some((11, chat.len())));
        // Nor across pipelines of one epoch (static ones are all epoch 0).
        let elsewhere = (1, SocketAddr::from(([10, 0, 0, 2], 7601)));
        assert_eq!(p.find(elsewhere, &turn), None);
        // A request equal to a kept sequence still computes its last position.
        assert_eq!(p.find(plan(1), &chat), Some((11, chat.len() - 1)));
        // Too short a shared part is not worth a resume.
        let mut other = system[..20].to_vec();
        other.extend(seq(50, 5));
        assert_eq!(p.find(plan(1), &other), None);
        p.forget(plan(1), 11);
        assert_eq!(
            p.find(plan(1), &turn),
            None,
            "the shorter entry was dropped by the longer"
        );
    }

    #[test]
    fn the_index_is_bounded_and_forgets_the_least_recently_used() {
        let mut p = Prefixes::default();
        for k in 0..MAX_ENTRIES as u64 + 4 {
            p.record(plan(1), k, &seq(64, k as u32 * 1000 + 1));
        }
        assert_eq!(p.entries.len(), MAX_ENTRIES);
        assert_eq!(p.find(plan(1), &seq(64, 1)), None, "entry 0 was evicted");
        // A lookup makes an entry the most recently used: it survives the next insert.
        let oldest = 4;
        let probe = seq(64, oldest * 1000 + 1);
        assert_eq!(p.find(plan(1), &probe), Some((oldest as u64, 63)));
        p.record(plan(1), 99, &seq(64, 99_000 + 1));
        assert_eq!(p.find(plan(1), &probe), Some((oldest as u64, 63)));
        assert_eq!(
            p.find(plan(1), &seq(64, 5001)),
            None,
            "entry 5 went instead"
        );
        // Too long a sequence is not recorded; the token bound holds.
        p.record(plan(1), 100, &vec![1; MAX_TOKENS + 1]);
        assert!(p.tokens <= MAX_TOKENS);
        assert_eq!(
            p.tokens,
            p.entries.iter().map(|e| e.tokens.len()).sum::<usize>()
        );
    }
}
