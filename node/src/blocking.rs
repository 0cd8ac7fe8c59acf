//! Running a few milliseconds of model math from async code.

/// Runs `f` on this thread. On a multi-thread runtime's worker the worker first hands its
/// other tasks over (`block_in_place`); a current-thread runtime (`shoal generate`) has
/// nothing else to run, and outside a runtime there is nobody to tell.
pub(crate) fn run_blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}
