//! Why the service layer encodes with postcard: encode + decode time and
//! size of its messages, postcard against bincode 2 (serde, varint
//! integers, with a size limit as the service would set).
//!
//! ```sh
//! cargo run --release -p xfused --example codec-choice
//! ```

use std::time::Instant;

use serde::de::DeserializeOwned;
use serde::Serialize;
use xfused::meta::schema::{InodeRec, Timestamp};
use xfused::meta::{Answer, Call, Caller, DirItem};
use xfused::net::{MetaReply, MetaRequest};

const LIMIT: usize = 1 << 20;

fn rec() -> InodeRec {
    let t = Timestamp {
        sec: 1_764_000_000,
        nsec: 123_456_789,
    };
    InodeRec {
        mode: libc::S_IFREG | 0o644,
        uid: 1000,
        gid: 1000,
        nlink: 1,
        size: 1 << 20,
        rdev: 0,
        atime: t,
        mtime: t,
        ctime: t,
        parent: 0,
        entries: 0,
        cookie_next: 0,
        chunk_size: 1 << 20,
        layout_id: 123_456,
        xattrs: 0,
        target: Vec::new(),
        replicas: 0,
    }
}

/// Median nanoseconds of one encode + decode, over batches.
fn time<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
    value: &T,
    encode: impl Fn(&T) -> Vec<u8>,
    decode: impl Fn(&[u8]) -> T,
) -> (f64, usize) {
    let bytes = encode(value);
    assert_eq!(&decode(&bytes), value);
    let mut batches = Vec::new();
    for _ in 0..15 {
        let n = 2_000;
        let start = Instant::now();
        for _ in 0..n {
            let b = encode(std::hint::black_box(value));
            std::hint::black_box(decode(&b));
        }
        batches.push(start.elapsed().as_nanos() as f64 / n as f64);
    }
    batches.sort_by(|a, b| a.total_cmp(b));
    (batches[batches.len() / 2], bytes.len())
}

fn row<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(name: &str, value: T) {
    let config = bincode::config::standard().with_limit::<LIMIT>();
    let (p_ns, p_len) = time(
        &value,
        |v| postcard::to_allocvec(v).unwrap(),
        |b| postcard::from_bytes(b).unwrap(),
    );
    let (b_ns, b_len) = time(
        &value,
        |v| bincode::serde::encode_to_vec(v, config).unwrap(),
        |b| bincode::serde::decode_from_slice(b, config).unwrap().0,
    );
    println!(
        "| {name} | {p_ns:.0} ns, {p_len} B | {b_ns:.0} ns, {b_len} B | {:.2} |",
        b_ns / p_ns
    );
}

fn main() {
    let caller = Caller {
        uid: 1000,
        gid: 1000,
        groups: vec![4, 24, 27, 100],
        check: true,
        umask: 0o022,
    };
    println!("| message | postcard | bincode 2 | bincode/postcard time |");
    println!("|---|---|---|---|");
    row(
        "lookup request",
        MetaRequest::Call(Call::Lookup {
            caller: caller.clone(),
            parent: 1234,
            name: b"checkpoint-000123.safetensors".to_vec(),
        }),
    );
    row("getattr reply", MetaReply::Answer(Answer::Getattr(rec())));
    row(
        "create (change) request",
        MetaRequest::Change {
            seq: 77_000,
            forget: (76_990, 76_999),
            resent: false,
            call: Call::Mknod {
                caller,
                parent: 1234,
                name: b"shard-00042.bin".to_vec(),
                mode: libc::S_IFREG | 0o644,
                rdev: 0,
                target: Vec::new(),
                open: true,
            },
        },
    );
    row(
        "readdir reply, 128 entries",
        MetaReply::Answer(Answer::Readdir(
            (0..128)
                .map(|i| DirItem {
                    name: format!("sample-{i:06}.jpg").into_bytes(),
                    ino: 1_000_000 + i,
                    kind: libc::S_IFREG,
                    cookie: 3 + i,
                })
                .collect(),
        )),
    );
}
