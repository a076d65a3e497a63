//! [`Kind`](crate::consumer::Kind): what a [`ConsumerBuilder`](crate::ConsumerBuilder) builds, [`Streaming`](crate::consumer::Streaming) or
//! [`Batching`](crate::consumer::Batching), and how each kind's handler is run.

use std::time::Duration;

use tower::util::BoxCloneService;

use crate::{Ack, Batch, BoxError, Message};

use super::dispatch::Runner;
use super::refused;
use super::run::{BatchConsumer, Consumer};

mod sealed {
    use super::*;

    /// How a kind of consumer is put together; private so that the set of
    /// kinds stays closed.
    pub trait Sealed: Sized + 'static {
        /// What the handler receives.
        type Request: Send + 'static;
        /// What `build` returns.
        type Consumer;
        /// Whether messages are handled in batches.
        const BATCHES: bool;
        fn runner(
            service: BoxCloneService<Self::Request, Ack, BoxError>,
            batch_size: usize,
            batch_timeout: Duration,
        ) -> Runner;
        fn wrap(consumer: Consumer) -> Self::Consumer;
        /// Transactional: the handler behind the guard that fails an input
        /// whose output cannot be committed (`refused.rs`).
        fn skip_refused(
            handler: BoxCloneService<Self::Request, Ack, BoxError>,
        ) -> BoxCloneService<Self::Request, Ack, BoxError>;
    }
}

/// The kind of consumer a [`ConsumerBuilder`](crate::ConsumerBuilder) builds: [`Streaming`](crate::consumer::Streaming) or
/// [`Batching`](crate::consumer::Batching). Sealed.
pub trait Kind: sealed::Sealed {}

impl Kind for Streaming {}
impl Kind for Batching {}

/// Messages are handled one by one ([`Consumer`](crate::Consumer)).
#[derive(Debug)]
pub enum Streaming {}

/// Messages are handled in batches ([`BatchConsumer`](crate::BatchConsumer)).
#[derive(Debug)]
pub enum Batching {}

impl sealed::Sealed for Streaming {
    type Request = Message;
    type Consumer = Consumer;
    const BATCHES: bool = false;
    fn runner(service: BoxCloneService<Message, Ack, BoxError>, _: usize, _: Duration) -> Runner {
        Runner::Single(service)
    }
    fn wrap(consumer: Consumer) -> Consumer {
        consumer
    }
    fn skip_refused(
        handler: BoxCloneService<Message, Ack, BoxError>,
    ) -> BoxCloneService<Message, Ack, BoxError> {
        BoxCloneService::new(refused::SkipRefused::new(handler))
    }
}

impl sealed::Sealed for Batching {
    type Request = Batch;
    type Consumer = BatchConsumer;
    const BATCHES: bool = true;
    fn runner(
        service: BoxCloneService<Batch, Ack, BoxError>,
        size: usize,
        window: Duration,
    ) -> Runner {
        Runner::Batch {
            service,
            size,
            window,
        }
    }
    fn wrap(consumer: Consumer) -> BatchConsumer {
        BatchConsumer { inner: consumer }
    }
    // A batch has no per-message stack: the pipeline tells the error
    // handler about such an input instead.
    fn skip_refused(
        handler: BoxCloneService<Batch, Ack, BoxError>,
    ) -> BoxCloneService<Batch, Ack, BoxError> {
        handler
    }
}
