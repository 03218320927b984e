//! Target `records`: the record layer a connection's bytes travel in
//! after its handshake (`xfused::rpc::record`), as a reader receives them
//! from the network, where anyone on the path may alter them.
//!
//! Input: a mode byte, then the rest. Bits 1-7 of the mode give the size
//! of the pieces the bytes arrive in (1 to 66,168 bytes). With bit 0
//! clear the rest is the stream as received, opened with a fixed key;
//! with bit 0 set it is a list of frames to send, split on `0xFD`, each
//! split into parts on `0xFF` (a part starting `0xFE` stands for its rest
//! repeated to a thousand times its length, to reach the long parts that
//! get records of their own), sealed and then opened.
//!
//! Checked: opening never panics and holds at most `OPENER_HELD_MAX`
//! bytes, however the stream is cut (a refused stream is dropped, as a
//! connection would be); sealed frames open to exactly their parts, in
//! order, in any pieces.

use xfused::rpc::record::{test_secrets, Opener, Sealer, OPENER_HELD_MAX};

const KEY: [u8; 32] = [0x5a; 32];
const IV: [u8; 12] = [0xa5; 12];

/// The target.
pub fn records(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let piece = 1 + usize::from(mode >> 1) * 521;
    if mode & 1 == 0 {
        open(rest, piece);
        return;
    }
    let frames: Vec<Vec<Vec<u8>>> = rest
        .split(|&b| b == 0xFD)
        .map(|frame| {
            frame
                .split(|&b| b == 0xFF)
                .map(|part| match part.split_first() {
                    Some((0xFE, body)) => body.repeat(1000),
                    _ => part.to_vec(),
                })
                .collect()
        })
        .collect();
    let mut sealer = Sealer::new(0, test_secrets(KEY, IV)).expect("a valid key");
    let mut wire = Vec::new();
    let mut want = Vec::new();
    for frame in &frames {
        let parts: Vec<&[u8]> = frame.iter().map(Vec::as_slice).collect();
        sealer
            .seal(&parts, &mut |bytes| {
                wire.extend_from_slice(bytes);
                Ok(())
            })
            .expect("sealing into memory");
        want.extend(frame.concat());
    }
    assert!(open(&wire, piece) == want, "sealed frames opened to other bytes");
}

/// Opens `wire`, arriving in pieces of `piece` bytes (as much of each as
/// the opener's buffer takes), until the end or a refusal: the plaintext.
fn open(wire: &[u8], piece: usize) -> Vec<u8> {
    let mut opener = Opener::new(0, test_secrets(KEY, IV)).expect("a valid key");
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        loop {
            match opener.open_next() {
                Ok(Some(plain)) => out.extend_from_slice(plain),
                Ok(None) => break,
                Err(_) => return out,
            }
        }
        let r = opener.read_from(&mut |buf| {
            let room = buf.capacity() - buf.len();
            let take = piece.min(room).min(wire.len() - at);
            buf.extend_from_slice(&wire[at..at + take]);
            at += take;
            Ok(take)
        });
        assert!(
            opener.buffered() <= OPENER_HELD_MAX,
            "the opener holds {} bytes",
            opener.buffered()
        );
        match r {
            Ok(0) | Err(_) => return out,
            Ok(_) => {}
        }
    }
}
