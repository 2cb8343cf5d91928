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
#define FP_KEY_SHORT      60         /* flow keys this long or shorter live in fp_flows_short */
#define FP_FLOWS_MAX      65536      /* fp_flows entries and fp_flow_stats slots */
#define FP_VERDICTS_MAX   32         /* fp_verdicts slots */
#define FP_PODS_MAX       256        /* fp_pods entries (pod-facing veths) */
#define FP_L4_HDR_MAX     128        /* longest DMSC header an fp_l4 entry puts in front */

#define FP_ETHERTYPE      0x88B5
#define FP_ETH_HLEN       14
#define FP_HDR_LEN        40         /* DMSC fixed header */
#define FP_KEY_OFF        20         /* the flow key starts at dst_hash */
#define FP_MIN_FRAME      60         /* what the Python forwarder pads to */
#define FP_VERSION        1
#define FP_TYPE_IPV4      6          /* DMSC type 0x06: the payload is one IPv4 packet */

/* IPv4 carried by name (types 6): the inner packet. */
#define FP_ETH_P_IP       0x0800
#define FP_IP_HLEN        20         /* IPv4 header without options */
#define FP_IPPROTO_TCP    6
#define FP_IPPROTO_UDP    17
#define FP_TCP_HLEN       20         /* what fp_pod_ingress requires of a TCP header */
#define FP_UDP_HLEN       8
#define FP_COPY_CHUNK     2048       /* encap/decap: bytes moved per load/store pair (2^n) */
#define FP_COPY_CHUNKS    32         /* encap/decap: whole chunks at most (32 x 2048 > 65535) */

/* fp_flow.action */
/* fp_pod_ingress marks what it passes up for the gateway (skb->mark), so that the
 * gateway's packet socket can leave alone what is not for it: traffic between pods'
 * own addresses that is not a new connection (direct IP routing through the node). */
#define FP_MARK_GATEWAY   0xD35C0001u
/* The out interface's state as fp_ingress reads it (CO-RE, struct net_device). */
#define FP_IFF_UP         0x1        /* net_device.flags */
#define FP_LINK_NOCARRIER 0x4        /* net_device.state: 1 << __LINK_STATE_NOCARRIER */
#define FP_DEV_HASH_SIZE  256        /* struct net.dev_index_head: 1 << NETDEV_HASHBITS buckets */
#define FP_DEV_CHAIN_MAX  8          /* devices looked at in one bucket (then: not found) */
#define FP_VIP_NET        0x0A600000u /* 10.96.0.0/12: service addresses (forwarder.gateway) */
#define FP_VIP_MASK       0xFFF00000u
#define FP_TCP_SYN_RST    0x06

#define FP_ACT_FORWARD    0          /* rewrite the DMSC frame and redirect it */
#define FP_ACT_DECAP      1          /* type 6: strip Ethernet + DMSC, deliver the IPv4 packet */

/* fp_flow.flags */
#define FP_FLOW_PEER      0x1        /* the out face is a veth whose peer is in another
				      * network namespace: bpf_redirect_peer may hand a
				      * FORWARD frame straight to it */

/* Verdicts: index into fp_verdicts; names in layout.VERDICTS, same order. The three
 * that hand a frame on (REDIRECTED, ENCAPSULATED, DECAPSULATED) are not counted
 * here but in the flow's fp_flow_stats record (user space adds them up by entry
 * kind): a hit touches its flow's record and nothing else. */
enum fp_verdict {
	FP_V_REDIRECTED = 0,     /* rewritten and redirected */
	FP_V_NOT_DMSC,           /* EtherType is not 0x88B5, or a VLAN tag is present */
	FP_V_SHORT,              /* fewer than 14 + 40 bytes */
	FP_V_NOT_FAST,           /* version != 1, type not 1..5, flags != 0, bad fragment fields */
	FP_V_BAD_LENGTH,         /* header_length/total_length inconsistent or past the frame */
	FP_V_KEY_TOO_LONG,       /* header_length - 20 > FP_KEY_MAX */
	FP_V_UNKNOWN_FACE,       /* fp_pod_ingress: ingress ifindex not in fp_pods */
	FP_V_MISS,               /* flow key not in fp_flows */
	FP_V_STALE,              /* entry generation != fp_gen[0] */
	FP_V_SAME_FACE,          /* out_ifindex == ingress ifindex */
	FP_V_OUT_DOWN,           /* out interface down or without carrier (the kernel's state) */
	FP_V_HOP_LIMIT,          /* hop_limit <= 1 */
	FP_V_TOO_BIG,            /* total_length > entry mtu */
	FP_V_REWRITE_ERROR,      /* bpf_skb_change_tail / bpf_skb_store_bytes failed */
	FP_V_REDIRECT_ERROR,     /* bpf_redirect did not return TC_ACT_REDIRECT */
	FP_V_ENCAPSULATED,       /* fp_pod_ingress: IPv4 packet put in a DMSC header, redirected */
	FP_V_DECAPSULATED,       /* fp_ingress, DECAP entry: IPv4 packet delivered, redirected */
	FP_V_NOT_IPV4,           /* fp_pod_ingress: EtherType is not 0x0800, or a VLAN tag */
	FP_V_SPOOFED,            /* fp_pod_ingress: source address is not the pod's (dropped) */
	FP_V_IP_FRAGMENT,        /* fp_pod_ingress: MF flag or fragment offset set */
	FP_V_NOT_L4,             /* fp_pod_ingress: not TCP/UDP, or its header past the packet */
	FP_V_GSO,                /* fp_pod_ingress: skb->gso_segs > 1 */
	FP_V_BAD_INNER,          /* not IPv4 v4/IHL >= 5, or lengths inconsistent; DECAP of a non-6 type */
	FP_V_IN_FACE,            /* fp_ingress: the entry was decided for another in face */
	FP_V__COUNT
};

/* fp_flows key: the packet bytes [20, header_length), zero padded. */
struct fp_key {
	__u16 len;                   /* header_length - 20 */
	__u16 pad;                   /* 0 */
	__u8  bytes[FP_KEY_MAX];     /* bytes past len are 0 */
};                                   /* 260 bytes */

/* fp_flows_short key: the same for a block of at most FP_KEY_SHORT bytes (most
 * names): built on the stack, hashed and compared in 64 bytes rather than 260. */
struct fp_key_short {
	__u16 len;
	__u16 pad;
	__u8  bytes[FP_KEY_SHORT];
};                                   /* 64 bytes */

/* fp_flows value. */
struct fp_flow {
	__u32 out_ifindex;           /*  0 */
	__u32 flow_slot;             /*  4: index into fp_flow_stats */
	__u64 gen;                   /*  8: must equal fp_gen[0] */
	__u8  dst_mac[6];            /* 16: written to the Ethernet header as is */
	__u8  src_mac[6];            /* 22 */
	__u16 mtu;                   /* 28: total_length must be <= mtu */
	__u16 flags;                 /* 30: FP_FLOW_* */
	__u32 in_ifindex;            /* 32: the face the pipeline decided for: frames of the
				      *     flow arriving on another are passed up */
	__u32 priority;              /* 36: written to skb->priority */
	__u32 action;                /* 40: FP_ACT_FORWARD, FP_ACT_DECAP */
	__be32 nat_addr;             /* 44: DECAP: new inner destination address, 0: keep */
};                                   /* 48 bytes, no implicit padding */

/* fp_flow_stats value: everything the kernel counts of a hit, in one cache line.
 * User space knows each slot's entry (in and out face, prefix, kind) and adds the
 * differences to the face, prefix and verdict counters. */
struct fp_flow_stats {
	__u64 packets;
	__u64 bytes;                 /*  8: sent: total_length (DECAP: the inner IPv4 length) */
	__u64 rx_bytes;              /* 16: received: frame length - 14 (encap: the IPv4 length) */
	__u64 last_ns;               /* 24: bpf_ktime_get_ns() (CLOCK_MONOTONIC) of the last hit */
	__u64 tcp_flags;             /* 32: OR of the inner TCP flags byte (DECAP, encap) */
	__u64 peer_packets;          /* 40: of `packets`, those handed straight to the
				      *     neighbour's ingress (bpf_redirect_peer) */
	__u64 pad[2];                /* 48: 0; one record per 64-byte line */
};                                   /* 64 bytes */

/* fp_pods value, keyed by the ifindex (__u32) of a pod-facing veth. */
struct fp_pod {
	__be32 addr;                 /* the one source address the pod may use */
};                                   /* 4 bytes */

/* fp_l4 key: the inner 5-tuple as the packet arrives from the pod (before SNAT).
 * A key with daddr 0 and dport 0 is a served port: (pod address, port, proto) is the
 * server end of carried connections, so fp_pod_ingress passes its misses up marked
 * for the gateway (a reply whose entry user space replaced). Its value is unused. */
struct fp_l4_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8  proto;                 /* 6 (TCP) or 17 (UDP) */
	__u8  pad[3];                /* 0 */
};                                   /* 16 bytes */

/* fp_l4 value: how fp_pod_ingress carries the flow's packets by name. */
struct fp_l4 {
	__u32 out_ifindex;           /*  0 */
	__u32 flow_slot;             /*  4: index into fp_flow_stats */
	__u64 gen;                   /*  8: must equal fp_gen[0] */
	__u8  dst_mac[6];            /* 16 */
	__u8  src_mac[6];            /* 22 */
	__u16 mtu;                   /* 28: hdr_len + IPv4 total length must be <= mtu */
	__u16 hdr_len;               /* 30: bytes of hdr used, 40..FP_L4_HDR_MAX */
	__u32 priority;              /* 32: written to skb->priority */
	__be32 snat_addr;            /* 36: new inner source address, 0: keep */
	__u8  hdr[FP_L4_HDR_MAX];    /* 40: the DMSC header, final but for total_length */
};                                   /* 168 bytes */

/* fp_verdicts value (one per CPU): how many frames each verdict had. */
struct fp_verdicts {
	__u64 verdicts[FP_VERDICTS_MAX];         /* enum fp_verdict */
};                                   /* 256 bytes */

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

/* fp_scratch value: per-CPU memory too big for the 512-byte stack: fp_ingress's
 * flow key, and the bytes the encap and decap move the IPv4 packet through.
 * Not pinned: no user-space reader. */
struct fp_scratch {
	struct fp_key key;
	__u32 pad;
	__u8 chunk[FP_COPY_CHUNK];
};

/* An IPv4 header without options, as on the wire. */
struct fp_ipv4 {
	__u8   ver_ihl;              /* version << 4 | IHL (32-bit words) */
	__u8   tos;
	__be16 tot_len;
	__be16 id;
	__be16 frag_off;             /* flags (0x4000 DF, 0x2000 MF) | offset (0x1fff) */
	__u8   ttl;
	__u8   protocol;
	__be16 check;
	__be32 saddr;
	__be32 daddr;
} __attribute__((packed));           /* 20 bytes */

#define FP_IP_OFF_CHECK   10         /* offsets inside struct fp_ipv4 */
#define FP_IP_OFF_SADDR   12
#define FP_IP_OFF_DADDR   16
#define FP_IP_MF_OFFSET   0x3fff     /* frag_off: MF flag or a fragment offset */
#define FP_IP_OFFSET      0x1fff     /* frag_off: fragment offset */
#define FP_TCP_OFF_FLAGS  13
#define FP_TCP_OFF_CHECK  16
#define FP_UDP_OFF_CHECK  6

/* What fp_pod_ingress reads first (from offset 12: EtherType + IPv4 header). */
struct fp_ip_head {
	__be16 proto;                /* EtherType */
	struct fp_ipv4 ip;
} __attribute__((packed));           /* 22 bytes */

_Static_assert(sizeof(struct fp_ipv4) == FP_IP_HLEN, "fp_ipv4 size");
_Static_assert(sizeof(struct fp_ip_head) == 2 + FP_IP_HLEN, "fp_ip_head size");
_Static_assert(sizeof(struct fp_key) == 260, "fp_key size");
_Static_assert(sizeof(struct fp_key_short) == 64, "fp_key_short size");
_Static_assert(sizeof(struct fp_flow) == 48, "fp_flow size");
_Static_assert(sizeof(struct fp_flow_stats) == 64, "fp_flow_stats size");
_Static_assert(sizeof(struct fp_pod) == 4, "fp_pod size");
_Static_assert(sizeof(struct fp_l4_key) == 16, "fp_l4_key size");
_Static_assert(sizeof(struct fp_l4) == 40 + FP_L4_HDR_MAX, "fp_l4 size");
_Static_assert(sizeof(struct fp_verdicts) == 8 * FP_VERDICTS_MAX, "fp_verdicts size");
_Static_assert(sizeof(struct fp_wire_head) == 2 + FP_HDR_LEN, "fp_wire_head size");
_Static_assert(FP_V__COUNT <= FP_VERDICTS_MAX, "too many verdicts");

#endif /* DMSC_FASTPATH_H */
