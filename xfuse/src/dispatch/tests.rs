//! The dispatcher against filesystem doubles: every opcode family,
//! malformed and hostile requests, policies, privilege clearing.

use std::ffi::CStr;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use fuse_backend_rs::api::filesystem::{DirEntry, SetattrValid, ZeroCopyWriter};
use kmod_shim::abi::{
    fattr, fopen, init_flags, req_flags, AttrOut, BatchForgetIn, Dirent, EntryOut, ForgetOne, GetattrIn,
    OpenIn, OpenOut, ReadIn, SetattrIn, WriteIn,
};
use zerocopy::{FromBytes, IntoBytes};

use super::entries::zeroed_stat;
use super::*;
use crate::testkit::{self, Request};

/// A filesystem double: one directory (1) holding one file "f" (2) with
/// eight bytes of data; it counts lookups and forgets.
#[derive(Default)]
struct TinyFs {
    lookups: AtomicU64,
    forgets: AtomicU64,
}

fn stat(ino: u64) -> libc::stat64 {
    let mut st = zeroed_stat();
    st.st_ino = ino;
    st.st_mode = if ino == 1 {
        libc::S_IFDIR | 0o755
    } else {
        libc::S_IFREG | 0o644
    };
    st.st_size = 8;
    st.st_nlink = 1;
    st
}

impl FileSystem for TinyFs {
    type Inode = u64;
    type Handle = u64;

    fn lookup(&self, _: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        if parent != 1 || name.to_bytes() != b"f" {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        self.lookups.fetch_add(1, Ordering::Relaxed);
        Ok(Entry {
            inode: 2,
            attr: stat(2),
            ..Default::default()
        })
    }

    fn forget(&self, _: &Context, _: u64, count: u64) {
        self.forgets.fetch_add(count, Ordering::Relaxed);
    }

    fn getattr(&self, _: &Context, ino: u64, _: Option<u64>) -> io::Result<(libc::stat64, Duration)> {
        Ok((stat(ino), Duration::from_secs(1)))
    }

    fn setattr(
        &self,
        _: &Context,
        ino: u64,
        _: libc::stat64,
        _: Option<u64>,
        _: SetattrValid,
    ) -> io::Result<(libc::stat64, Duration)> {
        Ok((stat(ino), Duration::from_secs(1)))
    }

    fn read(
        &self,
        _: &Context,
        _: u64,
        _: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        _: Option<u64>,
        _: u32,
    ) -> io::Result<usize> {
        let data = b"01234567";
        let start = (offset as usize).min(data.len());
        let end = (start + size as usize).min(data.len());
        w.write(&data[start..end])
    }

    fn readdir(
        &self,
        _: &Context,
        _: u64,
        _: u64,
        _: u32,
        offset: u64,
        add: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        for i in offset..100 {
            let name = format!("entry-{i}");
            let n = add(DirEntry {
                ino: 10 + i,
                offset: i + 1,
                type_: 8,
                name: name.as_bytes(),
            })?;
            if n == 0 {
                break;
            }
        }
        Ok(())
    }

    /// As `readdir`, with inode numbers 1000 higher (as PassthroughFs's
    /// two listings disagree), and a lookup counted for every entry,
    /// given back here for one that did not fit.
    fn readdirplus(
        &self,
        _: &Context,
        _: u64,
        _: u64,
        _: u32,
        offset: u64,
        add: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        for i in offset..100 {
            let name = format!("entry-{i}");
            self.lookups.fetch_add(1, Ordering::Relaxed);
            let entry = Entry {
                inode: 10 + i,
                attr: stat(1010 + i),
                ..Default::default()
            };
            let n = add(
                DirEntry {
                    ino: 1010 + i,
                    offset: i + 1,
                    type_: 8,
                    name: name.as_bytes(),
                },
                entry,
            )?;
            if n == 0 {
                self.forgets.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
        Ok(())
    }
}

fn negotiated() -> Negotiated {
    Negotiated {
        minor: 45,
        offered: 0,
        flags: init_flags::MAX_PAGES,
        max_write: 128 * 1024,
        max_pages: 32,
        max_readahead: 0,
    }
}

fn message(opcode: u32, nodeid: u64, body: &[u8]) -> Vec<u8> {
    Request::raw(opcode)
        .unique(42)
        .nodeid(nodeid)
        .bytes(body)
        .to_bytes()
}

fn run(d: &Dispatcher<TinyFs>, msg: Vec<u8>, out: &mut [u8]) -> Option<Reply> {
    testkit::dispatch(d, msg, out)
}

#[test]
fn lookup_returns_entry_and_carries_its_reference() {
    let d = Dispatcher::new(TinyFs::default(), negotiated());
    let mut out = vec![0u8; d.negotiated().max_reply_bytes()];
    let r = run(&d, message(Opcode::Lookup as u32, 1, b"f\0"), &mut out).unwrap();
    assert_eq!((r.error, r.body_len, r.lookup), (0, 128, Some(2)));
    let e = EntryOut::read_from_bytes(&out[..128]).unwrap();
    assert_eq!((e.nodeid, e.attr.size), (2, 8));
    d.reply_lost(&r);
    assert_eq!(
        d.fs().forgets.load(Ordering::Relaxed),
        1,
        "a lost reply gives its lookup back"
    );
    let r = run(&d, message(Opcode::Lookup as u32, 1, b"nope\0"), &mut out).unwrap();
    assert_eq!(r.error, -libc::ENOENT);
    assert_eq!(d.stats().requests(Opcode::Lookup), 2);
    assert_eq!(d.stats().errors(Opcode::Lookup), 1);
}

#[test]
fn policy_caches_negative_lookups_and_skips_flush() {
    let mut b = DispatcherBuilder::new(TinyFs::default(), negotiated());
    b.set_policy(Policy {
        negative_timeout: Duration::from_millis(1500),
        open_noflush: true,
        ..Default::default()
    });
    let d = b.build();
    let mut out = vec![0u8; d.negotiated().max_reply_bytes()];
    let r = run(&d, message(Opcode::Lookup as u32, 1, b"nope\0"), &mut out).unwrap();
    assert_eq!((r.error, r.body_len, r.lookup), (0, 128, None));
    let e = EntryOut::read_from_bytes(&out[..128]).unwrap();
    assert_eq!((e.nodeid, e.entry_valid, e.entry_valid_nsec), (0, 1, 500_000_000));
    let open = OpenIn::default().as_bytes().to_vec();
    let r = run(&d, message(Opcode::Open as u32, 2, &open), &mut out).unwrap();
    assert_eq!(r.error, 0);
    let o = OpenOut::read_from_bytes(&out[..16]).unwrap();
    assert_eq!(o.open_flags & fopen::NOFLUSH, fopen::NOFLUSH);
}

#[derive(Debug, Default)]
struct NoInval;

impl crate::cache::Invalidator for NoInval {
    fn inval_inode(&self, _: u64, _: i64, _: i64) -> io::Result<()> {
        Ok(())
    }
    fn inval_entry(&self, _: u64, _: &[u8]) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn adaptive_ttl_sets_timeouts_per_inode_and_changes_demote() {
    use crate::cache::{AdaptiveConfig, Upcalls};
    let ttl = Arc::new(AdaptiveTtl::new(AdaptiveConfig {
        short_entry_ttl: Duration::from_secs(1),
        short_attr_ttl: Duration::from_secs(2),
        long_ttl: Duration::from_secs(77),
        ..Default::default()
    }));
    ttl.set_invalidator(Box::new(NoInval));
    let mut b = DispatcherBuilder::new(TinyFs::default(), negotiated());
    b.set_adaptive_ttl(ttl.clone());
    let d = b.build();
    let mut out = vec![0u8; d.negotiated().max_reply_bytes()];
    let lookup = |d: &Dispatcher<TinyFs>, out: &mut [u8]| {
        let r = run(d, message(Opcode::Lookup as u32, 1, b"f\0"), out).unwrap();
        assert_eq!(r.error, 0);
        let e = EntryOut::read_from_bytes(&out[..128]).unwrap();
        (e.entry_valid, e.attr_valid)
    };
    assert_eq!(lookup(&d, &mut out), (1, 2), "short by default");
    ttl.refresh(std::time::Instant::now(), &[Upcalls { nodeid: 2, total: 5 }]);
    assert_eq!(lookup(&d, &mut out), (77, 77), "long once hot");
    let getattr = GetattrIn::default().as_bytes().to_vec();
    let r = run(&d, message(Opcode::Getattr as u32, 2, &getattr), &mut out).unwrap();
    assert_eq!(
        (r.error, AttrOut::read_from_bytes(&out[..104]).unwrap().attr_valid),
        (0, 77)
    );
    // A SETATTR through the mount demotes it before replying.
    let setattr = SetattrIn::default().as_bytes().to_vec();
    let r = run(&d, message(Opcode::Setattr as u32, 2, &setattr), &mut out).unwrap();
    assert_eq!(r.error, 0);
    assert!(!ttl.is_long(2));
    assert_eq!(lookup(&d, &mut out), (1, 2));
    // TinyFs answers with zero timeouts: with zero_entry_timeout_stands
    // that zero is the filesystem saying "never cache this name"; the
    // attribute timeout stays adaptive.
    let mut b = DispatcherBuilder::new(TinyFs::default(), negotiated());
    b.set_adaptive_ttl(ttl.clone()).set_policy(Policy {
        zero_entry_timeout_stands: true,
        ..Default::default()
    });
    let d = b.build();
    assert_eq!(lookup(&d, &mut out), (0, 2));
}

#[test]
fn unknown_and_unimplemented_opcodes_get_enosys() {
    let d = Dispatcher::new(TinyFs::default(), negotiated());
    let mut out = vec![0u8; d.negotiated().max_reply_bytes()];
    for opcode in [
        7u32,
        54,
        999,
        u32::MAX,
        Opcode::Statx as u32,
        Opcode::Tmpfile as u32,
    ] {
        let r = run(&d, message(opcode, 1, &[0; 24]), &mut out).unwrap();
        assert_eq!(r.error, -libc::ENOSYS, "opcode {opcode}");
    }
    // Trait methods the double does not override answer ENOSYS too.
    let r = run(&d, message(Opcode::Unlink as u32, 1, b"f\0"), &mut out).unwrap();
    assert_eq!(r.error, -libc::ENOSYS);
}

#[test]
fn malformed_requests_get_einval_and_forget_gets_no_reply() {
    let d = Dispatcher::new(TinyFs::default(), negotiated());
    let mut out = vec![0u8; d.negotiated().max_reply_bytes()];
    // Name without NUL, struct too short, trailing junk.
    for (op, body) in [
        (Opcode::Lookup, b"f".to_vec()),
        (Opcode::Getattr, vec![0; 3]),
        (Opcode::Getattr, vec![0; 17]),
        (Opcode::Mkdir, vec![0; 8]),
    ] {
        let r = run(&d, message(op as u32, 1, &body), &mut out).unwrap();
        assert_eq!(r.error, -libc::EINVAL, "{op:?}");
    }
    assert!(run(&d, message(Opcode::Forget as u32, 2, &[0; 3]), &mut out).is_none());
    assert!(run(
        &d,
        message(Opcode::Forget as u32, 2, &5u64.to_ne_bytes()),
        &mut out
    )
    .is_none());
    assert_eq!(d.fs().forgets.load(Ordering::Relaxed), 5);
    // BATCH_FORGET whose count claims more entries than the request holds.
    let mut b = BatchForgetIn {
        count: 1000,
        dummy: 0,
    }
    .as_bytes()
    .to_vec();
    b.extend_from_slice(
        ForgetOne {
            nodeid: 2,
            nlookup: 1,
        }
        .as_bytes(),
    );
    assert!(run(&d, message(Opcode::BatchForget as u32, 0, &b), &mut out).is_none());
    assert_eq!(
        d.fs().forgets.load(Ordering::Relaxed),
        5,
        "nothing forgotten from a bad batch"
    );
    assert_eq!(d.stats().forgotten_inodes(), 1, "one well-formed FORGET");
    // A good batch of two counts two inodes.
    let mut b = BatchForgetIn { count: 2, dummy: 0 }.as_bytes().to_vec();
    for nodeid in [2, 3] {
        b.extend_from_slice(ForgetOne { nodeid, nlookup: 1 }.as_bytes());
    }
    assert!(run(&d, message(Opcode::BatchForget as u32, 0, &b), &mut out).is_none());
    assert_eq!(d.stats().forgotten_inodes(), 3);
}

#[test]
fn oversized_read_and_readdir_are_refused() {
    let d = Dispatcher::new(TinyFs::default(), negotiated());
    let mut out = vec![0u8; d.negotiated().max_reply_bytes()];
    let read = |size| {
        ReadIn {
            size,
            ..Default::default()
        }
        .as_bytes()
        .to_vec()
    };
    let r = run(&d, message(Opcode::Read as u32, 2, &read(u32::MAX)), &mut out).unwrap();
    assert_eq!(r.error, -libc::EINVAL);
    let r = run(&d, message(Opcode::Read as u32, 2, &read(4)), &mut out).unwrap();
    assert_eq!((r.error, &out[..r.body_len]), (0, &b"0123"[..]));
    let r = run(&d, message(Opcode::Readdir as u32, 1, &read(1 << 30)), &mut out).unwrap();
    assert_eq!(r.error, -libc::EINVAL);
}

#[test]
fn readdir_fills_exactly_the_size_asked() {
    let d = Dispatcher::new(TinyFs::default(), negotiated());
    let mut out = vec![0u8; d.negotiated().max_reply_bytes()];
    let read = ReadIn {
        size: 100,
        ..Default::default()
    }
    .as_bytes()
    .to_vec();
    let r = run(&d, message(Opcode::Readdir as u32, 1, &read), &mut out).unwrap();
    // Each record: 24-byte header + "entry-N" (7 bytes) padded to 32.
    assert_eq!((r.error, r.body_len), (0, 96));
    let first = Dirent::read_from_prefix(&out).unwrap().0;
    assert_eq!((first.ino, first.off, first.namelen), (10, 1, 7));
    assert_eq!(&out[24..31], b"entry-0");
}

#[test]
fn dot_entries_come_first_and_offsets_stay_seekable() {
    let mut b = DispatcherBuilder::new(TinyFs::default(), negotiated());
    b.set_policy(Policy {
        add_dot_entries: true,
        ..Default::default()
    });
    let d = b.build();
    let mut out = vec![0u8; d.negotiated().max_reply_bytes()];
    let mut list = |offset: u64| {
        let read = ReadIn {
            size: 100,
            offset,
            ..Default::default()
        };
        let r = run(&d, message(Opcode::Readdir as u32, 1, read.as_bytes()), &mut out).unwrap();
        assert_eq!(r.error, 0);
        let mut records = Vec::new();
        let mut at = 0;
        while at < r.body_len {
            let dirent = Dirent::read_from_prefix(&out[at..]).unwrap().0;
            let name = &out[at + 24..at + 24 + dirent.namelen as usize];
            records.push((String::from_utf8(name.to_vec()).unwrap(), dirent.off));
            at += kmod_shim::abi::dirent_align(24 + dirent.namelen as usize);
        }
        records
    };
    let named = |v: &[(&str, u64)]| v.iter().map(|(n, o)| (n.to_string(), *o)).collect::<Vec<_>>();
    // The root's ".." is the root; the filesystem's offset N is N + 2.
    assert_eq!(list(0), named(&[(".", 1), ("..", 2), ("entry-0", 3)]));
    assert_eq!(list(1), named(&[("..", 2), ("entry-0", 3), ("entry-1", 4)]));
    assert_eq!(list(2), named(&[("entry-0", 3), ("entry-1", 4), ("entry-2", 5)]));
    assert_eq!(list(4), named(&[("entry-2", 5), ("entry-3", 6), ("entry-4", 7)]));
}

#[test]
fn readdir_through_readdirplus_takes_its_inode_numbers_and_keeps_no_lookup() {
    let mut b = DispatcherBuilder::new(TinyFs::default(), negotiated());
    b.set_policy(Policy {
        readdir_through_readdirplus: true,
        ..Default::default()
    });
    let d = b.build();
    let mut out = vec![0u8; d.negotiated().max_reply_bytes()];
    let read = ReadIn {
        size: 100,
        ..Default::default()
    };
    let r = run(&d, message(Opcode::Readdir as u32, 1, read.as_bytes()), &mut out).unwrap();
    // Three 32-byte records fit; READDIRPLUS's inode numbers.
    assert_eq!((r.error, r.body_len), (0, 96));
    let first = Dirent::read_from_prefix(&out).unwrap().0;
    assert_eq!((first.ino, first.off), (1010, 1));
    let fs = d.fs();
    assert_eq!(
        fs.lookups.load(Ordering::Relaxed),
        fs.forgets.load(Ordering::Relaxed),
        "every lookup taken for the listing given back"
    );
    assert_eq!(
        fs.lookups.load(Ordering::Relaxed),
        4,
        "three listed, one that did not fit"
    );
}

#[test]
fn garbage_never_panics() {
    let d = Dispatcher::new(TinyFs::default(), negotiated());
    let mut out = vec![0u8; d.negotiated().max_reply_bytes()];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..20_000 {
        let len = (next() % 300) as usize;
        let mut body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if next() % 4 == 0 {
            // Plausible names make handlers go deeper.
            body.extend_from_slice(b"f\0");
        }
        let opcode = (next() % 60) as u32;
        let mut msg = message(opcode, next() % 4, &body);
        if next() % 8 == 0 {
            // Lie about the length or the extensions.
            let k = (next() % 40) as usize;
            msg[k] = next() as u8;
        }
        if let Some(r) = run(&d, msg, &mut out) {
            assert!(r.error <= 0);
            assert!(r.body_len <= out.len());
            if r.error != 0 {
                assert_eq!(r.body_len, 0);
            }
        }
    }
}

/// A filesystem double for privilege clearing: one regular file (2)
/// owned by root, group 0; it records the flags its calls receive.
#[derive(Default)]
struct ModeFs {
    mode: std::sync::Mutex<u32>,
    /// `SetattrValid` bits of every setattr, in order.
    setattrs: std::sync::Mutex<Vec<u32>>,
    write_flags: std::sync::Mutex<Vec<u32>>,
    open_flags: std::sync::Mutex<Vec<u32>>,
}

impl ModeFs {
    fn with_mode(mode: u32) -> ModeFs {
        let fs = ModeFs::default();
        *fs.mode.lock().unwrap() = libc::S_IFREG | mode;
        fs
    }

    fn mode(&self) -> u32 {
        *self.mode.lock().unwrap() & 0o7777
    }

    fn stat(&self) -> libc::stat64 {
        let mut st = zeroed_stat();
        st.st_ino = 2;
        st.st_mode = *self.mode.lock().unwrap();
        st.st_nlink = 1;
        st
    }
}

impl FileSystem for ModeFs {
    type Inode = u64;
    type Handle = u64;

    fn getattr(&self, _: &Context, _: u64, _: Option<u64>) -> io::Result<(libc::stat64, Duration)> {
        Ok((self.stat(), Duration::from_secs(1)))
    }

    fn setattr(
        &self,
        ctx: &Context,
        _: u64,
        attr: libc::stat64,
        _: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(libc::stat64, Duration)> {
        self.setattrs.lock().unwrap().push(valid.bits());
        if valid.contains(SetattrValid::MODE) {
            // Only root may: the clearing must not be the caller's chmod.
            assert_eq!(ctx.uid, 0, "mode changed as uid {}", ctx.uid);
            *self.mode.lock().unwrap() = libc::S_IFREG | (attr.st_mode & 0o7777);
        }
        Ok((self.stat(), Duration::from_secs(1)))
    }

    fn open(
        &self,
        _: &Context,
        _: u64,
        _: u32,
        fuse_flags: u32,
    ) -> io::Result<(
        Option<u64>,
        fuse_backend_rs::api::filesystem::OpenOptions,
        Option<u32>,
    )> {
        self.open_flags.lock().unwrap().push(fuse_flags);
        Ok((
            Some(7),
            fuse_backend_rs::api::filesystem::OpenOptions::empty(),
            None,
        ))
    }

    fn write(
        &self,
        _: &Context,
        _: u64,
        _: u64,
        r: &mut dyn fuse_backend_rs::api::filesystem::ZeroCopyReader,
        size: u32,
        _: u64,
        _: Option<u64>,
        _: bool,
        _: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        self.write_flags.lock().unwrap().push(fuse_flags);
        let mut sink = vec![0u8; size as usize];
        r.read_exact(&mut sink)?;
        Ok(sink.len())
    }
}

fn killing_builder(mode: u32) -> DispatcherBuilder<ModeFs> {
    let mut n = negotiated();
    n.flags |= init_flags::HANDLE_KILLPRIV_V2;
    DispatcherBuilder::new(ModeFs::with_mode(mode), n)
}

fn killing(mode: u32) -> Dispatcher<ModeFs> {
    killing_builder(mode).build()
}

fn request_as(uid: u32, gid: u32, opcode: Opcode, body: &[u8]) -> Vec<u8> {
    Request::new(opcode)
        .unique(42)
        .nodeid(2)
        .caller(uid, gid, 4242)
        .bytes(body)
        .to_bytes()
}

fn send<F: FileSystem<Inode = u64, Handle = u64> + Sync>(d: &Dispatcher<F>, msg: Vec<u8>) -> Reply {
    let mut out = vec![0u8; d.negotiated().max_reply_bytes()];
    testkit::dispatch(d, msg, &mut out).unwrap()
}

fn write_body(write_flags: u32) -> Vec<u8> {
    let mut b = WriteIn {
        size: 3,
        write_flags,
        ..Default::default()
    }
    .as_bytes()
    .to_vec();
    b.extend_from_slice(b"abc");
    b
}

fn setattr_body(valid: u32) -> Vec<u8> {
    SetattrIn {
        valid,
        size: 1,
        uid: 5,
        ..Default::default()
    }
    .as_bytes()
    .to_vec()
}

#[test]
fn a_flagged_write_clears_the_bits_and_the_filesystem_never_sees_the_flag() {
    let d = killing(0o6666);
    let r = send(
        &d,
        request_as(
            1000,
            1000,
            Opcode::Write,
            &write_body(req_flags::WRITE_KILL_SUIDGID),
        ),
    );
    assert_eq!(r.error, 0);
    assert_eq!(d.fs().mode(), 0o0666, "not in group 0: both bits go");
    assert_eq!(*d.fs().write_flags.lock().unwrap(), vec![0]);
    // Root's writes (no flag) leave the bits alone.
    let d = killing(0o6666);
    send(&d, request_as(0, 0, Opcode::Write, &write_body(0)));
    assert_eq!(d.fs().mode(), 0o6666);
}

#[test]
fn a_bare_setattr_is_the_kernels_file_remove_privs() {
    let d = killing(0o6755);
    let r = send(&d, request_as(1000, 1000, Opcode::Setattr, &setattr_body(0)));
    assert_eq!(r.error, 0);
    assert_eq!(d.fs().mode(), 0o0755);
    let mut out = vec![0u8; d.negotiated().max_reply_bytes()];
    let msg = request_as(1000, 1000, Opcode::Setattr, &setattr_body(0));
    testkit::dispatch(&d, msg, &mut out).unwrap();
    let reply = AttrOut::read_from_bytes(&out[..104]).unwrap();
    assert_eq!(reply.attr.mode & 0o7777, 0o0755, "the reply carries the new mode");
}

#[test]
fn a_truncate_keeps_setgid_without_group_execute_for_group_members() {
    let truncate = fattr::SIZE | fattr::KILL_SUIDGID;
    // Primary group.
    let d = killing(0o6666);
    send(&d, request_as(1000, 0, Opcode::Setattr, &setattr_body(truncate)));
    assert_eq!(d.fs().mode(), 0o2666);
    let seen = d.fs().setattrs.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![SetattrValid::MODE.bits(), SetattrValid::SIZE.bits()],
        "cleared first, then truncated without the kill bit"
    );
    // Group 0 as a supplementary group, known from the group source.
    let mut b = killing_builder(0o2666);
    b.set_group_source(Box::new(GroupsZero));
    let d = b.build();
    send(
        &d,
        request_as(1000, 1000, Opcode::Setattr, &setattr_body(truncate)),
    );
    assert_eq!(d.fs().mode(), 0o2666);
    // Unknown groups: not a member.
    let d = killing(0o2666);
    send(
        &d,
        request_as(1000, 1000, Opcode::Setattr, &setattr_body(truncate)),
    );
    assert_eq!(d.fs().mode(), 0o0666);
    // Group-execute: a real setgid goes even for members.
    let d = killing(0o2676);
    send(&d, request_as(1000, 0, Opcode::Setattr, &setattr_body(truncate)));
    assert_eq!(d.fs().mode(), 0o0676);
}

/// Caller in group 0 through its supplementary groups.
#[derive(Debug)]
struct GroupsZero;

impl GroupSource for GroupsZero {
    fn groups(&self, _pid: u32) -> Option<Vec<u32>> {
        Some(vec![1000, 0])
    }
}

#[test]
fn chown_clears_setuid_for_everyone_and_setgid_by_privilege() {
    let chown = fattr::UID | fattr::KILL_SUIDGID;
    let d = killing(0o6666);
    send(&d, request_as(0, 0, Opcode::Setattr, &setattr_body(chown)));
    assert_eq!(d.fs().mode(), 0o2666, "root keeps setgid without group-execute");
    let d = killing(0o6666);
    send(&d, request_as(1000, 1000, Opcode::Setattr, &setattr_body(chown)));
    assert_eq!(d.fs().mode(), 0o0666);
    // A chmod or utimes is not a clearing.
    let d = killing(0o6666);
    send(
        &d,
        request_as(1000, 1000, Opcode::Setattr, &setattr_body(fattr::MTIME_NOW)),
    );
    assert_eq!(d.fs().mode(), 0o6666);
}

#[test]
fn open_with_o_trunc_and_the_flag_clears() {
    let d = killing(0o4755);
    let open = |flags: i32, open_flags| {
        OpenIn {
            flags: flags as u32,
            open_flags,
        }
        .as_bytes()
        .to_vec()
    };
    send(
        &d,
        request_as(
            1000,
            1000,
            Opcode::Open,
            &open(libc::O_WRONLY, req_flags::OPEN_KILL_SUIDGID),
        ),
    );
    assert_eq!(d.fs().mode(), 0o4755, "no O_TRUNC: nothing to clear");
    send(
        &d,
        request_as(
            1000,
            1000,
            Opcode::Open,
            &open(libc::O_WRONLY | libc::O_TRUNC, req_flags::OPEN_KILL_SUIDGID),
        ),
    );
    assert_eq!(d.fs().mode(), 0o0755);
    assert_eq!(
        *d.fs().open_flags.lock().unwrap(),
        vec![req_flags::OPEN_KILL_SUIDGID, 0]
    );
}

#[test]
fn without_the_feature_the_kernel_clears_and_flags_pass_through() {
    let d = Dispatcher::new(ModeFs::with_mode(0o6666), negotiated());
    send(
        &d,
        request_as(
            1000,
            1000,
            Opcode::Write,
            &write_body(req_flags::WRITE_KILL_SUIDGID),
        ),
    );
    send(&d, request_as(1000, 1000, Opcode::Setattr, &setattr_body(0)));
    assert_eq!(d.fs().mode(), 0o6666);
    assert_eq!(
        *d.fs().write_flags.lock().unwrap(),
        vec![req_flags::WRITE_KILL_SUIDGID]
    );
}

/// A filesystem double whose `create` records what it was asked and
/// answers an inode with `nlink` links.
#[derive(Default)]
struct CreatingFs {
    nlink: u64,
    asked: std::sync::Mutex<Vec<(u32, Vec<u8>)>>,
    released: AtomicU64,
    forgets: AtomicU64,
}

impl FileSystem for CreatingFs {
    type Inode = u64;
    type Handle = u64;

    fn create(
        &self,
        _: &Context,
        _: u64,
        name: &CStr,
        args: fuse_backend_rs::abi::fuse_abi::CreateIn,
    ) -> io::Result<(
        Entry,
        Option<u64>,
        fuse_backend_rs::abi::fuse_abi::OpenOptions,
        Option<u32>,
    )> {
        self.asked
            .lock()
            .unwrap()
            .push((args.flags, name.to_bytes().to_vec()));
        let mut attr = stat(5);
        attr.st_nlink = self.nlink;
        let entry = Entry {
            inode: 5,
            attr,
            ..Default::default()
        };
        Ok((
            entry,
            Some(9),
            fuse_backend_rs::abi::fuse_abi::OpenOptions::empty(),
            None,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn release(
        &self,
        _: &Context,
        _: u64,
        _: u32,
        _: u64,
        _: bool,
        _: bool,
        _: Option<u64>,
    ) -> io::Result<()> {
        self.released.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn forget(&self, _: &Context, _: u64, count: u64) {
        self.forgets.fetch_add(count, Ordering::Relaxed);
    }
}

fn tmpfile_request() -> Vec<u8> {
    let create = kmod_shim::abi::CreateIn {
        flags: (libc::O_RDWR | libc::O_TMPFILE) as u32,
        mode: libc::S_IFREG | 0o600,
        umask: 0o022,
        open_flags: 0,
    };
    let mut body = create.as_bytes().to_vec();
    body.extend_from_slice(b"/\0");
    message(Opcode::Tmpfile as u32, 1, &body)
}

#[test]
fn tmpfile_is_a_create_with_o_tmpfile_only_where_the_policy_says() {
    let d = Dispatcher::new(CreatingFs::default(), negotiated());
    let mut out = vec![0u8; d.negotiated().max_reply_bytes()];
    let r = testkit::dispatch(&d, tmpfile_request(), &mut out).unwrap();
    assert_eq!(r.error, -libc::ENOSYS, "not asked for: the kernel stops asking");
    assert!(d.fs().asked.lock().unwrap().is_empty());

    let mut b = DispatcherBuilder::new(CreatingFs::default(), negotiated());
    b.set_policy(Policy {
        tmpfile_through_create: true,
        ..Default::default()
    });
    let d = b.build();
    let r = testkit::dispatch(&d, tmpfile_request(), &mut out).unwrap();
    assert_eq!((r.error, r.body_len, r.lookup), (0, 128 + 16, Some(5)));
    let e = EntryOut::read_from_bytes(&out[..128]).unwrap();
    assert_eq!((e.nodeid, e.attr.nlink), (5, 0));
    assert_eq!(OpenOut::read_from_bytes(&out[128..144]).unwrap().fh, 9);
    let asked = d.fs().asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 1);
    let (flags, name) = &asked[0];
    assert_eq!(*flags as i32 & libc::O_TMPFILE, libc::O_TMPFILE);
    assert!(name.is_empty(), "the kernel's \"/\" is not passed on");
}

#[test]
fn a_tmpfile_answered_with_a_named_inode_is_refused_and_given_back() {
    let mut b = DispatcherBuilder::new(
        CreatingFs {
            nlink: 1,
            ..Default::default()
        },
        negotiated(),
    );
    b.set_policy(Policy {
        tmpfile_through_create: true,
        ..Default::default()
    });
    let d = b.build();
    let mut out = vec![0u8; d.negotiated().max_reply_bytes()];
    let r = testkit::dispatch(&d, tmpfile_request(), &mut out).unwrap();
    assert_eq!((r.error, r.lookup), (-libc::EIO, None));
    assert_eq!(d.fs().released.load(Ordering::Relaxed), 1, "its handle closed");
    assert_eq!(
        d.fs().forgets.load(Ordering::Relaxed),
        1,
        "its reference given back"
    );
}

/// A [`FileAttrs`] double: one flags word and one fsxattr for every inode,
/// and the calls it saw (`(what, inode, handle)`).
#[derive(Debug, Default)]
struct FlagsDouble {
    flags: std::sync::Mutex<u32>,
    xattr: std::sync::Mutex<kmod_shim::fileattr::FsXattr>,
    calls: std::sync::Mutex<Vec<(&'static str, u64, u64)>>,
}

impl FlagsDouble {
    fn saw(&self, what: &'static str, inode: u64, handle: u64) {
        self.calls.lock().unwrap().push((what, inode, handle));
    }
}

impl FileAttrs for Arc<FlagsDouble> {
    fn get_flags(&self, _: &Context, inode: u64, handle: u64) -> io::Result<u32> {
        self.saw("get_flags", inode, handle);
        Ok(*self.flags.lock().unwrap())
    }
    fn set_flags(&self, _: &Context, inode: u64, handle: u64, flags: u32) -> io::Result<()> {
        self.saw("set_flags", inode, handle);
        if flags & kmod_shim::fileattr::flags::IMMUTABLE != 0 {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        *self.flags.lock().unwrap() = flags;
        Ok(())
    }
    fn get_fsxattr(&self, _: &Context, inode: u64, handle: u64) -> io::Result<kmod_shim::fileattr::FsXattr> {
        self.saw("get_fsxattr", inode, handle);
        Ok(*self.xattr.lock().unwrap())
    }
    fn set_fsxattr(
        &self,
        _: &Context,
        inode: u64,
        handle: u64,
        attr: &kmod_shim::fileattr::FsXattr,
    ) -> io::Result<()> {
        self.saw("set_fsxattr", inode, handle);
        *self.xattr.lock().unwrap() = *attr;
        Ok(())
    }
}

/// An IOCTL of `cmd` on inode 2, handle 9, as `fuse_priv_ioctl` sends it.
fn ioctl_request(cmd: u32, input: &[u8], out_size: u32) -> Vec<u8> {
    let mut body = kmod_shim::abi::IoctlIn {
        fh: 9,
        flags: 0,
        cmd,
        arg: 0,
        in_size: input.len() as u32,
        out_size,
    }
    .as_bytes()
    .to_vec();
    body.extend_from_slice(input);
    message(Opcode::Ioctl as u32, 2, &body)
}

#[test]
fn file_attribute_ioctls_reach_the_hook_with_exact_sizes() {
    use kmod_shim::abi::IoctlOut;
    use kmod_shim::fileattr::{self as fa, FsXattr};
    let double = Arc::new(FlagsDouble::default());
    let mut b = DispatcherBuilder::new(TinyFs::default(), negotiated());
    b.set_file_attrs(Box::new(double.clone()));
    let d = b.build();
    let mut out = vec![0u8; d.negotiated().max_reply_bytes()];

    let set = fa::flags::NODUMP.to_ne_bytes();
    let r = run(&d, ioctl_request(fa::FS_IOC_SETFLAGS, &set, 0), &mut out).unwrap();
    assert_eq!((r.error, r.body_len), (0, 16));
    assert_eq!(IoctlOut::read_from_bytes(&out[..16]).unwrap().result, 0);
    let r = run(&d, ioctl_request(fa::FS_IOC_GETFLAGS, &[], 4), &mut out).unwrap();
    assert_eq!((r.error, r.body_len), (0, 20));
    assert_eq!(&out[16..20], &fa::flags::NODUMP.to_ne_bytes());
    // The 32-bit number is the same request.
    let r = run(&d, ioctl_request(fa::FS_IOC32_GETFLAGS, &[], 4), &mut out).unwrap();
    assert_eq!((r.error, r.body_len), (0, 20));

    let x = FsXattr {
        xflags: fa::xflags::NOATIME,
        projid: 5,
        ..Default::default()
    };
    let r = run(
        &d,
        ioctl_request(fa::FS_IOC_FSSETXATTR, x.as_bytes(), 0),
        &mut out,
    )
    .unwrap();
    assert_eq!((r.error, r.body_len), (0, 16));
    let r = run(&d, ioctl_request(fa::FS_IOC_FSGETXATTR, &[], 28), &mut out).unwrap();
    assert_eq!((r.error, r.body_len), (0, 16 + 28));
    assert_eq!(FsXattr::read_from_bytes(&out[16..44]).unwrap(), x);

    // The hook's errno is the caller's.
    let immutable = fa::flags::IMMUTABLE.to_ne_bytes();
    let r = run(&d, ioctl_request(fa::FS_IOC_SETFLAGS, &immutable, 0), &mut out).unwrap();
    assert_eq!(r.error, -libc::EPERM);

    let seen: Vec<_> = double.calls.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            ("set_flags", 2, 9),
            ("get_flags", 2, 9),
            ("get_flags", 2, 9),
            ("set_fsxattr", 2, 9),
            ("get_fsxattr", 2, 9),
            ("set_flags", 2, 9),
        ]
    );

    // Sizes other than the kernel's never reach the hook.
    for (cmd, input, out_size) in [
        (fa::FS_IOC_GETFLAGS, &[][..], 8),
        (fa::FS_IOC_SETFLAGS, &[0u8; 8][..], 0),
        (fa::FS_IOC_FSGETXATTR, &[][..], 4),
        (fa::FS_IOC_FSSETXATTR, &[0u8; 4][..], 0),
    ] {
        let r = run(&d, ioctl_request(cmd, input, out_size), &mut out).unwrap();
        assert_eq!(r.error, -libc::EINVAL, "{cmd:#x}");
    }
    assert_eq!(double.calls.lock().unwrap().len(), seen.len());
    // Other commands still go to the filesystem (TinyFs: ENOTTY), and an
    // unrestricted ioctl is refused before anything.
    let r = run(&d, ioctl_request(0x5401, &[], 0), &mut out).unwrap();
    assert_eq!(r.error, -libc::ENOTTY);
    let mut unrestricted = kmod_shim::abi::IoctlIn {
        flags: req_flags::IOCTL_UNRESTRICTED,
        cmd: fa::FS_IOC_GETFLAGS,
        out_size: 4,
        ..Default::default()
    }
    .as_bytes()
    .to_vec();
    unrestricted.truncate(32);
    let r = run(&d, message(Opcode::Ioctl as u32, 2, &unrestricted), &mut out).unwrap();
    assert_eq!(r.error, -libc::ENOSYS);
    assert_eq!(double.calls.lock().unwrap().len(), seen.len());
}

#[test]
fn without_a_hook_file_attribute_ioctls_go_to_the_filesystem() {
    use kmod_shim::fileattr as fa;
    let d = Dispatcher::new(TinyFs::default(), negotiated());
    let mut out = vec![0u8; d.negotiated().max_reply_bytes()];
    // TinyFs keeps fuse-backend-rs's default ioctl: ENOTTY, as before.
    let r = run(&d, ioctl_request(fa::FS_IOC_GETFLAGS, &[], 4), &mut out).unwrap();
    assert_eq!(r.error, -libc::ENOTTY);
    let r = run(&d, ioctl_request(fa::FS_IOC_SETFLAGS, &[0; 4], 0), &mut out).unwrap();
    assert_eq!(r.error, -libc::ENOTTY);
}

/// The bodies of the requests that create an inode, and of LINK and
/// RENAME2, as the kernel sends them (names after the fixed part).
fn creation_requests() -> Vec<(Opcode, Vec<u8>)> {
    use kmod_shim::abi::{CreateIn, MkdirIn, MknodIn};
    let with = |fixed: &[u8], names: &[u8]| [fixed, names].concat();
    let mkdir = MkdirIn {
        mode: 0o755,
        umask: 0,
    };
    let mknod = MknodIn {
        mode: libc::S_IFIFO | 0o644,
        ..Default::default()
    };
    let create = CreateIn {
        flags: libc::O_RDWR as u32,
        mode: 0o644,
        ..Default::default()
    };
    vec![
        (Opcode::Mkdir, with(mkdir.as_bytes(), b"d\0")),
        (Opcode::Mknod, with(mknod.as_bytes(), b"p\0")),
        (Opcode::Symlink, b"s\0target\0".to_vec()),
        (Opcode::Create, with(create.as_bytes(), b"c\0")),
        (Opcode::Tmpfile, with(create.as_bytes(), b"\0")),
    ]
}

#[test]
fn creations_by_a_caller_without_ids_are_refused_eoverflow() {
    use kmod_shim::abi::{LinkIn, Rename2In, INVALID_UIDGID as NONE};
    let d = Dispatcher::new(TinyFs::default(), negotiated());
    let on_dir = |uid: u32, gid: u32, op: Opcode, body: &[u8]| {
        Request::new(op)
            .unique(42)
            .nodeid(1)
            .caller(uid, gid, 4242)
            .bytes(body)
            .to_bytes()
    };
    for (op, body) in creation_requests() {
        // TinyFs makes nothing: ENOSYS is the filesystem's answer, so the
        // request reached it.
        for (uid, gid) in [(1000, 1000), (0, 0)] {
            let r = send(&d, on_dir(uid, gid, op, &body));
            assert_eq!(
                r.error,
                -libc::ENOSYS,
                "{op:?} as {uid}:{gid} reaches the filesystem"
            );
        }
        for (uid, gid) in [(NONE, NONE), (NONE, 1000), (1000, NONE)] {
            let r = send(&d, on_dir(uid, gid, op, &body));
            assert_eq!(r.error, -libc::EOVERFLOW, "{op:?} as {uid}:{gid}");
        }
    }
    // RENAME2 leaves a new inode only with RENAME_WHITEOUT.
    let rename = |flags: u32| {
        let fixed = Rename2In {
            newdir: 1,
            flags,
            padding: 0,
        };
        [fixed.as_bytes(), b"f\0g\0"].concat()
    };
    let r = send(
        &d,
        on_dir(NONE, NONE, Opcode::Rename2, &rename(libc::RENAME_WHITEOUT)),
    );
    assert_eq!(r.error, -libc::EOVERFLOW, "a whiteout needs an owner");
    let r = send(&d, on_dir(NONE, NONE, Opcode::Rename2, &rename(0)));
    assert_eq!(r.error, -libc::ENOSYS, "a plain rename creates nothing");
    // The kernel sends LINK, and everything that creates no inode, without
    // a caller under FUSE_ALLOW_IDMAP: served as usual.
    let link = [LinkIn { oldnodeid: 2 }.as_bytes(), b"l\0"].concat();
    let r = send(&d, on_dir(NONE, NONE, Opcode::Link, &link));
    assert_eq!(r.error, -libc::ENOSYS);
    let r = send(&d, on_dir(NONE, NONE, Opcode::Lookup, b"f\0"));
    assert_eq!(r.error, 0);
    d.reply_lost(&r);
    let getattr = GetattrIn::default();
    let r = send(&d, on_dir(NONE, NONE, Opcode::Getattr, getattr.as_bytes()));
    assert_eq!(r.error, 0);
}

#[test]
fn a_caller_without_ids_keeps_no_setgid_bit_and_no_chown_privilege() {
    use kmod_shim::abi::INVALID_UIDGID as NONE;
    let truncate = fattr::SIZE | fattr::KILL_SUIDGID;
    // Everybody is in group 0 by the group source, but a caller the kernel
    // did not name is in no group.
    let mut b = killing_builder(0o2666);
    b.set_group_source(Box::new(GroupsZero));
    let d = b.build();
    send(
        &d,
        request_as(NONE, NONE, Opcode::Setattr, &setattr_body(truncate)),
    );
    assert_eq!(d.fs().mode(), 0o0666);
    let chown = fattr::UID | fattr::KILL_SUIDGID;
    let d = killing(0o6666);
    send(&d, request_as(NONE, NONE, Opcode::Setattr, &setattr_body(chown)));
    assert_eq!(
        d.fs().mode(),
        0o0666,
        "not root: setgid without group-execute goes too"
    );
}
