//! Transport `dev`: classic `/dev/fuse`, one cloned descriptor per worker.
//!
//! Each worker reads requests from its own descriptor
//! (`FUSE_DEV_IOC_CLONE`), so the kernel's per-descriptor processing lists
//! never contend, and answers on that same descriptor, as the kernel requires.
//! A worker owns two buffers for its whole life: the request buffer (sized
//! for a WRITE of max_write) and the reply body buffer (sized for a READ of
//! max_pages); file data is read and written in place in them. Both are
//! page-aligned where the data goes (`kmod_shim::buf`): the kernel copies
//! into a misaligned buffer at half speed on some CPUs.
//!
//! INIT, before any worker runs, is answered on the session's own
//! descriptor by [`answer_init`], for every transport of a mount.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use fuse_backend_rs::api::filesystem::FileSystem;
use kmod_shim::abi::{InHeader, Opcode, WriteIn};
use kmod_shim::buf::AlignedBuf;
use kmod_shim::FuseDev;
use zerocopy::IntoBytes;

use super::handshake::{self, Handshake};
use super::{out_header, Error};
use crate::dispatch::{Dispatcher, Reply};
use crate::init::{InitConfig, Negotiated};
use crate::request::{split_contiguous, Args, BadRequest};

/// A pause after each FORGET, for the `/dev/fuse` worker that runs beside
/// the rings of the `uring` transport.
///
/// There, `/dev/fuse` carries little but FORGETs (one per unlinked or
/// evicted inode) and INTERRUPTs, and reading each FORGET as it comes costs
/// a wake-up of that worker per unlink, often on another CPU. Pausing after
/// a FORGET lets the next ones gather in the kernel's queue, which hands
/// them over as one BATCH_FORGET. An INTERRUPT that arrives meanwhile waits
/// at most `delay`. The pause applies only once `armed` is set (the rings
/// serve requests), so that requests `/dev/fuse` still carries before
/// then, or instead of rings that could not start, are never delayed.
#[derive(Debug, Clone)]
pub struct ForgetPause {
    /// How long to wait after a FORGET or BATCH_FORGET.
    pub delay: Duration,
    /// Set once the rings carry the requests.
    pub armed: Arc<AtomicBool>,
}

impl ForgetPause {
    fn after(&self, opcode: u32) {
        let forget = opcode == Opcode::Forget as u32 || opcode == Opcode::BatchForget as u32;
        if forget && !self.delay.is_zero() && self.armed.load(Ordering::Relaxed) {
            std::thread::sleep(self.delay);
        }
    }
}

/// Where a WRITE request's data starts in what a `/dev/fuse` read returns.
const WRITE_DATA_OFFSET: usize = std::mem::size_of::<InHeader>() + std::mem::size_of::<WriteIn>();

/// Starts `threads` workers on clones of `session_dev`.
pub fn start<F: FileSystem + Send + Sync + 'static>(
    session_dev: &FuseDev,
    dispatcher: &Arc<Dispatcher<F>>,
    threads: usize,
) -> Result<Vec<JoinHandle<()>>, Error> {
    start_with(session_dev, dispatcher, threads, None)
}

/// [`start`], with a pause after each FORGET (see [`ForgetPause`]).
pub fn start_with<F: FileSystem + Send + Sync + 'static>(
    session_dev: &FuseDev,
    dispatcher: &Arc<Dispatcher<F>>,
    threads: usize,
    pause: Option<ForgetPause>,
) -> Result<Vec<JoinHandle<()>>, Error> {
    let mut workers = Vec::with_capacity(threads);
    for id in 0..threads {
        let channel = session_dev.try_clone_channel().map_err(|e| Error::Setup {
            transport: "dev",
            reason: format!("FUSE_DEV_IOC_CLONE for worker {id}: {e}"),
        })?;
        let dispatcher = dispatcher.clone();
        let pause = pause.clone();
        let handle = std::thread::Builder::new()
            .name(format!("xfuse-dev-{id}"))
            .spawn(move || worker(id, channel, dispatcher, pause))
            .map_err(|e| Error::Setup {
                transport: "dev",
                reason: format!("spawning worker {id}: {e}"),
            })?;
        workers.push(handle);
    }
    Ok(workers)
}

fn worker<F: FileSystem + Send + Sync>(
    id: usize,
    channel: FuseDev,
    dispatcher: Arc<Dispatcher<F>>,
    pause: Option<ForgetPause>,
) {
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
            Ok((header, args)) => {
                let reply = dispatcher.dispatch(&header, Args::contiguous(args), &mut body);
                if let Some(pause) = &pause {
                    pause.after(header.opcode);
                }
                reply
            }
            Err(BadRequest {
                unique: Some(unique),
                error: e,
            }) => {
                tracing::warn!(worker = id, "malformed request {unique}: {e}");
                Some(Reply::malformed(unique, e))
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
    let header = out_header(reply.unique, reply.error, body.len());
    channel.write_message(&[header.as_bytes(), body])?;
    Ok(())
}

/// Reads INIT from a freshly mounted connection, negotiates with `fs` and
/// answers. Loops while the kernel asks to retry with another major version.
pub fn answer_init<F: FileSystem>(dev: &FuseDev, fs: &F, config: &InitConfig) -> Result<Negotiated, Error> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = loop {
            match dev.read_request(&mut buf) {
                Ok(n) => break n,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::ENOENT | libc::EAGAIN)) => {
                    continue
                }
                Err(e) => return Err(Error::Init(format!("reading INIT: {e}"))),
            }
        };
        let (header, body) = split_contiguous(&mut buf[..n])
            .map_err(|bad| Error::Init(format!("malformed INIT: {}", bad.error)))?;
        if header.opcode != Opcode::Init as u32 {
            if let Err(e) = dev.write_message(&[out_header(header.unique, -libc::EIO, 0).as_bytes()]) {
                tracing::debug!("reply to {} failed: {e}", header.unique);
            }
            return Err(Error::Init(format!(
                "kernel sent opcode {} before INIT",
                header.opcode
            )));
        }
        let (reply, next) = handshake::answer(header.unique, body, config, fs);
        let sent = dev.write_message(&[
            out_header(reply.unique, reply.error, reply.body().len()).as_bytes(),
            reply.body(),
        ]);
        match next {
            Handshake::Agreed(negotiated) => {
                sent.map_err(|e| Error::Init(format!("writing the INIT reply: {e}")))?;
                return Ok(negotiated);
            }
            Handshake::Retry => {
                tracing::info!("kernel offers a newer FUSE major; answering 7 and waiting for another INIT");
                sent.map_err(|e| Error::Init(format!("writing the INIT reply: {e}")))?;
            }
            Handshake::Refused(why) => {
                if let Err(e) = sent {
                    tracing::debug!("reply to {} failed: {e}", reply.unique);
                }
                return Err(Error::Init(why));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn pause(delay: Duration, armed: bool) -> ForgetPause {
        ForgetPause {
            delay,
            armed: Arc::new(AtomicBool::new(armed)),
        }
    }

    #[test]
    fn pauses_after_forgets_once_the_rings_serve() {
        for op in [Opcode::Forget, Opcode::BatchForget] {
            let t = Instant::now();
            pause(Duration::from_millis(30), true).after(op as u32);
            assert!(t.elapsed() >= Duration::from_millis(30), "{op:?}");
        }
    }

    #[test]
    fn never_pauses_other_requests_or_before_the_rings_serve() {
        // A pause this long would show; not pausing takes microseconds.
        let long = Duration::from_secs(20);
        let t = Instant::now();
        pause(long, true).after(Opcode::Interrupt as u32);
        pause(long, true).after(Opcode::Read as u32);
        pause(long, false).after(Opcode::Forget as u32);
        pause(Duration::ZERO, true).after(Opcode::BatchForget as u32);
        assert!(t.elapsed() < Duration::from_secs(10));
    }
}
