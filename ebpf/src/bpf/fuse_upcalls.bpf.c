// SPDX-License-Identifier: GPL-2.0
//
// Counts the requests the kernel's FUSE module sends to user space, per
// connection (one FUSE mount), on the `fuse:fuse_request_send` and
// `fuse:fuse_request_end` tracepoints (attached as tp_btf, no tracefs):
//
//   OPCODES  (conn, opcode)  -> requests, errors, latency sum and a log2
//                               histogram of send->end in nanoseconds;
//   INODES   (conn, nodeid)  -> LOOKUP and GETATTR upcalls (LRU, bounded);
//   INFLIGHT (conn, unique)  -> send timestamp, until the request ends (LRU).
//
// A LOOKUP is charged to the inode it found (the nodeid of the reply's
// fuse_entry_out, read at request end), not to the directory searched: the
// point of the counters is to tell which inodes the kernel keeps asking for.
// A failed LOOKUP is charged to nothing in INODES.
//
// The kernel structs are declared here with only the fields read, marked
// preserve_access_index: clang emits CO-RE relocations and the loader
// resolves them against the running kernel's BTF, so field offsets never
// come from headers. Checked against Linux 6.18's BTF:
//   fuse_req { args, in.h, out.h, fm }, fuse_mount { fc }, fuse_conn { dev },
//   fuse_args { out_args[] }, fuse_arg { value }.
//
// The maps' keys and values are declared once, in maps.h, from which
// build.rs generates the Rust side's types.

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef signed int __s32;
typedef signed long long __s64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;

#include <bpf/bpf_helpers.h>

#include "maps.h"

#define BPF_MAP_TYPE_HASH 1
#define BPF_MAP_TYPE_LRU_HASH 9
#define BPF_NOEXIST 1

#define FUSE_LOOKUP 1
#define FUSE_GETATTR 3

#define OPCODE_SLOTS_MAX 64
#define INODES_MAX 65536
#define INFLIGHT_MAX 16384

// Every record below gets CO-RE relocations, nested anonymous ones too.
#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

struct fuse_in_header {
	__u32 len;
	__u32 opcode;
	__u64 unique;
	__u64 nodeid;
};

struct fuse_out_header {
	__u32 len;
	__s32 error;
	__u64 unique;
};

struct fuse_conn {
	__u32 dev;
};

struct fuse_mount {
	struct fuse_conn *fc;
};

struct fuse_arg {
	unsigned int size;
	void *value;
};

struct fuse_args {
	struct fuse_arg out_args[2];
};

struct fuse_req {
	struct fuse_args *args;
	struct {
		struct fuse_in_header h;
	} in;
	struct {
		struct fuse_out_header h;
	} out;
	struct fuse_mount *fm;
};

#pragma clang attribute pop

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct opcode_key);
	__type(value, struct opcode_counters);
} OPCODES SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, INODES_MAX);
	__type(key, struct inode_key);
	__type(value, struct inode_counters);
} INODES SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, INFLIGHT_MAX);
	__type(key, struct inflight_key);
	__type(value, __u64);
} INFLIGHT SEC(".maps");

static __always_inline __u64 conn_of(const struct fuse_req *req)
{
	return req->fm->fc->dev;
}

static __always_inline struct opcode_counters *opcode_slot(__u64 conn, __u64 opcode)
{
	struct opcode_key key = { conn, opcode };
	struct opcode_counters *s = bpf_map_lookup_elem(&OPCODES, &key);
	if (s)
		return s;
	struct opcode_counters zero = {};
	bpf_map_update_elem(&OPCODES, &key, &zero, BPF_NOEXIST);
	return bpf_map_lookup_elem(&OPCODES, &key);
}

static __always_inline struct inode_counters *inode_slot(__u64 conn, __u64 nodeid)
{
	struct inode_key key = { conn, nodeid };
	struct inode_counters *s = bpf_map_lookup_elem(&INODES, &key);
	if (s)
		return s;
	struct inode_counters zero = {};
	bpf_map_update_elem(&INODES, &key, &zero, BPF_NOEXIST);
	return bpf_map_lookup_elem(&INODES, &key);
}

static __always_inline __u32 log2_u64(__u64 v)
{
	__u32 r = 0;
#pragma unroll
	for (int shift = 32; shift > 0; shift >>= 1) {
		if (v >> shift) {
			v >>= shift;
			r += shift;
		}
	}
	return r;
}

SEC("tp_btf/fuse_request_send")
int fuse_request_send(unsigned long long *ctx)
{
	const struct fuse_req *req = (const struct fuse_req *)ctx[0];
	__u64 conn = conn_of(req);
	__u64 opcode = req->in.h.opcode;
	__u64 unique = req->in.h.unique;

	struct opcode_counters *s = opcode_slot(conn, opcode);
	if (s)
		__sync_fetch_and_add(&s->sent, 1);

	struct inflight_key key = { conn, unique };
	__u64 now = bpf_ktime_get_ns();
	bpf_map_update_elem(&INFLIGHT, &key, &now, 0);

	if (opcode == FUSE_GETATTR) {
		struct inode_counters *i = inode_slot(conn, req->in.h.nodeid);
		if (i)
			__sync_fetch_and_add(&i->getattrs, 1);
	}
	return 0;
}

SEC("tp_btf/fuse_request_end")
int fuse_request_end(unsigned long long *ctx)
{
	const struct fuse_req *req = (const struct fuse_req *)ctx[0];
	__u64 conn = conn_of(req);
	__u64 opcode = req->in.h.opcode;
	__s32 error = req->out.h.error;

	struct opcode_counters *s = opcode_slot(conn, opcode);
	if (s) {
		__sync_fetch_and_add(&s->ended, 1);
		if (error)
			__sync_fetch_and_add(&s->errors, 1);
		struct inflight_key key = { conn, req->in.h.unique };
		__u64 *start = bpf_map_lookup_elem(&INFLIGHT, &key);
		if (start) {
			__u64 ns = bpf_ktime_get_ns() - *start;
			bpf_map_delete_elem(&INFLIGHT, &key);
			__sync_fetch_and_add(&s->latency_ns_sum, ns);
			__u32 bucket = log2_u64(ns);
			if (bucket >= HIST_BUCKETS)
				bucket = HIST_BUCKETS - 1;
			__sync_fetch_and_add(&s->hist[bucket], 1);
		}
	}

	if (opcode == FUSE_LOOKUP && error == 0) {
		// The reply's fuse_entry_out starts with the nodeid found (0 for a
		// cached negative entry). The buffer belongs to the task waiting
		// for this reply, which is still blocked here.
		const struct fuse_args *args = req->args;
		void *entry = args ? args->out_args[0].value : 0;
		__u64 nodeid = 0;
		if (entry && bpf_probe_read_kernel(&nodeid, sizeof(nodeid), entry) == 0 && nodeid) {
			struct inode_counters *i = inode_slot(conn, nodeid);
			if (i)
				__sync_fetch_and_add(&i->lookups, 1);
		}
	}
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
