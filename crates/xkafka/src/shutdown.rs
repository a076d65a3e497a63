//! A stop signal shared by the caller of `run`, the poll thread and handlers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;

/// Asks a running consumer to stop. Cheap to clone; calling
/// [`shutdown`](ShutdownHandle::shutdown) more than once, or after the
/// consumer stopped, does nothing.
#[derive(Clone, Debug, Default)]
pub struct ShutdownHandle {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    stopping: AtomicBool,
    since: Mutex<Option<Instant>>,
    notify: Notify,
}

impl ShutdownHandle {
    pub(crate) fn new() -> Self {
        ShutdownHandle::default()
    }

    /// Starts a graceful shutdown: stop fetching, let the in-flight message
    /// finish, commit, leave the group — bounded by the shutdown timeout.
    pub fn shutdown(&self) {
        if !self.inner.stopping.swap(true, Ordering::AcqRel) {
            *self.inner.since.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            self.inner.notify.notify_waiters();
        }
    }

    /// Whether a shutdown was requested.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.stopping.load(Ordering::Acquire)
    }

    /// When the shutdown was requested.
    pub(crate) fn since(&self) -> Option<Instant> {
        *self.inner.since.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolves once a shutdown is requested.
    pub async fn requested(&self) {
        loop {
            let notified = self.inner.notify.notified();
            if self.is_shutting_down() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn twice_is_harmless() {
        let handle = ShutdownHandle::new();
        let waiter = tokio::spawn({
            let h = handle.clone();
            async move { h.requested().await }
        });
        handle.shutdown();
        let first = handle.since();
        handle.shutdown();
        assert_eq!(
            handle.since(),
            first,
            "second call must not move the deadline"
        );
        waiter.await.unwrap();
        assert!(handle.is_shutting_down());
    }
}
