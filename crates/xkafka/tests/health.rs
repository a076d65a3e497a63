//! Status and health endpoints on the real broker (feature `http`): the
//! tests are in `health/mod.rs`. Without the feature this binary runs
//! nothing but lists one ignored test that says so.

#[cfg(feature = "http")]
mod common;

#[cfg(feature = "http")]
#[path = "health/mod.rs"]
mod with_http;

/// Stands for the health endpoint tests this build leaves out.
#[cfg(not(feature = "http"))]
#[test]
#[ignore = "needs --features http (cargo test --all-features): the health endpoints were not tested"]
fn health_tests_not_built() {}
