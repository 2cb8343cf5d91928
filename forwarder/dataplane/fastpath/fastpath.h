/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * DMSC kernel fast path: the one place where the C side's map layouts live.
 * layout.py is the Python twin of this file; tests/test_layout.py compiles a
 * host probe that includes this header and compares every size and offset.
 *
 * All fields are host byte order (user space writes them with struct '<' formats
 * on x86_64 / little-endian) except the MAC addresses and the key bytes, which
 * are copied to/from the wire as they are.
 */
#ifndef DMSC_FASTPATH_H
#define DMSC_FASTPATH_H

#include <linux/types.h>

#define FP_KEY_MAX        256        /* longest flow key (header_length - 20) handled */
#define FP_FLOWS_MAX      65536      /* fp_flows entries and fp_flow_stats slots */
#define FP_FACES_MAX      256        /* fp_faces entries and fp_face_stats slots */
#define FP_PREFIXES_MAX   4096       /* fp_prefix_stats slots */
#define FP_VERDICTS_MAX   16         /* fp_verdicts slots */
#define FP_NO_PREFIX      0xFFFFFFFFu/* fp_flow.prefix_slot: no prefix counters */

#define FP_ETHERTYPE      0x88B5
#define FP_ETH_HLEN       14
#define FP_HDR_LEN        40         /* DMSC fixed header */
#define FP_KEY_OFF        20         /* the flow key starts at dst_hash */
#define FP_MIN_FRAME      60         /* what the Python forwarder pads to */
#define FP_VERSION        1

/* fp_face.flags */
#define FP_FACE_DOWN      0x1        /* not usable as an output face (carrier down) */

/* Verdicts: index into fp_verdicts; names in layout.VERDICTS, same order. */
enum fp_verdict {
	FP_V_REDIRECTED = 0,     /* rewritten and redirected */
	FP_V_NOT_DMSC,           /* EtherType is not 0x88B5, or a VLAN tag is present */
	FP_V_SHORT,              /* fewer than 14 + 40 bytes */
	FP_V_NOT_FAST,           /* version != 1, type not 1..5, flags != 0, bad fragment fields */
	FP_V_BAD_LENGTH,         /* header_length/total_length inconsistent or past the frame */
	FP_V_KEY_TOO_LONG,       /* header_length - 20 > FP_KEY_MAX */
	FP_V_UNKNOWN_FACE,       /* ingress ifindex not in fp_faces */
	FP_V_MISS,               /* flow key not in fp_flows */
	FP_V_STALE,              /* entry generation != fp_gen[0] */
	FP_V_SAME_FACE,          /* out_ifindex == ingress ifindex */
	FP_V_OUT_DOWN,           /* out face not in fp_faces, or flagged FP_FACE_DOWN */
	FP_V_HOP_LIMIT,          /* hop_limit <= 1 */
	FP_V_TOO_BIG,            /* total_length > entry mtu */
	FP_V_REWRITE_ERROR,      /* bpf_skb_change_tail / bpf_skb_store_bytes failed */
	FP_V_REDIRECT_ERROR,     /* bpf_redirect did not return TC_ACT_REDIRECT */
	FP_V__COUNT
};

/* fp_flows key: the packet bytes [20, header_length), zero padded. */
struct fp_key {
	__u16 len;                   /* header_length - 20 */
	__u16 pad;                   /* 0 */
	__u8  bytes[FP_KEY_MAX];     /* bytes past len are 0 */
};                                   /* 260 bytes */

/* fp_faces value, keyed by ifindex (__u32). */
struct fp_face {
	__u32 face_slot;             /* index into fp_face_stats */
	__u32 flags;                 /* FP_FACE_* */
};                                   /* 8 bytes */

/* fp_flows value. */
struct fp_flow {
	__u32 out_ifindex;           /*  0 */
	__u32 flow_slot;             /*  4: index into fp_flow_stats */
	__u64 gen;                   /*  8: must equal fp_gen[0] */
	__u8  dst_mac[6];            /* 16: written to the Ethernet header as is */
	__u8  src_mac[6];            /* 22 */
	__u16 mtu;                   /* 28: total_length must be <= mtu */
	__u16 out_face_slot;         /* 30: index into fp_face_stats (tx) */
	__u32 prefix_slot;           /* 32: index into fp_prefix_stats, FP_NO_PREFIX for none */
	__u32 priority;              /* 36: written to skb->priority */
};                                   /* 40 bytes, no implicit padding */

struct fp_flow_stats {
	__u64 packets;
	__u64 bytes;                 /* sum of total_length */
	__u64 last_ns;               /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) of the last hit */
};                                   /* 24 bytes */

struct fp_face_stats {
	__u64 rx_packets;
	__u64 rx_bytes;              /* frame length - 14 (the packet with its padding) */
	__u64 tx_packets;
	__u64 tx_bytes;              /* total_length */
};                                   /* 32 bytes */

struct fp_prefix_stats {
	__u64 packets;
	__u64 bytes;                 /* sum of total_length */
};                                   /* 16 bytes */

/* The 14 + 40 bytes the program reads first (from offset 12: EtherType + header). */
struct fp_wire_head {
	__be16 proto;                /* EtherType */
	__u8   version;
	__u8   type;
	__u8   flags;
	__u8   hop_limit;
	__be16 total_length;
	__be16 header_length;
	__be32 flow_id;
	__be32 seq;
	__be16 frag_index;
	__be16 frag_count;
	__be32 dst_hash;
	__be32 src_hash;
	__u8   dst_len;
	__u8   src_len;
	__u8   dst_ncomp;
	__u8   src_ncomp;
	__u8   dst_bounds[8];
} __attribute__((packed));           /* 42 bytes */

_Static_assert(sizeof(struct fp_key) == 260, "fp_key size");
_Static_assert(sizeof(struct fp_face) == 8, "fp_face size");
_Static_assert(sizeof(struct fp_flow) == 40, "fp_flow size");
_Static_assert(sizeof(struct fp_flow_stats) == 24, "fp_flow_stats size");
_Static_assert(sizeof(struct fp_face_stats) == 32, "fp_face_stats size");
_Static_assert(sizeof(struct fp_prefix_stats) == 16, "fp_prefix_stats size");
_Static_assert(sizeof(struct fp_wire_head) == 2 + FP_HDR_LEN, "fp_wire_head size");
_Static_assert(FP_V__COUNT <= FP_VERDICTS_MAX, "too many verdicts");

#endif /* DMSC_FASTPATH_H */
