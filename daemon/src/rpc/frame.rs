//! Frames: how messages sit on a byte stream.
//!
//! ```text
//! u32 len     bytes after this field (header rest + message + bulk), LE
//! u64 id      the request id; a reply carries its request's id
//! u8  kind    KIND_REQUEST, KIND_REPLY, KIND_ERROR, or one of RDMA's
//!             (KIND_RDMA_HELLO, KIND_REQUEST_RDMA, KIND_REPLY_RDMA: see
//!             `rdma`)
//! u32 bulk    bytes of bulk payload at the end (0 for metadata)
//! ...         the message: postcard (see `codec`); an errno for KIND_ERROR
//! ...         the bulk payload, not encoded (file data, later RDMA-sized)
//! ```
//!
//! A frame is read whole before it is used, so a peer that sends a length
//! and then nothing is held to the reader's frame deadline. An
//! [`Assembler`] puts the bytes of a stream together into frames: a bulk
//! payload of [`DIRECT_BULK_MIN`] bytes or more goes straight into a
//! buffer of its own, reserved when the frame's header and message are in
//! (address space only: memory is touched as bytes arrive), so file data
//! is copied once on its way in rather than gathered and copied out.
//! Senders pass the parts of a frame as they are ([`header`]), for a
//! vectored write.

use std::io;

/// Bytes of the header after the length field.
pub const HEADER_LEN: usize = 8 + 1 + 4;
/// Largest message (the encoded part), in bytes.
pub const MESSAGE_LEN_MAX: usize = 1 << 20;
/// Largest bulk payload, in bytes.
pub const BULK_LEN_MAX: usize = 4 << 20;

/// A request.
pub const KIND_REQUEST: u8 = 0;
/// A successful reply.
pub const KIND_REPLY: u8 = 1;
/// A failed reply: the message is the errno, 4 bytes LE.
pub const KIND_ERROR: u8 = 2;
/// A request to connect queue pairs: the message is the caller's
/// [`super::rdma::Endpoint`]; the reply's, the service's.
pub const KIND_RDMA_HELLO: u8 = 3;
/// A request whose bulk payload waits in the caller's memory, and whose
/// reply payload goes there: the message is an [`super::rdma::RdmaCall`]
/// then the request; the frame carries no bulk.
pub const KIND_REQUEST_RDMA: u8 = 4;
/// A reply whose payload the service wrote into the caller's memory: the
/// message is the byte count (u32 LE), then the reply.
pub const KIND_REPLY_RDMA: u8 = 5;
/// The last kind.
const KIND_MAX: u8 = KIND_REPLY_RDMA;

/// One frame, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Request id.
    pub id: u64,
    /// `KIND_*`.
    pub kind: u8,
    /// The encoded message.
    pub message: Vec<u8>,
    /// The bulk payload.
    pub bulk: Vec<u8>,
}

/// The bytes before a frame's message: the length field and the header.
pub type Header = [u8; 4 + HEADER_LEN];

/// The header of a frame carrying `message_len` bytes of message and
/// `bulk_len` of bulk; on the stream, the message and the bulk follow it.
pub fn header(id: u64, kind: u8, message_len: usize, bulk_len: usize) -> io::Result<Header> {
    if message_len > MESSAGE_LEN_MAX || bulk_len > BULK_LEN_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "message of {message_len} bytes and bulk of {bulk_len} bytes exceed the frame limits ({MESSAGE_LEN_MAX}, {BULK_LEN_MAX})"
            ),
        ));
    }
    let len = HEADER_LEN + message_len + bulk_len;
    let mut out = [0; 4 + HEADER_LEN];
    out[0..4].copy_from_slice(&(len as u32).to_le_bytes());
    out[4..12].copy_from_slice(&id.to_le_bytes());
    out[12] = kind;
    out[13..17].copy_from_slice(&(bulk_len as u32).to_le_bytes());
    Ok(out)
}

impl Frame {
    /// The frame as bytes on the stream, in one buffer.
    pub fn to_bytes(id: u64, kind: u8, message: &[u8], bulk: &[u8]) -> io::Result<Vec<u8>> {
        let head = header(id, kind, message.len(), bulk.len())?;
        let mut out = Vec::with_capacity(head.len() + message.len() + bulk.len());
        out.extend_from_slice(&head);
        out.extend_from_slice(message);
        out.extend_from_slice(bulk);
        Ok(out)
    }
}

/// Why bytes are not a frame. The stream cannot be resynchronized after
/// one: the connection closes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad frame: {0}")]
pub struct FrameError(pub String);

/// Takes one whole frame off the front of `buf`, if one is there.
/// `Err` if what is there cannot become a frame.
pub fn take_frame(buf: &mut Vec<u8>) -> Result<Option<Frame>, FrameError> {
    let Some(h) = head(buf)? else {
        return Ok(None);
    };
    if buf.len() < 4 + h.len {
        return Ok(None);
    }
    let message = buf[4 + HEADER_LEN..h.message_end()].to_vec();
    let bulk = buf[h.message_end()..4 + h.len].to_vec();
    buf.drain(..4 + h.len);
    Ok(Some(Frame {
        id: h.id,
        kind: h.kind,
        message,
        bulk,
    }))
}

/// A bulk payload at least this long is read into a buffer of its own.
pub const DIRECT_BULK_MIN: usize = 64 * 1024;

/// A frame's header fields, checked.
#[derive(Debug, Clone, Copy)]
struct Head {
    len: usize,
    id: u64,
    kind: u8,
    bulk_len: usize,
}

impl Head {
    /// Where the message ends (and the bulk starts), from the frame's start.
    fn message_end(&self) -> usize {
        4 + self.len - self.bulk_len
    }
}

/// The header of the frame at the front of `buf`, checked, once its bytes
/// are there.
fn head(buf: &[u8]) -> Result<Option<Head>, FrameError> {
    let Some(len) = frame_len(buf)? else {
        return Ok(None);
    };
    if buf.len() < 4 + HEADER_LEN {
        return Ok(None);
    }
    let id = u64::from_le_bytes(buf[4..12].try_into().expect("8 bytes"));
    let kind = buf[12];
    if kind > KIND_MAX {
        return Err(FrameError(format!("kind {kind}")));
    }
    let bulk_len = u32::from_le_bytes(buf[13..17].try_into().expect("4 bytes")) as usize;
    let rest = len - HEADER_LEN;
    if bulk_len > BULK_LEN_MAX || bulk_len > rest || rest - bulk_len > MESSAGE_LEN_MAX {
        return Err(FrameError(format!(
            "{bulk_len} bytes of bulk in a frame of {len}"
        )));
    }
    Ok(Some(Head {
        len,
        id,
        kind,
        bulk_len,
    }))
}

/// A frame whose header and message are in, its bulk arriving.
#[derive(Debug)]
struct Partial {
    head: Head,
    message: Vec<u8>,
    bulk: Vec<u8>,
}

/// Puts frames together from the bytes of a stream (see the module docs).
///
/// Bytes go in with [`Assembler::feed`]; whole frames come out of
/// [`Assembler::take`], in order.
#[derive(Debug, Default)]
pub struct Assembler {
    /// Bytes of frames: whole ones not yet taken, then the one being read
    /// (unless its bulk goes to `partial`).
    buf: Vec<u8>,
    /// The front frame, when its bulk is read into a buffer of its own.
    partial: Option<Partial>,
}

impl Assembler {
    /// Whether no byte of any frame is held.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty() && self.partial.is_none()
    }

    /// The length field of the front frame, once known.
    pub fn front_len(&self) -> Result<Option<usize>, FrameError> {
        match &self.partial {
            Some(p) => Ok(Some(p.head.len)),
            None => frame_len(&self.buf),
        }
    }

    /// Whether a whole frame waits to be taken.
    pub fn has_frame(&self) -> bool {
        match &self.partial {
            Some(p) => p.bulk.len() == p.head.bulk_len,
            None => matches!(frame_len(&self.buf), Ok(Some(len)) if self.buf.len() >= 4 + len),
        }
    }

    /// Adds bytes that arrived. `Err` if they cannot be frames: the
    /// stream cannot be resynchronized, the connection closes.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), FrameError> {
        while !bytes.is_empty() {
            if let Some(p) = &mut self.partial {
                let want = p.head.bulk_len - p.bulk.len();
                if want == 0 {
                    // Later frames queue behind it.
                    self.buf.extend_from_slice(bytes);
                    return Ok(());
                }
                let n = want.min(bytes.len());
                p.bulk.extend_from_slice(&bytes[..n]);
                bytes = &bytes[n..];
                continue;
            }
            let Some(h) = head(&self.buf)? else {
                // The front frame's header, first.
                let n = (4 + HEADER_LEN - self.buf.len()).min(bytes.len());
                self.buf.extend_from_slice(&bytes[..n]);
                bytes = &bytes[n..];
                continue;
            };
            if self.buf.len() >= 4 + h.len || h.bulk_len < DIRECT_BULK_MIN {
                // A whole frame waits, or a small one is read: gathered here.
                self.buf.extend_from_slice(bytes);
                return Ok(());
            }
            let n = (h.message_end().saturating_sub(self.buf.len())).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.buf.len() == h.message_end() {
                self.start_bulk(h);
            }
        }
        if self.partial.is_none() {
            // A header that cannot be is refused as soon as it is in.
            head(&self.buf)?;
        }
        Ok(())
    }

    /// The front frame's message is all of `buf`: its bulk goes to a
    /// buffer of its own from here.
    fn start_bulk(&mut self, h: Head) {
        let message = self.buf[4 + HEADER_LEN..h.message_end()].to_vec();
        let mut bulk = Vec::with_capacity(h.bulk_len);
        bulk.extend_from_slice(&self.buf[h.message_end()..]);
        self.buf.clear();
        self.partial = Some(Partial {
            head: h,
            message,
            bulk,
        });
    }

    /// Takes the front frame, if it is whole. `Err` if what is there
    /// cannot become a frame.
    pub fn take(&mut self) -> Result<Option<Frame>, FrameError> {
        if let Some(p) = &self.partial {
            if p.bulk.len() < p.head.bulk_len {
                return Ok(None);
            }
            let p = self.partial.take().expect("checked");
            let frame = Frame {
                id: p.head.id,
                kind: p.head.kind,
                message: p.message,
                bulk: p.bulk,
            };
            self.advance();
            return Ok(Some(frame));
        }
        let frame = take_frame(&mut self.buf)?;
        if frame.is_some() {
            self.advance();
        }
        Ok(frame)
    }

    /// After a frame is taken: the next one's bulk goes to its own buffer
    /// if its message is in and its bulk is long and not all there yet.
    /// A next header that cannot be is refused by the next `take`, not
    /// here: the frame just taken is good and is answered.
    fn advance(&mut self) {
        if let Ok(Some(h)) = head(&self.buf) {
            if h.bulk_len >= DIRECT_BULK_MIN
                && self.buf.len() >= h.message_end()
                && self.buf.len() < 4 + h.len
            {
                self.start_bulk(h);
            }
        }
    }
}

/// The length field of the frame at the front of `buf`, checked, if its 4
/// bytes are there.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
    if !(HEADER_LEN..=HEADER_LEN + MESSAGE_LEN_MAX + BULK_LEN_MAX).contains(&len) {
        return Err(FrameError(format!("length {len}")));
    }
    Ok(Some(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_wait_for_their_last_byte() {
        let bytes = Frame::to_bytes(7, KIND_REPLY, b"message", b"bulk").unwrap();
        let mut buf = Vec::new();
        for (i, b) in bytes.iter().enumerate() {
            assert_eq!(take_frame(&mut buf).unwrap(), None, "after {i} bytes");
            buf.push(*b);
        }
        buf.extend_from_slice(&Frame::to_bytes(8, KIND_REQUEST, b"", b"").unwrap());
        let frame = take_frame(&mut buf).unwrap().unwrap();
        assert_eq!(
            frame,
            Frame {
                id: 7,
                kind: KIND_REPLY,
                message: b"message".to_vec(),
                bulk: b"bulk".to_vec()
            }
        );
        assert_eq!(take_frame(&mut buf).unwrap().unwrap().id, 8);
        assert!(buf.is_empty());
    }

    /// Small frames and frames with long bulk, fed in pieces of every
    /// size pattern: the same frames come out, in order, and long bulk
    /// lands in a buffer of its own.
    #[test]
    fn an_assembler_gives_back_the_frames_fed_in_any_pieces() {
        let big: Vec<u8> = (0..DIRECT_BULK_MIN * 3 + 7)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let frames = vec![
            Frame {
                id: 1,
                kind: KIND_REQUEST,
                message: b"small".to_vec(),
                bulk: b"b".to_vec(),
            },
            Frame {
                id: 2,
                kind: KIND_REPLY,
                message: b"big".to_vec(),
                bulk: big.clone(),
            },
            Frame {
                id: 3,
                kind: KIND_REPLY,
                message: Vec::new(),
                bulk: big[..DIRECT_BULK_MIN].to_vec(),
            },
            Frame {
                id: 4,
                kind: KIND_ERROR,
                message: 5i32.to_le_bytes().to_vec(),
                bulk: Vec::new(),
            },
            Frame {
                id: 5,
                kind: KIND_REPLY,
                message: b"x".repeat(1000),
                bulk: big[7..].to_vec(),
            },
        ];
        let mut stream = Vec::new();
        for f in &frames {
            stream.extend(Frame::to_bytes(f.id, f.kind, &f.message, &f.bulk).unwrap());
        }
        for piece in [1, 5, 17, 18, 4096, 16 * 1024 + 3, 100_000, stream.len()] {
            let mut asm = Assembler::default();
            let mut out = Vec::new();
            let mut direct = 0;
            for bytes in stream.chunks(piece) {
                assert!(!asm.has_frame(), "fed only when no whole frame waits");
                asm.feed(bytes).unwrap();
                direct += usize::from(asm.partial.is_some());
                while let Some(f) = asm.take().unwrap() {
                    out.push(f);
                }
            }
            assert_eq!(out, frames, "pieces of {piece}");
            assert!(asm.is_empty());
            if piece < DIRECT_BULK_MIN {
                assert!(direct > 0, "pieces of {piece}: long bulk went to its own buffer");
            }
        }
    }

    /// A good frame followed, in the same bytes, by a header that cannot
    /// be: the good one is taken (and answered), then the stream refused.
    #[test]
    fn a_good_frame_before_a_bad_header_is_taken_first() {
        for bulk in [vec![1; 10], vec![2; DIRECT_BULK_MIN]] {
            let mut bytes = Frame::to_bytes(1, KIND_REQUEST, b"x", &bulk).unwrap();
            let mut bad = Frame::to_bytes(2, KIND_REQUEST, b"y", b"").unwrap();
            bad[12] = 9;
            bytes.extend_from_slice(&bad);
            let mut asm = Assembler::default();
            asm.feed(&bytes).unwrap();
            assert_eq!(asm.take().unwrap().unwrap().bulk, bulk);
            assert!(asm.take().is_err());
        }
    }

    #[test]
    fn an_assembler_refuses_a_bad_header_before_its_frame_is_in() {
        let mut asm = Assembler::default();
        let mut bytes = Frame::to_bytes(1, KIND_REQUEST, b"x", &[0; 10]).unwrap();
        bytes[12] = 9;
        assert!(asm.feed(&bytes[..4 + HEADER_LEN]).is_err());
        let mut asm = Assembler::default();
        assert!(asm.feed(&u32::MAX.to_le_bytes()).is_err());
        // A bulk longer than the frame.
        let mut asm = Assembler::default();
        let mut bytes = Frame::to_bytes(1, KIND_REQUEST, b"x", &[0; 10]).unwrap();
        bytes[13..17].copy_from_slice(&1000u32.to_le_bytes());
        assert!(asm.feed(&bytes[..4 + HEADER_LEN]).is_err());
    }

    #[test]
    fn impossible_lengths_and_kinds_are_refused() {
        let mut huge = ((HEADER_LEN + MESSAGE_LEN_MAX + BULK_LEN_MAX + 1) as u32)
            .to_le_bytes()
            .to_vec();
        assert!(take_frame(&mut huge).is_err());
        let mut short = 3u32.to_le_bytes().to_vec();
        assert!(take_frame(&mut short).is_err());
        let mut kind = Frame::to_bytes(1, KIND_REQUEST, b"x", b"").unwrap();
        kind[12] = 9;
        assert!(take_frame(&mut kind).is_err());
        let mut bulk = Frame::to_bytes(1, KIND_REQUEST, b"x", b"").unwrap();
        bulk[13] = 5;
        assert!(take_frame(&mut bulk).is_err());
        assert!(Frame::to_bytes(1, KIND_REQUEST, &vec![0; MESSAGE_LEN_MAX + 1], b"").is_err());
    }
}
