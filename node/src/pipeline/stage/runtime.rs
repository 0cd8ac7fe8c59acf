//! The stage thread's own tokio runtime, shut down without blocking when dropped.

/// A stage's runtime until its thread runs it. Dropping it shuts it down without blocking,
/// so a stage that cannot start (its address taken, no thread to be had) returns an error
/// inside the caller's runtime instead of panicking there.
pub(super) struct OwnRuntime(pub(super) Option<tokio::runtime::Runtime>);

impl OwnRuntime {
    pub(super) fn get(&self) -> Option<&tokio::runtime::Runtime> {
        self.0.as_ref()
    }
}

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}
