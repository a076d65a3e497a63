//! Batches: several messages handled by one call, with an outcome per
//! message when the handler wants to give one.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::future::{FutureExt, Map};
use tower::Service;

use crate::ack::{Ack, IntoOutcome};
use crate::message::Message;
use crate::BoxError;

type Recorded = Vec<Option<Result<Ack, BoxError>>>;

/// Messages handed to a batch handler together.
///
/// The handler settles the batch as a whole through its return value
/// (`Ok(())` / `Ok(Ack::Skip)` / `Err(e)`), and may record an outcome for
/// single messages with [`Batch::ack`] and [`Batch::fail`]; a recorded
/// outcome wins over the whole-batch one. The consumer stores offsets by the
/// same rule as for single messages: a failed message holds back its
/// partition's offset.
///
/// Clones are cheap and share the messages and the recorded outcomes (a
/// retrying middleware may call the handler again with a clone); changing
/// the messages through [`Batch::messages_mut`] copies them first if another
/// clone still shares them.
///
/// ```
/// use xkafka_core::{Ack, Batch, Message};
///
/// let batch = Batch::new(vec![
///     Message::builder("t").partition(0).offset(0).value("ok").build(),
///     Message::builder("t").partition(0).offset(1).value("bad").build(),
/// ]);
/// for (i, msg) in batch.iter().enumerate() {
///     if msg.value_str() == Some("bad") {
///         batch.fail(i, "cannot parse");
///     }
/// }
/// let outcomes = batch.take_outcomes();
/// assert!(outcomes[0].is_none(), "left to the batch's result");
/// assert!(matches!(outcomes[1], Some(Err(_))));
/// ```
#[derive(Clone)]
pub struct Batch {
    // Shared: a consumer keeps a clone to read the outcomes back, and a
    // deep copy of a thousand messages per call cost more than the handler.
    messages: Arc<Vec<Message>>,
    outcomes: Arc<Mutex<Recorded>>,
}

impl Batch {
    /// A batch of `messages` (consumers build them; tests may too).
    pub fn new(messages: Vec<Message>) -> Self {
        let outcomes = (0..messages.len()).map(|_| None).collect();
        Batch {
            messages: Arc::new(messages),
            outcomes: Arc::new(Mutex::new(outcomes)),
        }
    }

    /// The messages, in the order they were read.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// The messages, to change them (middleware setting extensions).
    pub fn messages_mut(&mut self) -> &mut [Message] {
        Arc::make_mut(&mut self.messages).as_mut_slice()
    }

    /// Iterates over the messages.
    pub fn iter(&self) -> std::slice::Iter<'_, Message> {
        self.messages.iter()
    }

    /// Number of messages.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether the batch is empty (consumers never hand out empty batches).
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Records success or skip for message `index` (ignored when out of
    /// range).
    pub fn ack(&self, index: usize, ack: Ack) {
        self.record(index, Ok(ack));
    }

    /// Records a failure for message `index` (ignored when out of range).
    pub fn fail(&self, index: usize, error: impl Into<BoxError>) {
        self.record(index, Err(error.into()));
    }

    fn record(&self, index: usize, outcome: Result<Ack, BoxError>) {
        let mut outcomes = self.outcomes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = outcomes.get_mut(index) {
            *slot = Some(outcome);
        }
    }

    /// The kinds of the outcomes recorded so far, without taking them
    /// (`Some(Err(()))` for a failure); for layers that observe, like
    /// metrics.
    pub fn peek_outcomes(&self) -> Vec<Option<Result<Ack, ()>>> {
        let outcomes = self.outcomes.lock().unwrap_or_else(|p| p.into_inner());
        outcomes
            .iter()
            .map(|o| o.as_ref().map(|r| r.as_ref().map(|a| *a).map_err(|_| ())))
            .collect()
    }

    /// Takes the outcomes recorded so far, one slot per message (`None`:
    /// nothing recorded). Consumers call it after the handler returned.
    pub fn take_outcomes(&self) -> Vec<Option<Result<Ack, BoxError>>> {
        let mut outcomes = self.outcomes.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::replace(
            &mut *outcomes,
            (0..self.messages.len()).map(|_| None).collect(),
        )
    }

    /// The highest offset per `(topic, partition)` in the batch — every
    /// partition, including those whose messages are all at offset 0 (the Go
    /// helper dropped them).
    pub fn max_offsets(&self) -> BTreeMap<(String, i32), i64> {
        let mut max = BTreeMap::new();
        for m in self.messages.iter() {
            if let (Some(p), Some(o)) = (m.partition(), m.offset()) {
                let entry = max.entry((m.topic().to_owned(), p)).or_insert(o);
                *entry = (*entry).max(o);
            }
        }
        max
    }
}

impl<'a> IntoIterator for &'a Batch {
    type Item = &'a Message;
    type IntoIter = std::slice::Iter<'a, Message>;

    fn into_iter(self) -> Self::IntoIter {
        self.messages.iter()
    }
}

impl fmt::Debug for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("len", &self.messages.len())
            .field("first", &self.messages.first().map(Message::location))
            .field("last", &self.messages.last().map(Message::location))
            .finish()
    }
}

/// An async function that handles a [`Batch`]: the batch counterpart of
/// [`Handler`](crate::Handler), implemented for every
/// `FnOnce(Batch) -> impl Future<Output = R>` that is `Clone + Send + Sync +
/// 'static` with `R:` [`IntoOutcome`].
pub trait BatchHandler<T>: Clone + Send + Sync + Sized + 'static {
    /// The future the handler returns.
    type Future: Future<Output = Result<Ack, BoxError>> + Send + 'static;

    /// Handles one batch.
    fn call(self, batch: Batch) -> Self::Future;

    /// This handler as a [`tower::Service`].
    fn into_service(self) -> BatchHandlerService<Self, T> {
        BatchHandlerService {
            handler: self,
            _marker: PhantomData,
        }
    }
}

type IntoOutcomeFn<R> = fn(R) -> Result<Ack, BoxError>;

impl<F, Fut, R> BatchHandler<(Batch,)> for F
where
    F: FnOnce(Batch) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: IntoOutcome + 'static,
{
    type Future = Map<Fut, IntoOutcomeFn<R>>;

    fn call(self, batch: Batch) -> Self::Future {
        self(batch).map(R::into_outcome as IntoOutcomeFn<R>)
    }
}

/// A [`BatchHandler`] as a [`tower::Service`].
pub struct BatchHandlerService<H, T> {
    handler: H,
    _marker: PhantomData<fn() -> T>,
}

impl<H: Clone, T> Clone for BatchHandlerService<H, T> {
    fn clone(&self) -> Self {
        BatchHandlerService {
            handler: self.handler.clone(),
            _marker: PhantomData,
        }
    }
}

impl<H, T> fmt::Debug for BatchHandlerService<H, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchHandlerService")
            .field("handler", &std::any::type_name::<H>())
            .finish()
    }
}

impl<H, T> Service<Batch> for BatchHandlerService<H, T>
where
    H: BatchHandler<T>,
{
    type Response = Ack;
    type Error = BoxError;
    type Future = H::Future;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, batch: Batch) -> Self::Future {
        self.handler.clone().call(batch)
    }
}

#[cfg(test)]
mod tests {
    use tower::ServiceExt;

    use super::*;

    fn msg(p: i32, o: i64) -> Message {
        Message::builder("t").partition(p).offset(o).build()
    }

    #[test]
    fn max_offsets_keeps_partitions_at_offset_zero() {
        let batch = Batch::new(vec![msg(0, 0), msg(1, 4), msg(1, 2), msg(2, 0)]);
        let max = batch.max_offsets();
        assert_eq!(max.len(), 3);
        assert_eq!(max[&("t".to_owned(), 0)], 0);
        assert_eq!(max[&("t".to_owned(), 1)], 4);
    }

    #[tokio::test]
    async fn handler_records_per_message_outcomes_seen_through_clones() {
        let handler = |batch: Batch| async move {
            batch.ack(1, Ack::Skip);
            Ok::<(), BoxError>(())
        };
        let batch = Batch::new(vec![msg(0, 0), msg(0, 1)]);
        let ack = handler.into_service().oneshot(batch.clone()).await.unwrap();
        assert_eq!(ack, Ack::Success);
        let outcomes = batch.take_outcomes();
        assert!(outcomes[0].is_none());
        assert!(matches!(outcomes[1], Some(Ok(Ack::Skip))));
        assert!(batch.take_outcomes().iter().all(Option::is_none), "taken");
    }
}
