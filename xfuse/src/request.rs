//! Parsing requests from the kernel: untrusted bytes in, typed values out.
//!
//! A request is a `fuse_in_header` and the opcode's arguments: at most one
//! fixed-size struct, then variable parts (names, data). Transports lay the
//! arguments out differently — `/dev/fuse` hands over one contiguous buffer,
//! a FUSE-over-io_uring entry puts the struct in the header's `op_in` area and
//! the rest in the payload buffer — so [`Args`] hides that split: a handler
//! takes the fixed struct (or declares it has none) first, then the rest.
//!
//! Every length is checked before use; nothing here panics on any input.

use std::ffi::CStr;

use kmod_shim::abi::InHeader;
use zerocopy::{FromBytes, Immutable, KnownLayout};

/// Longest name or symlink target accepted from the kernel (PATH_MAX).
pub const NAME_MAX_BYTES: usize = 4096;

/// Why a request could not be parsed. Each becomes `EINVAL` in the reply,
/// except where noted (the dispatcher's `Failure::errno` decides).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Shorter than a `fuse_in_header`: there is no `unique` to answer.
    #[error("request of {0} bytes is shorter than its header")]
    NoHeader(usize),
    /// The header's `len` disagrees with the bytes received.
    #[error("header says {header} bytes, transport delivered {actual}")]
    LengthMismatch {
        /// `fuse_in_header.len`.
        header: u32,
        /// Bytes actually delivered.
        actual: usize,
    },
    /// Extension headers claim more bytes than the request has.
    #[error("extension length {0} exceeds the request")]
    BadExtensions(usize),
    /// An argument struct or data run goes past the end of the request.
    #[error("argument of {wanted} bytes, {left} left")]
    Truncated {
        /// Bytes the argument needs.
        wanted: usize,
        /// Bytes the request has left.
        left: usize,
    },
    /// A name is not NUL-terminated within the request.
    #[error("name without terminating NUL")]
    Unterminated,
    /// A name is longer than [`NAME_MAX_BYTES`] (answered `ENAMETOOLONG`).
    #[error("name of {0} bytes is too long")]
    NameTooLong(usize),
    /// Bytes left over after every argument was read.
    #[error("{0} unexpected trailing bytes")]
    Trailing(usize),
    /// A count inside the request is out of its bounds.
    #[error("count {0} out of bounds")]
    BadCount(u64),
}

/// A request that failed to parse, with its `unique` when the header was
/// readable (so the kernel can still be answered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadRequest {
    /// The request's id, if its header could be read.
    pub unique: Option<u64>,
    /// What is wrong.
    pub error: ParseError,
}

/// Reads the header off a contiguous request (the `/dev/fuse` layout) and
/// checks it against the bytes received. Returns the header and the
/// arguments, with extension headers (if any) cut off the end. On error, the
/// `unique` of the request is returned too when the header could be read, so
/// the kernel can still be answered.
pub fn split_contiguous(buf: &mut [u8]) -> Result<(InHeader, &mut [u8]), BadRequest> {
    let actual = buf.len();
    let (header, body) = InHeader::read_from_prefix(buf).map_err(|_| BadRequest {
        unique: None,
        error: ParseError::NoHeader(actual),
    })?;
    if header.len as usize != actual {
        return Err(BadRequest {
            unique: Some(header.unique),
            error: ParseError::LengthMismatch {
                header: header.len,
                actual,
            },
        });
    }
    let body_len = body.len();
    let ext = usize::from(header.total_extlen) * 8;
    if ext > body_len {
        return Err(BadRequest {
            unique: Some(header.unique),
            error: ParseError::BadExtensions(ext),
        });
    }
    let start = actual - body_len;
    Ok((header, &mut buf[start..actual - ext]))
}

/// The arguments of one request, consumed front to back.
#[derive(Debug)]
pub struct Args<'a> {
    head: &'a mut [u8],
    tail: &'a mut [u8],
    split: bool,
}

impl<'a> Args<'a> {
    /// Arguments in one buffer: the fixed struct, then the variable parts.
    pub fn contiguous(body: &'a mut [u8]) -> Args<'a> {
        Args {
            head: body,
            tail: &mut [],
            split: false,
        }
    }

    /// Arguments split as FUSE-over-io_uring delivers them: the fixed struct
    /// at the start of `op_in`, the variable parts in `payload`.
    pub fn split(op_in: &'a mut [u8], payload: &'a mut [u8]) -> Args<'a> {
        Args {
            head: op_in,
            tail: payload,
            split: true,
        }
    }

    /// Takes the opcode's fixed argument struct.
    pub fn fixed<T: FromBytes + KnownLayout + Immutable>(&mut self) -> Result<T, ParseError> {
        let size = std::mem::size_of::<T>();
        let left = self.head.len();
        let value = T::read_from_prefix(self.head)
            .map(|(v, _)| v)
            .map_err(|_| ParseError::Truncated { wanted: size, left })?;
        self.after_fixed(size);
        Ok(value)
    }

    /// Takes a fixed struct of which only the first `size` bytes are present
    /// (older layouts of a grown struct); the rest reads as zero.
    pub fn fixed_prefix<T: FromBytes + KnownLayout + Immutable + zerocopy::IntoBytes>(
        &mut self,
        size: usize,
    ) -> Result<T, ParseError> {
        let left = self.head.len();
        if size > left || size > std::mem::size_of::<T>() {
            return Err(ParseError::Truncated { wanted: size, left });
        }
        let mut value = T::new_zeroed();
        value.as_mut_bytes()[..size].copy_from_slice(&self.head[..size]);
        self.after_fixed(size);
        Ok(value)
    }

    /// Declares that the opcode has no fixed struct.
    pub fn no_fixed(&mut self) {
        self.after_fixed(0);
    }

    fn after_fixed(&mut self, size: usize) {
        let head = std::mem::take(&mut self.head);
        if self.split {
            self.head = std::mem::take(&mut self.tail);
            self.split = false;
        } else {
            self.head = &mut head[size..];
        }
    }

    /// Takes a NUL-terminated name.
    pub fn name(&mut self) -> Result<&'a CStr, ParseError> {
        let nul = self
            .head
            .iter()
            .position(|&b| b == 0)
            .ok_or(ParseError::Unterminated)?;
        if nul >= NAME_MAX_BYTES {
            return Err(ParseError::NameTooLong(nul));
        }
        let head = std::mem::take(&mut self.head);
        let (name, rest) = head.split_at_mut(nul + 1);
        self.head = rest;
        let name: &'a [u8] = name;
        CStr::from_bytes_with_nul(name).map_err(|_| ParseError::Unterminated)
    }

    /// Takes exactly `len` bytes.
    pub fn bytes(&mut self, len: usize) -> Result<&'a mut [u8], ParseError> {
        let left = self.head.len();
        if len > left {
            return Err(ParseError::Truncated { wanted: len, left });
        }
        let head = std::mem::take(&mut self.head);
        let (taken, rest) = head.split_at_mut(len);
        self.head = rest;
        Ok(taken)
    }

    /// Takes `count` fixed structs laid end to end.
    pub fn array<T: FromBytes + KnownLayout + Immutable>(
        &mut self,
        count: usize,
    ) -> Result<Vec<T>, ParseError> {
        let size = std::mem::size_of::<T>();
        let total = count
            .checked_mul(size)
            .ok_or(ParseError::BadCount(count as u64))?;
        let bytes = self.bytes(total)?;
        Ok(bytes
            .chunks_exact(size)
            .filter_map(|chunk| T::read_from_bytes(chunk).ok())
            .collect())
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.head.len() + self.tail.len()
    }

    /// Checks that every byte was consumed.
    pub fn finish(&self) -> Result<(), ParseError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(ParseError::Trailing(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kmod_shim::abi::{MkdirIn, Rename2In};
    use zerocopy::IntoBytes;

    fn request(opcode: u32, body: &[u8]) -> Vec<u8> {
        crate::testkit::Request::raw(opcode)
            .unique(7)
            .bytes(body)
            .to_bytes()
    }

    #[test]
    fn contiguous_mkdir_parses() {
        let mut body = MkdirIn {
            mode: 0o755,
            umask: 0o22,
        }
        .as_bytes()
        .to_vec();
        body.extend_from_slice(b"dir\0");
        let mut buf = request(9, &body);
        let (h, body) = split_contiguous(&mut buf).unwrap();
        assert_eq!(h.unique, 7);
        let mut args = Args::contiguous(body);
        let m: MkdirIn = args.fixed().unwrap();
        assert_eq!(m.mode, 0o755);
        assert_eq!(args.name().unwrap().to_bytes(), b"dir");
        args.finish().unwrap();
    }

    #[test]
    fn split_layout_reads_struct_then_payload() {
        let mut op_in = [0u8; 128];
        let r = Rename2In {
            newdir: 9,
            flags: 1,
            padding: 0,
        };
        op_in[..16].copy_from_slice(r.as_bytes());
        let mut payload = b"a\0b\0".to_vec();
        let mut args = Args::split(&mut op_in, &mut payload);
        let got: Rename2In = args.fixed().unwrap();
        assert_eq!(got.newdir, 9);
        assert_eq!(args.name().unwrap().to_bytes(), b"a");
        assert_eq!(args.name().unwrap().to_bytes(), b"b");
        args.finish().unwrap();
    }

    #[test]
    fn split_layout_without_struct_reads_payload() {
        let mut op_in = [0u8; 128];
        let mut payload = b"name\0".to_vec();
        let mut args = Args::split(&mut op_in, &mut payload);
        args.no_fixed();
        assert_eq!(args.name().unwrap().to_bytes(), b"name");
        args.finish().unwrap();
    }

    #[test]
    fn short_and_inconsistent_requests_are_errors() {
        assert_eq!(
            split_contiguous(&mut [0u8; 10]).unwrap_err(),
            BadRequest {
                unique: None,
                error: ParseError::NoHeader(10)
            }
        );
        let mut buf = request(1, b"x\0");
        buf[0] = 99; // len field
        assert!(matches!(
            split_contiguous(&mut buf),
            Err(BadRequest {
                unique: Some(7),
                error: ParseError::LengthMismatch { .. }
            })
        ));
        let mut buf = request(1, b"x\0");
        buf[36] = 1; // total_extlen = 1 (8 bytes) > 2 bytes of body
        assert!(matches!(
            split_contiguous(&mut buf),
            Err(BadRequest {
                unique: Some(7),
                error: ParseError::BadExtensions(8)
            })
        ));
    }

    #[test]
    fn truncated_struct_unterminated_name_and_trailing_bytes() {
        let mut short = [0u8; 4];
        let mut args = Args::contiguous(&mut short);
        assert!(matches!(
            args.fixed::<MkdirIn>(),
            Err(ParseError::Truncated { wanted: 8, left: 4 })
        ));
        let mut noterm = *b"abc";
        let mut args = Args::contiguous(&mut noterm);
        assert_eq!(args.name().unwrap_err(), ParseError::Unterminated);
        let mut extra = *b"a\0zz";
        let mut args = Args::contiguous(&mut extra);
        args.name().unwrap();
        assert_eq!(args.finish().unwrap_err(), ParseError::Trailing(2));
    }

    #[test]
    fn long_names_and_huge_counts_are_refused() {
        let mut long = vec![b'a'; NAME_MAX_BYTES + 10];
        long.push(0);
        let mut args = Args::contiguous(&mut long);
        assert!(matches!(args.name().unwrap_err(), ParseError::NameTooLong(_)));
        let mut small = [0u8; 32];
        let mut args = Args::contiguous(&mut small);
        assert!(args.array::<MkdirIn>(usize::MAX).is_err());
        assert!(args.array::<MkdirIn>(5).is_err());
        assert_eq!(args.array::<MkdirIn>(4).unwrap().len(), 4);
    }

    #[test]
    fn fixed_prefix_zero_fills() {
        let mut b = [1u8, 0, 0, 0, 2, 0, 0, 0];
        let mut args = Args::contiguous(&mut b);
        let v: kmod_shim::abi::SetxattrIn = args.fixed_prefix(8).unwrap();
        assert_eq!((v.size, v.flags, v.setxattr_flags), (1, 2, 0));
    }
}
