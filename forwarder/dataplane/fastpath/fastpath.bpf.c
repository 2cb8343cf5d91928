// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * DMSC kernel fast path (tc clsact ingress, direct action).
 *
 * Repeats in the kernel the flow-table hit of the Python forwarder
 * (Forwarder.fast_forward): user space decides everything and fills the maps;
 * this program only repeats decisions. A frame is rewritten (hop limit - 1,
 * Ethernet addresses, skb->priority, padding trimmed) and redirected to the
 * entry's out ifindex only when every check below holds; anything else is
 * passed up unchanged (TC_ACT_OK) to the forwarder's AF_PACKET socket.
 * The program never drops a frame.
 *
 * Build: clang -O2 -g -target bpf -I/usr/include/x86_64-linux-gnu \
 *            -c fastpath.bpf.c -o fastpath.bpf.o
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "fastpath.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* ifindex -> face (this forwarder's network faces). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FP_FACES_MAX);
	__type(key, __u32);
	__type(value, struct fp_face);
} fp_faces SEC(".maps");

/* Exact flow key -> decision. Not preallocated: a forwarder pays for the
 * entries it installs, not for 65536 x 300 bytes up front. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FP_FLOWS_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct fp_key);
	__type(value, struct fp_flow);
} fp_flows SEC(".maps");

/* The current table generation; user space bumps it on any table change. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} fp_gen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FP_FLOWS_MAX);
	__type(key, __u32);
	__type(value, struct fp_flow_stats);
} fp_flow_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FP_FACES_MAX);
	__type(key, __u32);
	__type(value, struct fp_face_stats);
} fp_face_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FP_PREFIXES_MAX);
	__type(key, __u32);
	__type(value, struct fp_prefix_stats);
} fp_prefix_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FP_VERDICTS_MAX);
	__type(key, __u32);
	__type(value, __u64);
} fp_verdicts SEC(".maps");

static __always_inline void count(__u32 verdict)
{
	__u64 *c = bpf_map_lookup_elem(&fp_verdicts, &verdict);

	if (c)
		*c += 1;
}

/* Every pass-up goes through one exit: count the reason, return TC_ACT_OK. */
#define PASS(v) do { verdict = (v); goto up; } while (0)

SEC("tc")
int fp_ingress(struct __sk_buff *skb)
{
	struct fp_key key __attribute__((aligned(8)));
	struct fp_wire_head h;
	__u32 len = skb->len;
	__u32 ifindex = skb->ifindex;
	__u32 zero = 0;
	__u32 verdict;

	/* 1. EtherType 0x88B5 (no VLAN) and at least 14 + 40 bytes. */
	if (skb->vlan_present)
		PASS(FP_V_NOT_DMSC);
	if (len < FP_ETH_HLEN + FP_HDR_LEN) {
		__be16 proto;

		if (len < FP_ETH_HLEN ||
		    bpf_skb_load_bytes(skb, 12, &proto, sizeof(proto)) < 0 ||
		    proto != bpf_htons(FP_ETHERTYPE))
			PASS(FP_V_NOT_DMSC);
		PASS(FP_V_SHORT);
	}
	if (bpf_skb_load_bytes(skb, 12, &h, sizeof(h)) < 0)
		PASS(FP_V_SHORT);
	if (h.proto != bpf_htons(FP_ETHERTYPE))
		PASS(FP_V_NOT_DMSC);

	/* 2. The fixed header: a packet the flow table may take. */
	if (h.version != FP_VERSION || (__u8)(h.type - 1) > 4 || h.flags != 0)
		PASS(FP_V_NOT_FAST);

	__u32 total = bpf_ntohs(h.total_length);
	__u32 hlen = bpf_ntohs(h.header_length);

	if (hlen < FP_HDR_LEN + (__u32)h.dst_len + (__u32)h.src_len || hlen > total ||
	    total > len - FP_ETH_HLEN)
		PASS(FP_V_BAD_LENGTH);
	__u16 fidx = bpf_ntohs(h.frag_index);
	__u16 fcnt = bpf_ntohs(h.frag_count);

	if (fcnt == 0 || fidx >= fcnt)
		PASS(FP_V_NOT_FAST);

	__u32 klen = hlen - FP_KEY_OFF;

	if (klen > FP_KEY_MAX)
		PASS(FP_V_KEY_TOO_LONG);

	/* 3. One of this forwarder's faces. */
	struct fp_face *in = bpf_map_lookup_elem(&fp_faces, &ifindex);

	if (!in)
		PASS(FP_V_UNKNOWN_FACE);
	__u32 in_slot = in->face_slot;

	/* 4. Exact match on the whole name block [20, header_length). */
	__builtin_memset(&key, 0, sizeof(key));
	key.len = klen;
	/* klen >= 20 here (hlen >= 40); the bounds are restated for the verifier. */
	if (klen < 1 || klen > FP_KEY_MAX)
		PASS(FP_V_KEY_TOO_LONG);
	if (bpf_skb_load_bytes(skb, FP_ETH_HLEN + FP_KEY_OFF, key.bytes, klen) < 0)
		PASS(FP_V_BAD_LENGTH);

	struct fp_flow *fl = bpf_map_lookup_elem(&fp_flows, &key);

	if (!fl)
		PASS(FP_V_MISS);

	/* Copy the decision once: user space may replace the entry meanwhile. */
	__u32 out_ifindex = fl->out_ifindex;
	__u32 flow_slot = fl->flow_slot;
	__u64 gen = fl->gen;
	__u8 macs[12];

	__builtin_memcpy(macs, fl->dst_mac, 12);
	__u32 mtu = fl->mtu;
	__u32 out_slot = fl->out_face_slot;
	__u32 prefix_slot = fl->prefix_slot;
	__u32 priority = fl->priority;

	/* 5. Not stale. */
	__u64 *cur = bpf_map_lookup_elem(&fp_gen, &zero);

	if (!cur || *cur != gen)
		PASS(FP_V_STALE);

	/* 6. Out face, hop limit, MTU. */
	if (out_ifindex == ifindex)
		PASS(FP_V_SAME_FACE);
	struct fp_face *out = bpf_map_lookup_elem(&fp_faces, &out_ifindex);

	if (!out || (out->flags & FP_FACE_DOWN))
		PASS(FP_V_OUT_DOWN);
	if (h.hop_limit <= 1)
		PASS(FP_V_HOP_LIMIT);
	if (total > mtu)
		PASS(FP_V_TOO_BIG);

	/* Rewrite. Trim first: on failure the frame is still untouched. */
	__u32 want = FP_ETH_HLEN + total;

	if (want < FP_MIN_FRAME)
		want = FP_MIN_FRAME;
	if (len > want && bpf_skb_change_tail(skb, want, 0) < 0)
		PASS(FP_V_REWRITE_ERROR);
	/* The hop limit write makes bytes [0, 18) writable, so the MAC write
	 * after it cannot fail half way. The hop limit is part of the L3
	 * payload: keep a CHECKSUM_COMPLETE skb->csum right. */
	__u8 hop = h.hop_limit - 1;

	if (bpf_skb_store_bytes(skb, FP_ETH_HLEN + 3, &hop, 1, BPF_F_RECOMPUTE_CSUM) < 0)
		PASS(FP_V_REWRITE_ERROR);
	if (bpf_skb_store_bytes(skb, 0, macs, sizeof(macs), 0) < 0)
		PASS(FP_V_REWRITE_ERROR);
	skb->priority = priority;

	long rc = bpf_redirect(out_ifindex, 0);

	if (rc != TC_ACT_REDIRECT)
		PASS(FP_V_REDIRECT_ERROR);

	/* Count (per-CPU records: plain increments). */
	struct fp_flow_stats *fs = bpf_map_lookup_elem(&fp_flow_stats, &flow_slot);

	if (fs) {
		fs->packets += 1;
		fs->bytes += total;
		fs->last_ns = bpf_ktime_get_ns();
	}
	struct fp_face_stats *rx = bpf_map_lookup_elem(&fp_face_stats, &in_slot);

	if (rx) {
		rx->rx_packets += 1;
		rx->rx_bytes += len - FP_ETH_HLEN;
	}
	struct fp_face_stats *tx = bpf_map_lookup_elem(&fp_face_stats, &out_slot);

	if (tx) {
		tx->tx_packets += 1;
		tx->tx_bytes += total;
	}
	if (prefix_slot != FP_NO_PREFIX) {
		struct fp_prefix_stats *ps = bpf_map_lookup_elem(&fp_prefix_stats, &prefix_slot);

		if (ps) {
			ps->packets += 1;
			ps->bytes += total;
		}
	}
	count(FP_V_REDIRECTED);
	return TC_ACT_REDIRECT;
up:
	count(verdict);
	return TC_ACT_OK;
}
