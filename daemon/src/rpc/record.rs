//! The record layer of a connection once its TLS 1.3 handshake is done.
//!
//! The handshake (rustls: mutual authentication, key agreement) gives each
//! direction of a connection its own AEAD key and IV. rustls would then
//! carry the bytes in TLS records of at most 16 KiB, buffering them twice
//! on the way in (ciphertext, then a copy of each record's plaintext) and
//! serializing readers with writers behind one lock. Here the keys are
//! taken from rustls ([`rustls::Connection::dangerous_extract_secrets`])
//! and the bytes travel in records of our own:
//!
//! ```text
//! record = length (u32, little-endian, the plaintext's) · ciphertext · tag (16 bytes)
//! ```
//!
//! sealed with the negotiated AEAD (AES-GCM or ChaCha20-Poly1305, by
//! `ring`), the length as associated data, and the nonce of TLS 1.3: the
//! IV with the record's sequence number (from the one rustls left off at)
//! XORed into its last 8 bytes. So, as in TLS, a record that is altered,
//! dropped, replayed, reordered or moved to the other direction fails to
//! open, and the connection ends. A record holds at most [`RECORD_MAX`]
//! bytes; a part of a frame of [`OWN_RECORD_MIN`] bytes or more (a bulk
//! payload) starts a record of its own, so a frame's header is opened
//! before its payload is read.
//!
//! A record is opened in place in the buffer it was read into, and its
//! plaintext handed on from there: one copy fewer than rustls, and a
//! reader and a writer of the connection never wait for each other.
//!
//! The switch: the service sends the first record (the bytes [`READY`]),
//! and the client sends nothing before it has opened it. Neither side's
//! rustls therefore reads past the handshake, where these records begin.
//! Both ends name the protocol by ALPN ([`ALPN`]): a peer that does not
//! speak it fails the handshake, or is refused right after it.

use std::io;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, NONCE_LEN};

/// The ALPN name of this record layer.
pub const ALPN: &[u8] = b"xfuse-records/1";
/// The plaintext of the service's first record.
pub const READY: &[u8] = b"xfuse records ready";
/// Plaintext bytes per record at most.
pub const RECORD_MAX: usize = 64 * 1024;
/// A part this long starts a record of its own.
pub const OWN_RECORD_MIN: usize = 16 * 1024;
/// Bytes of a record's length prefix.
const PREFIX: usize = 4;
/// Bytes of a record's tag.
const TAG: usize = 16;
/// Sealed bytes gathered before they are written.
const SEND_BATCH: usize = 256 * 1024;
/// Bytes read at least per system call.
const READ_MIN: usize = 16 * 1024;
/// Bytes an [`Opener`] holds at most: one record begun and one read past
/// it (the buffer's spare capacity, which reads fill, may double).
pub const OPENER_HELD_MAX: usize = 2 * (PREFIX + RECORD_MAX + TAG + READ_MIN);

/// One direction's key, IV and next sequence number.
struct Keys {
    key: LessSafeKey,
    iv: [u8; NONCE_LEN],
    seq: u64,
}

impl Keys {
    fn new(seq: u64, secrets: rustls::ConnectionTrafficSecrets) -> io::Result<Keys> {
        let (algorithm, key, iv) = match secrets {
            rustls::ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            rustls::ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            rustls::ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv)
            }
            _ => {
                return Err(io::Error::other(
                    "the handshake chose a cipher this build cannot use",
                ))
            }
        };
        let key = UnboundKey::new(algorithm, key.as_ref())
            .map_err(|_| io::Error::other("the handshake's key does not fit its cipher"))?;
        let iv: [u8; NONCE_LEN] = iv
            .as_ref()
            .try_into()
            .map_err(|_| io::Error::other("the handshake's IV is not 12 bytes"))?;
        Ok(Keys {
            key: LessSafeKey::new(key),
            iv,
            seq,
        })
    }

    /// The next record's nonce; each is used once.
    fn next_nonce(&mut self) -> io::Result<Nonce> {
        if self.seq == u64::MAX {
            return Err(io::Error::other(
                "a connection's records ran out of sequence numbers",
            ));
        }
        let mut nonce = self.iv;
        for (n, s) in nonce[NONCE_LEN - 8..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        self.seq += 1;
        Ok(Nonce::assume_unique_for_key(nonce))
    }
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("seq", &self.keys.seq)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opener")
            .field("seq", &self.keys.seq)
            .field("buffered", &(self.buf.len() - self.start))
            .finish_non_exhaustive()
    }
}

fn bad_record() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "a record failed its integrity check")
}

/// The sending direction.
pub struct Sealer {
    keys: Keys,
    buf: Vec<u8>,
    /// Where the record being filled starts in `buf`.
    open: Option<usize>,
}

/// AES-256-GCM secrets made of `key` and `iv` (for tests and fuzzing;
/// connections take theirs from the handshake).
pub fn test_secrets(key: [u8; 32], iv: [u8; NONCE_LEN]) -> rustls::ConnectionTrafficSecrets {
    rustls::ConnectionTrafficSecrets::Aes256Gcm {
        key: rustls::crypto::cipher::AeadKey::from(key),
        iv: rustls::crypto::cipher::Iv::from(iv),
    }
}

impl Sealer {
    /// Sends with `secrets` from record `seq` on.
    pub fn new(seq: u64, secrets: rustls::ConnectionTrafficSecrets) -> io::Result<Sealer> {
        Ok(Sealer {
            keys: Keys::new(seq, secrets)?,
            buf: Vec::new(),
            open: None,
        })
    }

    /// Seals `parts`, one after another, as records, handing sealed bytes
    /// to `send` every [`SEND_BATCH`] bytes or so and at the end.
    pub fn seal(&mut self, parts: &[&[u8]], send: &mut dyn FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        self.buf.clear();
        self.open = None;
        for part in parts.iter().filter(|p| !p.is_empty()) {
            let own = part.len() >= OWN_RECORD_MIN;
            if own {
                self.close()?;
            }
            let mut rest = *part;
            while !rest.is_empty() {
                let start = match self.open {
                    Some(s) => s,
                    None => {
                        if self.buf.len() >= SEND_BATCH {
                            send(&self.buf)?;
                            self.buf.clear();
                        }
                        let s = self.buf.len();
                        self.buf.extend_from_slice(&[0; PREFIX]);
                        self.open = Some(s);
                        s
                    }
                };
                let room = RECORD_MAX - (self.buf.len() - start - PREFIX);
                let take = rest.len().min(room);
                self.buf.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if take == room {
                    self.close()?;
                }
            }
            if own {
                self.close()?;
            }
        }
        self.close()?;
        if !self.buf.is_empty() {
            send(&self.buf)?;
        }
        // Keep a batch's worth of buffer, not the largest frame's.
        if self.buf.capacity() > 2 * SEND_BATCH {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
        Ok(())
    }

    /// Seals the record being filled, if any.
    fn close(&mut self) -> io::Result<()> {
        let Some(start) = self.open.take() else {
            return Ok(());
        };
        let len = self.buf.len() - start - PREFIX;
        let prefix = u32::try_from(len).expect("a record is small").to_le_bytes();
        self.buf[start..start + PREFIX].copy_from_slice(&prefix);
        let nonce = self.keys.next_nonce()?;
        let tag = self
            .keys
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(prefix), &mut self.buf[start + PREFIX..])
            .map_err(|_| io::Error::other("sealing a record"))?;
        self.buf.extend_from_slice(tag.as_ref());
        Ok(())
    }
}

/// The receiving direction: bytes read, records opened in place.
pub struct Opener {
    keys: Keys,
    buf: Vec<u8>,
    /// Where the bytes not yet opened start in `buf`.
    start: usize,
}

impl Opener {
    /// Receives with `secrets` from record `seq` on.
    pub fn new(seq: u64, secrets: rustls::ConnectionTrafficSecrets) -> io::Result<Opener> {
        Ok(Opener {
            keys: Keys::new(seq, secrets)?,
            buf: Vec::new(),
            start: 0,
        })
    }

    /// Whether bytes wait here unopened.
    pub fn has_bytes(&self) -> bool {
        self.start < self.buf.len()
    }

    /// How many bytes wait here unopened.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The whole length of the next record, once its prefix is in.
    fn next_len(&self) -> io::Result<Option<usize>> {
        let Some(prefix) = self.buf.get(self.start..self.start + PREFIX) else {
            return Ok(None);
        };
        let len = u32::from_le_bytes(prefix.try_into().expect("4 bytes")) as usize;
        if len == 0 {
            // Never sealed (a record is closed only with bytes in it): a
            // stream of them would keep a reader busy without a byte.
            return Err(io::Error::new(io::ErrorKind::InvalidData, "an empty record"));
        }
        if len > RECORD_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a record of {len} bytes, more than {RECORD_MAX}"),
            ));
        }
        Ok(Some(PREFIX + len + TAG))
    }

    /// Whether a whole record waits to be opened.
    pub fn has_record(&self) -> io::Result<bool> {
        Ok(self.next_len()?.is_some_and(|n| self.buf.len() - self.start >= n))
    }

    /// Opens the next record if it is all here: its plaintext.
    pub fn open_next(&mut self) -> io::Result<Option<&[u8]>> {
        let Some(n) = self.next_len()? else {
            return Ok(None);
        };
        if self.buf.len() - self.start < n {
            return Ok(None);
        }
        let at = self.start;
        self.start += n;
        let prefix: [u8; PREFIX] = self.buf[at..at + PREFIX].try_into().expect("4 bytes");
        let nonce = self.keys.next_nonce()?;
        let plain = self
            .keys
            .key
            .open_in_place(nonce, Aad::from(prefix), &mut self.buf[at + PREFIX..at + n])
            .map_err(|_| bad_record())?;
        Ok(Some(plain))
    }

    /// Reads what `read` gives into the buffer (enough for the record
    /// begun, at least [`READ_MIN`]): the bytes read, 0 at the end of the
    /// stream. An end inside a record is an error.
    pub fn read_from(
        &mut self,
        read: &mut dyn FnMut(&mut Vec<u8>) -> io::Result<usize>,
    ) -> io::Result<usize> {
        // Bytes opened are dropped; what is left of a record moves to the
        // front (less than one read's worth, or a record in progress).
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let need = self.next_len()?.unwrap_or(PREFIX).saturating_sub(self.buf.len());
        self.buf.reserve(need.max(READ_MIN));
        let n = read(&mut self.buf)?;
        if n == 0 && self.has_bytes() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the connection ended inside a record",
            ));
        }
        if self.buf.is_empty() && self.buf.capacity() > RECORD_MAX + READ_MIN + PREFIX + TAG {
            self.buf = Vec::new();
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(byte: u8) -> rustls::ConnectionTrafficSecrets {
        test_secrets([byte; 32], [byte; 12])
    }

    fn pair() -> (Sealer, Opener) {
        (
            Sealer::new(3, secrets(1)).unwrap(),
            Opener::new(3, secrets(1)).unwrap(),
        )
    }

    fn sealed(s: &mut Sealer, parts: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        s.seal(parts, &mut |b| {
            out.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
        out
    }

    /// Feeds `wire` to `o` in pieces of `piece` bytes, then the end of
    /// the stream; the plaintext.
    fn opened(o: &mut Opener, wire: &[u8], piece: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            while let Some(p) = o.open_next()? {
                out.extend_from_slice(p);
            }
            if at == wire.len() {
                o.read_from(&mut |_| Ok(0))?;
                return Ok(out);
            }
            let take = piece.min(wire.len() - at);
            o.read_from(&mut |buf| {
                buf.extend_from_slice(&wire[at..at + take]);
                Ok(take)
            })?;
            at += take;
        }
    }

    #[test]
    fn records_carry_any_parts_in_any_pieces() {
        let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
        let frames: Vec<Vec<&[u8]>> = vec![
            vec![b"head", b"message"],
            vec![b"h", &big[..OWN_RECORD_MIN], b"tail"],
            vec![&big, b"x"],
            vec![&[], b"after empty"],
            vec![&big[..RECORD_MAX], &big[..RECORD_MAX + 1]],
        ];
        for piece in [1, 5, 4096, 70_000, usize::MAX] {
            let (mut s, mut o) = pair();
            let mut wire = Vec::new();
            let mut want = Vec::new();
            for parts in &frames {
                wire.extend(sealed(&mut s, parts));
                want.extend(parts.concat());
            }
            let got = opened(&mut o, &wire, piece).unwrap();
            assert!(got == want, "pieces of {piece}");
            assert!(!o.has_bytes());
        }
    }

    #[test]
    fn a_long_part_starts_a_record_of_its_own() {
        let (mut s, mut o) = pair();
        let bulk = vec![9u8; OWN_RECORD_MIN];
        let wire = sealed(&mut s, &[b"header", &bulk]);
        // The header's record is whole before the bulk's first byte.
        let first = PREFIX + 6 + TAG;
        o.read_from(&mut |buf| {
            buf.extend_from_slice(&wire[..first]);
            Ok(first)
        })
        .unwrap();
        assert_eq!(o.open_next().unwrap(), Some(&b"header"[..]));
        assert_eq!(o.open_next().unwrap(), None);
    }

    #[test]
    fn altered_dropped_replayed_or_reflected_records_fail() {
        let (mut s, _) = pair();
        let one = sealed(&mut s, &[b"first"]);
        let two = sealed(&mut s, &[b"second"]);
        let fresh = || Opener::new(3, secrets(1)).unwrap();
        // Intact.
        let both = [one.clone(), two.clone()].concat();
        assert_eq!(opened(&mut fresh(), &both, usize::MAX).unwrap(), b"firstsecond");
        // Any byte altered: the prefix, the ciphertext or the tag.
        for i in 0..one.len() {
            let mut bad = one.clone();
            bad[i] ^= 0x40;
            let r = opened(&mut fresh(), &bad, usize::MAX);
            assert!(r.is_err(), "byte {i} altered went through: {r:?}");
        }
        // Dropped (the second alone), replayed (the first twice), reordered.
        for wire in [
            two.clone(),
            [one.clone(), one.clone()].concat(),
            [two.clone(), one.clone()].concat(),
        ] {
            let r = opened(&mut fresh(), &wire, usize::MAX);
            assert!(r.is_err(), "{r:?}");
        }
        // The other direction's key.
        let r = opened(&mut Opener::new(3, secrets(2)).unwrap(), &one, usize::MAX);
        assert!(r.is_err());
        // Cut short: an end inside a record.
        for cut in [1, 3, 4, one.len() - 1] {
            let r = opened(&mut fresh(), &one[..cut], usize::MAX);
            assert!(r.is_err(), "cut at {cut}: {r:?}");
        }
    }

    #[test]
    fn records_longer_than_the_bound_or_empty_are_refused_before_they_are_read() {
        for len in [RECORD_MAX + 1, 0] {
            let mut o = Opener::new(0, secrets(1)).unwrap();
            let prefix = u32::try_from(len).unwrap().to_le_bytes();
            o.read_from(&mut |buf| {
                buf.extend_from_slice(&prefix);
                Ok(4)
            })
            .unwrap();
            assert!(o.open_next().is_err(), "a record of {len} bytes");
            assert!(o.read_from(&mut |_| Ok(0)).is_err());
        }
        // A sealer makes none.
        let (mut s, _) = pair();
        assert!(sealed(&mut s, &[&[], &[]]).is_empty());
    }
}
