//! Typed handlers, as in axum: a handler's arguments are *extractors*, each
//! built from the message. A message that does not decode is a typed
//! [`Rejection`]: a failure by default (nothing is silently dropped), which
//! a layer can turn into a skip ([`SkipRejectedLayer`]) or hand to a
//! dead-letter layer.
//!
//! ```
//! use serde::Deserialize;
//! use xkafka_core::extract::{Json, Key, Metadata, State};
//! use xkafka_core::{Ack, BoxError, Handler};
//!
//! #[derive(Deserialize)]
//! struct Order {
//!     id: u64,
//!     total: f64,
//! }
//!
//! #[derive(Clone)]
//! struct App {
//!     currency: &'static str,
//! }
//!
//! async fn handle(
//!     State(app): State<App>,
//!     Key(customer): Key<u32>,
//!     meta: Metadata,
//!     Json(order): Json<Order>,
//! ) -> Result<Ack, BoxError> {
//!     println!("{meta}: customer {customer} ordered #{} for {} {}", order.id, order.total, app.currency);
//!     Ok(Ack::Success)
//! }
//!
//! let service = handle.into_service();
//! # let _ = service;
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use crate::ack::{Ack, IntoOutcome};
use crate::handler::Handler;
use crate::headers::Headers;
use crate::message::{Message, Timestamp};
use crate::BoxError;

/// Builds a handler argument from the message.
///
/// Extractors borrow the message; [`Message`] itself *takes* it, so it must
/// be the last argument.
pub trait FromMessage: Sized {
    /// Why extraction failed.
    type Rejection: Into<BoxError>;

    /// Extracts `Self`.
    fn from_message(message: &mut Message) -> Result<Self, Self::Rejection>;
}

/// Why a message could not be turned into a handler's arguments.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// The value is not valid JSON for the expected type.
    #[cfg(feature = "json")]
    #[error("invalid JSON in {location}: {source}")]
    Json {
        /// `topic[partition]@offset`.
        location: String,
        /// serde_json's explanation (line, column, what was expected).
        #[source]
        source: serde_json::Error,
    },
    /// The value does not decode in its format: a schema registry's wire
    /// format (wrong magic byte, truncated header, unknown schema id), or a
    /// payload that does not match its schema. Made by decoders outside
    /// this crate (`xkafka-schema`), so that [`SkipRejectedLayer`] and
    /// dead-letter layers treat it like any other rejection.
    #[error("cannot decode {location} as {format}: {source}")]
    Decode {
        /// `topic[partition]@offset`.
        location: String,
        /// The format expected (`"Avro"`, `"Protobuf"`, `"JSON Schema"`).
        format: &'static str,
        /// What did not decode, and why.
        #[source]
        source: BoxError,
    },
    /// The message has no value (a tombstone) but the handler wants one.
    #[error("{location} has no value")]
    MissingValue {
        /// `topic[partition]@offset`.
        location: String,
    },
    /// The message has no key but the handler wants one.
    #[error("{location} has no key")]
    MissingKey {
        /// `topic[partition]@offset`.
        location: String,
    },
    /// The key is not UTF-8 or does not parse as the expected type.
    #[error("the key of {location} is invalid: {reason}")]
    InvalidKey {
        /// `topic[partition]@offset`.
        location: String,
        /// What went wrong.
        reason: String,
    },
    /// No state of this type was added (a wiring mistake: add
    /// [`AddStateLayer`]).
    #[error("no state of type {type_name} was added to the consumer")]
    MissingState {
        /// The missing type.
        type_name: &'static str,
    },
}

impl FromMessage for Message {
    type Rejection = std::convert::Infallible;

    fn from_message(message: &mut Message) -> Result<Self, Self::Rejection> {
        Ok(message.take())
    }
}

/// The value, decoded from JSON.
#[cfg(feature = "json")]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Json<T>(pub T);

#[cfg(feature = "json")]
impl<T: serde::de::DeserializeOwned> FromMessage for Json<T> {
    type Rejection = Rejection;

    fn from_message(message: &mut Message) -> Result<Self, Rejection> {
        let value = message.value().ok_or_else(|| Rejection::MissingValue {
            location: message.location(),
        })?;
        serde_json::from_slice(value)
            .map(Json)
            .map_err(|source| Rejection::Json {
                location: message.location(),
                source,
            })
    }
}

/// The key, parsed with [`FromStr`] from UTF-8 text (`Key<String>` for the
/// text itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key<T>(pub T);

impl<T> FromMessage for Key<T>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    type Rejection = Rejection;

    fn from_message(message: &mut Message) -> Result<Self, Rejection> {
        let raw = message.key().ok_or_else(|| Rejection::MissingKey {
            location: message.location(),
        })?;
        let invalid = |reason: String| Rejection::InvalidKey {
            location: message.location(),
            reason,
        };
        let text = std::str::from_utf8(raw).map_err(|e| invalid(e.to_string()))?;
        text.parse()
            .map(Key)
            .map_err(|e: T::Err| invalid(e.to_string()))
    }
}

impl FromMessage for Headers {
    type Rejection = std::convert::Infallible;

    fn from_message(message: &mut Message) -> Result<Self, Self::Rejection> {
        Ok(message.headers().clone())
    }
}

/// Where the message comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metadata {
    /// The topic.
    pub topic: Arc<str>,
    /// The partition (`-1` on a message built without one).
    pub partition: i32,
    /// The offset (`-1` on a message built without one).
    pub offset: i64,
    /// The record timestamp.
    pub timestamp: Option<Timestamp>,
    /// The consumer group.
    pub group: Option<Arc<str>>,
}

impl fmt::Display for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]@{}", self.topic, self.partition, self.offset)
    }
}

impl FromMessage for Metadata {
    type Rejection = std::convert::Infallible;

    fn from_message(message: &mut Message) -> Result<Self, Self::Rejection> {
        Ok(Metadata {
            topic: message.topic_arc().clone(),
            partition: message.partition().unwrap_or(-1),
            offset: message.offset().unwrap_or(-1),
            timestamp: message.timestamp(),
            group: message.group().map(Arc::from),
        })
    }
}

/// Shared application state, added with [`AddStateLayer`].
#[derive(Clone, Debug)]
pub struct State<S>(pub S);

impl<S: Clone + Send + Sync + 'static> FromMessage for State<S> {
    type Rejection = Rejection;

    fn from_message(message: &mut Message) -> Result<Self, Rejection> {
        message
            .extensions()
            .get::<S>()
            .cloned()
            .map(State)
            .ok_or(Rejection::MissingState {
                type_name: std::any::type_name::<S>(),
            })
    }
}

/// Any value a middleware put in the message's extensions.
#[derive(Clone, Debug)]
pub struct Extension<T>(pub T);

impl<T: Clone + Send + Sync + 'static> FromMessage for Extension<T> {
    type Rejection = Rejection;

    fn from_message(message: &mut Message) -> Result<Self, Rejection> {
        message
            .extensions()
            .get::<T>()
            .cloned()
            .map(Extension)
            .ok_or(Rejection::MissingState {
                type_name: std::any::type_name::<T>(),
            })
    }
}

type BoxedOutcome = Pin<Box<dyn Future<Output = Result<Ack, BoxError>> + Send>>;

/// The future of a function handler: the rejection of an extractor, or the
/// function's future with its output turned into an outcome. A named type
/// rather than a box: one allocation less per message.
pub type HandlerFuture<Fut, R> = futures_util::future::Either<
    std::future::Ready<Result<Ack, BoxError>>,
    futures_util::future::Map<Fut, fn(R) -> Result<Ack, BoxError>>,
>;

macro_rules! impl_handler {
    ($($ty:ident),+) => {
        impl<F, Fut, R, $($ty,)+> Handler<($($ty,)+)> for F
        where
            F: FnOnce($($ty,)+) -> Fut + Clone + Send + Sync + 'static,
            Fut: Future<Output = R> + Send + 'static,
            R: IntoOutcome + 'static,
            $($ty: FromMessage + Send + 'static,)+
        {
            type Future = HandlerFuture<Fut, R>;

            #[allow(non_snake_case)]
            fn call(self, mut message: Message) -> Self::Future {
                use futures_util::future::{Either, FutureExt};
                $(
                    let $ty = match $ty::from_message(&mut message) {
                        Ok(value) => value,
                        Err(rejection) => {
                            let err: BoxError = rejection.into();
                            return Either::Left(std::future::ready(Err(err)));
                        }
                    };
                )+
                let outcome: fn(R) -> Result<Ack, BoxError> = R::into_outcome;
                Either::Right(self($($ty,)+).map(outcome))
            }
        }
    };
}

impl_handler!(T1);
impl_handler!(T1, T2);
impl_handler!(T1, T2, T3);
impl_handler!(T1, T2, T3, T4);
impl_handler!(T1, T2, T3, T4, T5);
impl_handler!(T1, T2, T3, T4, T5, T6);

/// Adds shared state to every message, for the [`State`] extractor.
#[derive(Clone, Debug)]
pub struct AddStateLayer<S> {
    state: S,
}

impl<S> AddStateLayer<S> {
    /// Adds `state` (typically an `Arc` of the application's resources).
    pub fn new(state: S) -> Self {
        AddStateLayer { state }
    }
}

impl<S: Clone, Inner> Layer<Inner> for AddStateLayer<S> {
    type Service = AddState<S, Inner>;

    fn layer(&self, inner: Inner) -> Self::Service {
        AddState {
            state: self.state.clone(),
            inner,
        }
    }
}

/// The service made by [`AddStateLayer`].
#[derive(Clone, Debug)]
pub struct AddState<S, Inner> {
    state: S,
    inner: Inner,
}

impl<S, Inner> Service<Message> for AddState<S, Inner>
where
    S: Clone + Send + Sync + 'static,
    Inner: Service<Message>,
{
    type Response = Inner::Response;
    type Error = Inner::Error;
    type Future = Inner::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut message: Message) -> Self::Future {
        message.extensions_mut().insert(self.state.clone());
        self.inner.call(message)
    }
}

/// Turns [`Rejection`] failures into [`Ack::Skip`] (counted as skipped);
/// other failures pass through. Without it (or a dead-letter layer), a
/// message that does not decode fails like any other.
#[derive(Clone, Copy, Debug, Default)]
pub struct SkipRejectedLayer;

impl<Inner> Layer<Inner> for SkipRejectedLayer {
    type Service = SkipRejected<Inner>;

    fn layer(&self, inner: Inner) -> Self::Service {
        SkipRejected { inner }
    }
}

/// The service made by [`SkipRejectedLayer`].
#[derive(Clone, Debug)]
pub struct SkipRejected<Inner> {
    inner: Inner,
}

impl<Inner> Service<Message> for SkipRejected<Inner>
where
    Inner: Service<Message, Response = Ack>,
    Inner::Error: Into<BoxError>,
    Inner::Future: Send + 'static,
{
    type Response = Ack;
    type Error = BoxError;
    type Future = BoxedOutcome;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, message: Message) -> Self::Future {
        let future = self.inner.call(message);
        Box::pin(async move {
            match future.await.map_err(Into::into) {
                Err(e) if e.is::<Rejection>() => {
                    tracing::warn!(error = %e, "skipping a message that does not decode");
                    Ok(Ack::Skip)
                }
                other => other,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use tower::ServiceExt;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Order {
        id: u64,
    }

    fn order(value: &'static str) -> Message {
        Message::builder("orders")
            .partition(1)
            .offset(9)
            .key("42")
            .value(value)
            .build()
    }

    #[tokio::test]
    async fn extractors_decode_the_message() {
        let handler = |Key(k): Key<u32>, Json(o): Json<Order>, meta: Metadata, m: Message| async move {
            assert_eq!((k, o.id), (42, 7));
            assert_eq!(meta.to_string(), "orders[1]@9");
            assert_eq!(
                m.value_str(),
                Some(r#"{"id":7}"#),
                "the message itself comes last, whole"
            );
            Ack::Success
        };
        let out = handler
            .into_service()
            .oneshot(order(r#"{"id":7}"#))
            .await
            .unwrap();
        assert_eq!(out, Ack::Success);
    }

    #[tokio::test]
    async fn invalid_json_is_a_typed_rejection_and_fails_by_default() {
        let handler = |Json(_o): Json<Order>| async { Ack::Success };
        let err = handler
            .into_service()
            .oneshot(order("{not json"))
            .await
            .unwrap_err();
        let rejection = err.downcast_ref::<Rejection>().expect("typed");
        assert!(matches!(rejection, Rejection::Json { location, .. } if location == "orders[1]@9"));

        let skipping = SkipRejectedLayer.layer(handler.into_service());
        assert_eq!(
            skipping.clone().oneshot(order("{not json")).await.unwrap(),
            Ack::Skip
        );
        assert_eq!(
            skipping.oneshot(order(r#"{"id":1}"#)).await.unwrap(),
            Ack::Success
        );
    }

    #[tokio::test]
    async fn other_failures_are_not_skipped() {
        let handler = |_m: Message| async { Err::<(), _>("db down") };
        let err = SkipRejectedLayer
            .layer(handler.into_service())
            .oneshot(order("{}"))
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "db down");
    }

    #[tokio::test]
    async fn state_comes_from_the_layer_and_is_missed_loudly_without_it() {
        #[derive(Clone)]
        struct App(&'static str);
        let handler = |State(app): State<App>, Key(k): Key<String>| async move {
            assert_eq!((app.0, k.as_str()), ("eu", "42"));
        };
        let with = AddStateLayer::new(App("eu")).layer(handler.into_service());
        with.oneshot(order("{}")).await.unwrap();
        let err = handler
            .into_service()
            .oneshot(order("{}"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no state of type"), "{err}");
    }

    #[tokio::test]
    async fn bad_keys_are_rejected() {
        let handler = |Key(_k): Key<u8>| async {};
        let svc = handler.into_service();
        let big = Message::builder("t").key("300").build();
        assert!(svc
            .clone()
            .oneshot(big)
            .await
            .unwrap_err()
            .to_string()
            .contains("key"));
        let binary = Message::builder("t").key(vec![0xff]).build();
        assert!(svc.clone().oneshot(binary).await.is_err());
        let none = Message::builder("t").build();
        assert!(svc
            .oneshot(none)
            .await
            .unwrap_err()
            .to_string()
            .contains("has no key"));
    }
}
