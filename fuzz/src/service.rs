//! Target `service`: the service protocol's decoding, as a server or
//! client reads a stream: frames taken off a buffer that grows piece by
//! piece ([`take_frame`]), then each message decoded as the metadata or
//! storage service's request or reply.
//!
//! Input: a mode byte (bit 0: storage service, else metadata; bits 1-7:
//! the size of the pieces the stream arrives in, 1 to 128 bytes), then
//! the stream.
//!
//! Checked: a frame is taken only when all of it arrived, consumes exactly
//! its bytes and encodes back to them; an incomplete frame leaves the
//! buffer as it was; a message that decodes encodes to a value that
//! decodes to itself, in no more bytes; decoding allocates at most a
//! bounded amount beyond the message's size (serde preallocates at most
//! 1 MiB per sequence whatever length a message claims: [`DECODE_SLACK_BYTES`]).

use serde::de::DeserializeOwned;
use serde::Serialize;
use xfused::net::{MetaReply, MetaRequest};
use xfused::rpc::codec::{decode, encode};
use xfused::rpc::frame::{frame_len, take_frame, Frame, KIND_ERROR, KIND_REPLY, KIND_REQUEST};
use xfused::storage::{StorageReply, StorageRequest};

use crate::alloc;

/// Bytes decoding may allocate beyond a multiple of the message's size:
/// serde's "cautious" preallocation of up to 1 MiB for a sequence (of any
/// claimed length; the claim then fails on the missing bytes), a few
/// sequences deep.
pub const DECODE_SLACK_BYTES: usize = 4 << 20;

/// The target.
pub fn service(data: &[u8]) {
    let Some((&mode, stream)) = data.split_first() else {
        return;
    };
    let storage = mode & 1 != 0;
    let piece = usize::from(mode >> 1) + 1;
    let mut buf = Vec::new();
    for chunk in stream.chunks(piece) {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.clone();
            match take_frame(&mut buf) {
                Ok(Some(frame)) => {
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
                    assert_eq!(buf, before, "an incomplete frame changed the buffer");
                    if let Ok(Some(len)) = frame_len(&buf) {
                        assert!(buf.len() < 4 + len, "a whole frame was left waiting");
                    }
                    break;
                }
                // The connection closes: nothing after this is read.
                Err(_) => return,
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
        peak <= DECODE_SLACK_BYTES + 64 * message.len(),
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
