//! Building reply bodies in a buffer the transport owns.
//!
//! The dispatcher never allocates a reply: the transport lends it a buffer
//! (a worker's buffer for `/dev/fuse`, the entry's payload buffer for a ring)
//! and the body is written there in place — including file data, which the
//! filesystem reads straight into it through [`BodyWriter`]'s
//! `ZeroCopyWriter` implementation.

use std::io;
use std::time::Duration;

use fuse_backend_rs::api::filesystem::{Entry, ZeroCopyReader, ZeroCopyWriter};
use fuse_backend_rs::file_buf::FileVolatileSlice;
use fuse_backend_rs::file_traits::FileReadWriteVolatile;
use kmod_shim::abi::{Attr, AttrOut, EntryOut, Kstatfs};
use vm_memory::VolatileSlice;
use zerocopy::{Immutable, IntoBytes};

/// A reply body being written into a borrowed buffer.
#[derive(Debug)]
pub struct BodyWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
    limit: usize,
}

/// The reply does not fit the buffer the transport lent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("reply body overflows its {0}-byte buffer")]
pub struct Overflow(pub usize);

impl<'a> BodyWriter<'a> {
    /// A writer over the whole of `buf`.
    pub fn new(buf: &'a mut [u8]) -> BodyWriter<'a> {
        let limit = buf.len();
        BodyWriter { buf, len: 0, limit }
    }

    /// Lowers the number of bytes the body may hold (the `size` a READ or
    /// READDIR asked for).
    pub fn limit_to(&mut self, limit: usize) {
        self.limit = limit.min(self.buf.len());
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Nothing written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes that may still be written.
    pub fn room(&self) -> usize {
        self.limit - self.len
    }

    /// Appends raw bytes.
    pub fn push_bytes(&mut self, bytes: &[u8]) -> Result<(), Overflow> {
        if bytes.len() > self.room() {
            return Err(Overflow(self.limit));
        }
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
        Ok(())
    }

    /// Appends a kernel struct.
    pub fn push<T: IntoBytes + Immutable>(&mut self, value: &T) -> Result<(), Overflow> {
        self.push_bytes(value.as_bytes())
    }

    /// Appends `n` zero bytes (record padding).
    pub fn push_zeros(&mut self, n: usize) -> Result<(), Overflow> {
        if n > self.room() {
            return Err(Overflow(self.limit));
        }
        self.buf[self.len..self.len + n].fill(0);
        self.len += n;
        Ok(())
    }

    /// Empties the body (an error reply after a partial write).
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

impl io::Write for BodyWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(self.room());
        self.buf[self.len..self.len + n].copy_from_slice(&data[..n]);
        self.len += n;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ZeroCopyWriter for BodyWriter<'_> {
    fn write_from(&mut self, f: &mut dyn FileReadWriteVolatile, count: usize, off: u64) -> io::Result<usize> {
        let n = count.min(self.room());
        let window: &mut [u8] = &mut self.buf[self.len..self.len + n];
        let slice = VolatileSlice::from(window);
        let read = f.read_at_volatile(FileVolatileSlice::from_volatile_slice(&slice), off)?;
        // A file cannot report more than it was given room for; stay defensive.
        self.len += read.min(n);
        Ok(read.min(n))
    }

    fn available_bytes(&self) -> usize {
        self.room()
    }
}

/// WRITE data, read in place from the request buffer by the filesystem.
#[derive(Debug)]
pub struct DataReader<'a> {
    data: &'a mut [u8],
    pos: usize,
}

impl<'a> DataReader<'a> {
    /// A reader over the data part of a WRITE request.
    pub fn new(data: &'a mut [u8]) -> DataReader<'a> {
        DataReader { data, pos: 0 }
    }
}

impl io::Read for DataReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = out.len().min(self.data.len() - self.pos);
        out[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl ZeroCopyReader for DataReader<'_> {
    fn read_to(&mut self, f: &mut dyn FileReadWriteVolatile, count: usize, off: u64) -> io::Result<usize> {
        let n = count.min(self.data.len() - self.pos);
        let window: &mut [u8] = &mut self.data[self.pos..self.pos + n];
        let slice = VolatileSlice::from(window);
        let written = f.write_at_volatile(FileVolatileSlice::from_volatile_slice(&slice), off)?;
        self.pos += written.min(n);
        Ok(written.min(n))
    }
}

/// Converts a `stat64` from the filesystem into the kernel's `fuse_attr`.
pub fn attr_from_stat(st: &libc::stat64, flags: u32) -> Attr {
    Attr {
        ino: st.st_ino,
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: st.st_atime as u64,
        mtime: st.st_mtime as u64,
        ctime: st.st_ctime as u64,
        atimensec: st.st_atime_nsec as u32,
        mtimensec: st.st_mtime_nsec as u32,
        ctimensec: st.st_ctime_nsec as u32,
        mode: st.st_mode,
        nlink: st.st_nlink.try_into().unwrap_or(u32::MAX),
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags,
    }
}

/// Converts an [`Entry`] into `fuse_entry_out`.
pub fn entry_out(entry: &Entry) -> EntryOut {
    EntryOut {
        nodeid: entry.inode,
        generation: entry.generation,
        entry_valid: entry.entry_timeout.as_secs(),
        attr_valid: entry.attr_timeout.as_secs(),
        entry_valid_nsec: entry.entry_timeout.subsec_nanos(),
        attr_valid_nsec: entry.attr_timeout.subsec_nanos(),
        attr: attr_from_stat(&entry.attr, entry.attr_flags),
    }
}

/// Builds `fuse_attr_out`.
pub fn attr_out(st: &libc::stat64, timeout: Duration) -> AttrOut {
    AttrOut {
        attr_valid: timeout.as_secs(),
        attr_valid_nsec: timeout.subsec_nanos(),
        dummy: 0,
        attr: attr_from_stat(st, 0),
    }
}

/// Converts `statvfs64` into `fuse_kstatfs`.
pub fn kstatfs(st: &libc::statvfs64) -> Kstatfs {
    Kstatfs {
        blocks: st.f_blocks,
        bfree: st.f_bfree,
        bavail: st.f_bavail,
        files: st.f_files,
        ffree: st.f_ffree,
        bsize: st.f_bsize as u32,
        namelen: st.f_namemax as u32,
        frsize: st.f_frsize as u32,
        padding: 0,
        spare: [0; 6],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn writer_respects_its_limit() {
        let mut buf = [0u8; 16];
        let mut w = BodyWriter::new(&mut buf);
        w.limit_to(8);
        w.push(&7u32).unwrap();
        assert_eq!(w.push_bytes(&[1; 5]), Err(Overflow(8)));
        assert_eq!(w.write(&[9; 10]).unwrap(), 4);
        assert_eq!(w.len(), 8);
        assert_eq!(w.room(), 0);
    }

    #[test]
    fn zero_copy_paths_move_file_data() {
        let mut file = tempfile::tempfile().unwrap();
        let mut data = b"hello, ring".to_vec();
        let mut r = DataReader::new(&mut data);
        assert_eq!(r.read_to(&mut file, 100, 0).unwrap(), 11);
        let mut buf = [0u8; 32];
        let mut w = BodyWriter::new(&mut buf);
        w.limit_to(5);
        assert_eq!(w.write_from(&mut file, 100, 7).unwrap(), 4);
        assert_eq!(&buf[..4], b"ring");
    }
}
