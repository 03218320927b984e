// SPDX-License-Identifier: GPL-2.0
//
// The keys and values of the BPF maps, as the programs write them: the one
// definition both sides use. build.rs generates the Rust side from this
// file (`#[repr(C)]` structs with zerocopy derives, in `xfuse_ebpf::maps`),
// so it keeps to what that generator reads: `#define NAME NUMBER`, structs
// of `__u64` fields and `__u64` arrays, and `//` comments, which become the
// Rust docs of the item below them.

#pragma once

// Buckets of the latency histogram.
#define HIST_BUCKETS 32

// A key of OPCODES: one opcode on one connection.
struct opcode_key {
	// The connection: the dev_t of the mount.
	__u64 conn;
	// The FUSE opcode.
	__u64 opcode;
};

// A value of OPCODES: the counters of one opcode on one connection.
struct opcode_counters {
	// Requests sent to user space.
	__u64 sent;
	// Requests that ended.
	__u64 ended;
	// Requests that ended with an error.
	__u64 errors;
	// Sum of the measured send-to-end latencies, in nanoseconds.
	__u64 latency_ns_sum;
	// Latencies with floor(log2(ns)) == i; the last bucket also holds all longer ones.
	__u64 hist[HIST_BUCKETS];
};

// A key of INODES: one inode of one connection.
struct inode_key {
	// The connection: the dev_t of the mount.
	__u64 conn;
	// The FUSE node id.
	__u64 nodeid;
};

// A value of INODES: the upcalls about one inode.
struct inode_counters {
	// LOOKUPs that found the inode.
	__u64 lookups;
	// GETATTRs of the inode.
	__u64 getattrs;
};

// A key of INFLIGHT (whose value is the send time in nanoseconds): one
// request of one connection.
struct inflight_key {
	// The connection: the dev_t of the mount.
	__u64 conn;
	// The request's unique.
	__u64 unique;
};
