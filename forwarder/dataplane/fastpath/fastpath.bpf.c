// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * DMSC kernel fast path (tc programs at tcx ingress, attached through BPF links):
 * two programs.
 *
 * fp_ingress (network faces) repeats in the kernel the flow-table hit of the
 * Python forwarder (Forwarder.fast_forward): user space decides everything and
 * fills the maps; this program only repeats decisions. A FORWARD entry's frame
 * is rewritten (hop limit - 1, Ethernet addresses, skb->priority, padding
 * trimmed) and redirected to the entry's out ifindex; a DECAP entry's frame
 * (type 6, an IPv4 packet carried by name) loses its Ethernet + DMSC headers,
 * its inner destination may be rewritten (DNAT), and the IPv4 packet is
 * redirected, in a new Ethernet header, to a pod-facing veth.
 *
 * fp_pod_ingress (pod-facing veths) carries a pod's IPv4 packet by name: the
 * 5-tuple's fp_l4 entry gives the DMSC header to put in front (the packet
 * moves back to make room; its source may be rewritten: SNAT) and the out face.
 *
 * Before a redirect, the out interface's own state is read from the kernel
 * (struct net_device, through CO-RE): an interface that is down or has no carrier
 * gets nothing, the frame is passed up for the Python forwarder to route around
 * it, even in the milliseconds before user space hears of the cut and changes
 * the generation. A FORWARD frame goes straight to the neighbour's ingress
 * (bpf_redirect_peer) where the entry says its out face is a veth whose peer is in
 * another namespace (FP_FLOW_PEER) and nothing on the out interface would see the
 * frame leave: no queue (noqueue, the veth default), no packet capture on it or on
 * the namespace.
 * Otherwise, and always for encap/decap (the EtherType changes, and the receiving
 * side must parse it again), it goes through the out interface (bpf_redirect).
 *
 * Counting: a hit adds to its flow's fp_flow_stats record and touches no other
 * counter (one cache line); user space, which knows each slot's entry, adds the
 * differences to the face, prefix and verdict counters. A face going down or
 * up changes the pipeline's generation, so no per-face state is read here.
 *
 * Anything a check refuses is passed up unchanged (TC_ACT_OK) to the Python
 * side, with the reason counted in fp_verdicts. Every check is made before the
 * first write; a helper failing after it drops the frame (TC_ACT_SHOT, counted)
 * rather than passing up a half rewritten one (the FORWARD rewrite keeps its
 * older rule: its writes cannot fail half way). The one deliberate drop:
 * fp_pod_ingress refuses a pod's packet with a source address not its own.
 *
 * Build (build.py): clang -O2 -g -target bpf -mcpu=v3 -I/usr/include/x86_64-linux-gnu \
 *            -c fastpath.bpf.c -o fastpath.bpf.o
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>

#include "fastpath.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* What fp_ingress reads of the kernel's own objects, relocated by libbpf against
 * the running kernel's BTF (CO-RE): the namespace's devices by index (the table
 * dev_get_by_index_rcu walks), an interface's state, its queue and its captures. */
struct list_head___fp {
	struct list_head___fp *next;
} __attribute__((preserve_access_index));

struct hlist_node___fp {
	struct hlist_node___fp *next;
} __attribute__((preserve_access_index));

struct hlist_head___fp {
	struct hlist_node___fp *first;
} __attribute__((preserve_access_index));

struct net___fp {
	struct list_head___fp ptype_all;            /* captures on every interface */
	struct hlist_head___fp *dev_index_head;     /* FP_DEV_HASH_SIZE buckets */
} __attribute__((preserve_access_index));

struct Qdisc___fp {
	void *enqueue;                              /* NULL: noqueue */
} __attribute__((preserve_access_index));

struct net_device___fp {
	unsigned int flags;
	unsigned long state;
	int ifindex;
	struct Qdisc___fp *qdisc;                   /* the root qdisc */
	struct list_head___fp ptype_all;            /* captures on this interface */
	struct hlist_node___fp index_hlist;
	struct {
		struct net___fp *net;
	} nd_net;
} __attribute__((preserve_access_index));

struct sk_buff___fp {
	struct net_device___fp *dev;
} __attribute__((preserve_access_index));

extern void *bpf_cast_to_kern_ctx(void *obj) __ksym;
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;

/* Exact flow key -> decision. Not preallocated: a forwarder pays for the
 * entries it installs, not for 65536 x 300 bytes up front. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FP_FLOWS_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct fp_key);
	__type(value, struct fp_flow);
} fp_flows SEC(".maps");

/* The same for keys of at most FP_KEY_SHORT bytes (a key lives in one of the two). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FP_FLOWS_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct fp_key_short);
	__type(value, struct fp_flow);
} fp_flows_short SEC(".maps");

/* ifindex of a pod-facing veth -> the pod (the one source address it may use). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FP_PODS_MAX);
	__type(key, __u32);
	__type(value, struct fp_pod);
} fp_pods SEC(".maps");

/* Inner 5-tuple from a pod -> how to carry it by name. Not preallocated. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FP_FLOWS_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct fp_l4_key);
	__type(value, struct fp_l4);
} fp_l4 SEC(".maps");

/* The current table generation; user space bumps it on any table change. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} fp_gen SEC(".maps");

/* Per-flow counters: one 64-byte record per flow slot, shared by the CPUs and counted
 * with atomic adds. A flow's packets arrive on one CPU at a time, so the record's line
 * stays where it is used; a per-CPU record would cost one more cold line per packet
 * (the slot's pointer to its per-CPU copies). Mmapable: the values start on a page,
 * so each record is exactly one cache line. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FP_FLOWS_MAX);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct fp_flow_stats);
} fp_flow_stats SEC(".maps");

/* What was passed up or dropped, and why: one record per CPU, plain increments. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fp_verdicts);
} fp_verdicts SEC(".maps");

/* Per-CPU memory: the flow key, the encap/decap copy buffer. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fp_scratch);
} fp_scratch SEC(".maps");

static __always_inline void count(__u32 verdict)
{
	__u32 zero = 0;
	struct fp_verdicts *v = bpf_map_lookup_elem(&fp_verdicts, &zero);

	if (v && verdict < FP_VERDICTS_MAX)
		v->verdicts[verdict] += 1;
}

/* A hit's counts, all in its flow's record, with atomic adds (last_ns a plain store;
 * tcp_flags an OR only when it adds a bit). An out-of-range slot counts nothing. */
static __always_inline void count_flow(__u32 slot, __u32 bytes, __u32 rx_bytes,
				       __u64 tcp_flags, int via_peer)
{
	struct fp_flow_stats *fs = bpf_map_lookup_elem(&fp_flow_stats, &slot);

	if (fs) {
		__sync_fetch_and_add(&fs->packets, 1);
		__sync_fetch_and_add(&fs->bytes, bytes);
		__sync_fetch_and_add(&fs->rx_bytes, rx_bytes);
		fs->last_ns = bpf_ktime_get_ns();
		if ((fs->tcp_flags & tcp_flags) != tcp_flags)
			__sync_fetch_and_or(&fs->tcp_flags, tcp_flags);
		if (via_peer)
			__sync_fetch_and_add(&fs->peer_packets, 1);
	}
}

/* The interface `ifindex` of the namespace the frame came in on, found the way
 * dev_get_by_index_rcu finds it; NULL if it is not there (or past a bucket's
 * first FP_DEV_CHAIN_MAX devices). Plain loads through the kernel's BTF (the JIT
 * guards each against a fault), not a probe_read helper call per field. */
static __always_inline struct net_device___fp *out_dev(struct __sk_buff *skb, __u32 ifindex)
{
	struct sk_buff___fp *kskb = bpf_cast_to_kern_ctx(skb);
	struct net___fp *net = kskb->dev->nd_net.net;
	__u64 at = (__u64)net->dev_index_head;

	if (!at)
		return NULL;
	at += (ifindex & (FP_DEV_HASH_SIZE - 1)) * sizeof(struct hlist_head___fp);
	struct hlist_head___fp *head =
		bpf_rdonly_cast((void *)at, bpf_core_type_id_kernel(struct hlist_head___fp));
	struct hlist_node___fp *node = head->first;

	for (int i = 0; i < FP_DEV_CHAIN_MAX && node; i++) {
		struct net_device___fp *dev = bpf_rdonly_cast(
			(void *)((__u64)node - bpf_core_field_offset(struct net_device___fp, index_hlist)),
			bpf_core_type_id_kernel(struct net_device___fp));

		if (dev->ifindex == (int)ifindex)
			return dev;
		node = node->next;
	}
	return NULL;
}

static __always_inline int list_empty___fp(struct list_head___fp *head, __u64 at)
{
	return (__u64)head->next == at;
}

/* How a frame may leave by `out_ifindex`. */
enum fp_out { FP_OUT_DOWN, FP_OUT_XMIT, FP_OUT_PEER };

/* `may_peer`: a FORWARD entry whose out face is a veth with its peer elsewhere. */
static __always_inline enum fp_out out_path(struct __sk_buff *skb, __u32 out_ifindex,
					    int may_peer)
{
	struct net_device___fp *dev = out_dev(skb, out_ifindex);

	if (!dev)
		return FP_OUT_DOWN;
	if (!(dev->flags & FP_IFF_UP) || (dev->state & FP_LINK_NOCARRIER))
		return FP_OUT_DOWN;
	if (!may_peer)
		return FP_OUT_XMIT;
	/* Straight to the peer would skip the out interface's queue (a shaper, the
	 * priority classes) and its captures: only where it has neither. */
	struct net___fp *net = dev->nd_net.net;

	if (dev->qdisc->enqueue ||
	    !list_empty___fp(&dev->ptype_all,
			     (__u64)dev + bpf_core_field_offset(struct net_device___fp, ptype_all)) ||
	    !list_empty___fp(&net->ptype_all,
			     (__u64)net + bpf_core_field_offset(struct net___fp, ptype_all)))
		return FP_OUT_XMIT;
	return FP_OUT_PEER;
}

/* Every pass-up goes through one exit: count the reason, return TC_ACT_OK. */
#define PASS(v) do { verdict = (v); goto up; } while (0)
/* A failure after the first write: count it, drop the frame (never pass it up). */
#define DROP(v) do { verdict = (v); goto shot; } while (0)

SEC("tc")
int fp_ingress(struct __sk_buff *skb)
{
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

	/* 2. The fixed header: a packet the flow table may take (types 1..6). */
	if (h.version != FP_VERSION || (__u8)(h.type - 1) > FP_TYPE_IPV4 - 1 || h.flags != 0)
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

	/* 3. Exact match on the whole name block [20, header_length): a short block
	 * in fp_flows_short (its key on the stack), a longer one in fp_flows (its key
	 * in per-CPU scratch memory: too big for the stack beside the rest). */
	struct fp_flow *fl;

	if (klen <= FP_KEY_SHORT) {
		struct fp_key_short sk;

		__builtin_memset(&sk, 0, sizeof(sk));
		sk.len = klen;
		/* klen >= 20 here (hlen >= 40); the bounds are restated for the verifier. */
		if (klen < 1 || klen > FP_KEY_SHORT)
			PASS(FP_V_KEY_TOO_LONG);
		if (bpf_skb_load_bytes(skb, FP_ETH_HLEN + FP_KEY_OFF, sk.bytes, klen) < 0)
			PASS(FP_V_BAD_LENGTH);
		fl = bpf_map_lookup_elem(&fp_flows_short, &sk);
	} else {
		struct fp_scratch *scr = bpf_map_lookup_elem(&fp_scratch, &zero);

		if (!scr)
			PASS(FP_V_REWRITE_ERROR);    /* cannot happen (an array); nothing written */
		struct fp_key *key = &scr->key;

		__builtin_memset(key, 0, sizeof(*key));
		key->len = klen;
		if (klen < 1 || klen > FP_KEY_MAX)
			PASS(FP_V_KEY_TOO_LONG);
		if (bpf_skb_load_bytes(skb, FP_ETH_HLEN + FP_KEY_OFF, key->bytes, klen) < 0)
			PASS(FP_V_BAD_LENGTH);
		fl = bpf_map_lookup_elem(&fp_flows, key);
	}

	if (!fl)
		PASS(FP_V_MISS);

	/* Copy the decision once: user space may replace the entry meanwhile. */
	__u32 out_ifindex = fl->out_ifindex;
	__u32 in_ifindex = fl->in_ifindex;
	__u32 flow_slot = fl->flow_slot;
	__u32 flow_flags = fl->flags;
	__u64 gen = fl->gen;
	struct {
		__u8 macs[12];
		__be16 proto;                /* DECAP only */
	} eth;

	__builtin_memcpy(eth.macs, fl->dst_mac, 12);
	__u32 mtu = fl->mtu;
	__u32 priority = fl->priority;
	__u32 action = fl->action;
	__be32 nat_addr = fl->nat_addr;

	/* 4. Decided for this in face, not stale. */
	if (in_ifindex != ifindex)
		PASS(FP_V_IN_FACE);
	__u64 *cur = bpf_map_lookup_elem(&fp_gen, &zero);

	if (!cur || *cur != gen)
		PASS(FP_V_STALE);
	if (action == FP_ACT_DECAP)
		goto decap;
	if (action != FP_ACT_FORWARD)
		PASS(FP_V_MISS);     /* an action this program does not know: no usable entry */

	/* 5. Out face, hop limit, MTU, and the out interface as the kernel has it now. */
	if (out_ifindex == ifindex)
		PASS(FP_V_SAME_FACE);
	if (h.hop_limit <= 1)
		PASS(FP_V_HOP_LIMIT);
	if (total > mtu)
		PASS(FP_V_TOO_BIG);
	enum fp_out path = out_path(skb, out_ifindex, flow_flags & FP_FLOW_PEER);

	if (path == FP_OUT_DOWN)
		PASS(FP_V_OUT_DOWN);

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
	if (bpf_skb_store_bytes(skb, 0, eth.macs, sizeof(eth.macs), 0) < 0)
		PASS(FP_V_REWRITE_ERROR);
	skb->priority = priority;

	long rc = path == FP_OUT_PEER ? bpf_redirect_peer(out_ifindex, 0)
				      : bpf_redirect(out_ifindex, 0);

	if (rc != TC_ACT_REDIRECT)
		PASS(FP_V_REDIRECT_ERROR);

	count_flow(flow_slot, total, len - FP_ETH_HLEN, 0, path == FP_OUT_PEER);
	return TC_ACT_REDIRECT;

decap:
	/* 5d. Type 6 carrying exactly one IPv4 packet: [14 + hlen, 14 + total). */
	if (h.type != FP_TYPE_IPV4)
		PASS(FP_V_BAD_INNER);
	__u32 ip_len = total - hlen;
	struct fp_ipv4 ip;

	if (ip_len < FP_IP_HLEN ||
	    bpf_skb_load_bytes(skb, FP_ETH_HLEN + hlen, &ip, sizeof(ip)) < 0)
		PASS(FP_V_BAD_INNER);
	__u32 ihl = (__u32)(ip.ver_ihl & 0xf) * 4;

	if ((ip.ver_ihl >> 4) != 4 || ihl < FP_IP_HLEN || bpf_ntohs(ip.tot_len) != ip_len ||
	    ihl > ip_len)
		PASS(FP_V_BAD_INNER);
	/* The L4 header of a TCP/UDP packet (or first fragment) must be inside it:
	 * its checksum follows a DNAT, its TCP flags are counted. */
	__u32 l4_check = 0;                  /* offset of the L4 checksum in the IPv4 packet */
	__u64 csum_flags = BPF_F_PSEUDO_HDR | sizeof(nat_addr);
	__u64 tcp_flags = 0;

	if (!(ip.frag_off & bpf_htons(FP_IP_OFFSET))) {
		if (ip.protocol == FP_IPPROTO_TCP) {
			__u8 fl8;

			if (ihl + FP_TCP_HLEN > ip_len ||
			    bpf_skb_load_bytes(skb, FP_ETH_HLEN + hlen + ihl + FP_TCP_OFF_FLAGS,
					       &fl8, 1) < 0)
				PASS(FP_V_BAD_INNER);
			tcp_flags = fl8;
			l4_check = ihl + FP_TCP_OFF_CHECK;
		} else if (ip.protocol == FP_IPPROTO_UDP) {
			if (ihl + FP_UDP_HLEN > ip_len)
				PASS(FP_V_BAD_INNER);
			l4_check = ihl + FP_UDP_OFF_CHECK;
			csum_flags |= BPF_F_MARK_MANGLED_0;   /* a UDP checksum of 0 stays 0 */
		}
	}
	if (out_path(skb, out_ifindex, 0) == FP_OUT_DOWN)
		PASS(FP_V_OUT_DOWN);
	if (ip_len > mtu)
		PASS(FP_V_TOO_BIG);
	struct fp_scratch *scr = bpf_map_lookup_elem(&fp_scratch, &zero);

	if (!scr)
		PASS(FP_V_REWRITE_ERROR);            /* cannot happen (an array); nothing written */

	/* Decap: move the IPv4 packet to offset 14 (front to back: each chunk is
	 * read before anything at or after its source is written), whole chunks
	 * first, then the rest; then cut the tail. The moved bytes are L3
	 * payload: keep a CHECKSUM_COMPLETE csum right. */
	__u32 src = FP_ETH_HLEN + hlen;
	__u32 whole = ip_len / FP_COPY_CHUNK;
	__u32 done = 0;

	for (__u32 i = 0; i < FP_COPY_CHUNKS; i++) {
		if (i >= whole)
			break;
		done = i * FP_COPY_CHUNK;
		if (bpf_skb_load_bytes(skb, src + done, scr->chunk, FP_COPY_CHUNK) < 0 ||
		    bpf_skb_store_bytes(skb, FP_ETH_HLEN + done, scr->chunk, FP_COPY_CHUNK,
					BPF_F_RECOMPUTE_CSUM) < 0)
			DROP(FP_V_REWRITE_ERROR);
	}
	__u32 rest = ip_len & (FP_COPY_CHUNK - 1);

	done = ip_len - rest;
	if (rest) {
		if (bpf_skb_load_bytes(skb, src + done, scr->chunk, rest) < 0 ||
		    bpf_skb_store_bytes(skb, FP_ETH_HLEN + done, scr->chunk, rest,
					BPF_F_RECOMPUTE_CSUM) < 0)
			DROP(FP_V_REWRITE_ERROR);
	}
	if (bpf_skb_change_tail(skb, FP_ETH_HLEN + ip_len, 0) < 0)
		DROP(FP_V_REWRITE_ERROR);

	/* DNAT: the address, then the IPv4 and L4 (pseudo-header) checksums. */
	if (nat_addr) {
		__be32 old = ip.daddr;

		if (bpf_skb_store_bytes(skb, FP_ETH_HLEN + FP_IP_OFF_DADDR, &nat_addr,
					sizeof(nat_addr), 0) < 0 ||
		    bpf_l3_csum_replace(skb, FP_ETH_HLEN + FP_IP_OFF_CHECK, old, nat_addr,
					sizeof(nat_addr)) < 0)
			DROP(FP_V_REWRITE_ERROR);
		if (l4_check &&
		    bpf_l4_csum_replace(skb, FP_ETH_HLEN + l4_check, old, nat_addr, csum_flags) < 0)
			DROP(FP_V_REWRITE_ERROR);
	}

	/* The new Ethernet header. */
	eth.proto = bpf_htons(FP_ETH_P_IP);
	if (bpf_skb_store_bytes(skb, 0, &eth, sizeof(eth), 0) < 0)
		DROP(FP_V_REWRITE_ERROR);
	skb->priority = priority;

	if (bpf_redirect(out_ifindex, 0) != TC_ACT_REDIRECT)
		DROP(FP_V_REDIRECT_ERROR);

	count_flow(flow_slot, ip_len, len - FP_ETH_HLEN, tcp_flags, 0);
	return TC_ACT_REDIRECT;
up:
	count(verdict);
	return TC_ACT_OK;
shot:
	count(verdict);
	return TC_ACT_SHOT;
}

SEC("tc")
int fp_pod_ingress(struct __sk_buff *skb)
{
	/* The frame to put in front: [pad 2][Ethernet 14][DMSC header], so that
	 * the header copy from the map value is 8-byte aligned on both sides. */
	struct {
		__u8 pad[2];
		__u8 dst_mac[6];
		__u8 src_mac[6];
		__be16 proto;
		__u8 hdr[FP_L4_HDR_MAX];
	} out __attribute__((aligned(8)));
	struct fp_ip_head h;
	struct fp_l4_key key;
	__u32 len = skb->len;
	__u32 ifindex = skb->ifindex;
	__u32 zero = 0;
	__u32 verdict;
	__u32 quiet = 0;   /* passed up, but nothing the gateway needs (see FP_MARK_GATEWAY) */

	/* 1. An untagged IPv4 frame. */
	if (skb->vlan_present || len < FP_ETH_HLEN)
		PASS(FP_V_NOT_IPV4);
	if (bpf_skb_load_bytes(skb, 12, &h.proto, sizeof(h.proto)) < 0 ||
	    h.proto != bpf_htons(FP_ETH_P_IP))
		PASS(FP_V_NOT_IPV4);

	/* 2. From one of our pods. */
	struct fp_pod *pod = bpf_map_lookup_elem(&fp_pods, &ifindex);

	if (!pod)
		PASS(FP_V_UNKNOWN_FACE);
	__be32 pod_addr = pod->addr;

	/* 3. A whole IPv4 packet. */
	if (len < FP_ETH_HLEN + FP_IP_HLEN ||
	    bpf_skb_load_bytes(skb, 12, &h, sizeof(h)) < 0)
		PASS(FP_V_BAD_INNER);
	__u32 ihl = (__u32)(h.ip.ver_ihl & 0xf) * 4;
	__u32 ip_len = bpf_ntohs(h.ip.tot_len);

	if ((h.ip.ver_ihl >> 4) != 4 || ihl < FP_IP_HLEN || ip_len < ihl ||
	    ip_len > len - FP_ETH_HLEN)
		PASS(FP_V_BAD_INNER);

	/* 4. Its own source address, or nothing. */
	if (h.ip.saddr != pod_addr)
		DROP(FP_V_SPOOFED);

	/* 5. Not a fragment; TCP or UDP with its header inside the packet. */
	if (h.ip.frag_off & bpf_htons(FP_IP_MF_OFFSET))
		PASS(FP_V_IP_FRAGMENT);
	__u8 l4[FP_TCP_HLEN];
	__u32 l4_check;
	__u64 csum_flags = BPF_F_PSEUDO_HDR | sizeof(pod_addr);
	__u64 tcp_flags = 0;

	if (h.ip.protocol == FP_IPPROTO_TCP) {
		if (ihl + FP_TCP_HLEN > ip_len ||
		    bpf_skb_load_bytes(skb, FP_ETH_HLEN + ihl, l4, FP_TCP_HLEN) < 0)
			PASS(FP_V_NOT_L4);
		tcp_flags = l4[FP_TCP_OFF_FLAGS];
		l4_check = ihl + FP_TCP_OFF_CHECK;
	} else if (h.ip.protocol == FP_IPPROTO_UDP) {
		if (ihl + FP_UDP_HLEN > ip_len ||
		    bpf_skb_load_bytes(skb, FP_ETH_HLEN + ihl, l4, FP_UDP_HLEN) < 0)
			PASS(FP_V_NOT_L4);
		l4_check = ihl + FP_UDP_OFF_CHECK;
		csum_flags |= BPF_F_MARK_MANGLED_0;   /* a UDP checksum of 0 stays 0 */
	} else {
		PASS(FP_V_NOT_L4);
	}

	/* 6. One packet, not a GSO super-packet. */
	if (skb->gso_segs > 1)
		PASS(FP_V_GSO);

	/* 7. The 5-tuple's entry. */
	__builtin_memset(&key, 0, sizeof(key));
	key.saddr = h.ip.saddr;
	key.daddr = h.ip.daddr;
	__builtin_memcpy(&key.sport, l4, 4);     /* sport, dport */
	key.proto = h.ip.protocol;

	struct fp_l4 *e = bpf_map_lookup_elem(&fp_l4, &key);

	if (!e) {
		/* Not carried. The gateway wants what may start or concern a carried
		 * connection: anything to a service address, UDP, a TCP SYN or RST,
		 * anything from a served port (its entry is being replaced). The rest is
		 * traffic between pods' own addresses (direct routing). */
		if (h.ip.protocol == FP_IPPROTO_TCP && !(tcp_flags & FP_TCP_SYN_RST) &&
		    (bpf_ntohl(h.ip.daddr) & FP_VIP_MASK) != FP_VIP_NET) {
			key.daddr = 0;
			key.dport = 0;
			if (!bpf_map_lookup_elem(&fp_l4, &key))
				quiet = 1;
		}
		PASS(FP_V_MISS);
	}

	/* Copy the decision once: user space may replace the entry meanwhile. */
	__u32 out_ifindex = e->out_ifindex;
	__u32 flow_slot = e->flow_slot;
	__u64 gen = e->gen;
	__u32 mtu = e->mtu;
	__u32 priority = e->priority;
	__be32 snat_addr = e->snat_addr;
	__u32 hdr_len = e->hdr_len;

	__builtin_memcpy(out.dst_mac, e->dst_mac, 12);
	__builtin_memcpy(out.hdr, e->hdr, FP_L4_HDR_MAX);
	out.pad[0] = out.pad[1] = 0;
	out.proto = bpf_htons(FP_ETHERTYPE);

	/* 8. Not stale, a usable out face, a header that fits the MTU. */
	__u64 *cur = bpf_map_lookup_elem(&fp_gen, &zero);

	if (!cur || *cur != gen)
		PASS(FP_V_STALE);
	if (out_path(skb, out_ifindex, 0) == FP_OUT_DOWN)
		PASS(FP_V_OUT_DOWN);
	if (hdr_len < FP_HDR_LEN || hdr_len > FP_L4_HDR_MAX || hdr_len + ip_len > mtu)
		PASS(FP_V_TOO_BIG);
	__u32 total = hdr_len + ip_len;

	struct fp_scratch *scr = bpf_map_lookup_elem(&fp_scratch, &zero);

	if (!scr)
		PASS(FP_V_REWRITE_ERROR);            /* cannot happen (an array); nothing written */

	/* Rewrite. The frame becomes exactly 14 + hdr_len + ip_len bytes (trailing
	 * padding dropped), and the IPv4 packet moves back by hdr_len, from its end
	 * (every chunk is read before a later write can overlap it).
	 * Why not bpf_skb_change_head: it would leave skb->transport_header on the
	 * inner L4 header, a veth carries that offset to the next SG, and there
	 * bpf_skb_change_tail refuses to cut a decapsulated frame below it
	 * (__bpf_skb_min_len): small packets could not be decapsulated. Moved
	 * this way, the transport offset stays 14 + IHL, inside any decap result.
	 * Bytes from offset 14 on are L3 payload for a CHECKSUM_COMPLETE csum. */
	/* SNAT first, while the IPv4 header is at offset 14: the checksum helpers
	 * need the checksum fields at even offsets, and a DMSC header may have an
	 * odd length. The address, then the IPv4 and L4 (pseudo-header) checksums. */
	if (snat_addr) {
		if (bpf_skb_store_bytes(skb, FP_ETH_HLEN + FP_IP_OFF_SADDR, &snat_addr,
					sizeof(snat_addr), 0) < 0 ||
		    bpf_l3_csum_replace(skb, FP_ETH_HLEN + FP_IP_OFF_CHECK, pod_addr, snat_addr,
					sizeof(snat_addr)) < 0 ||
		    bpf_l4_csum_replace(skb, FP_ETH_HLEN + l4_check, pod_addr, snat_addr,
					csum_flags) < 0)
			DROP(FP_V_REWRITE_ERROR);
	}
	if (bpf_skb_change_tail(skb, FP_ETH_HLEN + total, 0) < 0)
		DROP(FP_V_REWRITE_ERROR);
	__u32 rest = ip_len & (FP_COPY_CHUNK - 1);
	__u32 whole = ip_len / FP_COPY_CHUNK;
	__u32 from = FP_ETH_HLEN + ip_len - rest;

	if (rest) {
		if (bpf_skb_load_bytes(skb, from, scr->chunk, rest) < 0 ||
		    bpf_skb_store_bytes(skb, from + hdr_len, scr->chunk, rest,
					BPF_F_RECOMPUTE_CSUM) < 0)
			DROP(FP_V_REWRITE_ERROR);
	}
	for (__u32 i = 0; i < FP_COPY_CHUNKS; i++) {
		if (i >= whole)
			break;
		from = FP_ETH_HLEN + (whole - 1 - i) * FP_COPY_CHUNK;
		if (bpf_skb_load_bytes(skb, from, scr->chunk, FP_COPY_CHUNK) < 0 ||
		    bpf_skb_store_bytes(skb, from + hdr_len, scr->chunk, FP_COPY_CHUNK,
					BPF_F_RECOMPUTE_CSUM) < 0)
			DROP(FP_V_REWRITE_ERROR);
	}

	/* Ethernet (before the network header: the redirect accounts for it),
	 * then the DMSC header with its total_length. */
	out.hdr[4] = total >> 8;                 /* total_length, big endian */
	out.hdr[5] = total & 0xff;
	if (hdr_len < FP_HDR_LEN || hdr_len > FP_L4_HDR_MAX)
		DROP(FP_V_REWRITE_ERROR);            /* restated for the verifier */
	if (bpf_skb_store_bytes(skb, 0, out.dst_mac, FP_ETH_HLEN, 0) < 0 ||
	    bpf_skb_store_bytes(skb, FP_ETH_HLEN, out.hdr, hdr_len, BPF_F_RECOMPUTE_CSUM) < 0)
		DROP(FP_V_REWRITE_ERROR);
	skb->priority = priority;

	if (bpf_redirect(out_ifindex, 0) != TC_ACT_REDIRECT)
		DROP(FP_V_REDIRECT_ERROR);

	count_flow(flow_slot, total, ip_len, tcp_flags, 0);
	return TC_ACT_REDIRECT;
up:
	if (!quiet)
		skb->mark = FP_MARK_GATEWAY;
	count(verdict);
	return TC_ACT_OK;
shot:
	count(verdict);
	return TC_ACT_SHOT;
}
