//! The libp2p implementation of [`Discovery`]: TCP (+ pnet in a private cluster) + noise +
//! yamux on tokio, with identify, ping, optional mDNS and a request-response protocol for
//! adverts, peer exchange and application messages.
//!
//! One task owns the swarm (the event loop); cloneable [`Handle`]s talk to it
//! over a bounded command channel, each command carrying a oneshot reply.

mod behaviour;
mod event_loop;
mod rejected;

use std::sync::Arc;
use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::advert::Advert;
use super::config::Config;
use super::error::{DiscoveryError, SendError, StartError};
use super::event::{Inbox, MembershipEvent};
use super::Discovery;
use event_loop::{Command, EventLoop, Outputs};

/// How long `spawn` waits for the listeners to report their addresses.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts a discovery node with identity `keypair`: listens, dials the
/// bootstrap peers and runs the event loop on the current tokio runtime until
/// `cancel` fires, the [`Service`] is shut down or dropped, or every handle is gone.
pub async fn spawn(
    config: Config,
    keypair: Keypair,
    cancel: CancellationToken,
) -> Result<(Handle, Inbox, Service), StartError> {
    config.validate()?;
    let local_peer_id = keypair.public().to_peer_id();
    let swarm = behaviour::build_swarm(&config, keypair)?;
    let (command_tx, command_rx) = mpsc::channel(config.command_capacity);
    let (events, _) = broadcast::channel(config.event_capacity);
    let (view_tx, view_rx) = watch::channel(Arc::new(Vec::new()));
    let (inbox_tx, inbox_rx) = mpsc::channel(config.inbox_capacity);
    let out = Outputs {
        events: events.clone(),
        view: view_tx,
        inbox: inbox_tx,
    };
    let mut event_loop = EventLoop::new(swarm, &config, command_rx, out, cancel.clone());
    let span = tracing::info_span!("discovery", peer = %local_peer_id);
    event_loop
        .listen(&config.listen, LISTEN_TIMEOUT)
        .instrument(span.clone())
        .await?;
    let task = tokio::spawn(event_loop.run().instrument(span));
    let handle = Handle {
        local_peer_id,
        commands: command_tx,
        events,
        view: view_rx,
        max_message_bytes: config.max_message_bytes,
    };
    Ok((
        handle,
        inbox_rx,
        Service {
            cancel,
            task: Some(task),
        },
    ))
}

/// Owner of the running event loop. Dropping it stops the node (connections
/// close, peers see it leave); [`Service::shutdown`] also waits for the loop to end.
#[derive(Debug)]
pub struct Service {
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Service {
    /// Stops the event loop and waits until the swarm is dropped.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            // A panicked loop has stopped all the same.
            let _ = task.await;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Cloneable handle on a libp2p discovery node.
#[derive(Debug, Clone)]
pub struct Handle {
    local_peer_id: PeerId,
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<MembershipEvent>,
    view: watch::Receiver<Arc<Vec<Advert>>>,
    max_message_bytes: usize,
}

impl Handle {
    /// The addresses the node listens on (with concrete ports), for use as
    /// other nodes' bootstrap addresses.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, DiscoveryError> {
        let (reply, rx) = oneshot::channel();
        self.command(Command::ListenAddrs { reply }).await?;
        rx.await.map_err(|_| DiscoveryError::Stopped)
    }

    async fn command(&self, command: Command) -> Result<(), DiscoveryError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| DiscoveryError::Stopped)
    }
}

impl Discovery for Handle {
    fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    fn subscribe(&self) -> broadcast::Receiver<MembershipEvent> {
        self.events.subscribe()
    }

    fn members(&self) -> Arc<Vec<Advert>> {
        self.view.borrow().clone()
    }

    async fn publish(&self, advert: Advert) -> Result<(), DiscoveryError> {
        let (reply, rx) = oneshot::channel();
        self.command(Command::Publish {
            advert: Box::new(advert),
            reply,
        })
        .await?;
        rx.await.map_err(|_| DiscoveryError::Stopped)?
    }

    async fn send_to(&self, peer: PeerId, payload: Vec<u8>) -> Result<(), SendError> {
        if payload.len() > self.max_message_bytes {
            return Err(SendError::TooLarge {
                size: payload.len(),
                max: self.max_message_bytes,
            });
        }
        let (reply, rx) = oneshot::channel();
        self.command(Command::Send {
            peer,
            payload,
            reply,
        })
        .await
        .map_err(|_| SendError::Stopped)?;
        rx.await.map_err(|_| SendError::Stopped)?
    }
}
