//! What happened in the cluster, as this node saw it: members joining and leaving, plans
//! becoming active and which layers moved, straggler decisions, weights fetched, requests
//! recovered after a broken plan. A short bounded log that `GET /v1/cluster` and
//! `shoal status` show, so an operator sees which node, when, which layers, how long.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A peer id short enough for a table or a sentence: libp2p ids share their first
/// characters ("12D3KooW…"), so the tail is what tells them apart.
pub fn short_id(id: &str) -> String {
    const KEEP: usize = 8;
    let n = id.chars().count();
    if n <= KEEP + 4 {
        id.to_owned()
    } else {
        let tail: String = id.chars().skip(n - KEEP).collect();
        format!("…{tail}")
    }
}

/// Which layers changed hands between two plans, as `a..b A -> B` ranges (`-` for a layer
/// nobody ran). `old` and `new` map each layer to its node.
pub fn moved_layers(old: &[Option<String>], new: &[Option<String>]) -> Vec<String> {
    let name = |o: &Option<String>| o.as_deref().map_or("-".to_owned(), short_id);
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=new.len() {
        let same_run =
            i < new.len() && old.get(i) == old.get(start) && new.get(i) == new.get(start);
        if !same_run {
            let (from, to) = (old.get(start).cloned().flatten(), new[start].clone());
            if from != to {
                out.push(format!("{start}..{i} {} -> {}", name(&from), name(&to)));
            }
            start = i;
        }
    }
    out
}

/// Events kept; older ones are dropped.
const KEPT: usize = 32;

/// One thing that happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// When, in milliseconds since the Unix epoch (this node's clock).
    pub at_unix_ms: u64,
    /// What happened, in words.
    pub what: String,
}

/// The newest [`KEPT`] events.
#[derive(Debug, Default)]
pub struct EventLog(Mutex<VecDeque<Event>>);

impl EventLog {
    /// Records `what` as happening now.
    pub fn record(&self, what: impl Into<String>) {
        let at_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut events = self.0.lock().expect("event log lock");
        if events.len() == KEPT {
            events.pop_front();
        }
        events.push_back(Event {
            at_unix_ms,
            what: what.into(),
        });
    }

    /// The kept events, oldest first.
    pub fn recent(&self) -> Vec<Event> {
        self.0
            .lock()
            .expect("event log lock")
            .iter()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moved_layers_name_the_ranges_that_changed_hands() {
        let who = |s: &str| -> Vec<Option<String>> {
            s.chars()
                .map(|c| (c != '.').then(|| c.to_string()))
                .collect()
        };
        assert_eq!(
            moved_layers(&who("aaabbbccc"), &who("aaaabbbbb")),
            vec!["3..4 b -> a", "6..9 c -> b"]
        );
        assert!(moved_layers(&who("aabb"), &who("aabb")).is_empty());
        assert_eq!(
            moved_layers(&who("...."), &who("aabb")),
            vec!["0..2 - -> a", "2..4 - -> b"]
        );
    }

    #[test]
    fn the_log_keeps_the_newest_events_in_order() {
        let log = EventLog::default();
        for i in 0..KEPT + 5 {
            log.record(format!("event {i}"));
        }
        let recent = log.recent();
        assert_eq!(recent.len(), KEPT);
        assert_eq!(recent[0].what, "event 5");
        assert_eq!(recent[KEPT - 1].what, format!("event {}", KEPT + 4));
        assert!(recent
            .windows(2)
            .all(|w| w[0].at_unix_ms <= w[1].at_unix_ms));
    }
}
