//! The thin async shell around the [`Cluster`] machine: turns discovery events, plan
//! messages, loaded stages, stage reports and timers into inputs, carries out the machine's
//! actions, and publishes what the API reads (a `watch` snapshot; nothing is shared behind a
//! lock). Generic over [`Discovery`], so tests can run it on the in-memory network.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use transport::discovery::{Advert, Discovery, Inbox, MembershipEvent};

use super::control::Control;
use super::machine::{Action, Cluster, Input, Millis, Snapshot, Tick};
use super::stages::Stages;
use crate::cpu_quota;
use crate::metrics::Metrics;
use crate::pipeline::{PlanRoute, StageEvent};

/// Plan messages being sent at once; more wait (they are rare: one per plan per member).
const SENDS_IN_FLIGHT: usize = 64;

/// What the driver publishes for the rest of the node.
pub(crate) struct Outputs {
    pub(crate) snapshot: watch::Sender<Snapshot>,
    pub(crate) route: watch::Sender<PlanRoute>,
}

/// Everything the driver runs with.
pub(crate) struct Driver<D> {
    pub(crate) machine: Cluster,
    pub(crate) discovery: D,
    pub(crate) inbox: Inbox,
    pub(crate) stages: Stages,
    /// What the stages report, tagged with their plan's epoch.
    pub(crate) stage_events: mpsc::Receiver<(u64, StageEvent)>,
    pub(crate) outputs: Outputs,
    pub(crate) metrics: Arc<Metrics>,
}

/// Runs the machine until `cancel`, then stops every stage and waits for every task it
/// started.
pub(crate) async fn run<D: Discovery>(driver: Driver<D>, cancel: CancellationToken) {
    let Driver {
        mut machine,
        discovery,
        mut inbox,
        mut stages,
        mut stage_events,
        outputs,
        metrics,
    } = driver;
    let started = Instant::now();
    let now = || started.elapsed().as_millis() as Millis;
    let mut events = discovery.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let (advert_tx, adverts) = watch::channel(None);
    let mut tasks = JoinSet::new();
    tasks.spawn(publish_adverts(discovery.clone(), adverts));
    // Whoever is already a member when the driver starts.
    let mut pending = vec![Input::Resync(discovery.members().as_ref().clone())];
    loop {
        for input in pending.drain(..) {
            let actions = machine.handle(input, now());
            for action in actions {
                execute(
                    action,
                    &discovery,
                    &mut stages,
                    &advert_tx,
                    &mut tasks,
                    &metrics,
                );
            }
        }
        outputs.route.send_if_modified(|r| {
            let changed = *r != machine.route();
            *r = machine.route();
            changed
        });
        outputs.snapshot.send_replace(machine.snapshot());
        while tasks.try_join_next().is_some() {}
        let deadline = machine
            .deadline()
            .map(|at| tokio::time::Instant::from_std(started + Duration::from_millis(at)));
        let input = tokio::select! {
            _ = cancel.cancelled() => break,
            event = events.recv() => match event {
                Ok(MembershipEvent::Joined(a)) => Input::Joined(a),
                Ok(MembershipEvent::Updated(a)) => Input::Updated(a),
                Ok(MembershipEvent::Left(peer)) => Input::Left(peer),
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    Input::Resync(discovery.members().as_ref().clone())
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            message = inbox.recv() => match message {
                Some(m) => match Control::decode(&m.payload) {
                    Ok(message) => Input::Control { from: m.from, message },
                    Err(e) => {
                        warn!(from = %m.from, error = %e, "ignored a malformed control message");
                        continue;
                    }
                },
                None => break,
            },
            (epoch, result) = stages.next_loaded() => match result {
                Ok(addr) => Input::StageLoaded { epoch, addr },
                Err(e) => Input::StageFailed { epoch, error: format!("{e:#}") },
            },
            Some((epoch, event)) = stage_events.recv() => match event {
                StageEvent::NextHopLost { next, .. } => Input::NextHopLost { epoch, next },
            },
            _ = sleep_until(deadline) => Input::Timer,
            _ = tick.tick() => {
                let quota = cpu_quota::cores_allowed();
                metrics.kv(stages.kv_bytes());
                Input::Tick(Tick {
                    stages: stages.report(quota),
                    cpu_quota_milli: cpu_quota::as_milli(quota),
                    link_rtts: stages.link_rtts(),
                })
            }
        };
        pending.push(input);
    }
    stages.shutdown().await;
    tasks.shutdown().await;
}

/// Carries out one action. Sends run as tasks of `tasks`, bounded in number.
fn execute<D: Discovery>(
    action: Action,
    discovery: &D,
    stages: &mut Stages,
    adverts: &watch::Sender<Option<Advert>>,
    tasks: &mut JoinSet<()>,
    metrics: &Metrics,
) {
    match action {
        Action::Publish(advert) => {
            adverts.send_replace(Some(*advert));
        }
        Action::Broadcast(message) if tasks.len() < SENDS_IN_FLIGHT => {
            let (discovery, bytes) = (discovery.clone(), message.encode());
            tasks.spawn(async move {
                let report = discovery.broadcast(bytes).await;
                for (peer, e) in report.failed {
                    warn!(%peer, error = %e, "a peer did not take the plan message");
                }
            });
        }
        Action::Send(peer, message) if tasks.len() < SENDS_IN_FLIGHT => {
            let (discovery, bytes) = (discovery.clone(), message.encode());
            tasks.spawn(async move {
                if let Err(e) = discovery.send_to(peer, bytes).await {
                    warn!(%peer, error = %e, "a peer did not take the plan message");
                }
            });
        }
        Action::Broadcast(_) | Action::Send(..) => {
            // The machine resends a plan to members that lag behind it at the next replan.
            warn!("too many plan messages in flight; one dropped");
        }
        Action::LoadStage(order) => stages.load(order),
        Action::AdoptStage { from, order } => stages.adopt(from, order),
        Action::RouteStage { epoch, next } => stages.route(epoch, next),
        Action::StopStage { epoch } => stages.stop(epoch),
        Action::Event(what) => metrics.events().record(what),
        Action::Replanned => metrics.replanned(),
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Publishes this node's adverts one at a time, newest last; one skipped while another was
/// being published is superseded by the newest anyway (a task per publish could deliver an
/// older advert after a newer one, and peers would keep the older).
async fn publish_adverts<D: Discovery>(discovery: D, mut adverts: watch::Receiver<Option<Advert>>) {
    while adverts.changed().await.is_ok() {
        let advert = adverts.borrow_and_update().clone();
        if let Some(advert) = advert {
            if let Err(e) = discovery.publish(advert).await {
                debug!(error = %e, "cannot publish the advert");
            }
        }
    }
}
