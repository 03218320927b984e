//! [`Namespace`]: what a client needs from the metadata layer, whether the
//! transactions run in its own process ([`Meta`]) or in an `xfused meta`
//! service reached over TCP ([`crate::net::RemoteMeta`]).

use super::schema::InodeRec;
use super::{Caller, DirItem, Meta, MetaError, Reclaim, SetAttr, Usage};

/// One client's view of the namespace. Every method is one metadata
/// transaction (see [`Meta`] for each one's POSIX contract); open-file
/// sessions belong to this client and die with its lease.
#[allow(missing_docs)]
pub trait Namespace: Send + Sync + std::fmt::Debug {
    /// This client's id.
    fn client_id(&self) -> u64;
    fn heartbeat(&self) -> Result<(), MetaError>;
    fn close_client(&self) -> Result<Vec<Reclaim>, MetaError>;
    fn reap_expired(&self) -> Result<Vec<Reclaim>, MetaError>;
    fn lookup(&self, caller: &Caller, parent: u64, name: &[u8]) -> Result<(u64, InodeRec), MetaError>;
    fn getattr(&self, ino: u64) -> Result<InodeRec, MetaError>;
    fn access(&self, caller: &Caller, ino: u64, mask: u32) -> Result<(), MetaError>;
    fn setattr(&self, caller: &Caller, ino: u64, set: &SetAttr)
        -> Result<(InodeRec, Option<u64>), MetaError>;
    #[allow(clippy::too_many_arguments)]
    fn mknod(
        &self,
        caller: &Caller,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u32,
        target: &[u8],
        open: bool,
    ) -> Result<(u64, InodeRec, Option<u64>), MetaError>;
    fn mkdir(
        &self,
        caller: &Caller,
        parent: u64,
        name: &[u8],
        mode: u32,
    ) -> Result<(u64, InodeRec), MetaError> {
        let (ino, rec, _) = self.mknod(
            caller,
            parent,
            name,
            libc::S_IFDIR | (mode & 0o7777),
            0,
            &[],
            false,
        )?;
        Ok((ino, rec))
    }
    fn symlink(
        &self,
        caller: &Caller,
        parent: u64,
        name: &[u8],
        target: &[u8],
    ) -> Result<(u64, InodeRec), MetaError> {
        let (ino, rec, _) = self.mknod(caller, parent, name, libc::S_IFLNK | 0o777, 0, target, false)?;
        Ok((ino, rec))
    }
    fn readlink(&self, ino: u64) -> Result<Vec<u8>, MetaError>;
    fn link(&self, caller: &Caller, ino: u64, newparent: u64, newname: &[u8]) -> Result<InodeRec, MetaError>;
    fn unlink(&self, caller: &Caller, parent: u64, name: &[u8]) -> Result<Option<Reclaim>, MetaError>;
    fn rmdir(&self, caller: &Caller, parent: u64, name: &[u8]) -> Result<(), MetaError>;
    fn rename(
        &self,
        caller: &Caller,
        olddir: u64,
        oldname: &[u8],
        newdir: u64,
        newname: &[u8],
        flags: u32,
    ) -> Result<Option<Reclaim>, MetaError>;
    fn open(&self, caller: &Caller, ino: u64, read: bool, write: bool) -> Result<(InodeRec, u64), MetaError>;
    fn release(&self, ino: u64, handle: u64) -> Result<Option<Reclaim>, MetaError>;
    fn note_write(&self, ino: u64, end: u64) -> Result<InodeRec, MetaError>;
    fn opendir(&self, caller: &Caller, ino: u64) -> Result<(), MetaError>;
    fn readdir(&self, ino: u64, after: u64, limit: usize) -> Result<Vec<DirItem>, MetaError>;
    fn setxattr(
        &self,
        caller: &Caller,
        ino: u64,
        name: &[u8],
        value: &[u8],
        flags: u32,
    ) -> Result<(), MetaError>;
    fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>, MetaError>;
    fn listxattr(&self, ino: u64) -> Result<Vec<Vec<u8>>, MetaError>;
    fn removexattr(&self, caller: &Caller, ino: u64, name: &[u8]) -> Result<(), MetaError>;
    fn usage(&self) -> Result<Usage, MetaError>;
}

impl Namespace for Meta {
    fn client_id(&self) -> u64 {
        Meta::client_id(self)
    }
    fn heartbeat(&self) -> Result<(), MetaError> {
        Meta::heartbeat(self)
    }
    fn close_client(&self) -> Result<Vec<Reclaim>, MetaError> {
        Meta::close_client(self)
    }
    fn reap_expired(&self) -> Result<Vec<Reclaim>, MetaError> {
        Meta::reap_expired(self)
    }
    fn lookup(&self, caller: &Caller, parent: u64, name: &[u8]) -> Result<(u64, InodeRec), MetaError> {
        Meta::lookup(self, caller, parent, name)
    }
    fn getattr(&self, ino: u64) -> Result<InodeRec, MetaError> {
        Meta::getattr(self, ino)
    }
    fn access(&self, caller: &Caller, ino: u64, mask: u32) -> Result<(), MetaError> {
        Meta::access(self, caller, ino, mask)
    }
    fn setattr(
        &self,
        caller: &Caller,
        ino: u64,
        set: &SetAttr,
    ) -> Result<(InodeRec, Option<u64>), MetaError> {
        Meta::setattr(self, caller, ino, set)
    }
    fn mknod(
        &self,
        caller: &Caller,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u32,
        target: &[u8],
        open: bool,
    ) -> Result<(u64, InodeRec, Option<u64>), MetaError> {
        Meta::mknod(self, caller, parent, name, mode, rdev, target, open)
    }
    fn readlink(&self, ino: u64) -> Result<Vec<u8>, MetaError> {
        Meta::readlink(self, ino)
    }
    fn link(&self, caller: &Caller, ino: u64, newparent: u64, newname: &[u8]) -> Result<InodeRec, MetaError> {
        Meta::link(self, caller, ino, newparent, newname)
    }
    fn unlink(&self, caller: &Caller, parent: u64, name: &[u8]) -> Result<Option<Reclaim>, MetaError> {
        Meta::unlink(self, caller, parent, name)
    }
    fn rmdir(&self, caller: &Caller, parent: u64, name: &[u8]) -> Result<(), MetaError> {
        Meta::rmdir(self, caller, parent, name)
    }
    fn rename(
        &self,
        caller: &Caller,
        olddir: u64,
        oldname: &[u8],
        newdir: u64,
        newname: &[u8],
        flags: u32,
    ) -> Result<Option<Reclaim>, MetaError> {
        Meta::rename(self, caller, olddir, oldname, newdir, newname, flags)
    }
    fn open(&self, caller: &Caller, ino: u64, read: bool, write: bool) -> Result<(InodeRec, u64), MetaError> {
        Meta::open(self, caller, ino, read, write)
    }
    fn release(&self, ino: u64, handle: u64) -> Result<Option<Reclaim>, MetaError> {
        Meta::release(self, ino, handle)
    }
    fn note_write(&self, ino: u64, end: u64) -> Result<InodeRec, MetaError> {
        Meta::note_write(self, ino, end)
    }
    fn opendir(&self, caller: &Caller, ino: u64) -> Result<(), MetaError> {
        Meta::opendir(self, caller, ino)
    }
    fn readdir(&self, ino: u64, after: u64, limit: usize) -> Result<Vec<DirItem>, MetaError> {
        Meta::readdir(self, ino, after, limit)
    }
    fn setxattr(
        &self,
        caller: &Caller,
        ino: u64,
        name: &[u8],
        value: &[u8],
        flags: u32,
    ) -> Result<(), MetaError> {
        Meta::setxattr(self, caller, ino, name, value, flags)
    }
    fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>, MetaError> {
        Meta::getxattr(self, ino, name)
    }
    fn listxattr(&self, ino: u64) -> Result<Vec<Vec<u8>>, MetaError> {
        Meta::listxattr(self, ino)
    }
    fn removexattr(&self, caller: &Caller, ino: u64, name: &[u8]) -> Result<(), MetaError> {
        Meta::removexattr(self, caller, ino, name)
    }
    fn usage(&self) -> Result<Usage, MetaError> {
        Meta::usage(self)
    }
}
