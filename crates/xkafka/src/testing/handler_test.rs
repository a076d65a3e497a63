//! [`HandlerTest`]: messages through a consumer's whole stack, without a
//! broker, and what happened to each ([`Outcome`]).

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use tower::util::BoxCloneService;
use tower::ServiceExt;
use xkafka_core::middleware::recover::Panicked;

use crate::error::ErrorHandlerFn;
use crate::{Ack, BoxError, ConsumerBuilder, Decision, Error, Message};

/// What happened to one message in a [`HandlerTest`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Outcome {
    /// The stack returned [`Ack::Success`](crate::Ack::Success).
    Success,
    /// The stack returned [`Ack::Skip`](crate::Ack::Skip) (a dead-letter layer that published
    /// the message returns this too).
    Skip,
    /// The stack failed; the consumer's error handler decided `decision`.
    Failed {
        /// The error as the error handler received it ([`Error::Handler`]).
        error: Error,
        /// What the error handler decided.
        decision: Decision,
    },
    /// The stack panicked (no [`RecoverLayer`](crate::middleware::recover::RecoverLayer)
    /// caught it); the consumer would report it as a failure, and the
    /// error handler decided `decision`.
    Panicked {
        /// The panic's message.
        message: String,
        /// What the error handler decided.
        decision: Decision,
    },
}

/// Outcomes compare by kind and decision (and panic message); a failure's
/// error is compared by its text.
impl PartialEq for Outcome {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Outcome::Success, Outcome::Success) | (Outcome::Skip, Outcome::Skip) => true,
            (
                Outcome::Failed { error, decision },
                Outcome::Failed {
                    error: e2,
                    decision: d2,
                },
            ) => decision == d2 && error.to_string() == e2.to_string(),
            (
                Outcome::Panicked { message, decision },
                Outcome::Panicked {
                    message: m2,
                    decision: d2,
                },
            ) => message == m2 && decision == d2,
            _ => false,
        }
    }
}

impl Outcome {
    /// Whether the message's offset would be stored: success, skip, or a
    /// failure the error handler skipped.
    pub fn offset_stored(&self) -> bool {
        match self {
            Outcome::Success | Outcome::Skip => true,
            Outcome::Failed { decision, .. } | Outcome::Panicked { decision, .. } => {
                *decision == Decision::Continue
            }
        }
    }
}

/// Runs messages through a streaming consumer's handler, middleware and
/// error handler, with no client and no broker. See the [module](crate::testing)
/// example.
pub struct HandlerTest {
    group: Arc<str>,
    service: BoxCloneService<Message, Ack, BoxError>,
    error_handler: ErrorHandlerFn,
}

impl HandlerTest {
    /// Takes what `builder` was given: its handler, its layers and its
    /// error handler (brokers, topics and the rest are not needed).
    pub fn new(builder: ConsumerBuilder) -> Result<Self, Error> {
        let (group, service, error_handler) = builder.into_test_parts()?;
        Ok(HandlerTest {
            group,
            service,
            error_handler,
        })
    }

    /// Handles `message` as the consumer would, and says how it ended.
    /// Messages without a group get this consumer's (as fetched ones do).
    pub async fn call(&self, message: Message) -> Outcome {
        let mut message = message;
        if message.group().is_none() {
            message.set_group(Some(self.group.clone()));
        }
        let (topic, partition, offset) = (
            message.topic_arc().clone(),
            message.partition().unwrap_or(0),
            message.offset().unwrap_or(0),
        );
        let called = AssertUnwindSafe(self.service.clone().oneshot(message))
            .catch_unwind()
            .await;
        let error = |source: BoxError| Error::Handler {
            topic: topic.clone(),
            partition,
            offset,
            source,
        };
        match called {
            Ok(Ok(Ack::Success)) => Outcome::Success,
            Ok(Ok(Ack::Skip)) => Outcome::Skip,
            Ok(Err(source)) => {
                let error = error(source);
                let decision = (self.error_handler)(&error);
                Outcome::Failed { error, decision }
            }
            Err(payload) => {
                let panicked = Panicked::from_payload(payload);
                let message = panicked.message.clone();
                let decision = (self.error_handler)(&error(Box::new(panicked)));
                Outcome::Panicked { message, decision }
            }
        }
    }
}

impl fmt::Debug for HandlerTest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerTest")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}
