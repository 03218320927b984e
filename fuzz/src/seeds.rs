//! Seed inputs: real requests, ring entries, chains and frames, built
//! with the same builders the tests use, so the fuzzer starts past the
//! first parse of every opcode and message instead of at random bytes.
//! `scripts/fuzz.sh` writes them into an empty corpus (the `seeds` binary).

use kmod_shim::abi::{
    AccessIn, BatchForgetIn, BmapIn, CreateIn, FallocateIn, FlushIn, ForgetIn, ForgetOne, FsyncIn, GetattrIn,
    GetxattrIn, InitIn, InterruptIn, IoctlIn, LinkIn, LkIn, LseekIn, MkdirIn, MknodIn, Opcode, OpenIn,
    PollIn, ReadIn, ReleaseIn, Rename2In, RenameIn, SetattrIn, SetxattrIn, WriteIn,
};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use xfuse::testkit::Request;
use zerocopy::IntoBytes;

/// The seeds of target `name`, each with a file name.
pub fn seeds(name: &str) -> Vec<(String, Vec<u8>)> {
    match name {
        "request" => request(),
        "ring" => ring(),
        "virtio" => virtio(),
        #[cfg(feature = "service")]
        "service" => service(),
        #[cfg(feature = "service")]
        "records" => records(),
        _ => Vec::new(),
    }
}

/// One request of each opcode family the dispatcher serves, on the
/// double's inodes (1 root, 2 file "f", 3 directory "d", 4 symlink "l").
pub fn requests() -> Vec<(&'static str, Request)> {
    let r = |op: Opcode, node: u64| Request::new(op).unique(0x42).nodeid(node);
    let write = WriteIn {
        size: 16,
        ..Default::default()
    };
    let read = ReadIn {
        size: 4096,
        ..Default::default()
    };
    let setattr = SetattrIn {
        valid: kmod_shim::abi::fattr::MODE | kmod_shim::abi::fattr::SIZE,
        mode: 0o644,
        size: 100,
        ..Default::default()
    };
    let mut batch = BatchForgetIn {
        count: 2,
        ..Default::default()
    }
    .as_bytes()
    .to_vec();
    for nodeid in [2u64, 3] {
        batch.extend_from_slice(ForgetOne { nodeid, nlookup: 1 }.as_bytes());
    }
    vec![
        ("lookup", r(Opcode::Lookup, 1).name("f")),
        ("lookup-missing", r(Opcode::Lookup, 1).name("missing")),
        ("getattr", r(Opcode::Getattr, 2).fixed(&GetattrIn::default())),
        ("setattr", r(Opcode::Setattr, 2).fixed(&setattr)),
        ("readlink", r(Opcode::Readlink, 4)),
        ("symlink", r(Opcode::Symlink, 1).name("s").name("f")),
        ("mknod", r(Opcode::Mknod, 1).fixed(&MknodIn::default()).name("n")),
        (
            "mkdir",
            r(Opcode::Mkdir, 1)
                .fixed(&MkdirIn {
                    mode: 0o755,
                    umask: 0o22,
                })
                .name("m"),
        ),
        ("unlink", r(Opcode::Unlink, 1).name("f")),
        ("rmdir", r(Opcode::Rmdir, 1).name("d")),
        (
            "rename",
            r(Opcode::Rename, 1)
                .fixed(&RenameIn { newdir: 3 })
                .name("f")
                .name("g"),
        ),
        (
            "rename2",
            r(Opcode::Rename2, 1)
                .fixed(&Rename2In {
                    newdir: 3,
                    flags: 1,
                    padding: 0,
                })
                .name("f")
                .name("g"),
        ),
        (
            "link",
            r(Opcode::Link, 1).fixed(&LinkIn { oldnodeid: 2 }).name("h"),
        ),
        ("access", r(Opcode::Access, 2).fixed(&AccessIn::default())),
        ("open", r(Opcode::Open, 2).fixed(&OpenIn::default())),
        (
            "create",
            r(Opcode::Create, 1).fixed(&CreateIn::default()).name("c"),
        ),
        ("read", r(Opcode::Read, 2).fixed(&read)),
        (
            "write",
            r(Opcode::Write, 2).fixed(&write).bytes(b"sixteen bytes!!!"),
        ),
        ("release", r(Opcode::Release, 2).fixed(&ReleaseIn::default())),
        ("fsync", r(Opcode::Fsync, 2).fixed(&FsyncIn::default())),
        ("flush", r(Opcode::Flush, 2).fixed(&FlushIn::default())),
        ("getlk", r(Opcode::Getlk, 2).fixed(&LkIn::default())),
        ("setlk", r(Opcode::Setlk, 2).fixed(&LkIn::default())),
        (
            "fallocate",
            r(Opcode::Fallocate, 2).fixed(&FallocateIn::default()),
        ),
        ("lseek", r(Opcode::Lseek, 2).fixed(&LseekIn::default())),
        ("ioctl", r(Opcode::Ioctl, 2).fixed(&IoctlIn::default())),
        ("poll", r(Opcode::Poll, 2).fixed(&PollIn::default())),
        ("bmap", r(Opcode::Bmap, 2).fixed(&BmapIn::default())),
        ("opendir", r(Opcode::Opendir, 3).fixed(&OpenIn::default())),
        ("readdir", r(Opcode::Readdir, 3).fixed(&read)),
        ("readdirplus", r(Opcode::Readdirplus, 3).fixed(&read)),
        (
            "releasedir",
            r(Opcode::Releasedir, 3).fixed(&ReleaseIn::default()),
        ),
        ("fsyncdir", r(Opcode::Fsyncdir, 3).fixed(&FsyncIn::default())),
        (
            "setxattr",
            r(Opcode::Setxattr, 2)
                .fixed(&SetxattrIn {
                    size: 3,
                    ..Default::default()
                })
                .name("user.k")
                .bytes(b"abc"),
        ),
        (
            "getxattr",
            r(Opcode::Getxattr, 2)
                .fixed(&GetxattrIn { size: 64, padding: 0 })
                .name("user.k"),
        ),
        (
            "getxattr-size",
            r(Opcode::Getxattr, 2)
                .fixed(&GetxattrIn::default())
                .name("user.k"),
        ),
        (
            "listxattr",
            r(Opcode::Listxattr, 2).fixed(&GetxattrIn { size: 64, padding: 0 }),
        ),
        ("removexattr", r(Opcode::Removexattr, 2).name("user.k")),
        ("statfs", r(Opcode::Statfs, 1)),
        ("init", r(Opcode::Init, 0).fixed(&InitIn::default())),
        (
            "interrupt",
            r(Opcode::Interrupt, 0).fixed(&InterruptIn { unique: 7 }),
        ),
        ("forget", r(Opcode::Forget, 2).fixed(&ForgetIn { nlookup: 1 })),
        ("batch-forget", r(Opcode::BatchForget, 0).bytes(&batch)),
        ("statx", r(Opcode::Statx, 2).bytes(&[0; 24])),
        ("unknown", Request::raw(999).unique(0x42)),
    ]
}

fn request() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, req) in requests() {
        let bytes = req.to_bytes();
        out.push((name.to_string(), [&[0u8][..], &bytes].concat()));
        // Other sessions and policies: the readdirplus and xattr features,
        // privilege clearing, the adaptive timeouts.
        for mode in [0x04u8, 0x08, 0x1c] {
            out.push((format!("{name}-mode{mode:02x}"), [&[mode][..], &bytes].concat()));
        }
    }
    // `Args` programs (mode bit 1): program length, program, split point,
    // bytes. fixed, name, name, finish over "mkdir" arguments; then the
    // ring's split layout with a name in the payload.
    let mkdir = [MkdirIn::default().as_bytes(), b"a\0b\0"].concat();
    out.push((
        "args-contiguous".into(),
        [&[2u8, 4, 0, 4, 4, 7, 0][..], &mkdir].concat(),
    ));
    out.push((
        "args-split".into(),
        [&[2u8, 4, 0, 4, 4, 7, 9][..], &mkdir].concat(),
    ));
    out.push((
        "args-bytes-array".into(),
        [&[2u8, 4, 3, (16 << 3) | 6, (2 << 3) | 5, 7, 0][..], &[1u8; 40]].concat(),
    ));
    out
}

/// A request as a ring entry: mode, payload size, header, `op_in`, payload.
pub fn ring_entry(mode: u8, req: &Request) -> Vec<u8> {
    let payload = req.payload();
    let op_in = req.op_in();
    let mut out = vec![mode];
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(req.header().as_bytes());
    out.push(op_in.len() as u8);
    out.extend_from_slice(op_in);
    out.extend_from_slice(&payload);
    out
}

fn ring() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, req) in requests() {
        out.push((name.to_string(), ring_entry(0x0c, &req)));
        out.push((format!("{name}-q1"), ring_entry(0x01, &req)));
    }
    // A payload size larger than the buffer.
    let mut huge = ring_entry(0x0c, &requests()[0].1);
    huge[1..5].copy_from_slice(&(1u32 << 24).to_le_bytes());
    out.push(("payload-size-beyond-buffer".into(), huge));
    out
}

/// A raw split descriptor as in guest memory.
fn desc(addr: u64, len: u32, flags: u32, next: u16) -> Vec<u8> {
    let mut d = addr.to_le_bytes().to_vec();
    d.extend_from_slice(&len.to_le_bytes());
    d.extend_from_slice(&(flags as u16).to_le_bytes());
    d.extend_from_slice(&next.to_le_bytes());
    d
}

/// A virtio input: limit selector, descriptors, memory image at
/// [`crate::virtio::DATA`].
fn chain(limit: u8, descs: &[Vec<u8>], image: &[u8]) -> Vec<u8> {
    let mut out = vec![limit, descs.len() as u8];
    for d in descs {
        out.extend_from_slice(d);
    }
    out.extend_from_slice(image);
    out
}

fn virtio() -> Vec<(String, Vec<u8>)> {
    use crate::virtio::DATA;
    let (next, write) = (VRING_DESC_F_NEXT, VRING_DESC_F_WRITE);
    let lookup = Request::new(Opcode::Lookup).name("f").to_bytes();
    let n = lookup.len() as u32;
    let high = 0x2_0000u64;
    let mut out = vec![
        (
            "one-in-one-out".to_string(),
            chain(0, &[desc(DATA, n, next, 1), desc(high, 256, write, 0)], &lookup),
        ),
        (
            "split-request-two-replies".to_string(),
            chain(
                1,
                &[
                    desc(DATA, 40, next, 1),
                    desc(DATA + 40, n - 40, next, 2),
                    desc(DATA + 0x800, 0, next, 3),
                    desc(high, 16, write | next, 4),
                    desc(high + 0x100, 200, write, 0),
                ],
                &lookup,
            ),
        ),
        (
            "straddles-the-hole".to_string(),
            chain(
                0,
                &[desc(0xff00, 0x200, next, 1), desc(high, 64, write, 0)],
                &lookup,
            ),
        ),
        (
            "readable-after-writable".to_string(),
            chain(
                0,
                &[desc(high, 64, write | next, 1), desc(DATA, n, 0, 0)],
                &lookup,
            ),
        ),
        (
            "loop".to_string(),
            chain(0, &[desc(DATA, n, next, 1), desc(high, 64, next, 0)], &lookup),
        ),
        (
            "dangling-next".to_string(),
            chain(0, &[desc(DATA, n, next, 99)], &lookup),
        ),
    ];
    // An indirect table in the image: two readable, one writable.
    let table_at = DATA + 0x400;
    let mut image = lookup.clone();
    image.resize(0x400, 0);
    image.extend(desc(DATA, 40, next, 1));
    image.extend(desc(DATA + 40, n - 40, next, 2));
    image.extend(desc(high, 128, write, 0));
    out.push((
        "indirect".into(),
        chain(0, &[desc(table_at, 48, VRING_DESC_F_INDIRECT, 0)], &image),
    ));
    out.push((
        "indirect-bad-length".into(),
        chain(0, &[desc(table_at, 40, VRING_DESC_F_INDIRECT, 0)], &image),
    ));
    out
}

#[cfg(feature = "service")]
fn service() -> Vec<(String, Vec<u8>)> {
    use xfused::cluster::ClusterCall;
    use xfused::meta::{Answer, Call};
    use xfused::net::{MetaReply, MetaRequest};
    use xfused::rpc::codec::encode;
    use xfused::rpc::frame::{Frame, KIND_ERROR, KIND_REPLY, KIND_REQUEST};
    use xfused::storage::{ChainRef, ChunkId, ChunkOp, StorageReply, StorageRequest, UpdateId};

    let frame = |id: u64, kind: u8, message: Vec<u8>, bulk: &[u8]| {
        Frame::to_bytes(id, kind, &message, bulk).expect("a small frame")
    };
    let meta_requests = [
        MetaRequest::Hello,
        MetaRequest::Resume {
            client: 7,
            token: [9; 32],
        },
        MetaRequest::Call(Call::Getattr { ino: 1 }),
        MetaRequest::Call(Call::Readdir {
            ino: 1,
            after: 0,
            limit: 128,
        }),
        MetaRequest::Change {
            seq: 3,
            forget: (1, 2),
            resent: false,
            call: Call::Release { ino: 5, handle: 6 },
        },
        MetaRequest::Cluster(ClusterCall::Heartbeat {
            targets: vec![1, 2],
            synced: vec![(1, 2, 3)],
        }),
        MetaRequest::Cluster(ClusterCall::Table),
    ];
    let meta_replies = [
        MetaReply::Session {
            client: 7,
            token: [9; 32],
        },
        MetaReply::Resumed,
        MetaReply::Answer(Answer::Readlink(b"target".to_vec())),
    ];
    let chain = ChainRef { id: 1, version: 2 };
    let chunk = ChunkId { layout: 3, index: 4 };
    let storage_requests = [
        StorageRequest::Update {
            target: 1,
            chain,
            chunk,
            op: ChunkOp::Write { offset: 0 },
            id: UpdateId { client: 1, seq: 2 },
            sync: true,
        },
        StorageRequest::Forward {
            target: 2,
            chain,
            chunk,
            op: ChunkOp::Replace,
            version: 5,
            id: UpdateId { client: 1, seq: 2 },
            sync: false,
            recent: vec![(1, 2), (3, 4)],
        },
        StorageRequest::Read {
            target: 1,
            chain,
            chunk,
            offset: 0,
            len: 4096,
        },
        StorageRequest::ListChain {
            target: 1,
            chain,
            after: Some(chunk),
        },
    ];
    let storage_replies = [
        StorageReply::Done { version: 1 },
        StorageReply::Data {
            version: 2,
            recent: vec![(5, 6)],
        },
        StorageReply::Chunks(vec![(1, 2, 3)]),
        StorageReply::ChainChunks(vec![(chunk, 9)]),
    ];
    let mut out = Vec::new();
    // Mode: bit 0 storage; pieces of 128 bytes (0xfe), or 1 byte (0x00)
    // to exercise reassembly.
    for (i, m) in meta_requests.iter().enumerate() {
        out.push((
            format!("meta-request-{i}"),
            [&[0xfe][..], &frame(i as u64, KIND_REQUEST, encode(m), b"")].concat(),
        ));
    }
    for (i, m) in meta_replies.iter().enumerate() {
        out.push((
            format!("meta-reply-{i}"),
            [&[0x00][..], &frame(i as u64, KIND_REPLY, encode(m), b"")].concat(),
        ));
    }
    for (i, m) in storage_requests.iter().enumerate() {
        out.push((
            format!("storage-request-{i}"),
            [
                &[0xff][..],
                &frame(i as u64, KIND_REQUEST, encode(m), b"bulk data"),
            ]
            .concat(),
        ));
    }
    for (i, m) in storage_replies.iter().enumerate() {
        out.push((
            format!("storage-reply-{i}"),
            [&[0x11][..], &frame(i as u64, KIND_REPLY, encode(m), b"")].concat(),
        ));
    }
    // Two frames back to back, and an error reply.
    let two = [
        frame(1, KIND_REQUEST, encode(&MetaRequest::Hello), b""),
        frame(2, KIND_ERROR, (-2i32).to_le_bytes().to_vec(), b""),
    ]
    .concat();
    out.push(("two-frames".into(), [&[0x06][..], &two].concat()));
    out
}

/// Frames to seal (bit 0 of the mode set) and streams as received: sealed
/// ones, one cut short, one altered, one with a length past the bound.
#[cfg(feature = "service")]
fn records() -> Vec<(String, Vec<u8>)> {
    use xfused::rpc::record::{test_secrets, Sealer, RECORD_MAX};
    let sealed = |parts: &[&[u8]]| {
        let mut s = Sealer::new(0, test_secrets([0x5a; 32], [0xa5; 12])).expect("a valid key");
        let mut wire = Vec::new();
        s.seal(parts, &mut |b| {
            wire.extend_from_slice(b);
            Ok(())
        })
        .expect("sealing into memory");
        wire
    };
    let with_mode = |mode: u8, rest: &[u8]| [&[mode][..], rest].concat();
    let header = b"header of 24 bytes......";
    let bulk = vec![0x33u8; 20_000];
    let two = sealed(&[header, b"message", &bulk]);
    let mut altered = two.clone();
    altered[10] ^= 1;
    let too_long = u32::try_from(RECORD_MAX + 1).expect("small").to_le_bytes();
    vec![
        (
            "frames-small".into(),
            with_mode(1, b"header\xffmessage\xfdsecond"),
        ),
        (
            "frames-long-part".into(),
            with_mode(1 | (7 << 1), b"head\xff\xfebulk-bytes\xffafter"),
        ),
        (
            "frames-empty-parts".into(),
            with_mode(1 | (1 << 1), b"\xff\xff\xfdx"),
        ),
        ("stream-sealed".into(), with_mode(0, &two)),
        (
            "stream-sealed-bytewise".into(),
            with_mode(0, &sealed(&[header, b"m"])),
        ),
        ("stream-cut".into(), with_mode(2 << 1, &two[..two.len() - 5])),
        ("stream-altered".into(), with_mode(0, &altered)),
        ("stream-too-long".into(), with_mode(0, &too_long)),
    ]
}
