//! fallocate and `SEEK_DATA`/`SEEK_HOLE` checked against a local
//! filesystem: each case of [`CASES`] runs on a fresh file in a mount and on one in
//! tmpfs (or, for modes tmpfs lacks — `FALLOC_FL_ZERO_RANGE` — in the
//! temporary directory's filesystem), and every result, the size, the bytes
//! (read through the file's own descriptor and through a new one), whether
//! each fallocate touched the mtime, and, for cases marked so, where
//! `SEEK_DATA`/`SEEK_HOLE` land from a set of offsets must be the same.
//!
//! Seeks are compared only where the answer is determined at 4 KiB
//! granularity on both sides: against tmpfs (ext4 may call a zeroed range
//! data), on a mount with 4 KiB chunks, in cases marked so (a punch that
//! empties a chunk from its start past its last byte leaves a hole on the
//! mount where tmpfs keeps a zeroed page). Elsewhere the mount's answers
//! must still be sound: what it calls a hole reads as zeros, and each
//! answer is at or after its offset and within the file (POSIX lets a hole
//! be reported as data, never data as a hole).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use rustix::fs::{FallocateFlags, SeekFrom, Timespec, Timestamps};

/// One step of a case.
#[derive(Debug, Clone, Copy)]
pub enum Op {
    /// `pwrite` of [`super::pattern`] bytes: (offset, length, seed).
    Write(u64, usize, u64),
    /// `ftruncate`.
    Truncate(u64),
    /// `fallocate(mode, offset, length)`.
    Falloc(FallocateFlags, u64, u64),
}

/// A named list of steps on a new, empty file.
#[derive(Debug)]
pub struct Case {
    /// For messages.
    pub name: &'static str,
    /// The steps.
    pub ops: &'static [Op],
    /// Whether `SEEK_DATA`/`SEEK_HOLE` answers are compared (see the
    /// module docs).
    pub seek: bool,
}

const KEEP: FallocateFlags = FallocateFlags::KEEP_SIZE;
const PUNCH: FallocateFlags = FallocateFlags::PUNCH_HOLE.union(FallocateFlags::KEEP_SIZE);
const ZERO: FallocateFlags = FallocateFlags::ZERO_RANGE;
const ZERO_KEEP: FallocateFlags = FallocateFlags::ZERO_RANGE.union(FallocateFlags::KEEP_SIZE);
const ALLOC: FallocateFlags = FallocateFlags::empty();
const P: u64 = 4096;

/// Allocate, punch-hole and zero-range, with and without `KEEP_SIZE`,
/// aligned and not, inside the file, across its end and past it.
pub const CASES: &[Case] = &[
    Case {
        name: "allocate grows the size",
        ops: &[Op::Write(0, 10_000, 1), Op::Falloc(ALLOC, 0, 20_000)],
        seek: true,
    },
    Case {
        name: "allocate past the end with KEEP_SIZE keeps it",
        ops: &[Op::Write(0, 10_000, 2), Op::Falloc(KEEP, 5000, 50_000)],
        seek: true,
    },
    Case {
        name: "allocate inside never shrinks",
        ops: &[Op::Write(0, 30_000, 3), Op::Falloc(ALLOC, 0, 100)],
        seek: true,
    },
    Case {
        name: "allocate of an empty file, then a write in the middle",
        ops: &[Op::Falloc(ALLOC, 0, 8 * P), Op::Write(3 * P + 5, 100, 4)],
        seek: true,
    },
    Case {
        name: "allocate after a shrink reads zeros, not the old bytes",
        ops: &[
            Op::Write(0, 20_000, 5),
            Op::Truncate(5000),
            Op::Falloc(ALLOC, 0, 20_000),
        ],
        seek: true,
    },
    Case {
        name: "punch unaligned across chunks",
        ops: &[Op::Write(0, 5 * 4096 + 123, 6), Op::Falloc(PUNCH, 100, 3 * P + 7)],
        seek: true,
    },
    Case {
        name: "punch of whole pages",
        ops: &[Op::Write(0, 8 * 4096, 7), Op::Falloc(PUNCH, P, 4 * P)],
        seek: true,
    },
    Case {
        name: "punch across the end keeps the size",
        ops: &[Op::Write(0, 10_000, 8), Op::Falloc(PUNCH, 2 * P, 100_000)],
        seek: true,
    },
    Case {
        name: "punch wholly past the end",
        ops: &[Op::Write(0, 10_000, 9), Op::Falloc(PUNCH, 20 * P, P)],
        seek: true,
    },
    Case {
        name: "punch of the whole file",
        ops: &[Op::Write(0, 3 * 4096 + 5, 10), Op::Falloc(PUNCH, 0, 4 * P)],
        seek: true,
    },
    Case {
        name: "punch inside one page",
        ops: &[Op::Write(0, 3 * 4096, 11), Op::Falloc(PUNCH, P + 10, 100)],
        seek: true,
    },
    Case {
        name: "punch from a page's start past the last byte (a hole on the mount)",
        ops: &[Op::Write(0, 4096 + 100, 12), Op::Falloc(PUNCH, P, 200)],
        seek: false,
    },
    Case {
        name: "zero-range inside, unaligned",
        ops: &[Op::Write(0, 5 * 4096 + 123, 13), Op::Falloc(ZERO, 100, 3 * P + 7)],
        seek: true,
    },
    Case {
        name: "zero-range across the end grows the size",
        ops: &[Op::Write(0, 10_000, 14), Op::Falloc(ZERO, 2 * P, 20_000)],
        seek: true,
    },
    Case {
        name: "zero-range past the end grows the size over zeros",
        ops: &[
            Op::Write(0, 20_000, 15),
            Op::Truncate(5000),
            Op::Falloc(ZERO, 3 * P, P),
        ],
        seek: true,
    },
    Case {
        name: "zero-range with KEEP_SIZE across the end keeps the size",
        ops: &[Op::Write(0, 10_000, 16), Op::Falloc(ZERO_KEEP, P, 50_000)],
        seek: true,
    },
    Case {
        name: "zero-range with KEEP_SIZE of whole pages",
        ops: &[Op::Write(0, 8 * 4096, 17), Op::Falloc(ZERO_KEEP, P, 2 * P)],
        seek: true,
    },
    Case {
        name: "punch, write into the hole, zero, allocate",
        ops: &[
            Op::Write(0, 6 * 4096, 18),
            Op::Falloc(PUNCH, 0, 6 * P),
            Op::Write(2 * P + 7, 5000, 19),
            Op::Falloc(ZERO_KEEP, 2 * P + 100, 50),
            Op::Falloc(ALLOC, 4 * P, 4 * P),
        ],
        seek: true,
    },
];

/// What a case did on one filesystem.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    /// Each step's result (an errno, or 0), and for fallocate whether the
    /// mtime moved.
    steps: Vec<(i32, Option<bool>)>,
    size: u64,
    /// The bytes through the descriptor used for every step.
    bytes_same_fd: Vec<u8>,
    /// The bytes through a new descriptor.
    bytes_new_fd: Vec<u8>,
    /// (offset, SEEK_DATA, SEEK_HOLE), each an offset or `-errno`.
    seeks: Vec<(u64, i64, i64)>,
}

fn errno(r: rustix::io::Result<()>) -> i32 {
    r.err().map_or(0, |e| e.raw_os_error())
}

fn seek(file: &File, to: SeekFrom) -> i64 {
    match rustix::fs::seek(file, to) {
        Ok(at) => at as i64,
        Err(e) => -i64::from(e.raw_os_error()),
    }
}

/// Far in the past, so any update of the mtime shows.
const OLD: Timespec = Timespec {
    tv_sec: 1_000_000_000,
    tv_nsec: 0,
};

fn run(dir: &Path, case: &Case, index: usize) -> Outcome {
    let path = dir.join(format!("case{index}"));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
    let mut steps = Vec::new();
    for op in case.ops {
        steps.push(match *op {
            Op::Write(at, len, seed) => {
                let r = file.write_all_at(&super::pattern(len, seed), at);
                (r.err().and_then(|e| e.raw_os_error()).unwrap_or(0), None)
            }
            Op::Truncate(size) => (
                file.set_len(size)
                    .err()
                    .and_then(|e| e.raw_os_error())
                    .unwrap_or(0),
                None,
            ),
            Op::Falloc(mode, at, len) => {
                let old = Timestamps {
                    last_access: OLD,
                    last_modification: OLD,
                };
                rustix::fs::futimens(&file, &old).expect("futimens");
                let r = errno(rustix::fs::fallocate(&file, mode, at, len));
                let mtime = rustix::fs::fstat(&file).expect("fstat").st_mtime;
                (r, Some(mtime != OLD.tv_sec))
            }
        });
    }
    let size = file.metadata().expect("fstat").len();
    let mut bytes_same_fd = vec![0u8; size as usize];
    file.read_exact_at(&mut bytes_same_fd, 0).expect("reading back");
    let bytes_new_fd = std::fs::read(&path).expect("reading back through a new descriptor");
    let mut seeks = Vec::new();
    {
        let mut offsets: Vec<u64> = (0..=size.div_ceil(P) + 1).map(|i| i * P).collect();
        offsets.extend([1, 100, P + 1, 2 * P + 300, size.saturating_sub(1)]);
        offsets.sort_unstable();
        offsets.dedup();
        for at in offsets {
            seeks.push((
                at,
                seek(&file, SeekFrom::Data(at)),
                seek(&file, SeekFrom::Hole(at)),
            ));
        }
    }
    Outcome {
        steps,
        size,
        bytes_same_fd,
        bytes_new_fd,
        seeks,
    }
}

/// The seeks of `outcome` that break POSIX: an answer before its offset
/// or past the end, a hole that holds a byte other than zero, or `ENXIO`
/// for `SEEK_DATA` with data left.
fn unsound_seeks(outcome: &Outcome) -> Vec<String> {
    let bytes = &outcome.bytes_same_fd;
    let size = outcome.size;
    let zeros = |from: u64, to: u64| bytes[from as usize..to as usize].iter().all(|b| *b == 0);
    let mut out = Vec::new();
    for &(at, data, hole) in &outcome.seeks {
        if at >= size {
            if data != -i64::from(libc::ENXIO) || hole != -i64::from(libc::ENXIO) {
                out.push(format!(
                    "at {at} (the end is {size}): data/hole {data}/{hole}, expected ENXIO"
                ));
            }
            continue;
        }
        let data_ok = match data {
            d if d == -i64::from(libc::ENXIO) => zeros(at, size),
            d if d >= at as i64 && (d as u64) < size => zeros(at, d as u64),
            _ => false,
        };
        // A hole at `hole` holds at least its first byte (or is the end).
        let hole_ok =
            hole >= at as i64 && hole as u64 <= size && (hole as u64 == size || bytes[hole as usize] == 0);
        if !data_ok || !hole_ok {
            out.push(format!("at {at}: data/hole {data}/{hole}"));
        }
    }
    out
}

/// The first differing byte of two buffers, for messages.
fn first_difference(a: &[u8], b: &[u8]) -> String {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(at) => format!("first difference at byte {at}: {} vs {}", a[at], b[at]),
        None => format!("lengths {} vs {}", a.len(), b.len()),
    }
}

/// Runs every case of [`CASES`] in `mnt` and on the reference filesystems; returns
/// a description of each case that differs (empty: all agree). Panics if
/// no reference filesystem supports a case's modes.
pub fn differences(mnt: &Path, compare_seeks: bool) -> Vec<String> {
    let tmpfs = tempfile::tempdir_in("/dev/shm").expect("a directory in /dev/shm (tmpfs)");
    let other = tempfile::tempdir().expect("a temporary directory");
    let mut out = Vec::new();
    for (i, case) in CASES.iter().enumerate() {
        let mut reference = None;
        for dir in [tmpfs.path(), other.path()] {
            let outcome = run(dir, case, i);
            if outcome.steps.iter().all(|(e, _)| *e != libc::EOPNOTSUPP) {
                reference = Some((dir, outcome));
                break;
            }
        }
        let Some((ref_dir, mut want)) = reference else {
            panic!(
                "case {:?}: neither tmpfs nor the temporary directory supports its modes",
                case.name
            );
        };
        let mut got = run(mnt, case, i);
        let unsound = unsound_seeks(&got);
        if !(compare_seeks && case.seek && ref_dir == tmpfs.path()) {
            want.seeks.clear();
            got.seeks.clear();
        }
        if got != want || !unsound.is_empty() {
            let mut what = format!("case {:?} (reference in {}):", case.name, ref_dir.display());
            if !unsound.is_empty() {
                what += &format!("\n  unsound seeks on the mount: {}", unsound.join("; "));
            }
            if got.steps != want.steps {
                what += &format!(
                    "\n  steps (errno, mtime moved): mount {:?}, reference {:?}",
                    got.steps, want.steps
                );
            }
            if got.size != want.size {
                what += &format!("\n  size: mount {}, reference {}", got.size, want.size);
            }
            if got.bytes_same_fd != want.bytes_same_fd {
                what += &format!(
                    "\n  bytes through the same descriptor: {}",
                    first_difference(&got.bytes_same_fd, &want.bytes_same_fd)
                );
            }
            if got.bytes_new_fd != want.bytes_new_fd {
                what += &format!(
                    "\n  bytes through a new descriptor: {}",
                    first_difference(&got.bytes_new_fd, &want.bytes_new_fd)
                );
            }
            if got.seeks != want.seeks {
                let differ: Vec<_> = got
                    .seeks
                    .iter()
                    .zip(&want.seeks)
                    .filter(|(g, w)| g != w)
                    .map(|(g, w)| {
                        format!(
                            "at {}: mount data/hole {}/{}, reference {}/{}",
                            g.0, g.1, g.2, w.1, w.2
                        )
                    })
                    .collect();
                what += &format!("\n  seeks: {}", differ.join("; "));
            }
            out.push(what);
        }
    }
    out
}
