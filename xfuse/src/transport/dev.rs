//! Transport `dev`: classic `/dev/fuse`, one cloned descriptor per worker.
//!
//! Each worker reads requests from its own descriptor
//! (`FUSE_DEV_IOC_CLONE`), so the kernel's per-descriptor processing lists
//! never contend, and answers on that same descriptor, as the kernel requires.
//! A worker owns two buffers for its whole life: the request buffer (sized
//! for a WRITE of max_write) and the reply body buffer (sized for a READ of
//! max_pages); file data is read and written in place in them.

use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;

use fuse_backend_rs::api::filesystem::FileSystem;
use kmod_shim::abi::{InHeader, OutHeader, WriteIn};
use kmod_shim::buf::AlignedBuf;
use kmod_shim::FuseDev;
use zerocopy::IntoBytes;

use crate::dispatch::{Dispatcher, Reply};
use crate::request::{split_contiguous, Args, BadRequest};
use crate::session::Error;

/// Where a WRITE request's data starts in what a `/dev/fuse` read returns.
const WRITE_DATA_OFFSET: usize = std::mem::size_of::<InHeader>() + std::mem::size_of::<WriteIn>();

/// Starts `threads` workers on clones of `session_dev`.
pub fn start<F: FileSystem + Send + Sync + 'static>(
    session_dev: &FuseDev,
    dispatcher: &Arc<Dispatcher<F>>,
    threads: usize,
) -> Result<Vec<JoinHandle<()>>, Error> {
    let mut workers = Vec::with_capacity(threads);
    for id in 0..threads {
        let channel = session_dev.try_clone_channel().map_err(|e| Error::Transport {
            transport: "dev",
            reason: format!("FUSE_DEV_IOC_CLONE for worker {id}: {e}"),
        })?;
        let dispatcher = dispatcher.clone();
        let handle = std::thread::Builder::new()
            .name(format!("xfuse-dev-{id}"))
            .spawn(move || worker(id, channel, dispatcher))
            .map_err(|e| Error::Transport {
                transport: "dev",
                reason: format!("spawning worker {id}: {e}"),
            })?;
        workers.push(handle);
    }
    Ok(workers)
}

fn worker<F: FileSystem + Send + Sync>(id: usize, channel: FuseDev, dispatcher: Arc<Dispatcher<F>>) {
    let negotiated = *dispatcher.negotiated();
    // WRITE data lands on a page boundary (after its two headers), and
    // READ data is read into a page-aligned buffer: see kmod_shim::buf.
    let mut request = AlignedBuf::aligned_at(negotiated.request_buffer_bytes(), WRITE_DATA_OFFSET);
    let mut body = AlignedBuf::new(negotiated.max_reply_bytes());
    loop {
        let n = match channel.read_request(&mut request) {
            Ok(n) => n,
            Err(e) => match e.raw_os_error() {
                // Interrupted before we could read it, or a signal: read again.
                Some(libc::ENOENT | libc::EINTR | libc::EAGAIN) => continue,
                Some(libc::ENODEV) => {
                    tracing::debug!(worker = id, "connection closed");
                    return;
                }
                _ => {
                    tracing::error!(worker = id, "reading /dev/fuse failed: {e}; worker stops");
                    return;
                }
            },
        };
        let reply = match split_contiguous(&mut request[..n]) {
            Ok((header, args)) => dispatcher.dispatch(&header, Args::contiguous(args), &mut body),
            Err(BadRequest {
                unique: Some(unique),
                error: e,
            }) => {
                tracing::warn!(worker = id, "malformed request {unique}: {e}");
                Some(Reply {
                    unique,
                    error: -e.errno(),
                    body_len: 0,
                    lookup: None,
                })
            }
            Err(BadRequest {
                unique: None,
                error: e,
            }) => {
                tracing::warn!(worker = id, "unanswerable request: {e}");
                None
            }
        };
        let Some(reply) = reply else { continue };
        if let Err(e) = send(&channel, &reply, &body[..reply.body_len]) {
            dispatcher.reply_lost(&reply);
            match e.raw_os_error() {
                // The request was interrupted and is gone: expected.
                Some(libc::ENOENT) => {}
                Some(libc::ENODEV) => return,
                _ => tracing::warn!(worker = id, unique = reply.unique, "writing reply failed: {e}"),
            }
        }
    }
}

fn send(channel: &FuseDev, reply: &Reply, body: &[u8]) -> io::Result<()> {
    let header = OutHeader {
        len: (std::mem::size_of::<OutHeader>() + body.len()) as u32,
        error: reply.error,
        unique: reply.unique,
    };
    channel.write_message(&[header.as_bytes(), body])?;
    Ok(())
}
