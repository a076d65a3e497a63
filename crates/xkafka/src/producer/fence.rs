//! The fence between a transactional consumer's transactions: a handler
//! started for a message of one transaction may not publish into the next.
//!
//! A transaction that aborts drops its running handlers, but dropping a
//! task only takes effect at its next `await`: a handler inside a poll (it
//! awaited once, then computes without yielding — parsing, compressing —
//! then publishes) keeps running and would enqueue its output into the
//! transaction opened after the abort, which commits it beside other
//! inputs' offsets while its own input is read and handled again: its
//! output twice for a `read_committed` reader.
//!
//! So every transaction has a *generation*. The dispatcher stamps each
//! handler call with the generation it was dispatched in (a task-local
//! around the handler's future, [`scoped`]); the producer admits a publish
//! made inside such a scope only while that generation is current, and
//! the admission and the enqueue happen under a read lock that the end of
//! a transaction takes for writing before it moves the generation on. A
//! publish is thus either enqueued before the generation moves (into the
//! transaction that ends: aborted with it) or refused — never in the next
//! transaction. Publishes outside any scope (the plain transactional API, a
//! task the handler spawned itself) are not fenced.
//!
//! Who touches it: handler tasks (read side, per publish), the consumer's
//! poll thread (write side, once per transaction end).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard};

use crate::error::Error;

tokio::task_local! {
    /// The generation of the transaction the running handler's message was
    /// dispatched in.
    static DISPATCHED_IN: u64;
}

/// How many aborted generations are remembered for
/// [`Fence::is_aborted`]: older ones are taken as aborted too (whoever
/// asks about a generation that old holds a record from long ago).
const ABORTED_KEPT: usize = 4_096;

/// See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct Fence {
    /// Held for reading from admission to enqueue; for writing while the
    /// generation moves.
    lock: RwLock<()>,
    generation: AtomicU64,
    /// The most recent aborted generations, oldest first.
    aborted: Mutex<VecDeque<u64>>,
}

/// Holds the admission until the message is enqueued.
pub(crate) type Admitted<'a> = RwLockReadGuard<'a, ()>;

impl Fence {
    /// The generation of the open transaction (the next one, between two).
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Admits a publish: refused when it is made by a handler whose
    /// transaction has ended. Keep the guard until the message is enqueued.
    pub(crate) fn admit(&self) -> Result<Admitted<'_>, Error> {
        let guard = self.lock.read().unwrap_or_else(|p| p.into_inner());
        match DISPATCHED_IN.try_with(|g| *g) {
            Ok(dispatched) if dispatched != self.generation() => {
                Err(Error::Transactional(format!(
                    "publish refused: the handler's message belongs to transaction {dispatched}, \
                 which ended (aborted) while the handler ran; the message is read and handled \
                 again, and this output must not join the next transaction"
                )))
            }
            _ => Ok(guard),
        }
    }

    /// Ends the current generation (`aborted`: its transaction is being
    /// aborted). Waits for publishes being admitted to finish enqueueing:
    /// call it *before* asking librdkafka to abort, so they are aborted too.
    pub(crate) fn advance(&self, aborted: bool) {
        let _closed = self.lock.write().unwrap_or_else(|p| p.into_inner());
        let ended = self.generation.fetch_add(1, Ordering::AcqRel);
        if aborted {
            let mut list = self.aborted.lock().unwrap_or_else(|p| p.into_inner());
            if list.len() == ABORTED_KEPT {
                list.pop_front();
            }
            list.push_back(ended);
        }
    }

    /// Whether the transaction of `generation` was aborted (`false` while it
    /// is open, or once it committed).
    pub(crate) fn is_aborted(&self, generation: u64) -> bool {
        let list = self.aborted.lock().unwrap_or_else(|p| p.into_inner());
        match list.front() {
            Some(&oldest) if list.len() == ABORTED_KEPT && generation < oldest => true,
            _ => list.binary_search(&generation).is_ok(),
        }
    }
}

/// The generation the running handler was dispatched in, if any (what a
/// record made by a handler, such as a retry tier copy, was published in).
#[allow(dead_code)] // for the retry topics' key-order chain
pub(crate) fn dispatched_in() -> Option<u64> {
    DISPATCHED_IN.try_with(|g| *g).ok()
}

/// Runs `f` (a handler's synchronous call) as dispatched in `generation`.
pub(crate) fn sync_scoped<R>(generation: Option<u64>, f: impl FnOnce() -> R) -> R {
    match generation {
        Some(g) => DISPATCHED_IN.sync_scope(g, f),
        None => f(),
    }
}

/// `future` (a handler's call), run as dispatched in `generation`.
pub(crate) fn scoped<F: Future>(generation: u64, future: F) -> impl Future<Output = F::Output> {
    DISPATCHED_IN.scope(generation, future)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_handler_of_an_ended_generation_is_refused_and_others_are_admitted() {
        let fence = Fence::default();
        assert!(fence.admit().is_ok(), "outside any handler: not fenced");
        let g = fence.generation();
        assert!(scoped(g, async { fence.admit().is_ok() }).await);
        fence.advance(true);
        let refused = scoped(g, async { fence.admit().err() }).await;
        let message = refused
            .expect("a stale handler's publish is refused")
            .to_string();
        assert!(message.contains("ended"), "{message}");
        assert!(scoped(g + 1, async { fence.admit().is_ok() }).await);
        assert!(fence.admit().is_ok());
        assert!(fence.is_aborted(g) && !fence.is_aborted(g + 1));
        fence.advance(false);
        assert!(!fence.is_aborted(g + 1), "committed");
        assert_eq!(sync_scoped(Some(7), dispatched_in), Some(7));
        assert_eq!(sync_scoped(None, dispatched_in), None);
    }

    #[tokio::test]
    async fn the_generation_moves_only_after_admitted_publishes_enqueued() {
        let fence = std::sync::Arc::new(Fence::default());
        let admitted = fence.admit().unwrap();
        let mover = {
            let fence = fence.clone();
            std::thread::spawn(move || fence.advance(true))
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(
            fence.generation(),
            0,
            "an admitted publish holds the end back"
        );
        drop(admitted);
        mover.join().unwrap();
        assert_eq!(fence.generation(), 1);
    }

    #[test]
    fn old_aborted_generations_are_forgotten_as_aborted() {
        let fence = Fence::default();
        for _ in 0..ABORTED_KEPT + 10 {
            fence.advance(true);
        }
        assert!(fence.is_aborted(0) && fence.is_aborted(ABORTED_KEPT as u64 + 9));
        assert!(!fence.is_aborted(ABORTED_KEPT as u64 + 10), "open");
    }
}
