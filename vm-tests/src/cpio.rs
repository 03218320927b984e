//! A writer for the "newc" cpio format, the one the kernel unpacks as an
//! initramfs. Uncompressed: the kernel takes that as is, and our archives
//! are a few MiB.

use std::io::{self, Write};

/// Builds an archive in memory.
#[derive(Debug, Default)]
pub struct Archive {
    bytes: Vec<u8>,
    next_ino: u32,
}

impl Archive {
    /// An empty archive.
    pub fn new() -> Archive {
        Archive::default()
    }

    /// Adds a directory (mode 0755).
    pub fn dir(&mut self, path: &str) -> io::Result<()> {
        self.entry(path, 0o040_755, &[])
    }

    /// Adds a regular file with `mode`'s permission bits.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        self.entry(path, 0o100_000 | (mode & 0o7777), data)
    }

    /// Ends the archive and returns its bytes.
    pub fn finish(mut self) -> io::Result<Vec<u8>> {
        self.entry("TRAILER!!!", 0, &[])?;
        Ok(self.bytes)
    }

    fn entry(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        if path.is_empty() || path.starts_with('/') || path.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad archive path {path:?}"),
            ));
        }
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{path}: over 4 GiB")))?;
        self.next_ino += 1;
        let name_size = path.len() + 1;
        let fields = [
            self.next_ino,
            mode,
            0, // uid
            0, // gid
            if mode & 0o040_000 != 0 { 2 } else { 1 },
            0, // mtime
            size,
            0, // dev major
            0, // dev minor
            0, // rdev major
            0, // rdev minor
            name_size as u32,
            0, // check
        ];
        write!(self.bytes, "070701")?;
        for f in fields {
            write!(self.bytes, "{f:08x}")?;
        }
        self.bytes.extend_from_slice(path.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
        Ok(())
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_newc_headers_padded_to_four_bytes() {
        let mut a = Archive::new();
        a.dir("bin").unwrap();
        a.file("init", 0o755, b"#!/bin/sh\n").unwrap();
        let bytes = a.finish().unwrap();
        // First header: magic, ino 1, mode 040755, name "bin".
        assert_eq!(&bytes[..6], b"070701");
        assert_eq!(&bytes[6..14], b"00000001");
        assert_eq!(&bytes[14..22], b"000041ed");
        assert_eq!(&bytes[110..114], b"bin\0");
        // 110-byte header + 4-byte name = 114, padded to 116.
        let second = 116;
        assert_eq!(&bytes[second..second + 6], b"070701");
        assert_eq!(&bytes[second + 14..second + 22], b"000081ed");
        assert_eq!(&bytes[second + 54..second + 62], b"0000000a", "file size");
        assert_eq!(bytes.len() % 4, 0);
        let tail = String::from_utf8_lossy(&bytes[bytes.len() - 16..]);
        assert!(tail.contains("TRAILER!!!"), "{tail}");
    }

    #[test]
    fn bad_paths_are_refused() {
        let mut a = Archive::new();
        assert!(a.file("/abs", 0o644, b"").is_err());
        assert!(a.file("", 0o644, b"").is_err());
        assert!(a.file("a\0b", 0o644, b"").is_err());
    }
}
