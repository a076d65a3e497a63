//! Prometheus metrics on the real broker (feature `metrics`): the tests are
//! in `metrics/mod.rs`. Without the feature this binary runs nothing but
//! lists one ignored test that says so, instead of vanishing silently.

#[cfg(feature = "metrics")]
mod common;

#[cfg(feature = "metrics")]
#[path = "metrics/mod.rs"]
mod with_metrics;

/// Stands for the metrics tests this build leaves out.
#[cfg(not(feature = "metrics"))]
#[test]
#[ignore = "needs --features metrics (cargo test --all-features): the scraped Prometheus metrics were not tested"]
fn metrics_tests_not_built() {}
