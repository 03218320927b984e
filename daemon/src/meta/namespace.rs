//! [`Namespace`]: what a client needs from the metadata layer, whether the
//! transactions run in its own process ([`Meta`]) or in an `xfused meta`
//! service reached over the network ([`crate::net::RemoteMeta`]).
//!
//! The API is written once, in the [`namespace_api!`] list below. From it
//! come the trait, its implementation by [`Meta`], the messages that carry
//! each method over the network ([`Call`], [`Answer`]), the service's
//! dispatch ([`Call::run`]) and the client's implementation; nothing about
//! a method is written twice.
//!
//! # The contract
//!
//! Every method is one metadata transaction (see [`Meta`] for each one's
//! POSIX rules): it happens entirely or not at all, and whatever runs
//! concurrently on any client sees it so. Errors are [`MetaError::Errno`]
//! for the caller (as a local filesystem would answer), anything else for
//! the engine or the network. Open-file sessions (`open`, `mknod` with
//! `open`) belong to this client, end with `release`, and die with its
//! lease if it stops renewing it (`heartbeat`). A [`Caller`] states who
//! asks; through a service, its permissions are always checked there,
//! whatever the client wants.

use super::schema::InodeRec;
use super::{Caller, DirItem, Meta, MetaError, Reclaim, SetAttr, Usage};

/// Declares the namespace API once. Each entry is
/// `KIND Variant = fn name(arg: Type [=> WireType], ...) -> Ret;` where
/// `=> WireType` is the owned form of a borrowed argument and KIND says
/// what a client may do after losing a reply:
/// - `read`: no effect; send it again;
/// - `change`: one transaction, run exactly once ([`Meta::exactly_once`]):
///   send it again with the same number;
/// - `once`: several transactions (ending a client): not again.
macro_rules! namespace_api {
    (
        $(
            $(#[doc = $doc:literal])*
            $kind:ident $Variant:ident = fn $name:ident ( $( $arg:ident : $aty:ty $(=> $wty:ty)? ),* ) -> $ret:ty;
        )*
    ) => {
        /// One client's view of the namespace; see the module docs for the
        /// contract every method keeps.
        pub trait Namespace: Send + Sync + std::fmt::Debug {
            /// This client's id (its sessions and lease are under it).
            fn client_id(&self) -> u64;
            $(
                $(#[doc = $doc])*
                #[allow(clippy::too_many_arguments)]
                fn $name(&self, $($arg: $aty),*) -> Result<$ret, MetaError>;
            )*
            /// `mknod` of a directory.
            fn mkdir(&self, caller: &Caller, parent: u64, name: &[u8], mode: u32) -> Result<(u64, InodeRec), MetaError> {
                let (ino, rec, _) = self.mknod(caller, parent, name, libc::S_IFDIR | (mode & 0o7777), 0, &[], false)?;
                Ok((ino, rec))
            }
            /// `mknod` of a symlink to `target`.
            fn symlink(&self, caller: &Caller, parent: u64, name: &[u8], target: &[u8]) -> Result<(u64, InodeRec), MetaError> {
                let (ino, rec, _) = self.mknod(caller, parent, name, libc::S_IFLNK | 0o777, 0, target, false)?;
                Ok((ino, rec))
            }
        }

        impl Namespace for Meta {
            fn client_id(&self) -> u64 {
                Meta::client_id(self)
            }
            $(
                #[allow(clippy::too_many_arguments)]
                fn $name(&self, $($arg: $aty),*) -> Result<$ret, MetaError> {
                    Meta::$name(self, $($arg),*)
                }
            )*
        }

        /// A [`Namespace`] method and its arguments, as sent to a service.
        #[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        #[allow(missing_docs)]
        pub enum Call {
            $( $Variant { $($arg: namespace_api!(@wire $aty $(, $wty)?)),* }, )*
        }

        /// What a [`Call`] returned.
        #[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        #[allow(missing_docs)]
        pub enum Answer {
            $( $Variant($ret), )*
        }

        impl Call {
            /// Whether sending it again after a lost reply is harmless.
            pub fn idempotent(&self) -> bool {
                match self {
                    $( Call::$Variant { .. } => namespace_api!(@idempotent $kind), )*
                }
            }

            /// Whether it is a change a service runs exactly once.
            pub fn is_change(&self) -> bool {
                match self {
                    $( Call::$Variant { .. } => namespace_api!(@change $kind), )*
                }
            }

            /// How to record this call's value as its outcome: the
            /// `Answer` it makes, encoded, unless `Answer::needs_record`
            /// says a resend finds what it needs without.
            pub fn recorder(&self) -> super::Recorder {
                match self {
                    $( Call::$Variant { .. } => |value| {
                        let Some(v) = value.downcast_ref::<$ret>() else {
                            return super::Record::Mistyped;
                        };
                        let answer = Answer::$Variant(v.clone());
                        if !answer.needs_record() {
                            return super::Record::Unneeded;
                        }
                        super::Record::Outcome(postcard::to_allocvec(&answer).expect("answers encode"))
                    }, )*
                }
            }

            /// The answer of this call done before, from its recorded
            /// outcome.
            pub fn done_answer(&self, outcome: &super::Outcome) -> Result<Answer, MetaError> {
                let answer: Answer = postcard::from_bytes(&outcome.0)
                    .map_err(|e| MetaError::Corrupt(format!("a recorded outcome: {e}")))?;
                match (self, &answer) {
                    $( (Call::$Variant { .. }, Answer::$Variant(_)) => Ok(answer), )*
                    #[allow(unreachable_patterns)]
                    _ => Err(MetaError::Corrupt(format!("{} recorded as {answer:?}", self.name()))),
                }
            }

            /// The method's name, for logs.
            pub fn name(&self) -> &'static str {
                match self {
                    $( Call::$Variant { .. } => stringify!($name), )*
                }
            }

            /// Runs the call on `ns`.
            pub fn run(self, ns: &dyn Namespace) -> Result<Answer, MetaError> {
                match self {
                    $( Call::$Variant { $($arg),* } => Ok(Answer::$Variant(ns.$name($(namespace_api!(@lend $arg $(, $wty)?)),*)?)), )*
                }
            }
        }

        impl Answer {
            /// Whether a change that answered this must record it for a
            /// resend (after a lost reply) to answer the same. Two need
            /// not, and skip the record's write and its later deletion on
            /// the two calls every open file makes:
            /// - an open: its session, under a handle made from the
            ///   change's number, shows it was done ([`Meta::open`]);
            /// - a close that deleted no file: run again, it finds its
            ///   session gone and answers `None` again, and can delete
            ///   nothing, as a file without links exists only while a
            ///   session holds it. A close that deleted a file is recorded,
            ///   so its data is still handed back.
            fn needs_record(&self) -> bool {
                !matches!(self, Answer::Open(_) | Answer::Release(None))
            }
        }

        impl Namespace for crate::net::RemoteMeta {
            fn client_id(&self) -> u64 {
                self.session_client()
            }
            $(
                #[allow(clippy::too_many_arguments)]
                fn $name(&self, $($arg: $aty),*) -> Result<$ret, MetaError> {
                    match self.invoke(Call::$Variant { $($arg: namespace_api!(@own $arg $(, $wty)?)),* })? {
                        Answer::$Variant(v) => Ok(v),
                        #[allow(unreachable_patterns)]
                        other => Err(MetaError::Corrupt(format!(
                            "the metadata service answered {} with {other:?}", stringify!($name)
                        ))),
                    }
                }
            )*
        }
    };
    (@wire $aty:ty) => { $aty };
    (@wire $aty:ty, $wty:ty) => { $wty };
    (@lend $arg:ident) => { $arg };
    (@lend $arg:ident, $wty:ty) => { &$arg };
    (@own $arg:ident) => { $arg };
    (@own $arg:ident, $wty:ty) => { $arg.to_owned() };
    (@idempotent read) => { true };
    (@idempotent change) => { false };
    (@idempotent once) => { false };
    (@change read) => { false };
    (@change change) => { true };
    (@change once) => { false };
}

namespace_api! {
    /// Renews this client's lease.
    read Heartbeat = fn heartbeat() -> ();
    /// Ends this client: closes its sessions (returning what that deleted).
    once CloseClient = fn close_client() -> Vec<Reclaim>;
    /// Closes the sessions of clients whose lease expired.
    once ReapExpired = fn reap_expired() -> Vec<Reclaim>;
    /// The entry `name` in `parent`: its inode number and record.
    read Lookup = fn lookup(caller: &Caller => Caller, parent: u64, name: &[u8] => Vec<u8>) -> (u64, InodeRec);
    /// An inode's record.
    read Getattr = fn getattr(ino: u64) -> InodeRec;
    /// `access(2)`: whether `caller` may `mask` (R/W/X bits) the inode.
    read Access = fn access(caller: &Caller => Caller, ino: u64, mask: u32) -> ();
    /// Changes attributes: the new record and, if the size changed, the old size.
    change Setattr = fn setattr(caller: &Caller => Caller, ino: u64, set: &SetAttr => SetAttr) -> (InodeRec, Option<u64>);
    /// Creates an inode of any type (`mode`'s `S_IFMT`) named `name` in
    /// `parent`; with `open`, also opens it (a regular file) for writing.
    change Mknod = fn mknod(caller: &Caller => Caller, parent: u64, name: &[u8] => Vec<u8>, mode: u32, rdev: u32, target: &[u8] => Vec<u8>, open: bool) -> (u64, InodeRec, Option<u64>);
    /// A symlink's target.
    read Readlink = fn readlink(ino: u64) -> Vec<u8>;
    /// A new entry `newname` in `newparent` for the inode.
    change Link = fn link(caller: &Caller => Caller, ino: u64, newparent: u64, newname: &[u8] => Vec<u8>) -> InodeRec;
    /// Removes a non-directory entry; returns the inode if that deleted it.
    change Unlink = fn unlink(caller: &Caller => Caller, parent: u64, name: &[u8] => Vec<u8>) -> Option<Reclaim>;
    /// Removes an empty directory.
    change Rmdir = fn rmdir(caller: &Caller => Caller, parent: u64, name: &[u8] => Vec<u8>) -> ();
    /// `renameat2(2)` with `flags` ([`super::rename_flags`]).
    change Rename = fn rename(caller: &Caller => Caller, olddir: u64, oldname: &[u8] => Vec<u8>, newdir: u64, newname: &[u8] => Vec<u8>, flags: u32) -> Option<Reclaim>;
    /// Opens a file: a session of this client, and the record.
    change Open = fn open(caller: &Caller => Caller, ino: u64, read: bool, write: bool) -> (InodeRec, u64);
    /// Ends a session; returns the inode if that deleted it.
    change Release = fn release(ino: u64, handle: u64) -> Option<Reclaim>;
    /// Data was written up to `end` through this client's session
    /// `handle`: grows the size, updates mtime.
    change NoteWrite = fn note_write(ino: u64, handle: u64, end: u64) -> InodeRec;
    /// Whether `caller` may list the directory; its record if so.
    read Opendir = fn opendir(caller: &Caller => Caller, ino: u64) -> InodeRec;
    /// Up to `limit` entries after cookie `after` (a service may return
    /// fewer to fit its frames; an empty answer is the end).
    read Readdir = fn readdir(ino: u64, after: u64, limit: usize) -> Vec<DirItem>;
    /// Sets an extended attribute ([`super::xattr_flags`]).
    change Setxattr = fn setxattr(caller: &Caller => Caller, ino: u64, name: &[u8] => Vec<u8>, value: &[u8] => Vec<u8>, flags: u32) -> ();
    /// An extended attribute's value.
    read Getxattr = fn getxattr(ino: u64, name: &[u8] => Vec<u8>) -> Vec<u8>;
    /// The names of the inode's extended attributes.
    read Listxattr = fn listxattr(ino: u64) -> Vec<Vec<u8>>;
    /// Removes an extended attribute.
    change Removexattr = fn removexattr(caller: &Caller => Caller, ino: u64, name: &[u8] => Vec<u8>) -> ();
    /// Inodes and bytes in use.
    read Usage = fn usage() -> Usage;
    /// Records an access in the inode's atime (relatime's rule unless
    /// `strict`); only the atime changes.
    change TouchAtime = fn touch_atime(ino: u64, strict: bool) -> InodeRec;
    /// Makes every change acknowledged so far durable, wherever the
    /// engine runs (fsync, fsyncdir). Safe to send again.
    read Sync = fn sync() -> ();
    /// Creates an opened regular file with no name (`O_TMPFILE`), which
    /// Link may name once; returns it and its session handle.
    change Tmpfile = fn tmpfile(caller: &Caller => Caller, parent: u64, mode: u32) -> (u64, InodeRec, u64);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::meta::mem::MemEngine;
    use crate::meta::{SetAttr, SystemClock};

    /// A recorder for tests that never replay.
    fn any(_: &dyn std::any::Any) -> crate::meta::Record {
        crate::meta::Record::Outcome(Vec::new())
    }

    /// A sync sent to a service runs the service's engine's sync: an
    /// fsync through a `tcp://` mount waits for the service's journal.
    #[test]
    fn a_sync_call_syncs_the_engine_it_runs_on() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Arc::new(
            crate::meta::embedded::EmbeddedEngine::open(
                dir.path(),
                crate::meta::embedded::Durability::default(),
            )
            .unwrap(),
        );
        let meta = Meta::connect(engine.clone(), Default::default(), Arc::new(SystemClock)).unwrap();
        meta.mkdir(&Caller::ROOT, 1, b"d", 0o755).unwrap();
        assert!(!engine.all_synced());
        assert!(Call::Sync {}.idempotent(), "a lost sync reply may be sent again");
        Call::Sync {}.run(&meta).unwrap();
        assert!(engine.all_synced());
    }

    /// Every change, run twice with one number: the second time answers
    /// what the first did, from the record, and changes nothing.
    #[test]
    fn every_change_runs_once_per_number() {
        let engine: Arc<dyn crate::meta::kv::KvEngine> = Arc::new(MemEngine::new());
        let meta = Meta::connect(engine.clone(), Default::default(), Arc::new(SystemClock)).unwrap();
        let root = Caller::ROOT;
        let name = |n: &str| n.as_bytes().to_vec();
        let mut seq = 0;
        let mut twice = |call: Call| -> Answer {
            seq += 1;
            let first = meta
                .exactly_once(seq, false, 0..0, call.recorder(), |m| call.clone().run(m))
                .unwrap();
            let again = match meta.exactly_once(seq, true, 0..0, call.recorder(), |m| call.clone().run(m)) {
                Err(MetaError::Done(outcome)) => call.done_answer(&outcome).unwrap(),
                // Not recorded: found done by its own writes (checked
                // below: nothing ran twice).
                Ok(answer) if !answer.needs_record() => answer,
                other => panic!("{} ran twice: {other:?}", call.name()),
            };
            assert_eq!(first, again, "{}", call.name());
            first
        };
        let mknod = |n: &str, mode: u32, open: bool| Call::Mknod {
            caller: root.clone(),
            parent: 1,
            name: name(n),
            mode,
            rdev: 0,
            target: Vec::new(),
            open,
        };
        let Answer::Mknod((f, _, Some(h))) = twice(mknod("f", libc::S_IFREG | 0o644, true)) else {
            panic!("mknod")
        };
        twice(mknod("d", libc::S_IFDIR | 0o755, false));
        twice(Call::Setattr {
            caller: root.clone(),
            ino: f,
            set: SetAttr {
                size: Some(5),
                ..SetAttr::default()
            },
        });
        twice(Call::NoteWrite {
            ino: f,
            handle: h,
            end: 10,
        });
        twice(Call::Link {
            caller: root.clone(),
            ino: f,
            newparent: 1,
            newname: name("g"),
        });
        twice(Call::Rename {
            caller: root.clone(),
            olddir: 1,
            oldname: name("g"),
            newdir: 1,
            newname: name("h"),
            flags: 0,
        });
        twice(Call::Unlink {
            caller: root.clone(),
            parent: 1,
            name: name("h"),
        });
        twice(Call::Setxattr {
            caller: root.clone(),
            ino: f,
            name: name("user.a"),
            value: name("v"),
            flags: 0,
        });
        twice(Call::Removexattr {
            caller: root.clone(),
            ino: f,
            name: name("user.a"),
        });
        let Answer::Open((_, h2)) = twice(Call::Open {
            caller: root.clone(),
            ino: f,
            read: true,
            write: false,
        }) else {
            panic!("open")
        };
        twice(Call::Release { ino: f, handle: h2 });
        twice(Call::Rmdir {
            caller: root.clone(),
            parent: 1,
            name: name("d"),
        });
        let call = mknod("x", libc::S_IFREG | 0o644, false);
        assert!(call.is_change() && !call.idempotent());
        // Nothing ran twice: one file of 10 bytes with one link, one
        // session (the mknod's), and the namespace is sound.
        let rec = meta.getattr(f).unwrap();
        assert_eq!((rec.size, rec.nlink), (10, 1));
        assert!(crate::meta::check::check_namespace(engine.as_ref())
            .unwrap()
            .is_empty());
        // Outcomes go with the client.
        meta.close_client().unwrap();
        let prefix = crate::meta::schema::done_prefix(meta.client_id());
        let left = engine
            .scan(&prefix, &crate::meta::schema::prefix_end(&prefix), 10)
            .unwrap();
        assert!(left.is_empty(), "{} outcomes left", left.len());
    }

    /// An open and a close that deletes nothing record no outcome, yet a
    /// resend of either (its reply lost) answers what the first run did
    /// and changes nothing: the open finds its session under the handle
    /// its number made; the close finds its session gone. A resend of a
    /// change that never arrived runs it.
    #[test]
    fn an_open_and_a_close_sent_again_run_once_without_a_record() {
        let engine: Arc<dyn crate::meta::kv::KvEngine> = Arc::new(MemEngine::new());
        let meta = Meta::connect(engine.clone(), Default::default(), Arc::new(SystemClock)).unwrap();
        let (f, _) = meta
            .mknod(&Caller::ROOT, 1, b"f", libc::S_IFREG | 0o644, 0, &[], false)
            .map(|(ino, rec, _)| (ino, rec))
            .unwrap();
        let run = |seq: u64, resent: bool, call: &Call| {
            meta.exactly_once(seq, resent, 0..0, call.recorder(), |m| call.clone().run(m))
        };
        let sessions = || {
            let prefix = crate::meta::schema::open_prefix(f);
            let end = crate::meta::schema::prefix_end(&prefix);
            engine.scan(&prefix, &end, 100).unwrap().len()
        };
        let recorded = |seq: u64| {
            engine
                .get(&crate::meta::schema::done_key(meta.client_id(), seq))
                .unwrap()
                .is_some()
        };
        let open = Call::Open {
            caller: Caller::ROOT,
            ino: f,
            read: true,
            write: true,
        };
        // Sent for the first time as a resend (the first sending was lost
        // on the way): it runs.
        let Ok(Answer::Open((_, h))) = run(7, true, &open) else {
            panic!("open")
        };
        assert_eq!(h, crate::meta::ops::SEQ_HANDLE | 7);
        let Ok(Answer::Open((_, again))) = run(7, true, &open) else {
            panic!("open again")
        };
        assert_eq!((again, sessions(), recorded(7)), (h, 1, false));
        // A resend answers from the session even if the open would now
        // be refused: the caller was allowed when it ran.
        let alice = Caller {
            uid: 1000,
            gid: 1000,
            groups: Vec::new(),
            check: true,
            umask: 0,
        };
        let by_alice = Call::Open {
            caller: alice,
            ino: f,
            read: true,
            write: false,
        };
        let Ok(Answer::Open((_, ha))) = run(6, false, &by_alice) else {
            panic!("open by alice")
        };
        let none = SetAttr {
            mode: Some(0),
            ..SetAttr::default()
        };
        meta.setattr(&Caller::ROOT, f, &none).unwrap();
        assert!(matches!(run(6, true, &by_alice), Ok(Answer::Open((_, again))) if again == ha));
        meta.release(f, ha).unwrap();
        // Its session works: a write through it.
        meta.note_write(f, h, 3).unwrap();
        let release = Call::Release { ino: f, handle: h };
        assert_eq!(run(8, false, &release), Ok(Answer::Release(None)));
        assert_eq!(run(8, true, &release), Ok(Answer::Release(None)));
        assert_eq!((sessions(), recorded(8)), (0, false));
        assert_eq!(meta.getattr(f).unwrap().nlink, 1, "the file stays");

        // A close that deletes the file records what it freed, and a
        // resend hands that back rather than nothing.
        let Ok(Answer::Open((_, h))) = run(9, false, &open) else {
            panic!("open")
        };
        meta.unlink(&Caller::ROOT, 1, b"f").unwrap();
        let release = Call::Release { ino: f, handle: h };
        let Ok(Answer::Release(Some(freed))) = run(10, false, &release) else {
            panic!("the last close frees the file")
        };
        assert!(recorded(10));
        match run(10, true, &release) {
            Err(MetaError::Done(outcome)) => {
                assert_eq!(release.done_answer(&outcome), Ok(Answer::Release(Some(freed))))
            }
            other => panic!("the close ran twice: {other:?}"),
        }
        assert!(crate::meta::check::check_namespace(engine.as_ref())
            .unwrap()
            .is_empty());
    }

    /// A change deletes the outcomes it is told the client will not need.
    #[test]
    fn outcomes_are_forgotten_when_told() {
        let engine: Arc<dyn crate::meta::kv::KvEngine> = Arc::new(MemEngine::new());
        let meta = Meta::connect(engine.clone(), Default::default(), Arc::new(SystemClock)).unwrap();
        let mkdir = |n: &'static str| move |m: &Meta| m.mkdir(&Caller::ROOT, 1, n.as_bytes(), 0o755);
        meta.exactly_once(1, false, 0..0, any, mkdir("a")).unwrap();
        meta.exactly_once(2, false, 0..0, any, mkdir("b")).unwrap();
        meta.exactly_once(3, false, 0..0, any, mkdir("c")).unwrap();
        meta.exactly_once(4, false, 1..3, any, mkdir("d")).unwrap();
        let kept: Vec<u64> = (1..=4)
            .filter(|seq| {
                engine
                    .get(&crate::meta::schema::done_key(meta.client_id(), *seq))
                    .unwrap()
                    .is_some()
            })
            .collect();
        assert_eq!(kept, vec![3, 4]);
    }

    /// A failed change records nothing: sent again, it runs again.
    #[test]
    fn a_failed_change_is_not_recorded() {
        let engine: Arc<dyn crate::meta::kv::KvEngine> = Arc::new(MemEngine::new());
        let meta = Meta::connect(engine, Default::default(), Arc::new(SystemClock)).unwrap();
        let unlink = |m: &Meta| m.unlink(&Caller::ROOT, 1, b"nothing");
        assert_eq!(
            meta.exactly_once(1, false, 0..0, any, unlink),
            Err(MetaError::Errno(libc::ENOENT))
        );
        meta.mknod(&Caller::ROOT, 1, b"nothing", libc::S_IFREG | 0o644, 0, &[], false)
            .unwrap();
        assert!(meta.exactly_once(1, true, 0..0, any, unlink).is_ok());
    }
}
