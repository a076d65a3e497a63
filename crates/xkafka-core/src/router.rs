//! Routing by topic, like an HTTP router's paths: one handler per topic of a
//! consumer subscribed to several, with an optional fallback.
//!
//! ```
//! use tower::ServiceExt;
//! use xkafka_core::extract::Json;
//! use xkafka_core::{Ack, Message, Router};
//!
//! async fn order(Json(v): Json<serde_json::Value>) -> Ack {
//!     println!("order {v}");
//!     Ack::Success
//! }
//! async fn anything_else(_m: Message) -> Ack {
//!     Ack::Skip
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let router = Router::new()
//!     .route("orders", order)
//!     .route("payments", |_m: Message| async {})
//!     .fallback(anything_else);
//! let out = router.oneshot(Message::builder("audit").build()).await.unwrap();
//! assert_eq!(out, Ack::Skip);
//! # }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt};

use crate::{Ack, BoxError, Handler, Message};

// Sync so that the router (an `Arc` of routes) is Send and Sync.
type Route = BoxCloneSyncService<Message, Ack, BoxError>;

/// No route for a message's topic and no fallback.
#[derive(Debug, thiserror::Error)]
#[error("no handler for topic {topic:?}")]
pub struct NoRoute {
    /// The message's topic.
    pub topic: String,
}

/// Sends each message to the handler of its topic; see the [module
/// docs](self).
#[derive(Clone, Default)]
pub struct Router {
    routes: Arc<HashMap<String, Route>>,
    fallback: Option<Route>,
}

impl Router {
    /// A router with no routes.
    pub fn new() -> Self {
        Router::default()
    }

    /// Routes `topic` to `handler` (replacing an earlier route).
    pub fn route<H, T>(self, topic: impl Into<String>, handler: H) -> Self
    where
        H: Handler<T>,
        T: 'static,
    {
        self.route_service(topic, handler.into_service())
    }

    /// Routes `topic` to any tower service.
    pub fn route_service<S>(mut self, topic: impl Into<String>, service: S) -> Self
    where
        S: Service<Message, Response = Ack> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        let route = BoxCloneSyncService::new(service.map_err(Into::into));
        self.routes_mut().insert(topic.into(), route);
        self
    }

    /// The routes, unshared first if a clone of the router exists (routes
    /// are only added while building, so this copies at most once).
    fn routes_mut(&mut self) -> &mut HashMap<String, Route> {
        if Arc::get_mut(&mut self.routes).is_none() {
            let copy = self
                .routes
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            self.routes = Arc::new(copy);
        }
        Arc::get_mut(&mut self.routes).expect("unique after the copy")
    }

    /// Handles messages of topics without a route; without it they fail with
    /// [`NoRoute`].
    pub fn fallback<H, T>(mut self, handler: H) -> Self
    where
        H: Handler<T>,
        T: 'static,
    {
        self.fallback = Some(BoxCloneSyncService::new(handler.into_service()));
        self
    }

    /// The topics with a route.
    pub fn topics(&self) -> impl Iterator<Item = &str> {
        self.routes.keys().map(String::as_str)
    }
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut topics: Vec<&str> = self.topics().collect();
        topics.sort_unstable();
        f.debug_struct("Router")
            .field("topics", &topics)
            .field("fallback", &self.fallback.is_some())
            .finish()
    }
}

impl Service<Message> for Router {
    type Response = Ack;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Ack, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, message: Message) -> Self::Future {
        let route = self
            .routes
            .get(message.topic())
            .or(self.fallback.as_ref())
            .cloned();
        match route {
            Some(route) => Box::pin(route.oneshot(message)),
            None => {
                let err: BoxError = Box::new(NoRoute {
                    topic: message.topic().to_owned(),
                });
                Box::pin(async move { Err(err) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>(_: &T) {}

    #[tokio::test]
    async fn routes_by_topic_and_fails_loudly_without_fallback() {
        let router = Router::new()
            .route("a", |_m: Message| async { Ack::Success })
            .route("b", |_m: Message| async { Ack::Skip });
        assert_send_sync(&router);
        let to = |t: &'static str| Message::builder(t).build();
        assert_eq!(router.clone().oneshot(to("a")).await.unwrap(), Ack::Success);
        assert_eq!(router.clone().oneshot(to("b")).await.unwrap(), Ack::Skip);
        let err = router.clone().oneshot(to("c")).await.unwrap_err();
        assert!(err.is::<NoRoute>(), "{err}");
        let with_fallback =
            router.fallback(|_m: Message| async { Err::<(), _>("unexpected topic") });
        let err = with_fallback.oneshot(to("c")).await.unwrap_err();
        assert_eq!(err.to_string(), "unexpected topic");
    }
}
