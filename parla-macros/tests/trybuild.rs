//! Compile-time behaviour of the macros: what builds, and the errors (with their spans) for
//! bad attribute input; and the API's own errors for what does not fit its bounds (a task
//! handle given by value as a dependency).

#[test]
fn macros() {
    let t = trybuild::TestCases::new();
    t.pass("tests/pass/*.rs");
    t.compile_fail("tests/fail/*.rs");
}
