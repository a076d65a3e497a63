//! Inputs whose output no transaction can commit.
//!
//! Isolation (`transaction.rs`, [`AfterFailure::Isolated`]) finds an input
//! that makes every transaction holding it abort — its handler publishes
//! something the broker refuses, every time. Read again, that input goes
//! through the handler stack once more, marked with [`OutputRefused`]: the
//! innermost service, [`SkipRefused`], fails it without calling the
//! handler (which would publish the refused output again). So the layers
//! around the handler see the failure as the message's own: a
//! [`DeadLetterLayer`](crate::dlq::DeadLetterLayer) dead-letters it (in the
//! transaction, when it publishes through the consumer's producer), and
//! without one the error handler is told, with the message's location. The
//! failure is [`permanent`]: a retry layer does not retry it.
//!
//! Batch consumers have no per-message stack to send it through: their
//! error handler is told instead (`pipeline.rs`).
//!
//! [`AfterFailure::Isolated`]: super::transaction::AfterFailure::Isolated

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{self, Either, Ready};
use tower::Service;
use xkafka_core::middleware::retry::permanent;

use crate::{Ack, BoxError, Message};

/// The mark an input whose output cannot be committed carries through the
/// handler stack: why (the last commit's error, in words).
#[derive(Clone, Debug)]
pub(crate) struct OutputRefused(pub(crate) Arc<str>);

/// The innermost service of a transactional consumer's stack: fails a
/// message marked [`OutputRefused`] without calling the handler.
#[derive(Clone)]
pub(crate) struct SkipRefused<S> {
    inner: S,
}

impl<S> SkipRefused<S> {
    pub(crate) fn new(inner: S) -> Self {
        SkipRefused { inner }
    }
}

impl<S> Service<Message> for SkipRefused<S>
where
    S: Service<Message, Response = Ack, Error = BoxError>,
{
    type Response = Ack;
    type Error = BoxError;
    type Future = Either<S::Future, Ready<Result<Ack, BoxError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, message: Message) -> Self::Future {
        match message.extensions().get::<OutputRefused>() {
            Some(OutputRefused(reason)) => {
                Either::Right(future::ready(Err(permanent(reason.to_string()))))
            }
            None => Either::Left(self.inner.call(message)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_marked_message_fails_permanently_without_reaching_the_handler() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let handler = tower::service_fn(move |_m: Message| {
            counted.fetch_add(1, Ordering::SeqCst);
            future::ready(Ok::<_, BoxError>(Ack::Success))
        });
        let service = SkipRefused::new(handler);

        let plain = Message::builder("in").value("a").build();
        assert!(matches!(
            service.clone().oneshot(plain).await,
            Ok(Ack::Success)
        ));
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let marked = Message::builder("in")
            .value("b")
            .extension(OutputRefused("record too large".into()))
            .build();
        let err = service.oneshot(marked).await.unwrap_err();
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "the handler was not called"
        );
        assert!(err.to_string().contains("record too large"), "{err}");
        assert!(err
            .downcast_ref::<xkafka_core::middleware::retry::Permanent>()
            .is_some());
    }
}
