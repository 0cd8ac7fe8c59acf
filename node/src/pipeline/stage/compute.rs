//! The stage's compute task: owns the shard (through its [`Worker`]) and runs the frames the
//! network tasks queue, in arrival order. It runs on the stage's own thread, next to the tasks
//! that receive and send the frames, so a decode frame goes from socket to shard to socket
//! without waking another thread. A message of several positions (a prompt chunk) runs on a
//! blocking thread instead, so the links keep answering while it computes.
//!
//! Decode rows of different sessions that are waiting together run as one batch
//! ([`sharding::model::Shard::forward_batch`]), which costs little more than one of them
//! alone; each result still leaves as its own message.

use std::sync::atomic::Ordering;

use sharding::model::Shard;
use tokio::sync::mpsc;
use tracing::warn;
use transport::quic::{FrameHeader, FrameKind};

use super::worker::{DecodeRow, Worker};
use super::{Job, Outgoing, Reports, Settings};
use crate::pipeline::protocol::{FailureCode, Message, Phase, RowsHead};

/// Most decode rows computed as one batch. A batch takes only rows already waiting: a lone
/// stream never waits for company.
pub(super) const MAX_STAGE_BATCH: usize = 8;
const _: () = assert!(MAX_STAGE_BATCH <= sharding::model::MAX_BATCH);

/// Fewest decode rows computed as one batch; two waiting rows run one after the other.
///
/// The multi-row kernels start paying at three rows: a batch of two costs as much as two
/// steps (`sharding/examples/batch_cost.rs`: 4.05 ms against 2 × 2.0 ms for 15 SmolLM2
/// layers), while a batch of three costs 0.69 of three steps and four 0.54 of four. And a
/// batch is worse than its cost: sessions computed together leave together, reach the next
/// stage together and are batched there again, so two streams through a two-stage ring move
/// in lockstep with one stage idle. Run one after the other, the first result leaves a step
/// earlier, and the two sessions spread over the stages.
pub(super) const MIN_STAGE_BATCH: usize = 3;

/// Runs jobs until the queue closes, the downstream queue does, or [`Job::Stop`].
pub(super) async fn compute(
    shard: Shard,
    mut jobs: mpsc::Receiver<Job>,
    out: mpsc::Sender<Outgoing>,
    settings: Settings,
    reports: Reports,
) {
    let mut worker = Box::new(Worker::new(shard, settings, reports));
    let mut waiting: Vec<DecodeRow> = Vec::with_capacity(MAX_STAGE_BATCH);
    // Jobs taken from the queue but not run yet, in queue order: the second of a pair of
    // decode rows, then the frame that ended a batch.
    let mut held: Option<DecodeRow> = None;
    let mut next: Option<Job> = None;
    loop {
        let job = match (held.take(), next.take()) {
            (Some((h, _, p, f)), later) => {
                next = later;
                Job::Frame(h, p, f)
            }
            (None, Some(job)) => job,
            (None, None) => match jobs.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        match job {
            Job::Sweep => {
                worker.sweep();
                // Once a second, off the per-token path: the driver samples it as often.
                worker
                    .reports
                    .kv
                    .store(worker.kv_bytes(), Ordering::Relaxed);
            }
            Job::Rejected {
                session,
                from,
                error,
            } => worker.rejected(session, from, &error),
            Job::NextHopLost { next, error } => worker.next_hop_lost(next, &error),
            Job::Stop => {
                worker.fail_all(FailureCode::Unroutable, "this stage was stopped");
                for frame in worker.outbox.drain(..) {
                    if out.send(frame).await.is_err() {
                        break;
                    }
                }
                // Dropping `out` lets the downstream task send what is queued and end.
                return;
            }
            Job::Frame(header, payload, from) => match decode_row(&header, &payload) {
                Some(rows) => {
                    waiting.clear();
                    waiting.push((header, rows, payload, from));
                    // Take the decode rows already queued behind it, up to the first frame
                    // of another kind or a second one of a session (those must run after
                    // it). Not past a frame already taken out of order.
                    while next.is_none() && waiting.len() < MAX_STAGE_BATCH {
                        match jobs.try_recv() {
                            Ok(Job::Frame(h, p, f)) => match decode_row(&h, &p) {
                                Some(r) if waiting.iter().all(|w| w.0.session != h.session) => {
                                    waiting.push((h, r, p, f));
                                }
                                _ => {
                                    next = Some(Job::Frame(h, p, f));
                                    break;
                                }
                            },
                            Ok(other) => {
                                next = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    if waiting.len() < MIN_STAGE_BATCH {
                        // Run the first alone and send it on before the second.
                        held = waiting.drain(1..).next();
                    }
                    worker.decode(&mut waiting);
                }
                None if is_multi_row(&header, &payload) => {
                    let run = tokio::task::spawn_blocking(move || {
                        worker.frame(header, payload, from);
                        worker
                    });
                    worker = match run.await {
                        Ok(worker) => worker,
                        Err(e) => {
                            warn!(error = %e, "the stage's compute stopped");
                            return;
                        }
                    };
                }
                None => worker.frame(header, payload, from),
            },
        }
        worker.reports.open.store(worker.open(), Ordering::Relaxed);
        worker
            .reports
            .kv
            .store(worker.kv_bytes(), Ordering::Relaxed);
        for frame in worker.outbox.drain(..) {
            if out.send(frame).await.is_err() {
                return;
            }
        }
    }
}

/// The shape of a frame that may join a decode batch: one generated position.
fn decode_row(header: &FrameHeader, payload: &[u8]) -> Option<RowsHead> {
    if header.kind != FrameKind::Message {
        return None;
    }
    match Message::decode(payload) {
        Ok(Message::Rows(r)) if r.head.phase == Phase::Decode && r.head.rows == 1 => Some(r.head),
        _ => None,
    }
}

/// Whether a frame holds a prompt chunk of several positions, run off the stage's thread so
/// its links keep answering. A verification of speculative drafts (a few generated rows)
/// runs here like a decode step: it costs little more than one, and a hand-off to another
/// thread and back would cost more than the rows.
fn is_multi_row(header: &FrameHeader, payload: &[u8]) -> bool {
    header.kind == FrameKind::Message
        && matches!(Message::decode(payload),
            Ok(Message::Rows(r)) if r.head.rows > 1 && r.head.phase == Phase::Prefill)
}
