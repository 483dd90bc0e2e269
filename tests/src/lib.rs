//! `edge-tests`: shared helpers for the end-to-end suites in `tests/tests/`.
#![forbid(unsafe_code)]
