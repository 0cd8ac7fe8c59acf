//! The head's output product, for several sessions at once when their hidden states arrive
//! together: one thread takes every request already waiting and runs them as one
//! [`Shard::logits_each`], which streams the output matrix (the largest of a small model)
//! once for all of them. A lone request never waits for company.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sharding::model::{Shard, StepError};
use tokio::sync::{mpsc, oneshot};

use super::super::error::PipelineError;

/// Most sessions whose logits are computed together.
const MAX_HEAD_BATCH: usize = 8;

/// Fewest requests in flight for which the head sends logits to this thread: the output
/// product of two rows costs as much as two products (the multi-row kernels start at three,
/// see `MIN_STAGE_BATCH`), so below three a request computes its own.
pub(in crate::pipeline) const MIN_HEAD_BATCH: usize = 3;

/// Requests waiting for the thread; senders wait when it is full.
const QUEUE: usize = 64;

type Reply = oneshot::Sender<Result<Vec<f32>, StepError>>;

/// A handle to the thread computing logits. It stops once every handle is dropped.
#[derive(Clone)]
pub(super) struct Logits {
    tx: mpsc::Sender<(Vec<f32>, Reply)>,
    counts: Arc<Counts>,
}

/// Batches of two or more sessions, and the sessions in them.
#[derive(Default)]
struct Counts {
    batches: AtomicU64,
    rows: AtomicU64,
}

impl Logits {
    /// Starts the thread; it locks `shard` (which must have the head) once per batch.
    pub(super) fn start(shard: Arc<Mutex<Shard>>) -> std::io::Result<Logits> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let counts = Arc::new(Counts::default());
        let thread_counts = counts.clone();
        std::thread::Builder::new()
            .name("shoal-head-logits".into())
            .spawn(move || run(&shard, rx, &thread_counts))?;
        Ok(Logits { tx, counts })
    }

    /// The logits of the last row of `hidden`.
    pub(super) async fn of(&self, hidden: Vec<f32>) -> Result<Vec<f32>, PipelineError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((hidden, reply))
            .await
            .map_err(|_| PipelineError::Stopping)?;
        answer
            .await
            .map_err(|_| PipelineError::Stopping)?
            .map_err(PipelineError::Head)
    }

    /// Batches of two or more sessions so far, and the sessions they held.
    pub(super) fn batched(&self) -> (u64, u64) {
        (
            self.counts.batches.load(Ordering::Relaxed),
            self.counts.rows.load(Ordering::Relaxed),
        )
    }
}

fn run(shard: &Mutex<Shard>, mut rx: mpsc::Receiver<(Vec<f32>, Reply)>, counts: &Counts) {
    let mut waiting = Vec::with_capacity(MAX_HEAD_BATCH);
    let mut replies = Vec::with_capacity(MAX_HEAD_BATCH);
    let (mut rows, mut out) = (Vec::new(), Vec::new());
    while let Some(first) = rx.blocking_recv() {
        waiting.clear();
        waiting.push(first);
        while waiting.len() < MAX_HEAD_BATCH {
            match rx.try_recv() {
                Ok(job) => waiting.push(job),
                Err(_) => break,
            }
        }
        let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
        let e = shard.config().n_embd;
        rows.clear();
        replies.clear();
        for (hidden, reply) in waiting.drain(..) {
            if hidden.is_empty() || !hidden.len().is_multiple_of(e) {
                // Let `logits` say what is wrong with it.
                let answer = shard.logits(&hidden, &mut out).map(|()| out.clone());
                let _ = reply.send(answer);
                continue;
            }
            rows.extend_from_slice(&hidden[hidden.len() - e..]);
            replies.push(reply);
        }
        if replies.is_empty() {
            continue;
        }
        let result = shard.logits_each(&rows, &mut out);
        drop(shard);
        if replies.len() > 1 {
            counts.batches.fetch_add(1, Ordering::Relaxed);
            counts
                .rows
                .fetch_add(replies.len() as u64, Ordering::Relaxed);
        }
        match result {
            Ok(()) => {
                let vocab = out.len() / replies.len();
                for (reply, logits) in replies.drain(..).zip(out.chunks_exact(vocab)) {
                    let _ = reply.send(Ok(logits.to_vec()));
                }
            }
            Err(error) => {
                for reply in replies.drain(..) {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
}
