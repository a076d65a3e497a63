//! An ordered, type-erased list of layers.

use std::fmt;
use std::sync::Arc;

use tower::util::BoxCloneService;
use tower::{Layer, Service, ServiceExt};

use crate::BoxError;

type Boxed<Req, R> = BoxCloneService<Req, R, BoxError>;
type ApplyFn<Req, R> = dyn Fn(Boxed<Req, R>) -> Boxed<Req, R> + Send + Sync;

/// Layers in the order they were added; the first one ends up outermost.
///
/// Consumers and producers keep their middleware in a `Stack`, so that their
/// builders stay free of type parameters. Each layer costs one boxed call per
/// message, which is negligible next to a Kafka round trip.
///
/// ```
/// use tower::ServiceExt;
/// use xkafka_core::middleware::{from_fn, Next, Stack};
/// use xkafka_core::{Ack, Handler, Message};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let mut stack = Stack::new();
/// stack.push(from_fn(|m: Message, next: Next| async move {
///     next.run(m).await.map(|_| Ack::Skip) // outermost: sees the handler's result
/// }));
/// let service = stack.apply((|_m: Message| async {}).into_service());
/// let outcome = service.oneshot(Message::builder("t").build()).await.unwrap();
/// assert_eq!(outcome, Ack::Skip);
/// # }
/// ```
pub struct Stack<Req, R> {
    layers: Vec<Arc<ApplyFn<Req, R>>>,
}

impl<Req, R> Default for Stack<Req, R> {
    fn default() -> Self {
        Stack { layers: Vec::new() }
    }
}

impl<Req, R> Clone for Stack<Req, R> {
    fn clone(&self) -> Self {
        Stack {
            layers: self.layers.clone(),
        }
    }
}

impl<Req, R> fmt::Debug for Stack<Req, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stack")
            .field("layers", &self.layers.len())
            .finish()
    }
}

impl<Req: 'static, R: 'static> Stack<Req, R> {
    /// An empty stack.
    pub fn new() -> Self {
        Stack::default()
    }

    /// Adds a layer inside the ones already added.
    pub fn push<L>(&mut self, layer: L)
    where
        L: Layer<Boxed<Req, R>> + Send + Sync + 'static,
        L::Service: Service<Req, Response = R> + Clone + Send + 'static,
        <L::Service as Service<Req>>::Error: Into<BoxError>,
        <L::Service as Service<Req>>::Future: Send + 'static,
    {
        self.layers.push(Arc::new(move |inner| {
            BoxCloneService::new(layer.layer(inner).map_err(Into::into))
        }));
    }

    /// Number of layers.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// Whether there are no layers.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// Wraps `service` in every layer, the first pushed outermost.
    pub fn apply<S>(&self, service: S) -> Boxed<Req, R>
    where
        S: Service<Req, Response = R> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        self.apply_boxed(BoxCloneService::new(service.map_err(Into::into)))
    }

    /// [`apply`](Self::apply) for a service that is boxed already: boxing
    /// it again would cost one more allocation per call.
    pub fn apply_boxed(&self, innermost: Boxed<Req, R>) -> Boxed<Req, R> {
        self.layers
            .iter()
            .rev()
            .fold(innermost, |inner, apply| apply(inner))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::middleware::{from_fn, Next};
    use crate::{Ack, Handler, Message};

    fn recorder(
        name: &'static str,
        log: Arc<Mutex<Vec<String>>>,
    ) -> impl Layer<
        Boxed<Message, Ack>,
        Service = impl Service<Message, Response = Ack, Error = BoxError, Future = impl Send>
                      + Clone
                      + Send,
    > + Send
           + Sync
           + 'static {
        from_fn(move |m: Message, next: Next| {
            let log = log.clone();
            async move {
                log.lock().unwrap().push(format!("{name} in"));
                let out = next.run(m).await;
                log.lock().unwrap().push(format!("{name} out"));
                out
            }
        })
    }

    #[tokio::test]
    async fn first_added_is_outermost() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut stack = Stack::new();
        for name in ["a", "b", "c"] {
            stack.push(recorder(name, log.clone()));
        }
        let handler_log = log.clone();
        let handler = move |_m: Message| {
            let log = handler_log.clone();
            async move { log.lock().unwrap().push("handler".to_owned()) }
        };
        let svc = stack.apply(handler.into_service());
        svc.oneshot(Message::builder("t").build()).await.unwrap();
        assert_eq!(
            *log.lock().unwrap(),
            ["a in", "b in", "c in", "handler", "c out", "b out", "a out"]
        );
    }

    #[tokio::test]
    async fn tower_layers_compose() {
        use std::time::Duration;
        let mut stack = Stack::new();
        stack.push(tower::timeout::TimeoutLayer::new(Duration::from_millis(10)));
        let slow = |_m: Message| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
        };
        let err = stack
            .apply(slow.into_service())
            .oneshot(Message::builder("t").build())
            .await
            .unwrap_err();
        assert!(err.is::<tower::timeout::error::Elapsed>(), "{err}");
    }
}
