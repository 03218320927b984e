//! The filesystem double the dispatcher is fuzzed against: a fixed tree
//! that answers every call the dispatcher can make, checks what the
//! dispatcher hands it, and counts the lookup references it gives out.
//!
//! The tree: the root (1) holds a file "f" (2, [`FILE_BYTES`] bytes), a
//! directory "d" (3) and a symlink "l" (4) to "f". Changes succeed
//! without changing the tree, so every input sees the same filesystem and
//! a crash replays from its input alone.

use std::ffi::CStr;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::CreateIn;
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, FsOptions, GetxattrReply, ListxattrReply, OpenOptions,
    SetattrValid, ZeroCopyReader, ZeroCopyWriter,
};
use xfuse::request::NAME_MAX_BYTES;

/// Bytes of the file "f".
pub const FILE_BYTES: usize = 3000;
const XATTR_NAME: &[u8] = b"user.k";
const XATTR_VALUE: &[u8] = b"a value";
/// Entries in the directory "d", so READDIR replies fill and overflow.
const DIR_ENTRIES: u64 = 200;

/// The double. Lookup references: every [`Entry`] with a nonzero inode
/// returned by lookup, mknod, mkdir, symlink, link or create counts as
/// given; every `forget` counts as returned.
#[derive(Debug, Default)]
pub struct FuzzFs {
    given: AtomicU64,
    forgotten: AtomicU64,
}

impl FuzzFs {
    /// Lookup references handed out, minus those given back.
    pub fn outstanding(&self) -> i128 {
        i128::from(self.given.load(Ordering::Relaxed)) - i128::from(self.forgotten.load(Ordering::Relaxed))
    }

    fn entry(&self, ino: u64) -> io::Result<Entry> {
        // Inode 0 is a negative entry: no reference (what the dispatcher
        // assumes too; a LINK to node 0 makes one).
        if ino != 0 {
            self.given.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Entry {
            inode: ino,
            generation: 1,
            attr: stat(ino),
            attr_flags: 0,
            attr_timeout: Duration::from_secs(1),
            entry_timeout: Duration::from_secs(1),
        })
    }
}

fn enoent<T>() -> io::Result<T> {
    Err(io::Error::from_raw_os_error(libc::ENOENT))
}

/// Every name the dispatcher passes on came out of `Args::name`, which
/// bounds it; a longer one is a dispatcher bug.
fn checked(name: &CStr) -> &[u8] {
    let bytes = name.to_bytes();
    assert!(
        bytes.len() < NAME_MAX_BYTES,
        "name of {} bytes reached the filesystem",
        bytes.len()
    );
    bytes
}

fn child(parent: u64, name: &CStr) -> Option<u64> {
    match (parent, checked(name)) {
        (1, b"f") => Some(2),
        (1, b"d") => Some(3),
        (1, b"l") => Some(4),
        (1, b".") | (1, b"..") | (3, b"..") => Some(1),
        (3, b".") => Some(3),
        _ => None,
    }
}

fn stat(ino: u64) -> libc::stat64 {
    // `Entry::default()` holds a zeroed stat64: no `unsafe` needed here.
    let mut st = Entry::default().attr;
    st.st_ino = ino;
    st.st_nlink = 1;
    st.st_mode = match ino {
        1 | 3 => libc::S_IFDIR | 0o755,
        4 => libc::S_IFLNK | 0o777,
        // A set-user-ID, set-group-ID file, so privilege clearing has work.
        _ => libc::S_IFREG | libc::S_ISUID | libc::S_ISGID | 0o755,
    };
    st.st_size = if ino == 2 { FILE_BYTES as i64 } else { 1 };
    st.st_uid = 1000;
    st.st_gid = 1000;
    st.st_blksize = 4096;
    st
}

impl FileSystem for FuzzFs {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        Ok(capable)
    }

    fn lookup(&self, _: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        match child(parent, name) {
            Some(ino) => self.entry(ino),
            None => enoent(),
        }
    }

    fn forget(&self, _: &Context, _: u64, count: u64) {
        self.forgotten.fetch_add(count, Ordering::Relaxed);
    }

    fn getattr(&self, _: &Context, ino: u64, _: Option<u64>) -> io::Result<(libc::stat64, Duration)> {
        match ino {
            1..=4 => Ok((stat(ino), Duration::from_secs(1))),
            _ => enoent(),
        }
    }

    fn setattr(
        &self,
        _: &Context,
        ino: u64,
        attr: libc::stat64,
        _: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(libc::stat64, Duration)> {
        let mut st = stat(ino);
        if valid.contains(SetattrValid::MODE) {
            st.st_mode = (st.st_mode & libc::S_IFMT) | (attr.st_mode & !libc::S_IFMT);
        }
        if valid.contains(SetattrValid::SIZE) {
            st.st_size = attr.st_size;
        }
        Ok((st, Duration::from_secs(1)))
    }

    fn readlink(&self, _: &Context, ino: u64) -> io::Result<Vec<u8>> {
        match ino {
            4 => Ok(b"f".to_vec()),
            _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }

    fn symlink(&self, _: &Context, target: &CStr, _: u64, name: &CStr) -> io::Result<Entry> {
        checked(target);
        checked(name);
        self.entry(10)
    }

    fn mknod(&self, _: &Context, _: u64, name: &CStr, _: u32, _: u32, _: u32) -> io::Result<Entry> {
        checked(name);
        self.entry(11)
    }

    fn mkdir(&self, _: &Context, _: u64, name: &CStr, _: u32, _: u32) -> io::Result<Entry> {
        checked(name);
        self.entry(12)
    }

    fn unlink(&self, _: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        child(parent, name)
            .map(|_| ())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
    }

    fn rmdir(&self, _: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        child(parent, name)
            .map(|_| ())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
    }

    fn rename(&self, _: &Context, _: u64, old: &CStr, _: u64, new: &CStr, _: u32) -> io::Result<()> {
        checked(old);
        checked(new);
        Ok(())
    }

    fn link(&self, _: &Context, ino: u64, _: u64, name: &CStr) -> io::Result<Entry> {
        checked(name);
        self.entry(ino)
    }

    fn open(
        &self,
        _: &Context,
        _: u64,
        _: u32,
        _: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        Ok((Some(7), OpenOptions::KEEP_CACHE, None))
    }

    fn create(
        &self,
        _: &Context,
        _: u64,
        name: &CStr,
        _: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        checked(name);
        Ok((self.entry(13)?, Some(8), OpenOptions::empty(), None))
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
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(FILE_BYTES);
        let end = start.saturating_add(size as usize).min(FILE_BYTES);
        let data: Vec<u8> = (start..end).map(|i| i as u8).collect();
        w.write(&data)
    }

    fn write(
        &self,
        _: &Context,
        _: u64,
        _: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        _: u64,
        _: Option<u64>,
        _: bool,
        _: u32,
        _: u32,
    ) -> io::Result<usize> {
        // The dispatcher promises `size` bytes of data behind the reader.
        let mut data = vec![0u8; size as usize];
        r.read_exact(&mut data)
            .expect("a WRITE's reader holds the size it claims");
        Ok(data.len())
    }

    fn flush(&self, _: &Context, _: u64, _: u64, _: u64) -> io::Result<()> {
        Ok(())
    }

    fn fsync(&self, _: &Context, _: u64, _: bool, _: u64) -> io::Result<()> {
        Ok(())
    }

    fn fallocate(&self, _: &Context, _: u64, _: u64, _: u32, _: u64, _: u64) -> io::Result<()> {
        Ok(())
    }

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
        Ok(())
    }

    fn setxattr(&self, _: &Context, _: u64, name: &CStr, _: &[u8], _: u32) -> io::Result<()> {
        checked(name);
        Ok(())
    }

    fn getxattr(&self, _: &Context, _: u64, name: &CStr, size: u32) -> io::Result<GetxattrReply> {
        if checked(name) != XATTR_NAME {
            return Err(io::Error::from_raw_os_error(libc::ENODATA));
        }
        if size == 0 {
            return Ok(GetxattrReply::Count(XATTR_VALUE.len() as u32));
        }
        if (size as usize) < XATTR_VALUE.len() {
            return Err(io::Error::from_raw_os_error(libc::ERANGE));
        }
        Ok(GetxattrReply::Value(XATTR_VALUE.to_vec()))
    }

    fn listxattr(&self, _: &Context, _: u64, size: u32) -> io::Result<ListxattrReply> {
        let mut names = XATTR_NAME.to_vec();
        names.push(0);
        if size == 0 {
            return Ok(ListxattrReply::Count(names.len() as u32));
        }
        Ok(ListxattrReply::Names(names))
    }

    fn removexattr(&self, _: &Context, _: u64, name: &CStr) -> io::Result<()> {
        checked(name);
        Ok(())
    }

    fn opendir(&self, _: &Context, _: u64, _: u32) -> io::Result<(Option<u64>, OpenOptions)> {
        Ok((Some(9), OpenOptions::CACHE_DIR))
    }

    fn readdir(
        &self,
        _: &Context,
        ino: u64,
        _: u64,
        _: u32,
        offset: u64,
        add: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        for (i, name) in dir_names(ino, offset) {
            if add(DirEntry {
                ino: 100 + i,
                offset: i + 1,
                type_: libc::DT_REG.into(),
                name: name.as_bytes(),
            })? == 0
            {
                break;
            }
        }
        Ok(())
    }

    fn readdirplus(
        &self,
        _: &Context,
        ino: u64,
        _: u64,
        _: u32,
        offset: u64,
        add: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        for (i, name) in dir_names(ino, offset) {
            let entry = Entry {
                inode: 100 + i,
                attr: stat(2),
                ..Default::default()
            };
            let dirent = DirEntry {
                ino: 100 + i,
                offset: i + 1,
                type_: libc::DT_REG.into(),
                name: name.as_bytes(),
            };
            if add(dirent, entry)? == 0 {
                break;
            }
        }
        Ok(())
    }

    fn fsyncdir(&self, _: &Context, _: u64, _: bool, _: u64) -> io::Result<()> {
        Ok(())
    }

    fn releasedir(&self, _: &Context, _: u64, _: u32, _: u64) -> io::Result<()> {
        Ok(())
    }

    fn access(&self, _: &Context, _: u64, _: u32) -> io::Result<()> {
        Ok(())
    }

    fn lseek(&self, _: &Context, _: u64, _: u64, offset: u64, _: u32) -> io::Result<u64> {
        Ok(offset.min(FILE_BYTES as u64))
    }
}

/// The entries of directory `ino` from `offset` on: `DIR_ENTRIES` of them
/// in "d" (some with long names), none elsewhere.
fn dir_names(ino: u64, offset: u64) -> impl Iterator<Item = (u64, String)> {
    let end = if ino == 3 { DIR_ENTRIES } else { 0 };
    (offset.min(end)..end).map(|i| (i, format!("entry-{i}-{}", "x".repeat((i % 7 * 40) as usize))))
}
