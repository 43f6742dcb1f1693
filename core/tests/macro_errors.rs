//! Misuse of `#[courier::service]` is a readable compile error, pinned by trybuild.

#[test]
fn misuse_is_a_readable_compile_error() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
