//! Is a consumer healthy, and if not, why? Judged from its
//! [`ConsumerStatus`](crate::consumer::ConsumerStatus) (see [`Consumer::status_handle`](crate::Consumer::status_handle))
//! against thresholds, each unhealthy state with a reason a person can act
//! on — and, with the `http` feature, the endpoints Kubernetes probes:
//! `/healthz` (liveness), `/readyz` (readiness) and `/status` (JSON).
//!
//! ```
//! use std::time::Duration;
//! use xkafka::health::HealthCheck;
//!
//! let check = HealthCheck::builder()
//!     .handler_stuck_after(Duration::from_secs(120))
//!     .build()
//!     .unwrap();
//! assert!(HealthCheck::builder().poll_stalled_after(Duration::ZERO).build().is_err());
//! # let _ = check;
//! ```

mod check;
#[cfg(feature = "http")]
mod http;

pub use check::{Health, HealthCheck, HealthCheckBuilder, Problem};
#[cfg(feature = "http")]
pub use http::router;
