//! Frames: how messages sit on a byte stream.
//!
//! ```text
//! u32 len     bytes after this field (header rest + message + bulk), LE
//! u64 id      the request id; a reply carries its request's id
//! u8  kind    KIND_REQUEST, KIND_REPLY or KIND_ERROR
//! u32 bulk    bytes of bulk payload at the end (0 for metadata)
//! ...         the message: postcard (see `codec`); an errno for KIND_ERROR
//! ...         the bulk payload, not encoded (file data, later RDMA-sized)
//! ```
//!
//! A frame is read whole before it is used, so a peer that sends a length
//! and then nothing is held to the reader's frame deadline, and memory for
//! a frame grows with the bytes that arrived, never with what a length
//! claims.

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

impl Frame {
    /// The frame as bytes on the stream.
    pub fn to_bytes(id: u64, kind: u8, message: &[u8], bulk: &[u8]) -> io::Result<Vec<u8>> {
        if message.len() > MESSAGE_LEN_MAX || bulk.len() > BULK_LEN_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "message of {} bytes and bulk of {} bytes exceed the frame limits ({MESSAGE_LEN_MAX}, {BULK_LEN_MAX})",
                    message.len(),
                    bulk.len()
                ),
            ));
        }
        let len = HEADER_LEN + message.len() + bulk.len();
        let mut out = Vec::with_capacity(4 + len);
        out.extend_from_slice(&(len as u32).to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
        out.push(kind);
        out.extend_from_slice(&(bulk.len() as u32).to_le_bytes());
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
    let Some(len) = frame_len(buf)? else {
        return Ok(None);
    };
    if buf.len() < 4 + len {
        return Ok(None);
    }
    let body = &buf[4..4 + len];
    let id = u64::from_le_bytes(body[0..8].try_into().expect("8 bytes"));
    let kind = body[8];
    if kind > KIND_ERROR {
        return Err(FrameError(format!("kind {kind}")));
    }
    let bulk_len = u32::from_le_bytes(body[9..13].try_into().expect("4 bytes")) as usize;
    let rest = len - HEADER_LEN;
    if bulk_len > BULK_LEN_MAX || bulk_len > rest || rest - bulk_len > MESSAGE_LEN_MAX {
        return Err(FrameError(format!(
            "{bulk_len} bytes of bulk in a frame of {len}"
        )));
    }
    let message = body[HEADER_LEN..HEADER_LEN + rest - bulk_len].to_vec();
    let bulk = body[HEADER_LEN + rest - bulk_len..].to_vec();
    buf.drain(..4 + len);
    Ok(Some(Frame {
        id,
        kind,
        message,
        bulk,
    }))
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
