//! The web demo over real HTTPS, in one test binary (each test binary
//! links the whole dependency graph): every route for every role
//! (`http`), each subsystem's flows with their abuse (`flows`), a real
//! browser (`browser`), the binary under SIGTERM (`process`), and two nodes
//! as one clinic (`scale_out`, with `--features aws`), and UDAP
//! registration and tokens with the `udap-register` example (`udap`), and
//! clients that hold connections without using them (`slow`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failing test panics

mod abuse;
mod browser;
mod common;
mod flows;
mod http;
mod process;
mod scale_out;
mod slow;
mod udap;
