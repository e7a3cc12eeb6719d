//! Background tasks a replica owns: each is aborted when its owner is dropped.

/// Aborts a background task when dropped (when `run_until_stopped` returns, however it returns,
/// or when the feed's follower remakes its consumer).
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
