//! xfuse-ebpf: BPF programs that watch every request the kernel's FUSE module
//! sends to user space, and a loader with typed views of what they count.
//!
//! Mainline Linux has no hook through which BPF could answer a FUSE request;
//! it does have the `fuse:fuse_request_send` and `fuse:fuse_request_end`
//! tracepoints. The programs in `src/bpf/fuse_upcalls.bpf.c` (compiled by
//! clang at build time, CO-RE relocated against the running kernel's BTF at
//! load time, no kernel headers needed) attach there as `tp_btf` programs and
//! count, per FUSE connection (one mount):
//!
//! - per opcode: requests sent, ended, failed, and a log2 histogram of the
//!   send→end latency ([`OpcodeStats`]);
//! - per inode: LOOKUPs that found it and GETATTRs of it, in a bounded LRU
//!   map ([`InodeUpcalls`]), which is what an adaptive cache policy needs to
//!   know which inodes the kernel keeps asking for.
//!
//! A connection is named by its `dev_t` (the minor number of the mount's
//! device, also the directory name under `/sys/fs/fuse/connections`):
//! [`connection_of`] finds it for a mountpoint.
//!
//! Loading needs root (CAP_BPF and CAP_PERFMON), kernel BTF
//! (`/sys/kernel/btf/vmlinux`) and a kernel with the FUSE tracepoints
//! (checked on 6.18); [`UpcallTracer::load`] says which of these failed. The
//! counters are cumulative from the moment of loading; each loaded tracer
//! has its own maps.
//!
//! The maps' keys and values are declared once, in `src/bpf/maps.h`, which
//! the programs include and from which build.rs generates [`maps`]. This
//! crate has no `unsafe` code: aya reads entries as arrays of `u64` (it
//! implements its `Pod` for arrays), turned into those types by zerocopy.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::collections::HashMap as StdHashMap;
use std::path::Path;

use aya::maps::{HashMap, MapData, MapError};
use aya::programs::{BtfTracePoint, ProgramError};
use aya::{Btf, BtfError, Ebpf, EbpfError, EbpfLoader};

pub mod maps;

use maps::{
    InodeCounters, InodeCountersWords, InodeKey, InodeKeyWords, OpcodeCounters, OpcodeCountersWords,
    OpcodeKey, OpcodeKeyWords,
};

/// The object file clang built from `src/bpf/fuse_upcalls.bpf.c`.
static FUSE_UPCALLS_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fuse_upcalls.bpf.o"));

/// Buckets of the latency histogram: bucket `i` counts latencies with
/// `floor(log2(ns)) == i` (the last bucket also holds everything longer).
pub const LATENCY_BUCKETS: usize = maps::HIST_BUCKETS;
/// Inodes the per-inode map holds (all connections together); the least
/// recently updated are evicted beyond this.
pub const INODES_MAX: usize = 65_536;

/// The tracepoints, also the program names in the object file.
const TRACEPOINTS: [&str; 2] = ["fuse_request_send", "fuse_request_end"];

/// Why the programs could not be loaded or read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel's BTF could not be read (no `/sys/kernel/btf/vmlinux`:
    /// a kernel built without `CONFIG_DEBUG_INFO_BTF`).
    #[error("reading the kernel's BTF (/sys/kernel/btf/vmlinux): {0}")]
    Btf(#[from] BtfError),
    /// The object file or its maps were refused (often: not root).
    #[error("loading the BPF object (maps and programs) into the kernel: {0}")]
    Object(#[from] EbpfError),
    /// A program was refused by the verifier, or its tracepoint is missing
    /// (a kernel older than the FUSE tracepoints), or attaching failed.
    #[error("program {program}: {source}")]
    Program {
        /// The tracepoint the program is for.
        program: &'static str,
        /// What aya reported.
        source: ProgramError,
    },
    /// A map the object must contain is missing (a build mismatch).
    #[error("map {0} is missing from the BPF object")]
    MissingMap(&'static str),
    /// Reading a map failed.
    #[error("reading map {map}: {source}")]
    Map {
        /// The map read.
        map: &'static str,
        /// What aya reported.
        source: MapError,
    },
}

/// Requests of one opcode on one connection, since the tracer was loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpcodeStats {
    /// The FUSE opcode (`fuse_in_header.opcode`).
    pub opcode: u32,
    /// Requests the kernel sent to user space.
    pub sent: u64,
    /// Requests that ended (answered, or aborted).
    pub ended: u64,
    /// Requests that ended with an error.
    pub errors: u64,
    /// Sum of send→end latencies of the ended requests whose send was seen,
    /// in nanoseconds.
    pub latency_ns_sum: u64,
    /// Latency histogram: `[i]` counts latencies of `2^i ..< 2^(i+1)` ns.
    pub latency_log2_hist: [u64; LATENCY_BUCKETS],
}

impl OpcodeStats {
    /// Ended requests whose latency was measured.
    pub fn measured(&self) -> u64 {
        self.latency_log2_hist.iter().sum()
    }

    /// An upper bound of the `p`-th percentile latency (`0 < p <= 100`) in
    /// nanoseconds: the upper edge of the histogram bucket holding it.
    /// `None` when nothing was measured.
    pub fn percentile_ns(&self, p: f64) -> Option<u64> {
        let total = self.measured();
        if total == 0 {
            return None;
        }
        let rank = ((p.clamp(0.0, 100.0) / 100.0) * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.latency_log2_hist.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(1u64 << (i + 1).min(63));
            }
        }
        Some(1u64 << LATENCY_BUCKETS)
    }

    /// `self - earlier`, counter by counter (for rates between two reads).
    pub fn since(&self, earlier: &OpcodeStats) -> OpcodeStats {
        let mut hist = [0u64; LATENCY_BUCKETS];
        for (i, h) in hist.iter_mut().enumerate() {
            *h = self.latency_log2_hist[i].saturating_sub(earlier.latency_log2_hist[i]);
        }
        OpcodeStats {
            opcode: self.opcode,
            sent: self.sent.saturating_sub(earlier.sent),
            ended: self.ended.saturating_sub(earlier.ended),
            errors: self.errors.saturating_sub(earlier.errors),
            latency_ns_sum: self.latency_ns_sum.saturating_sub(earlier.latency_ns_sum),
            latency_log2_hist: hist,
        }
    }
}

/// LOOKUP and GETATTR upcalls about one inode of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InodeUpcalls {
    /// The FUSE node id (the daemon's inode number).
    pub nodeid: u64,
    /// LOOKUPs answered with this inode.
    pub lookups: u64,
    /// GETATTRs of this inode.
    pub getattrs: u64,
}

impl InodeUpcalls {
    /// LOOKUPs and GETATTRs together.
    pub fn total(&self) -> u64 {
        self.lookups.saturating_add(self.getattrs)
    }
}

/// The FUSE connection of the mount at `mountpoint` (its device minor, read
/// from `/proc/self/mountinfo` without touching the mount), or `None` if no
/// FUSE filesystem is mounted there.
pub fn connection_of(mountpoint: &Path) -> Option<u32> {
    let path = std::fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf());
    kmod_shim::mount::connection_id(&path)
}

/// The loaded and attached programs with their maps. Dropping it detaches
/// and unloads them.
#[derive(Debug)]
pub struct UpcallTracer {
    ebpf: Ebpf,
}

type OpcodeMap<'a> = HashMap<&'a MapData, OpcodeKeyWords, OpcodeCountersWords>;
type InodeMap<'a> = HashMap<&'a MapData, InodeKeyWords, InodeCountersWords>;

impl UpcallTracer {
    /// Loads the programs (CO-RE relocated against `/sys/kernel/btf/vmlinux`)
    /// and attaches them to the FUSE tracepoints.
    pub fn load() -> Result<UpcallTracer, Error> {
        let btf = Btf::from_sys_fs()?;
        let mut ebpf = EbpfLoader::new().btf(Some(&btf)).load(FUSE_UPCALLS_OBJ)?;
        for program in TRACEPOINTS {
            let attach = |ebpf: &mut Ebpf| -> Result<(), ProgramError> {
                let p: &mut BtfTracePoint = ebpf
                    .program_mut(program)
                    .ok_or_else(|| ProgramError::UnexpectedProgramType)?
                    .try_into()?;
                p.load(program, &btf)?;
                p.attach()?;
                Ok(())
            };
            attach(&mut ebpf).map_err(|source| Error::Program { program, source })?;
        }
        Ok(UpcallTracer { ebpf })
    }

    /// Per-opcode counters of `connection`, in opcode order.
    pub fn opcode_stats(&self, connection: u32) -> Result<Vec<OpcodeStats>, Error> {
        const MAP: &str = "OPCODES";
        let map: OpcodeMap<'_> = HashMap::try_from(self.ebpf.map(MAP).ok_or(Error::MissingMap(MAP))?)
            .map_err(|source| Error::Map { map: MAP, source })?;
        let mut out = Vec::new();
        for item in map.iter() {
            let (key, value) = item.map_err(|source| Error::Map { map: MAP, source })?;
            let key: OpcodeKey = zerocopy::transmute!(key);
            let value: OpcodeCounters = zerocopy::transmute!(value);
            if key.conn != u64::from(connection) {
                continue;
            }
            out.push(OpcodeStats {
                opcode: key.opcode as u32,
                sent: value.sent,
                ended: value.ended,
                errors: value.errors,
                latency_ns_sum: value.latency_ns_sum,
                latency_log2_hist: value.hist,
            });
        }
        out.sort_by_key(|s| s.opcode);
        out.dedup_by_key(|s| s.opcode);
        Ok(out)
    }

    /// Per-inode LOOKUP/GETATTR counters of `connection` (unordered; at most
    /// [`INODES_MAX`] over all connections).
    pub fn inode_upcalls(&self, connection: u32) -> Result<Vec<InodeUpcalls>, Error> {
        const MAP: &str = "INODES";
        let map: InodeMap<'_> = HashMap::try_from(self.ebpf.map(MAP).ok_or(Error::MissingMap(MAP))?)
            .map_err(|source| Error::Map { map: MAP, source })?;
        // A key evicted while we walk restarts the kernel's walk from the
        // first key; collect by node id so nothing is counted twice, and stop
        // after a bounded number of steps.
        let mut out: StdHashMap<u64, InodeUpcalls> = StdHashMap::new();
        for item in map.iter().take(INODES_MAX * 2) {
            let (key, value) = item.map_err(|source| Error::Map { map: MAP, source })?;
            let key: InodeKey = zerocopy::transmute!(key);
            let value: InodeCounters = zerocopy::transmute!(value);
            if key.conn != u64::from(connection) {
                continue;
            }
            out.insert(
                key.nodeid,
                InodeUpcalls {
                    nodeid: key.nodeid,
                    lookups: value.lookups,
                    getattrs: value.getattrs,
                },
            );
        }
        Ok(out.into_values().collect())
    }
}

/// The name of a FUSE opcode, for reports (`"OP<n>"` for unknown ones).
pub fn opcode_name(opcode: u32) -> String {
    kmod_shim::abi::Opcode::from_raw(opcode).map_or_else(|| format!("OP{opcode}"), |op| op.name().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(hist: &[(usize, u64)]) -> OpcodeStats {
        let mut h = [0u64; LATENCY_BUCKETS];
        for &(i, n) in hist {
            h[i] = n;
        }
        OpcodeStats {
            opcode: 1,
            sent: 0,
            ended: 0,
            errors: 0,
            latency_ns_sum: 0,
            latency_log2_hist: h,
        }
    }

    #[test]
    fn percentiles_are_bucket_upper_edges() {
        // 90 requests in [1024, 2048) ns, 10 in [2^20, 2^21).
        let s = stats(&[(10, 90), (20, 10)]);
        assert_eq!(s.percentile_ns(50.0), Some(2048));
        assert_eq!(s.percentile_ns(90.0), Some(2048));
        assert_eq!(s.percentile_ns(91.0), Some(1 << 21));
        assert_eq!(s.percentile_ns(100.0), Some(1 << 21));
        assert_eq!(stats(&[]).percentile_ns(50.0), None);
    }

    #[test]
    fn since_subtracts_every_counter() {
        let mut later = stats(&[(3, 5)]);
        later.sent = 10;
        let mut earlier = stats(&[(3, 2)]);
        earlier.sent = 4;
        let d = later.since(&earlier);
        assert_eq!((d.sent, d.latency_log2_hist[3]), (6, 3));
    }

    #[test]
    fn map_words_decode_in_field_order() {
        let mut words = [0u64; std::mem::size_of::<OpcodeCounters>() / 8];
        for (i, w) in words.iter_mut().enumerate() {
            *w = i as u64;
        }
        let v: OpcodeCounters = zerocopy::transmute!(words);
        assert_eq!((v.sent, v.ended, v.errors, v.latency_ns_sum), (0, 1, 2, 3));
        assert_eq!(
            (v.hist[0], v.hist[LATENCY_BUCKETS - 1]),
            (4, 3 + LATENCY_BUCKETS as u64)
        );
        let k: InodeKey = zerocopy::transmute!([7u64, 9]);
        assert_eq!((k.conn, k.nodeid), (7, 9));
    }

    #[test]
    fn the_object_has_both_programs() {
        // Parsing needs no privileges: a build that lost a program fails here,
        // not at load time on a root machine.
        let obj = aya_obj_names(FUSE_UPCALLS_OBJ);
        for name in TRACEPOINTS.iter().chain(["OPCODES", "INODES", "INFLIGHT"].iter()) {
            assert!(obj.iter().any(|n| n == name), "{name} missing from {obj:?}");
        }
    }

    /// Symbol names in an ELF file (crude but dependency-free: program and
    /// map names appear NUL-terminated in the string table).
    fn aya_obj_names(obj: &[u8]) -> Vec<String> {
        obj.split(|b| *b == 0)
            .filter_map(|s| std::str::from_utf8(s).ok())
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }
}
