//! Permits: the `Concurrency(N)` bound, and which waiting lane gets a
//! permit that comes free.
//!
//! tokio's semaphore serves its waiters first come, first served. A lane
//! waits again after each of its messages, so the lanes take turns, and
//! those with the most queued work finish last, nearly alone: draining a
//! backlog by key (16 permits, 96 lanes of unequal length) ran at 0.91 of
//! 16 × the sequential rate, the time lost in that tail. Here a free permit
//! goes to the waiting lane with the most queued items instead, which
//! keeps N lanes busy to the end; a lane that has watched
//! [`AGE_PER_PERMIT`] × N grants go to others is served next whatever its
//! backlog, so no lane waits without bound.
//!
//! The fast path (a permit free and nobody waiting) is one atomic
//! operation each way, as the poll thread takes and gives back a permit
//! for every message it handles inline. The waiting lanes are behind a
//! mutex, taken only when someone waits.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

/// How many grants (× the number of permits) a waiting lane may watch go
/// to busier lanes before it is served first.
pub(super) const AGE_PER_PERMIT: u64 = 4;

/// A bound of N handlers at once, granted busiest lane first.
pub(super) struct Permits {
    /// Permits nobody holds and nobody was granted.
    free: AtomicUsize,
    /// `waiters.queue.len()`, readable without the lock: while anyone
    /// waits, a permit that comes free goes through the queue.
    waiting: AtomicUsize,
    waiters: Mutex<Waiters>,
    /// A waiter served first after this many grants to others.
    age_limit: u64,
}

struct Waiters {
    /// In arrival order.
    queue: Vec<Waiter>,
    /// Permits granted through the queue so far (a waiter's age is counted
    /// in these).
    grants: u64,
}

struct Waiter {
    /// The lane's queued items, the one waiting included.
    backlog: Arc<AtomicUsize>,
    /// `grants` when it started waiting.
    since: u64,
    tx: oneshot::Sender<OwnedPermit>,
}

impl Permits {
    pub(super) fn new(permits: usize) -> Self {
        Permits {
            free: AtomicUsize::new(permits),
            waiting: AtomicUsize::new(0),
            waiters: Mutex::new(Waiters {
                queue: Vec::new(),
                grants: 0,
            }),
            age_limit: AGE_PER_PERMIT * permits.max(1) as u64,
        }
    }

    /// A permit now, if one is free and no lane is waiting for one (a lane
    /// that waits comes first).
    pub(super) fn try_acquire(self: &Arc<Self>) -> Option<Permit<'_>> {
        self.take_free().then(|| Permit(self))
    }

    /// [`Permits::try_acquire`], as a permit that can move to a lane.
    pub(super) fn try_acquire_owned(self: &Arc<Self>) -> Option<OwnedPermit> {
        self.take_free().then(|| OwnedPermit(self.clone()))
    }

    /// A permit for a lane with `backlog` queued items (the one asking
    /// included): at once when one is free and nobody waits, else when the
    /// queue's order comes to it. `None` only if the permits are gone,
    /// which cannot happen while the caller holds them.
    pub(super) async fn acquire(
        self: &Arc<Self>,
        backlog: &Arc<AtomicUsize>,
    ) -> Option<OwnedPermit> {
        if let Some(permit) = self.try_acquire_owned() {
            return Some(permit);
        }
        let rx = {
            let mut waiters = self.lock();
            let (tx, rx) = oneshot::channel();
            let since = waiters.grants;
            waiters.queue.push(Waiter {
                backlog: backlog.clone(),
                since,
                tx,
            });
            self.waiting.fetch_add(1, Ordering::SeqCst);
            // A permit given back between `try_acquire_owned` and the line
            // above saw nobody waiting and stayed free: hand it out now.
            self.hand_out(&mut waiters);
            rx
        };
        rx.await.ok()
    }

    /// Permits nobody holds.
    #[cfg(test)]
    pub(super) fn available(&self) -> usize {
        self.free.load(Ordering::SeqCst)
    }

    fn take_free(&self) -> bool {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            return false;
        }
        self.take_one()
    }

    fn take_one(&self) -> bool {
        self.free
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |free| {
                free.checked_sub(1)
            })
            .is_ok()
    }

    fn release(self: &Arc<Self>) {
        self.free.fetch_add(1, Ordering::SeqCst);
        // Sequentially consistent with the waiter's `waiting` increment and
        // its `hand_out`: one of the two sees the other, so no permit stays
        // free while a lane waits.
        if self.waiting.load(Ordering::SeqCst) > 0 {
            let mut waiters = self.lock();
            self.hand_out(&mut waiters);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Waiters> {
        // Nothing user-supplied runs under this lock; a poisoned one still
        // holds a consistent queue.
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Grants free permits to waiters, busiest (or overdue) first.
    fn hand_out(self: &Arc<Self>, waiters: &mut Waiters) {
        // Waiters whose acquire was dropped (an aborted lane) get none; one
        // dropped from here on is caught by its failed send below.
        let before = waiters.queue.len();
        waiters.queue.retain(|w| !w.tx.is_closed());
        let dropped = before - waiters.queue.len();
        if dropped > 0 {
            self.waiting.fetch_sub(dropped, Ordering::SeqCst);
        }
        loop {
            let Some(next) = self.next_waiter(waiters) else {
                return;
            };
            if !self.take_one() {
                return;
            }
            let waiter = waiters.queue.remove(next);
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            waiters.grants += 1;
            // Counted out of `free` above.
            let permit = OwnedPermit(self.clone());
            if let Err(permit) = waiter.tx.send(permit) {
                // Dropped after the check above: back to `free`, without
                // going through `release` (the lock is held).
                std::mem::forget(permit);
                self.free.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    /// The waiter to serve next: the longest waiting if it is overdue,
    /// else the one with the largest backlog (the longest waiting of
    /// those).
    fn next_waiter(&self, waiters: &Waiters) -> Option<usize> {
        let oldest = waiters.queue.first()?;
        if waiters.grants - oldest.since >= self.age_limit {
            return Some(0);
        }
        let mut best = 0;
        let mut most = 0;
        for (i, waiter) in waiters.queue.iter().enumerate() {
            let backlog = waiter.backlog.load(Ordering::Relaxed);
            if backlog > most {
                (best, most) = (i, backlog);
            }
        }
        Some(best)
    }
}

/// A permit borrowed from [`Permits`] (the poll thread's, for a handler it
/// runs inline); given back when dropped.
pub(super) struct Permit<'a>(&'a Arc<Permits>);

impl Permit<'_> {
    /// The same permit, to move to a lane (the borrowed one is the cheap
    /// case: no `Arc` clone for a handler that finishes inline).
    pub(super) fn carry(self) -> OwnedPermit {
        let owned = OwnedPermit(self.0.clone());
        std::mem::forget(self);
        owned
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// A permit that can move to a lane; given back when dropped.
pub(super) struct OwnedPermit(Arc<Permits>);

impl Drop for OwnedPermit {
    fn drop(&mut self) {
        self.0.release();
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;

    type Acquiring = Pin<Box<dyn Future<Output = Option<OwnedPermit>>>>;

    /// A lane asking for a permit with `backlog` queued items: its
    /// acquire, polled once (so it waits in the queue unless one was free).
    fn ask(permits: &Arc<Permits>, backlog: usize) -> (Acquiring, Arc<AtomicUsize>) {
        let backlog = Arc::new(AtomicUsize::new(backlog));
        let (p, b) = (permits.clone(), backlog.clone());
        let mut acquiring: Acquiring = Box::pin(async move { p.acquire(&b).await });
        assert!(poll(&mut acquiring).is_none(), "waits");
        (acquiring, backlog)
    }

    fn poll(acquiring: &mut Acquiring) -> Option<OwnedPermit> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match acquiring.as_mut().poll(&mut cx) {
            Poll::Ready(permit) => Some(permit.expect("permits alive")),
            Poll::Pending => None,
        }
    }

    /// Which of `waiting` got a permit since last asked.
    fn served(waiting: &mut [(Option<Acquiring>, Arc<AtomicUsize>)]) -> Vec<(usize, OwnedPermit)> {
        let mut served = Vec::new();
        for (i, (acquiring, _)) in waiting.iter_mut().enumerate() {
            if let Some(permit) = acquiring.as_mut().and_then(poll) {
                *acquiring = None;
                served.push((i, permit));
            }
        }
        served
    }

    #[test]
    fn a_free_permit_goes_to_the_lane_with_the_most_queued_work() {
        let permits = Arc::new(Permits::new(1));
        let held = permits.try_acquire_owned().expect("one free");
        assert!(permits.try_acquire().is_none());
        let mut waiting: Vec<_> = [1, 5, 3]
            .into_iter()
            .map(|backlog| {
                let (acquiring, backlog) = ask(&permits, backlog);
                (Some(acquiring), backlog)
            })
            .collect();
        drop(held);
        let first = served(&mut waiting);
        assert_eq!(first.len(), 1, "one permit, one lane");
        assert_eq!(first[0].0, 1, "backlog 5 first");
        // Backlogs change while lanes wait: the queue reads them at grant
        // time.
        waiting[0].1.store(9, Ordering::Relaxed);
        drop(first);
        let second = served(&mut waiting);
        assert_eq!(second.iter().map(|s| s.0).collect::<Vec<_>>(), vec![0]);
        drop(second);
        assert_eq!(
            served(&mut waiting).iter().map(|s| s.0).collect::<Vec<_>>(),
            vec![2]
        );
    }

    #[test]
    fn a_lane_passed_over_too_often_is_served_next_whatever_its_backlog() {
        let permits = Arc::new(Permits::new(1));
        let limit = AGE_PER_PERMIT as usize;
        let mut held = permits.try_acquire_owned();
        let (mut patient, _) = ask(&permits, 1);
        // Busier lanes keep arriving: each takes the permit in turn.
        for turn in 0..limit {
            let (mut busy, _) = ask(&permits, 100);
            drop(held.take());
            assert!(poll(&mut patient).is_none(), "passed over at turn {turn}");
            held = Some(poll(&mut busy).expect("the busier lane"));
        }
        // Passed over `limit` times: next, even against a busier lane.
        let (mut busy, _) = ask(&permits, 100);
        drop(held.take());
        let served = poll(&mut patient);
        assert!(served.is_some(), "served after {limit} grants");
        assert!(poll(&mut busy).is_none());
    }

    #[test]
    fn a_dropped_wait_neither_keeps_nor_loses_a_permit() {
        let permits = Arc::new(Permits::new(2));
        let a = permits.try_acquire_owned().unwrap();
        let b = permits.try_acquire_owned().unwrap();
        let (gone, _) = ask(&permits, 7);
        let (mut kept, _) = ask(&permits, 1);
        // An aborted lane: its wait is dropped while queued.
        drop(gone);
        drop(a);
        let permit = poll(&mut kept).expect("the remaining lane");
        drop((permit, b));
        assert_eq!(permits.available(), 2);
        // Nobody waits any more: the fast path is open again.
        assert!(permits.try_acquire().is_some());
    }

    #[test]
    fn a_borrowed_permit_carried_to_a_lane_is_given_back_once() {
        let permits = Arc::new(Permits::new(1));
        let carried = permits.try_acquire().unwrap().carry();
        assert_eq!(permits.available(), 0);
        drop(carried);
        assert_eq!(permits.available(), 1);
    }

    #[test]
    fn under_contention_never_more_than_n_hold_one_and_every_lane_is_served() {
        const N: usize = 3;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_time()
            .build()
            .unwrap();
        let permits = Arc::new(Permits::new(N));
        let holding = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..32)
            .map(|lane| {
                let (permits, holding, most) = (permits.clone(), holding.clone(), most.clone());
                runtime.spawn(async move {
                    let backlog = Arc::new(AtomicUsize::new(lane % 5));
                    for _ in 0..200 {
                        // Mixed: the poll thread's fast path and lanes' waits.
                        let permit = match permits.try_acquire_owned() {
                            Some(p) => p,
                            None => permits.acquire(&backlog).await.unwrap(),
                        };
                        let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        tokio::task::yield_now().await;
                        holding.fetch_sub(1, Ordering::SeqCst);
                        drop(permit);
                    }
                })
            })
            .collect();
        runtime.block_on(async {
            for task in tasks {
                tokio::time::timeout(std::time::Duration::from_secs(30), task)
                    .await
                    .expect("no lane left waiting with a permit free")
                    .unwrap();
            }
        });
        assert!(most.load(Ordering::SeqCst) <= N);
        assert_eq!(most.load(Ordering::SeqCst), N, "the bound was reached");
        assert_eq!(permits.available(), N);
    }
}
