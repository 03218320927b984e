//! Test doubles for code that speaks FUSE through xfuse, behind the
//! `testkit` cargo feature (rust-vmm's "mocks as features"): the other
//! side of each protocol, so protocol logic is tested without root.
//!
//! - [`Request`]: FUSE requests as the kernel writes them, in the
//!   `/dev/fuse` layout or split as a ring entry carries them, and
//!   [`dispatch`] to run one through a [`Dispatcher`];
//! - [`ring::FakeKernel`]: the kernel's side of FUSE-over-io_uring, for
//!   ring workers.

use fuse_backend_rs::api::filesystem::FileSystem;

use crate::dispatch::{Dispatcher, Reply};
use crate::request::{split_contiguous, Args};

mod request;
pub mod ring;

pub use request::Request;

/// Runs `request` (bytes in the `/dev/fuse` layout) through `dispatcher`
/// as the `dev` transport does, its reply body written into `out`. A
/// request too malformed to reach the dispatcher gets the reply a
/// transport sends, or none when its header is unreadable.
pub fn dispatch<F: FileSystem + Sync>(
    dispatcher: &Dispatcher<F>,
    mut request: Vec<u8>,
    out: &mut [u8],
) -> Option<Reply> {
    match split_contiguous(&mut request) {
        Ok((header, args)) => dispatcher.dispatch(&header, Args::contiguous(args), out),
        Err(bad) => bad.unique.map(|unique| Reply::malformed(unique, bad.error)),
    }
}
