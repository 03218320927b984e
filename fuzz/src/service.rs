//! Target `service`: the service protocol's decoding, as a server or
//! client reads a stream: frames taken off a buffer that grows piece by
//! piece ([`take_frame`]), then each message decoded as the metadata or
//! storage service's request or reply.
//!
//! Input: a mode byte (bit 0: storage service, else metadata; bits 1-7:
//! the size of the pieces the stream arrives in, 1 to 128 bytes), then
//! the stream.
//!
//! Checked: the `Assembler` the services read with gives the same frames
//! as `take_frame` and refuses a stream no later; a frame is taken only when all of it arrived, consumes exactly
//! its bytes and encodes back to them; an incomplete frame leaves the
//! buffer as it was; a message that decodes encodes to a value that
//! decodes to itself, in no more bytes; decoding allocates in proportion
//! to the message, never to a length it claims ([`DECODE_BYTES_PER_BYTE`]).

use serde::de::DeserializeOwned;
use serde::Serialize;
use xfused::net::{MetaReply, MetaRequest};
use xfused::rpc::codec::{decode, encode};
use xfused::rpc::frame::{frame_len, take_frame, Assembler, Frame, KIND_ERROR, KIND_REPLY, KIND_REQUEST};
use xfused::storage::{StorageReply, StorageRequest};

use crate::alloc;

/// Bytes decoding may allocate per byte of message. postcard gives serde
/// no length hint, so a claimed length preallocates nothing (a 5-byte
/// storage reply claiming 2^32 chunks peaks at 41 bytes); what is
/// allocated grows with the elements actually decoded. Over the service
/// corpus the most was 45 per byte (wide elements from one-byte varints,
/// doubled by vector growth).
pub const DECODE_BYTES_PER_BYTE: usize = 64;
/// Bytes decoding may allocate on top of [`DECODE_BYTES_PER_BYTE`].
pub const DECODE_SLACK_BYTES: usize = 1 << 20;

/// The target.
pub fn service(data: &[u8]) {
    let Some((&mode, stream)) = data.split_first() else {
        return;
    };
    let storage = mode & 1 != 0;
    let piece = usize::from(mode >> 1) + 1;
    let mut buf = Vec::new();
    // What the services read with: fed the same pieces, it gives the same
    // frames, and refuses a stream no later than `take_frame` does.
    let mut frames = Assembler::default();
    let mut refused = false;
    for chunk in stream.chunks(piece) {
        buf.extend_from_slice(chunk);
        refused = refused || frames.feed(chunk).is_err();
        loop {
            let before = buf.clone();
            let assembled = if refused {
                None
            } else {
                frames.take().map_err(|_| refused = true).ok()
            };
            match take_frame(&mut buf) {
                Ok(Some(frame)) => {
                    assert!(!refused, "the assembler refused a stream take_frame reads");
                    assert_eq!(
                        assembled,
                        Some(Some(frame.clone())),
                        "the assembler gave another frame than take_frame"
                    );
                    let used = before.len() - buf.len();
                    assert_eq!(&before[used..], &buf[..], "take_frame took from the middle");
                    let bytes = Frame::to_bytes(frame.id, frame.kind, &frame.message, &frame.bulk)
                        .expect("a frame read is a frame that can be written");
                    assert_eq!(
                        bytes,
                        before[..used],
                        "the frame does not encode back to its bytes"
                    );
                    message(storage, &frame);
                }
                Ok(None) => {
                    assert!(
                        matches!(assembled, None | Some(None)),
                        "the assembler gave a frame take_frame does not have yet"
                    );
                    assert_eq!(buf, before, "an incomplete frame changed the buffer");
                    if let Ok(Some(len)) = frame_len(&buf) {
                        assert!(buf.len() < 4 + len, "a whole frame was left waiting");
                    }
                    break;
                }
                // The connection closes: nothing after this is read.
                Err(_) => {
                    assert!(
                        refused || frames.take().is_err(),
                        "take_frame refused a stream the assembler reads"
                    );
                    return;
                }
            }
        }
    }
}

fn message(storage: bool, frame: &Frame) {
    match (storage, frame.kind) {
        (false, KIND_REQUEST) => round_trip::<MetaRequest>(&frame.message),
        (false, KIND_REPLY) => round_trip::<MetaReply>(&frame.message),
        (true, KIND_REQUEST) => round_trip::<StorageRequest>(&frame.message),
        (true, KIND_REPLY) => round_trip::<StorageReply>(&frame.message),
        (_, KIND_ERROR) => {
            // An errno, 4 bytes; anything else is refused by the client.
        }
        (_, kind) => panic!("take_frame accepted kind {kind}"),
    }
}

fn round_trip<T>(message: &[u8])
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let (decoded, peak) = alloc::peak_during(|| decode::<T>(message));
    assert!(
        peak <= DECODE_SLACK_BYTES + DECODE_BYTES_PER_BYTE * message.len(),
        "decoding {} bytes allocated {peak}",
        message.len()
    );
    let Ok(value) = decoded else { return };
    let again = encode(&value);
    assert!(
        again.len() <= message.len(),
        "{value:?} encodes to {} bytes, decoded from {}",
        again.len(),
        message.len()
    );
    assert_eq!(decode::<T>(&again).as_ref(), Ok(&value), "no round trip");
}
