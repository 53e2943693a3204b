//! Compile-time behaviour of the macros: what builds, and the errors (with their spans) for
//! bad attribute input.

#[test]
fn macros() {
    let t = trybuild::TestCases::new();
    t.pass("tests/pass/*.rs");
    t.compile_fail("tests/fail/*.rs");
}
