//! A builder of FUSE requests as the kernel writes them.

use kmod_shim::abi::{InHeader, Opcode};
use zerocopy::{Immutable, IntoBytes};

/// One FUSE request, built field by field: the header, the opcode's
/// fixed argument struct, then its variable parts (names, data). The
/// header's `len` is computed unless set with [`Request::claim_len`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    header: InHeader,
    claimed_len: Option<u32>,
    fixed: Vec<u8>,
    parts: Vec<Vec<u8>>,
}

impl Request {
    /// A request with `opcode`, `unique` 1, node 1 (the root), sent by
    /// root (uid 0, gid 0) from pid 1.
    pub fn new(opcode: Opcode) -> Request {
        Request::raw(opcode as u32)
    }

    /// A request with any opcode number, defined or not.
    pub fn raw(opcode: u32) -> Request {
        Request {
            header: InHeader {
                opcode,
                unique: 1,
                nodeid: 1,
                pid: 1,
                ..Default::default()
            },
            claimed_len: None,
            fixed: Vec::new(),
            parts: Vec::new(),
        }
    }

    /// Sets the request's id.
    pub fn unique(mut self, unique: u64) -> Request {
        self.header.unique = unique;
        self
    }

    /// Sets the inode the request is about.
    pub fn nodeid(mut self, nodeid: u64) -> Request {
        self.header.nodeid = nodeid;
        self
    }

    /// Sets the caller.
    pub fn caller(mut self, uid: u32, gid: u32, pid: u32) -> Request {
        self.header.uid = uid;
        self.header.gid = gid;
        self.header.pid = pid;
        self
    }

    /// Sets the opcode's fixed argument struct (the `op_in` area of a ring
    /// entry).
    pub fn fixed<T: IntoBytes + Immutable>(self, value: &T) -> Request {
        self.fixed_bytes(value.as_bytes())
    }

    /// Sets the fixed argument as raw bytes (a truncated or oversized one).
    pub fn fixed_bytes(mut self, bytes: &[u8]) -> Request {
        self.fixed = bytes.to_vec();
        self
    }

    /// Appends a name and its terminating NUL.
    pub fn name(self, name: impl AsRef<[u8]>) -> Request {
        let mut bytes = name.as_ref().to_vec();
        bytes.push(0);
        self.bytes(&bytes)
    }

    /// Appends raw bytes after the fixed struct (data, or anything a test
    /// wants the parser to face).
    pub fn bytes(mut self, bytes: &[u8]) -> Request {
        self.parts.push(bytes.to_vec());
        self
    }

    /// Makes the header claim `len` bytes, whatever the request holds.
    pub fn claim_len(mut self, len: u32) -> Request {
        self.claimed_len = Some(len);
        self
    }

    /// The header, with `len` as claimed or as the request's size.
    pub fn header(&self) -> InHeader {
        let len = self
            .claimed_len
            .unwrap_or((std::mem::size_of::<InHeader>() + self.fixed.len() + self.payload_len()) as u32);
        InHeader { len, ..self.header }
    }

    /// The fixed argument struct's bytes.
    pub fn op_in(&self) -> &[u8] {
        &self.fixed
    }

    /// Everything after the fixed struct, as a ring entry's payload buffer
    /// holds it.
    pub fn payload(&self) -> Vec<u8> {
        self.parts.concat()
    }

    /// The arguments one by one (fixed struct first, if any), as a virtio-fs
    /// driver puts each in its own descriptor.
    pub fn args(&self) -> Vec<Vec<u8>> {
        let fixed = (!self.fixed.is_empty()).then(|| self.fixed.clone());
        fixed.into_iter().chain(self.parts.iter().cloned()).collect()
    }

    fn payload_len(&self) -> usize {
        self.parts.iter().map(Vec::len).sum()
    }

    /// The request as `/dev/fuse` delivers it: header, fixed struct, the rest.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = self.header().as_bytes().to_vec();
        bytes.extend_from_slice(&self.fixed);
        for part in &self.parts {
            bytes.extend_from_slice(part);
        }
        bytes
    }
}

#[cfg(test)]
mod tests {
    use kmod_shim::abi::MkdirIn;
    use zerocopy::FromBytes;

    use super::*;

    #[test]
    fn layouts_agree_and_the_length_is_computed_unless_claimed() {
        let mkdir = MkdirIn {
            mode: 0o755,
            umask: 0o22,
        };
        let r = Request::new(Opcode::Mkdir)
            .unique(9)
            .nodeid(3)
            .fixed(&mkdir)
            .name("d");
        let bytes = r.to_bytes();
        let (h, rest) = InHeader::read_from_prefix(&bytes).unwrap();
        assert_eq!(
            (h.len as usize, h.opcode, h.unique, h.nodeid),
            (bytes.len(), 9, 9, 3)
        );
        assert_eq!(rest, [r.op_in(), &r.payload()[..]].concat());
        assert_eq!(r.args(), vec![mkdir.as_bytes().to_vec(), b"d\0".to_vec()]);
        assert_eq!(r.clone().claim_len(7).header().len, 7);
    }
}
