//! Handlers: where the business logic lives.
//!
//! Any `async fn(Message) -> R` (or closure) where `R` implements
//! [`IntoOutcome`] is a [`Handler`]; [`Handler::into_service`] turns it into a
//! [`tower::Service`] so that every tower layer can wrap it.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::task::{Context, Poll};

use tower::Service;

use crate::ack::Ack;
use crate::message::Message;
use crate::BoxError;

/// An async function that settles a [`Message`].
///
/// Implemented for every `FnOnce(T1, …, Tn) -> impl Future<Output = R>`
/// (up to 6 arguments) that is `Clone + Send + Sync + 'static`, where each
/// argument is an [extractor](crate::extract::FromMessage) — a plain
/// [`Message`] included — and `R:` [`IntoOutcome`](crate::IntoOutcome):
/// `()`, [`Ack`], or a `Result` of either. The type parameter `T` only tells the
/// implementations apart (as in axum) and is inferred.
///
/// ```
/// use xkafka_core::{Ack, Handler, Message};
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("order {0} is invalid")]
/// struct Invalid(String);
///
/// async fn handle(msg: Message) -> Result<Ack, Invalid> {
///     match msg.key_str() {
///         None => Ok(Ack::Skip), // not ours: skip it, on purpose
///         Some(k) if k.starts_with("bad") => Err(Invalid(k.to_owned())),
///         Some(_) => Ok(Ack::Success),
///     }
/// }
///
/// let service = handle.into_service(); // a tower::Service<Message>
/// # let _ = service;
/// ```
pub trait Handler<T>: Clone + Send + Sync + Sized + 'static {
    /// The future the handler returns.
    type Future: Future<Output = Result<Ack, BoxError>> + Send + 'static;

    /// Handles one message.
    fn call(self, message: Message) -> Self::Future;

    /// This handler as a [`tower::Service`].
    fn into_service(self) -> HandlerService<Self, T> {
        HandlerService {
            handler: self,
            _marker: PhantomData,
        }
    }
}

// The implementations for functions of 1 to 6 extractors (a plain
// `Message` argument included) are in `extract`.

/// A [`Handler`] as a [`tower::Service`]: `Response = Ack`, `Error = BoxError`.
pub struct HandlerService<H, T> {
    handler: H,
    // fn() -> T keeps the service Send + Sync whatever T is.
    _marker: PhantomData<fn() -> T>,
}

impl<H: Clone, T> Clone for HandlerService<H, T> {
    fn clone(&self) -> Self {
        HandlerService {
            handler: self.handler.clone(),
            _marker: PhantomData,
        }
    }
}

impl<H, T> fmt::Debug for HandlerService<H, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerService")
            .field("handler", &std::any::type_name::<H>())
            .finish()
    }
}

impl<H, T> Service<Message> for HandlerService<H, T>
where
    H: Handler<T>,
{
    type Response = Ack;
    type Error = BoxError;
    type Future = H::Future;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, message: Message) -> Self::Future {
        self.handler.clone().call(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    async fn ok(_: Message) {}
    async fn skip(_: Message) -> Ack {
        Ack::Skip
    }
    async fn fail(_: Message) -> Result<(), std::io::Error> {
        Err(std::io::Error::other("disk full"))
    }

    fn msg() -> Message {
        Message::builder("t").build()
    }

    #[tokio::test]
    async fn functions_are_handlers() {
        assert_eq!(
            ok.into_service().oneshot(msg()).await.unwrap(),
            Ack::Success
        );
        assert_eq!(skip.into_service().oneshot(msg()).await.unwrap(), Ack::Skip);
        let err = fail.into_service().oneshot(msg()).await.unwrap_err();
        assert_eq!(err.to_string(), "disk full");
    }

    #[tokio::test]
    async fn closures_capture_state() {
        let prefix = String::from("k-");
        let handler = move |m: Message| {
            let prefix = prefix.clone();
            async move {
                if m.key_str().is_some_and(|k| k.starts_with(&prefix)) {
                    Ok(Ack::Success)
                } else {
                    Err("wrong key")
                }
            }
        };
        let keyed = Message::builder("t").key("k-1").build();
        let svc = handler.into_service();
        assert_eq!(svc.clone().oneshot(keyed).await.unwrap(), Ack::Success);
        assert!(svc.oneshot(msg()).await.is_err());
    }
}
