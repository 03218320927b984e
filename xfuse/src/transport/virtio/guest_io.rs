//! File data moved straight between a file and the guest's buffers: the
//! WRITE data a descriptor chain carries and the READ reply room it
//! offers, as a filesystem's `ZeroCopyReader` and `ZeroCopyWriter`.
//!
//! A file-backed filesystem (PassthroughFs) calls `read_to`/`write_from`
//! with its file: that becomes one `pwritev`/`preadv` (per [`IOV_MAX`]
//! buffers) whose iovecs are the guest's buffers, mapped in this process
//! by the VMM — no copy in user space, as virtiofsd does it. A filesystem
//! that moves data through its own buffers (MetaFs) uses `io::Read` and
//! `io::Write`, one copy between its buffer and guest memory.
//!
//! The buffers are the ones [`super::ChainLayout::parse`] checked to lie in
//! guest memory; each is looked up again in the memory map the request
//! runs under (`GuestMemory::get_slices`, which also splits a buffer that
//! spans two memory regions), so nothing outside guest memory is ever
//! handed to a system call. The system calls themselves are
//! fuse-backend-rs's `FileReadWriteVolatile` for `File`, on its
//! `FileVolatileSlice`s; this module has no `unsafe`.

use std::io;

use fuse_backend_rs::api::filesystem::{ZeroCopyReader, ZeroCopyWriter};
use fuse_backend_rs::file_buf::FileVolatileSlice;
use fuse_backend_rs::file_traits::FileReadWriteVolatile;
use vm_memory::{Bytes, GuestAddress, GuestMemory, VolatileSlice};

/// Most buffers one `preadv`/`pwritev` takes (Linux's `UIO_MAXIOV`).
pub const IOV_MAX: usize = 1024;

/// A window of guest buffers, consumed front to back.
#[derive(Debug)]
struct Cursor {
    /// The buffers, in order, none empty; `at` indexes the current one.
    bufs: Vec<(GuestAddress, usize)>,
    at: usize,
    /// Bytes already consumed of `bufs[at]`.
    offset: usize,
    /// Bytes left in all of them.
    left: usize,
}

impl Cursor {
    /// The bytes of `bufs` from byte `skip` on (the buffers as one stream).
    fn new(bufs: &[(GuestAddress, usize)], skip: usize) -> Cursor {
        let mut skip = skip;
        let mut window = Vec::with_capacity(bufs.len());
        for &(addr, len) in bufs {
            if skip >= len {
                skip -= len;
                continue;
            }
            window.push((GuestAddress(addr.0 + skip as u64), len - skip));
            skip = 0;
        }
        let left = window.iter().map(|&(_, len)| len).sum();
        Cursor {
            bufs: window,
            at: 0,
            offset: 0,
            left,
        }
    }

    /// The next pieces of at most `max` bytes, as (address, length), no
    /// more than `pieces_max` of them; not consumed.
    fn peek(&self, max: usize, pieces_max: usize) -> Vec<(GuestAddress, usize)> {
        let mut out = Vec::new();
        let mut want = max.min(self.left);
        let mut offset = self.offset;
        for &(addr, len) in &self.bufs[self.at..] {
            if want == 0 || out.len() == pieces_max {
                break;
            }
            let n = (len - offset).min(want);
            out.push((GuestAddress(addr.0 + offset as u64), n));
            want -= n;
            offset = 0;
        }
        out
    }

    /// Moves `n` bytes on (at most what is left).
    fn advance(&mut self, mut n: usize) {
        n = n.min(self.left);
        self.left -= n;
        while n > 0 {
            let (_, len) = self.bufs[self.at];
            let here = (len - self.offset).min(n);
            self.offset += here;
            n -= here;
            if self.offset == len {
                self.at += 1;
                self.offset = 0;
            }
        }
    }
}

/// The volatile slices of the guest buffers `pieces`, each looked up in
/// `mem` (split where a buffer spans memory regions), at most [`IOV_MAX`]
/// of them; with the bytes they cover.
fn slices<'m, M: GuestMemory>(
    mem: &'m M,
    pieces: &[(GuestAddress, usize)],
) -> io::Result<(Vec<VolatileSlice<'m, vm_memory::bitmap::MS<'m, M>>>, usize)> {
    let mut out = Vec::with_capacity(pieces.len());
    let mut bytes = 0;
    'pieces: for &(addr, len) in pieces {
        for slice in mem.get_slices(addr, len) {
            if out.len() == IOV_MAX {
                break 'pieces;
            }
            let slice = slice.map_err(io::Error::other)?;
            bytes += slice.len();
            out.push(slice);
        }
    }
    Ok((out, bytes))
}

/// The WRITE data of a request, in the guest's readable buffers.
#[derive(Debug)]
pub struct GuestReader<'m, M> {
    mem: &'m M,
    data: Cursor,
}

impl<'m, M: GuestMemory> GuestReader<'m, M> {
    /// The bytes of the readable buffers `bufs` from byte `skip` on (the
    /// request's headers come before).
    pub fn new(mem: &'m M, bufs: &[(GuestAddress, usize)], skip: usize) -> GuestReader<'m, M> {
        GuestReader {
            mem,
            data: Cursor::new(bufs, skip),
        }
    }

    /// Bytes not yet read.
    pub fn len(&self) -> usize {
        self.data.left
    }

    /// Everything was read.
    pub fn is_empty(&self) -> bool {
        self.data.left == 0
    }
}

impl<M: GuestMemory> io::Read for GuestReader<'_, M> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let mut done = 0;
        for (addr, len) in self.data.peek(out.len(), usize::MAX) {
            self.mem
                .read_slice(&mut out[done..done + len], addr)
                .map_err(io::Error::other)?;
            done += len;
        }
        self.data.advance(done);
        Ok(done)
    }
}

impl<M: GuestMemory> ZeroCopyReader for GuestReader<'_, M> {
    fn read_to(&mut self, f: &mut dyn FileReadWriteVolatile, count: usize, off: u64) -> io::Result<usize> {
        let mut done = 0;
        while done < count && !self.is_empty() {
            let pieces = self.data.peek(count - done, IOV_MAX);
            let (guest, bytes) = slices(self.mem, &pieces)?;
            let iov: Vec<FileVolatileSlice> =
                guest.iter().map(FileVolatileSlice::from_volatile_slice).collect();
            let at = off
                .checked_add(done as u64)
                .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
            let n = match f.write_vectored_at_volatile(&iov, at) {
                Ok(n) => n.min(bytes),
                // Bytes already written stay written: report them.
                Err(e) if done > 0 => {
                    tracing::debug!("a write into the file stopped after {done} bytes: {e}");
                    break;
                }
                Err(e) => return Err(e),
            };
            if n == 0 {
                if done == 0 {
                    return Err(io::Error::from(io::ErrorKind::WriteZero));
                }
                break;
            }
            self.data.advance(n);
            done += n;
            if n < bytes {
                break;
            }
        }
        Ok(done)
    }
}

/// The room a READ's data may take in the guest's writable buffers (after
/// the out header).
#[derive(Debug)]
pub struct GuestWriter<'m, M> {
    mem: &'m M,
    room: Cursor,
    written: usize,
}

impl<'m, M: GuestMemory> GuestWriter<'m, M> {
    /// The writable buffers `bufs` from byte `skip` on, at most `limit`
    /// bytes of them.
    pub fn new(mem: &'m M, bufs: &[(GuestAddress, usize)], skip: usize, limit: usize) -> GuestWriter<'m, M> {
        let mut room = Cursor::new(bufs, skip);
        room.left = room.left.min(limit);
        GuestWriter {
            mem,
            room,
            written: 0,
        }
    }

    /// Bytes written so far, from the start of the room.
    pub fn written(&self) -> usize {
        self.written
    }
}

impl<M: GuestMemory> io::Write for GuestWriter<'_, M> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut done = 0;
        for (addr, len) in self.room.peek(data.len(), usize::MAX) {
            self.mem
                .write_slice(&data[done..done + len], addr)
                .map_err(io::Error::other)?;
            done += len;
        }
        self.room.advance(done);
        self.written += done;
        Ok(done)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<M: GuestMemory> ZeroCopyWriter for GuestWriter<'_, M> {
    fn write_from(&mut self, f: &mut dyn FileReadWriteVolatile, count: usize, off: u64) -> io::Result<usize> {
        let mut done = 0;
        while done < count && self.room.left > 0 {
            let pieces = self.room.peek(count - done, IOV_MAX);
            let (guest, bytes) = slices(self.mem, &pieces)?;
            let iov: Vec<FileVolatileSlice> =
                guest.iter().map(FileVolatileSlice::from_volatile_slice).collect();
            let at = off
                .checked_add(done as u64)
                .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
            let n = match f.read_vectored_at_volatile(&iov, at) {
                Ok(n) => n.min(bytes),
                Err(e) if done > 0 => {
                    tracing::debug!("a read from the file stopped after {done} bytes: {e}");
                    break;
                }
                Err(e) => return Err(e),
            };
            self.room.advance(n);
            self.written += n;
            done += n;
            // End of file, or a short read: the rest is not there yet.
            if n < bytes {
                break;
            }
        }
        Ok(done)
    }

    fn available_bytes(&self) -> usize {
        self.room.left
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use vm_memory::GuestMemoryMmap;

    use super::*;

    /// Two regions, 0..0x10000 and 0x10000..0x20000, so a buffer can span
    /// them.
    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000), (GuestAddress(0x10000), 0x10000)]).unwrap()
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn a_cursor_skips_the_headers_and_walks_the_buffers_as_one_stream() {
        let bufs = [
            (GuestAddress(0x100), 40),
            (GuestAddress(0x200), 50),
            (GuestAddress(0x1000), 4096),
        ];
        let mut c = Cursor::new(&bufs, 80);
        assert_eq!(c.left, 10 + 4096);
        assert_eq!(
            c.peek(100, 8),
            [(GuestAddress(0x228), 10), (GuestAddress(0x1000), 90)]
        );
        assert_eq!(c.peek(100, 1), [(GuestAddress(0x228), 10)]);
        c.advance(15);
        assert_eq!(c.peek(usize::MAX, 8), [(GuestAddress(0x1005), 4091)]);
        c.advance(10_000);
        assert_eq!((c.left, c.peek(10, 8).len()), (0, 0));
        assert_eq!(Cursor::new(&bufs, 1 << 20).left, 0);
    }

    #[test]
    fn write_data_goes_from_guest_buffers_to_the_file_without_a_buffer_of_ours() {
        let mem = memory();
        let data = pattern(3 * 4096 + 100);
        // Header bytes, then data pages scattered, one across the regions.
        let bufs = [
            (GuestAddress(0x100), 80),
            (GuestAddress(0x3000), 4096),
            (GuestAddress(0xF800), 4096),
            (GuestAddress(0x12000), 4096 + 100),
        ];
        let mut at = 0;
        for &(addr, len) in &bufs[1..] {
            mem.write_slice(&data[at..at + len], addr).unwrap();
            at += len;
        }
        let mut file = tempfile::tempfile().unwrap();
        let mut r = GuestReader::new(&mem, &bufs, 80);
        assert_eq!(r.len(), data.len());
        assert_eq!(r.read_to(&mut file, data.len(), 10).unwrap(), data.len());
        assert!(r.is_empty());
        let mut back = Vec::new();
        file.read_to_end(&mut back).unwrap();
        assert_eq!(&back[10..], &data[..]);
        // Asking for less takes less; the rest stays for the next call.
        let mut r = GuestReader::new(&mem, &bufs, 80);
        assert_eq!(r.read_to(&mut file, 5000, 0).unwrap(), 5000);
        let mut rest = vec![0; data.len()];
        assert_eq!(r.read(&mut rest).unwrap(), data.len() - 5000);
        assert_eq!(&rest[..data.len() - 5000], &data[5000..]);
    }

    #[test]
    fn read_data_goes_from_the_file_to_guest_buffers_within_the_room() {
        let mem = memory();
        let data = pattern(10_000);
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&data).unwrap();
        let bufs = [
            (GuestAddress(0x100), 16),
            (GuestAddress(0xF000), 8192),
            (GuestAddress(0x14000), 4096),
        ];
        let mut w = GuestWriter::new(&mem, &bufs, 16, 9000);
        assert_eq!(w.available_bytes(), 9000);
        // The file ends before the room does: a short read, then nothing.
        assert_eq!(w.write_from(&mut file, 9000, 1000).unwrap(), 9000);
        assert_eq!(w.write_from(&mut file, 100, 0).unwrap(), 0, "no room left");
        assert_eq!(w.written(), 9000);
        let mut got = vec![0u8; 9000];
        mem.read_slice(&mut got[..8192], GuestAddress(0xF000)).unwrap();
        mem.read_slice(&mut got[8192..], GuestAddress(0x14000)).unwrap();
        assert_eq!(&got[..], &data[1000..10_000]);
        let mut w = GuestWriter::new(&mem, &bufs, 16, 1 << 20);
        assert_eq!(
            w.write_from(&mut file, 1 << 20, 9_000).unwrap(),
            1000,
            "end of file"
        );
        // A filesystem writing from its own buffer.
        let mut w = GuestWriter::new(&mem, &bufs, 16, 5);
        assert_eq!(w.write(b"0123456789").unwrap(), 5);
        let mut five = [0u8; 5];
        mem.read_slice(&mut five, GuestAddress(0xF000)).unwrap();
        assert_eq!(&five, b"01234");
    }

    #[test]
    fn buffers_outside_guest_memory_are_errors_not_accesses() {
        let mem = memory();
        let bufs = [(GuestAddress(0x1F000), 0x2000)];
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&pattern(0x2000)).unwrap();
        let mut w = GuestWriter::new(&mem, &bufs, 0, 0x2000);
        assert!(w.write_from(&mut file, 0x2000, 0).is_err());
        let mut r = GuestReader::new(&mem, &bufs, 0);
        assert!(r.read_to(&mut file, 0x2000, 0).is_err());
    }
}
