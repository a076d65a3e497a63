//! SASL on a real broker (feature `sasl`): the tests are in
//! `security/mod.rs`. Without the feature this binary runs nothing but
//! lists one ignored test that says so, instead of vanishing silently.

#[cfg(feature = "sasl")]
mod common;

#[cfg(feature = "sasl")]
#[path = "security/mod.rs"]
mod with_sasl;

/// Stands for the SASL tests this build leaves out.
#[cfg(not(feature = "sasl"))]
#[test]
#[ignore = "needs --features sasl (cargo test --all-features): SASL/SCRAM/PLAIN round trips and the wrong-password test were not run"]
fn sasl_tests_not_built() {}
