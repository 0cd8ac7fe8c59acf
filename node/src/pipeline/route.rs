//! Where a stage sends what it computed.
//!
//! In a static pipeline every hop is known at start. In a self-forming cluster a stage is
//! loaded before its neighbours are (each binds a fresh port per plan epoch), so its next hop
//! is set once the whole plan is ready; and the last stage answers whichever head opened each
//! session, because every node can serve requests with its own head.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::watch;

/// The next hop of a stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Not known yet: frames wait (bounded) until it is.
    Pending,
    /// Every frame goes to this address.
    To(SocketAddr),
    /// Last stage: each session's frames go back to the head that opened it (the address in
    /// its `Open` payload).
    ReplyToHead,
}

/// How long a frame waits for a pending route before it is dropped.
pub(crate) const PENDING_WAIT: Duration = Duration::from_secs(10);

/// Waits until `route` is no longer pending; `None` after [`PENDING_WAIT`] or when the
/// sender is gone.
pub(crate) async fn resolved(route: &mut watch::Receiver<Route>) -> Option<Route> {
    let wait = route.wait_for(|r| *r != Route::Pending);
    match tokio::time::timeout(PENDING_WAIT, wait).await {
        Ok(Ok(r)) => Some(*r),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pending_routes_resolve_when_set() {
        let (tx, mut rx) = watch::channel(Route::Pending);
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            tx.send_replace(Route::To(addr));
        });
        assert_eq!(resolved(&mut rx).await, Some(Route::To(addr)));
    }
}
