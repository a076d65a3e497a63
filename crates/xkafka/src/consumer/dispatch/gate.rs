//! The gate of one assignment of one partition: open while it is assigned;
//! handlers enter and leave it, so a revoke can tell what still runs.

use super::*;

/// Open for one assignment of one partition; closed when it is revoked (or
/// the consumer stops), after which its queued messages are dropped unread.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    open: AtomicBool,
    /// Handlers of this partition running right now.
    running: AtomicUsize,
}

impl Gate {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Gate {
            open: AtomicBool::new(true),
            running: AtomicUsize::new(0),
        })
    }

    // SeqCst on both sides: a lane announces itself (`enter`) and then
    // checks the gate, while a revocation closes the gate and then counts
    // running handlers; with sequential consistency one of them must see the
    // other, so no handler starts unseen after a drain found none running.
    pub(crate) fn close(&self) {
        self.open.store(false, Atomic::SeqCst);
    }

    pub(crate) fn running(&self) -> usize {
        self.running.load(Atomic::SeqCst)
    }

    /// Counts a handler in; `false` (and counted out again) when the gate
    /// is closed.
    pub(super) fn enter(&self) -> bool {
        self.enter_many(1)
    }

    pub(super) fn leave(&self) {
        self.leave_many(1);
    }

    /// [`enter`](Self::enter) for `n` handlers at once (a batch's run).
    pub(super) fn enter_many(&self, n: usize) -> bool {
        self.running.fetch_add(n, Atomic::SeqCst);
        if self.open.load(Atomic::SeqCst) {
            true
        } else {
            self.leave_many(n);
            false
        }
    }

    pub(super) fn leave_many(&self, n: usize) {
        self.running.fetch_sub(n, Atomic::SeqCst);
    }
}
