//! Target `request`: kernel requests in the `/dev/fuse` layout, through
//! `split_contiguous` and the dispatcher on [`FuzzFs`], and `Args` against
//! a model of itself.
//!
//! Input: one mode byte, then the rest.
//!
//! - mode bit 0 clear: the rest is a request whose header `len` is set to
//!   its real length first (so mutations get past the length check); set:
//!   the `len` stays as the input has it.
//! - mode bit 1 set: the rest drives `Args` directly ([`args_program`]).
//! - mode bits 2-3: which features the session negotiated.
//! - mode bit 4: with the adaptive-timeout and negative-cache policies.

use std::mem::size_of;
use std::sync::Arc;
use std::time::Duration;

use kmod_shim::abi::{
    init_flags, AttrOut, EntryOut, ForgetOne, InHeader, MkdirIn, Opcode, OpenOut, OutHeader, SetxattrIn,
    WriteIn, WriteOut,
};
use xfuse::cache::{AdaptiveConfig, AdaptiveTtl};
use xfuse::request::{split_contiguous, Args, ParseError, NAME_MAX_BYTES};
use xfuse::transport::out_header;
use xfuse::{DispatcherBuilder, Negotiated, Policy, Reply};
use zerocopy::{FromBytes, IntoBytes};

use crate::fs::FuzzFs;

/// The session a fuzzed request arrives in.
pub(crate) fn negotiated(mode: u8) -> Negotiated {
    let flags = match (mode >> 2) & 3 {
        0 => init_flags::MAX_PAGES,
        1 => init_flags::MAX_PAGES | init_flags::DO_READDIRPLUS | init_flags::POSIX_ACL,
        2 => init_flags::MAX_PAGES | init_flags::HANDLE_KILLPRIV_V2 | init_flags::SETXATTR_EXT,
        _ => init_flags::MAX_PAGES | init_flags::OVER_IO_URING | init_flags::WRITEBACK_CACHE,
    };
    Negotiated {
        minor: 45,
        offered: flags,
        flags,
        max_write: 16 * 1024,
        max_pages: 4,
        max_readahead: 0,
    }
}

/// A dispatcher over a fresh [`FuzzFs`], with the policies `mode` picks.
pub(crate) fn dispatcher(mode: u8) -> xfuse::Dispatcher<FuzzFs> {
    let mut builder = DispatcherBuilder::new(FuzzFs::default(), negotiated(mode));
    if mode & 0x10 != 0 {
        builder.set_policy(Policy {
            negative_timeout: Duration::from_millis(1500),
            open_noflush: true,
            ..Default::default()
        });
        builder.set_adaptive_ttl(Arc::new(AdaptiveTtl::new(AdaptiveConfig::default())));
    }
    builder.build()
}

/// The target.
pub fn request(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 2 != 0 {
        args_program(rest);
        return;
    }
    let mut buf = rest.to_vec();
    if mode & 1 == 0 && buf.len() >= 4 {
        let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        buf[..4].copy_from_slice(&len.to_ne_bytes());
    }
    let d = dispatcher(mode);
    let mut out = vec![0u8; d.negotiated().max_reply_bytes()];
    let total = buf.len();
    let header = InHeader::read_from_prefix(&buf[..]).ok().map(|(h, _)| h);
    let reply = match split_contiguous(&mut buf) {
        Ok((h, args)) => {
            assert_eq!(h.len as usize, total, "accepted a request whose len is wrong");
            let ext = usize::from(h.total_extlen) * 8;
            assert_eq!(
                args.len() + size_of::<InHeader>() + ext,
                total,
                "arguments are the request minus header and extensions"
            );
            let reply = d.dispatch(&h, Args::contiguous(args), &mut out);
            check_reply(&d, &h, reply.as_ref(), &out);
            reply
        }
        Err(bad) => {
            assert_eq!(
                bad.unique,
                header.map(|h| h.unique),
                "the unique is known exactly when the header is readable"
            );
            bad.unique.map(|u| Reply::malformed(u, bad.error))
        }
    };
    if let Some(r) = reply {
        // What a transport writes: header then body, `len` counting both.
        let o: OutHeader = out_header(r.unique, r.error, r.body_len);
        assert_eq!(o.len as usize, size_of::<OutHeader>() + r.body_len);
        assert!(r.error <= 0 && r.error > -4096, "error {} is no errno", r.error);
    }
}

/// What every reply to a request that reached the dispatcher must satisfy.
pub(crate) fn check_reply(d: &xfuse::Dispatcher<FuzzFs>, h: &InHeader, reply: Option<&Reply>, out: &[u8]) {
    let op = Opcode::from_raw(h.opcode);
    let silent = matches!(
        op,
        Some(Opcode::Forget | Opcode::BatchForget | Opcode::Interrupt | Opcode::NotifyReply)
    );
    let Some(r) = reply else {
        assert!(silent, "no reply to {op:?}, which takes one");
        return;
    };
    assert!(!silent, "a reply to {op:?}, which takes none");
    assert_eq!(r.unique, h.unique, "the reply answers another request");
    assert!(r.error <= 0 && r.error > -4096, "error {} is no errno", r.error);
    assert!(
        r.body_len <= out.len(),
        "body of {} bytes in {}",
        r.body_len,
        out.len()
    );
    if r.error != 0 {
        assert_eq!((r.body_len, r.lookup), (0, None), "an error reply with a body");
    }
    // Every reference the filesystem handed out is in the reply, or was
    // given back when the reply could not carry it.
    if !matches!(op, Some(Opcode::Readdirplus | Opcode::Destroy)) {
        assert_eq!(
            d.fs().outstanding(),
            i128::from(r.lookup.is_some()),
            "{op:?}: lookup references leaked or lost (reply {r:?})"
        );
    }
    if r.error != 0 {
        return;
    }
    let entry = size_of::<EntryOut>();
    let expected = match op {
        Some(Opcode::Lookup | Opcode::Mknod | Opcode::Mkdir | Opcode::Symlink | Opcode::Link) => Some(entry),
        Some(Opcode::Create) => Some(entry + size_of::<OpenOut>()),
        Some(Opcode::Getattr | Opcode::Setattr) => Some(size_of::<AttrOut>()),
        Some(Opcode::Open | Opcode::Opendir) => Some(size_of::<OpenOut>()),
        Some(Opcode::Write) => Some(size_of::<WriteOut>()),
        _ => None,
    };
    if let Some(len) = expected {
        assert_eq!(r.body_len, len, "{op:?} reply body");
    }
    if let Some(ino) = r.lookup {
        let (e, _) = EntryOut::read_from_prefix(out).expect("an entry reply holds an entry");
        assert_eq!(e.nodeid, ino, "the reference carried is the entry's");
    }
}

/// `Args` model: what each call must return and leave behind.
#[derive(Debug)]
struct Model {
    head: Vec<u8>,
    tail: Vec<u8>,
    split: bool,
}

impl Model {
    fn after_fixed(&mut self, size: usize) {
        if self.split {
            self.head = std::mem::take(&mut self.tail);
            self.split = false;
        } else {
            self.head.drain(..size);
        }
    }

    fn take(&mut self, n: usize) -> Result<Vec<u8>, ParseError> {
        if n > self.head.len() {
            return Err(ParseError::Truncated {
                wanted: n,
                left: self.head.len(),
            });
        }
        Ok(self.head.drain(..n).collect())
    }

    fn remaining(&self) -> usize {
        self.head.len() + self.tail.len()
    }
}

/// Drives `Args` with a program and checks every answer against [`Model`].
/// Input: a program length P, P operation bytes, a split point S, then the
/// argument bytes; S = 0 is the contiguous layout, otherwise the first
/// S - 1 bytes are the `op_in` area and the rest the payload.
fn args_program(data: &[u8]) {
    let Some((&len, rest)) = data.split_first() else {
        return;
    };
    let p = usize::from(len % 32).min(rest.len());
    let (program, rest) = rest.split_at(p);
    let Some((&split_at, bytes)) = rest.split_first() else {
        return;
    };
    let mut bytes = bytes.to_vec();
    let cut = usize::from(split_at).saturating_sub(1).min(bytes.len());
    let (mut args, mut model) = if split_at == 0 {
        let model = Model {
            head: bytes.clone(),
            tail: Vec::new(),
            split: false,
        };
        (Args::contiguous(&mut bytes), model)
    } else {
        let model = Model {
            head: bytes[..cut].to_vec(),
            tail: bytes[cut..].to_vec(),
            split: true,
        };
        let (op_in, payload) = bytes.split_at_mut(cut);
        (Args::split(op_in, payload), model)
    };
    for &op in program {
        let arg = usize::from(op >> 3);
        match op & 7 {
            0 => {
                let want = model.head.get(..size_of::<MkdirIn>()).map(<[u8]>::to_vec);
                let got = args.fixed::<MkdirIn>();
                match want {
                    Some(bytes) => {
                        assert_eq!(got.expect("fixed fits").as_bytes(), &bytes[..]);
                        model.after_fixed(size_of::<MkdirIn>());
                    }
                    None => assert!(got.is_err()),
                }
            }
            1 => {
                let want = model.head.get(..size_of::<WriteIn>()).map(<[u8]>::to_vec);
                let got = args.fixed::<WriteIn>();
                match want {
                    Some(bytes) => {
                        assert_eq!(got.expect("fixed fits").as_bytes(), &bytes[..]);
                        model.after_fixed(size_of::<WriteIn>());
                    }
                    None => assert!(got.is_err()),
                }
            }
            2 => {
                let size = arg % (size_of::<SetxattrIn>() + 2);
                let got = args.fixed_prefix::<SetxattrIn>(size);
                if size > model.head.len() || size > size_of::<SetxattrIn>() {
                    assert!(got.is_err());
                } else {
                    let mut want = model.head[..size].to_vec();
                    want.resize(size_of::<SetxattrIn>(), 0);
                    assert_eq!(got.expect("prefix fits").as_bytes(), &want[..]);
                    model.after_fixed(size);
                }
            }
            3 => {
                args.no_fixed();
                model.after_fixed(0);
            }
            4 => {
                let got = args.name();
                match model.head.iter().position(|&b| b == 0) {
                    None => assert_eq!(got, Err(ParseError::Unterminated)),
                    Some(nul) if nul >= NAME_MAX_BYTES => {
                        assert_eq!(got, Err(ParseError::NameTooLong(nul)))
                    }
                    Some(nul) => {
                        let want = model.take(nul + 1).expect("name is in head");
                        assert_eq!(got.expect("name").to_bytes(), &want[..nul]);
                    }
                }
            }
            5 => {
                let want = model.take(arg);
                let got = args.bytes(arg).map(|b| b.to_vec());
                assert_eq!(got, want);
            }
            6 => {
                let count = if arg == 31 { usize::MAX } else { arg };
                let got = args.array::<ForgetOne>(count);
                match count.checked_mul(size_of::<ForgetOne>()) {
                    None => assert!(got.is_err()),
                    Some(total) => match model.take(total) {
                        Err(e) => assert_eq!(got.err(), Some(e)),
                        Ok(want) => {
                            let got = got.expect("array fits");
                            assert_eq!(got.len(), count);
                            assert_eq!(got.as_bytes(), &want[..]);
                        }
                    },
                }
            }
            _ => {
                let done = args.finish();
                assert_eq!(done.is_ok(), model.remaining() == 0);
            }
        }
        assert_eq!(args.remaining(), model.remaining(), "after op {op:#x}");
    }
}
