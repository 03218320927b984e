//! One request at a time, as any caller: a connected, initialised guest
//! for tests that check what a backend makes of particular requests (the
//! ids it creates files with, the errors it answers), where the replay
//! runs a fixed workload.

use std::path::Path;

use kmod_shim::abi::{AttrOut, EntryOut, InitOut, OpenOut};

use super::backend::{GUEST_MEMORY_BYTES, QUEUE_SIZE};
use super::device::{Device, HIPRIO, REQUEST};
use super::fuse::{self, Caller, Reply, Request};
use super::replay::{linux_6_1_init, Engine};
use super::{GuestRam, ReplayError};

/// A guest that has sent INIT and sends one request at a time.
#[derive(Debug)]
pub struct Session {
    dev: Device,
    next_unique: u64,
    reply_timeout_ms: i32,
    init: InitOut,
}

impl Session {
    /// Connects to the backend's socket as a VMM does and sends a Linux
    /// 6.1 guest's INIT.
    pub fn connect(socket: &Path, reply_timeout_ms: i32) -> Result<Session, ReplayError> {
        let ram = GuestRam::new(GUEST_MEMORY_BYTES)?;
        let dev = Device::connect(socket, ram, QUEUE_SIZE)?;
        let mut session = Session {
            dev,
            next_unique: 1,
            reply_timeout_ms,
            init: InitOut::default(),
        };
        let reply = session.call(&Request::init(&linux_6_1_init()), Caller::ROOT)?;
        if reply.error != 0 {
            return Err(bad("INIT", format!("error {}", reply.error)));
        }
        session.init = fuse::init_out(&reply.body).map_err(|e| bad("INIT", e))?;
        Ok(session)
    }

    /// The backend's INIT reply.
    pub fn init(&self) -> &InitOut {
        &self.init
    }

    /// The device, for chains built by hand ([`super::data`]).
    pub fn device(&self) -> &Device {
        &self.dev
    }

    /// The device, mutably.
    pub fn device_mut(&mut self) -> &mut Device {
        &mut self.dev
    }

    fn send(&mut self, queue: usize, req: &Request, caller: Caller) -> Result<Option<Reply>, ReplayError> {
        let mut engine = Engine::new(&mut self.dev, 1, self.reply_timeout_ms)?;
        engine.next_unique = self.next_unique;
        let result = engine.call_as(0, queue, req, caller);
        self.next_unique = engine.next_unique;
        Ok(result?.0)
    }

    /// Sends `req` as `caller` on the request queue and returns its reply,
    /// header checked (`error` is 0 or a negated errno).
    pub fn call(&mut self, req: &Request, caller: Caller) -> Result<Reply, ReplayError> {
        self.send(REQUEST, req, caller)?
            .ok_or_else(|| bad(req.opcode.name(), "no reply".into()))
    }

    /// [`Session::call`] that must succeed with an entry (LOOKUP, MKNOD,
    /// MKDIR, LINK, SYMLINK; the first part of CREATE's reply).
    pub fn entry(&mut self, req: &Request, caller: Caller) -> Result<EntryOut, ReplayError> {
        let op = req.opcode.name();
        let reply = self.ok(req, caller)?;
        let len = size_of::<EntryOut>().min(reply.body.len());
        fuse::exact(&reply.body[..len], op).map_err(|e| bad(op, e))
    }

    /// [`Session::call`] of a CREATE that must succeed: its entry and open
    /// reply.
    pub fn created(&mut self, req: &Request, caller: Caller) -> Result<(EntryOut, OpenOut), ReplayError> {
        let reply = self.ok(req, caller)?;
        let (entry, open) = reply.body.split_at(size_of::<EntryOut>().min(reply.body.len()));
        Ok((
            fuse::exact(entry, "CREATE").map_err(|e| bad("CREATE", e))?,
            fuse::exact(open, "CREATE").map_err(|e| bad("CREATE", e))?,
        ))
    }

    /// [`Session::call`] that must succeed with attributes (GETATTR,
    /// SETATTR).
    pub fn attr(&mut self, req: &Request, caller: Caller) -> Result<AttrOut, ReplayError> {
        let op = req.opcode.name();
        let reply = self.ok(req, caller)?;
        fuse::exact(&reply.body, op).map_err(|e| bad(op, e))
    }

    /// [`Session::call`] that must succeed.
    pub fn ok(&mut self, req: &Request, caller: Caller) -> Result<Reply, ReplayError> {
        let reply = self.call(req, caller)?;
        if reply.error != 0 {
            return Err(bad(
                req.opcode.name(),
                format!("failed: {}", std::io::Error::from_raw_os_error(-reply.error)),
            ));
        }
        Ok(reply)
    }

    /// FORGET on the high-priority queue (no reply).
    pub fn forget(&mut self, nodeid: u64, nlookup: u64) -> Result<(), ReplayError> {
        match self.send(HIPRIO, &Request::forget(nodeid, nlookup), Caller::ROOT)? {
            None => Ok(()),
            Some(_) => Err(bad("FORGET", "a reply to FORGET".into())),
        }
    }

    /// DESTROY, as an unmount ends the session, then the connection closes.
    pub fn destroy(mut self) -> Result<(), ReplayError> {
        match self.send(REQUEST, &Request::destroy(), Caller::ROOT)? {
            None => Ok(()),
            Some(Reply { error: 0, body }) if body.is_empty() => Ok(()),
            Some(other) => Err(bad("DESTROY", format!("{other:?}"))),
        }
    }
}

fn bad(op: &'static str, reason: String) -> ReplayError {
    ReplayError::BadReply {
        op,
        unique: 0,
        reason,
    }
}
