//! Panic recovery: a panicking handler becomes a failure carrying the panic
//! message, so the consumer goes on and the error reaches the outer layers
//! (e.g. a dead-letter layer) and the error handler.
//!
//! ```
//! use tower::{Layer, ServiceExt};
//! use xkafka_core::middleware::recover::{Panicked, RecoverLayer};
//! use xkafka_core::{Handler, Message};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let handler = |m: Message| async move {
//!     let parts: Vec<&str> = m.value_str().unwrap_or_default().split(',').collect();
//!     println!("{}", parts[3]); // panics: index out of bounds
//! };
//! let err = RecoverLayer::new()
//!     .layer(handler.into_service())
//!     .oneshot(Message::builder("t").build())
//!     .await
//!     .unwrap_err();
//! assert!(err.is::<Panicked>());
//! assert!(err.to_string().starts_with("handler panicked: index out of bounds"));
//! # }
//! ```

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::FutureExt;
use tower::{Layer, Service};

use crate::BoxError;

/// The failure a panic becomes.
#[derive(Debug, thiserror::Error)]
#[error("handler panicked: {message}")]
pub struct Panicked {
    /// The panic's message (`&str` or `String` payloads; otherwise a
    /// placeholder).
    pub message: String,
}

impl Panicked {
    /// From a payload caught by `catch_unwind`.
    pub fn from_payload(payload: Box<dyn Any + Send>) -> Self {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".to_owned());
        Panicked { message }
    }
}

/// Turns panics of the inner service into [`Panicked`] failures.
#[derive(Clone, Copy, Debug, Default)]
pub struct RecoverLayer;

impl RecoverLayer {
    /// The layer.
    pub fn new() -> Self {
        RecoverLayer
    }
}

impl<S> Layer<S> for RecoverLayer {
    type Service = Recover<S>;

    fn layer(&self, inner: S) -> Recover<S> {
        Recover { inner }
    }
}

/// The service made by [`RecoverLayer`].
#[derive(Clone, Debug)]
pub struct Recover<S> {
    inner: S,
}

impl<S, Req> Service<Req> for Recover<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        // A panic may also happen while creating the future.
        let future = match std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(request))) {
            Ok(future) => future,
            Err(payload) => {
                let err: BoxError = Box::new(Panicked::from_payload(payload));
                return Box::pin(async move { Err(err) });
            }
        };
        Box::pin(async move {
            match AssertUnwindSafe(future).catch_unwind().await {
                Ok(result) => result.map_err(Into::into),
                Err(payload) => Err(Box::new(Panicked::from_payload(payload)) as BoxError),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use tower::ServiceExt;

    use super::*;
    use crate::{Ack, Handler, Message};

    #[tokio::test]
    async fn string_panics_keep_their_text_and_successes_pass() {
        let handler = |m: Message| async move {
            if m.key().is_some() {
                panic!("{}", format!("bad key {}", m.key_str().unwrap()));
            }
            Ack::Skip
        };
        let svc = RecoverLayer::new().layer(handler.into_service());
        let ok = svc
            .clone()
            .oneshot(Message::builder("t").build())
            .await
            .unwrap();
        assert_eq!(ok, Ack::Skip);
        let err = svc
            .oneshot(Message::builder("t").key("k1").build())
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "handler panicked: bad key k1");
    }
}
