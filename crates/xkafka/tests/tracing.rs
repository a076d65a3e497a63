//! Trace propagation on the real broker (feature `opentelemetry`): the
//! tests are in `tracing/mod.rs`. A test binary of its own: it installs the
//! global `tracing` subscriber. Without the feature this binary runs nothing
//! but lists one ignored test that says so, instead of vanishing silently.

#[cfg(feature = "opentelemetry")]
mod common;

#[cfg(feature = "opentelemetry")]
#[path = "tracing/mod.rs"]
mod with_opentelemetry;

/// Stands for the trace-propagation tests this build leaves out.
#[cfg(not(feature = "opentelemetry"))]
#[test]
#[ignore = "needs --features opentelemetry (cargo test --all-features): trace propagation through the broker was not tested"]
fn opentelemetry_tests_not_built() {}
