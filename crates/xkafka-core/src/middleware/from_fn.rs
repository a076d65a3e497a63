//! Middleware from an async closure, like axum's `middleware::from_fn`.

use std::fmt;
use std::future::Future;
use std::task::{Context, Poll};

use tower::util::BoxCloneService;
use tower::{Layer, Service, ServiceExt};

use crate::ack::Ack;
use crate::message::Message;
use crate::BoxError;

/// Creates a middleware from an async function taking the message and the
/// rest of the chain.
///
/// The same function shape works for consumers (`Next<Ack>`, the default),
/// producers (`Next<Delivery>`) and batch consumers (`Next<Ack, Batch>`).
///
/// ```
/// use std::time::Instant;
/// use xkafka_core::middleware::{from_fn, Next};
/// use xkafka_core::{Ack, BoxError, Message};
///
/// async fn timing(msg: Message, next: Next) -> Result<Ack, BoxError> {
///     let started = Instant::now();
///     let location = msg.location();
///     let outcome = next.run(msg).await;
///     println!("{location} took {:?}: {outcome:?}", started.elapsed());
///     outcome
/// }
///
/// let layer = from_fn(timing);
/// # let _ = layer;
/// ```
pub fn from_fn<F>(f: F) -> FromFnLayer<F> {
    FromFnLayer { f }
}

/// The [`Layer`] made by [`from_fn`].
#[derive(Clone)]
pub struct FromFnLayer<F> {
    f: F,
}

impl<F> fmt::Debug for FromFnLayer<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FromFnLayer")
            .field("f", &std::any::type_name::<F>())
            .finish()
    }
}

impl<S, F: Clone> Layer<S> for FromFnLayer<F> {
    type Service = FromFn<F, S>;

    fn layer(&self, inner: S) -> Self::Service {
        FromFn {
            f: self.f.clone(),
            inner,
        }
    }
}

/// The service made by [`FromFnLayer`].
#[derive(Clone)]
pub struct FromFn<F, S> {
    f: F,
    inner: S,
}

impl<F, S> fmt::Debug for FromFn<F, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FromFn")
            .field("f", &std::any::type_name::<F>())
            .finish_non_exhaustive()
    }
}

impl<F, Fut, S, Req, R> Service<Req> for FromFn<F, S>
where
    F: Fn(Req, Next<R, Req>) -> Fut,
    Fut: Future<Output = Result<R, BoxError>>,
    S: Service<Req, Response = R> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    Req: 'static,
    R: 'static,
{
    type Response = R;
    type Error = BoxError;
    type Future = Fut;

    // Readiness is checked by `Next::run` on the clone it calls, so a closure
    // that never calls `next` does not hold a reserved slot of the inner
    // service (the same choice as axum's from_fn).
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let inner = self.inner.clone().map_err(Into::into);
        let next = Next {
            inner: BoxCloneService::new(inner),
        };
        (self.f)(request, next)
    }
}

/// The rest of the middleware chain, handed to a [`from_fn`] middleware.
///
/// `R` is what the chain returns ([`Ack`] for handlers, `Delivery` for
/// publishing) and `Req` what it takes ([`Message`], or a `Batch` for batch
/// handlers).
pub struct Next<R = Ack, Req = Message> {
    inner: BoxCloneService<Req, R, BoxError>,
}

impl<R, Req> Next<R, Req> {
    /// Runs the inner middleware and the handler (or the publish) on the
    /// message (or batch).
    pub async fn run(self, request: Req) -> Result<R, BoxError> {
        self.inner.oneshot(request).await
    }
}

impl<R, Req> fmt::Debug for Next<R, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Next").finish_non_exhaustive()
    }
}
