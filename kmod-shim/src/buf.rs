//! Page-aligned buffers for data the kernel copies to and from.
//!
//! The kernel moves file data between the page cache and a daemon's buffer
//! with `copy_to_user`/`copy_from_user`, i.e. `rep movsb` on x86. On AMD
//! EPYC (this project's development VM), that copy runs at about half speed
//! when the user buffer is not aligned like the page it is copied from: a
//! 128 KiB pread from tmpfs into a heap `Vec` (whose large allocations start
//! 16 bytes into a page) cost twice the CPU time of the same pread into a
//! page-aligned buffer. So every buffer that file data lands in, or leaves
//! from, starts its data at a page boundary.

use std::ops::{Deref, DerefMut};

/// The alignment of [`AlignedBuf`] data: one page.
pub const PAGE: usize = 4096;

/// A zero-filled heap buffer whose byte at index `lead` sits on a page
/// boundary.
///
/// `lead` is where the data will start: 0 for a buffer holding only data,
/// or the size of the headers in front of it (a `/dev/fuse` WRITE request
/// carries 80 bytes of headers before its data). Allocated once, with up to
/// one page of slack, and never moved.
pub struct AlignedBuf {
    storage: Box<[u8]>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// A buffer of `len` bytes starting on a page boundary.
    pub fn new(len: usize) -> AlignedBuf {
        AlignedBuf::aligned_at(len, 0)
    }

    /// A buffer of `len` bytes whose byte `lead` starts a page.
    pub fn aligned_at(len: usize, lead: usize) -> AlignedBuf {
        let storage = vec![0u8; len + PAGE].into_boxed_slice();
        let addr = storage.as_ptr() as usize;
        // The first index i with (addr + i + lead) % PAGE == 0.
        let start = (PAGE - (addr + lead) % PAGE) % PAGE;
        AlignedBuf { storage, start, len }
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .field("start", &self.start)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_starts_on_a_page_and_has_the_asked_length() {
        for len in [0, 1, 80, 4095, 4096, 4097, 1 << 20] {
            let mut b = AlignedBuf::new(len);
            assert_eq!(b.len(), len);
            assert!(b.iter().all(|&x| x == 0));
            assert_eq!(b.as_ptr() as usize % PAGE, 0, "len {len}");
            if len > 0 {
                b[len - 1] = 7;
                assert_eq!(b[len - 1], 7);
            }
        }
    }

    #[test]
    fn the_lead_byte_starts_a_page() {
        for lead in [0, 16, 80, 4095, 4096, 5000] {
            let b = AlignedBuf::aligned_at(lead + 8192, lead);
            assert_eq!(b.len(), lead + 8192);
            assert_eq!(b[lead..].as_ptr() as usize % PAGE, 0, "lead {lead}");
        }
    }
}
