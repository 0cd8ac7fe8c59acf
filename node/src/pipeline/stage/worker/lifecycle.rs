//! A session's start and end on a stage: the per-upstream bound on opens, opening from a
//! kept cache (prefix reuse), and keeping a finished session's cache.
//!
//! Kept caches are named by the upstream that kept them and the key it gave, so an upstream
//! resumes only its own. They count against the shard's session limit and give way to open
//! sessions (the shard evicts the least recently used first); an upstream other than the
//! plan's previous stage keeps at most its per-peer share of them, so a member flooding
//! closes cannot push the other heads' caches out beyond what its sessions could.

use std::time::Instant;

use sharding::kv::kept::KeptKey;
use sharding::model::StepError;
use tracing::{debug, warn};
use transport::quic::FrameHeader;

use super::{Session, Upstream, Worker};
use crate::pipeline::protocol::{Close, FailureCode, Open};

impl Worker {
    /// Opens a session from `from`, empty or from the kept cache its open names, and sends
    /// the open on; or tells the head why not.
    pub(super) fn open_session(
        &mut self,
        header: FrameHeader,
        payload: Vec<u8>,
        open: Open,
        from: Upstream,
    ) {
        let session = header.session;
        let known = self.sessions.contains_key(&session);
        if !known && self.settings.previous_stage != Some(from) {
            let held = self.sessions.values().filter(|s| s.owner == from).count();
            if held >= self.settings.per_peer {
                // Refused before the shard sees it: the table keeps room for others.
                warn!(
                    session,
                    held, "refused an open: this upstream holds its share"
                );
                let why =
                    format!("this upstream already holds {held} sessions, its limit on this stage");
                return self.fail(session, open.reply, FailureCode::Busy, &why);
            }
        }
        let entry = Session {
            seen: Instant::now(),
            head: open.reply,
            owner: from,
        };
        self.sessions.insert(session, entry);
        let positions = open.positions as usize;
        let opened = match open.resume {
            None => self.shard.open_session(session, positions),
            Some(resume) => {
                let key = KeptKey {
                    group: from,
                    key: resume.key,
                };
                let len = resume.len as usize;
                self.shard.open_session_from(session, key, len, positions)
            }
        };
        match opened {
            Ok(()) => self.send(header, payload, open.reply),
            Err(e @ StepError::TooManySessions(_)) => {
                self.sessions.remove(&session);
                self.fail(session, open.reply, FailureCode::Busy, &e.to_string());
            }
            Err(e @ StepError::PrefixMissing { .. }) => {
                debug!(session, error = %e, "an open missed its kept prefix");
                self.sessions.remove(&session);
                self.fail(session, open.reply, FailureCode::PrefixMiss, &e.to_string());
            }
            Err(e) => self.refuse(session, open.reply, &e),
        }
    }

    /// Ends a session of `from`, freeing its cache or keeping it as the close asks.
    pub(super) fn close_session(&mut self, session: u64, close: Close, from: Upstream) {
        self.sessions.remove(&session);
        let Some(key) = close.keep else {
            self.shard.close_session(session);
            return;
        };
        // The plan's previous stage carries every head's caches: only the session limit
        // bounds them there. Any other upstream keeps its share.
        let share = if self.settings.previous_stage == Some(from) {
            usize::MAX
        } else {
            self.settings.per_peer
        };
        let key = KeptKey { group: from, key };
        if self.shard.keep_session(session, key, share) {
            debug!(
                session,
                kept = self.shard.kept_count(),
                "kept a session's cache"
            );
        }
    }
}
