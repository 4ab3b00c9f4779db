/* peer_stats: the contract between bpf/peer_stats.bpf.c and sidecar/health_bpf.c.
 *
 * API (one program set per node, one counters map per pod):
 *   map "netns_maps"        hash of maps, __u64 network namespace inode (ns.inum) -> that pod's
 *                           "peer_stats" map (at most NETNS_MAPS_MAX namespaces per node). The programs
 *                           look up the socket's namespace here first and count only where they find it.
 *                           Node-wide, pinned at <NEXTUP_BPF_NODE_DIR>/<set>/netns_maps, where <set> is
 *                           "v<PEER_STATS_LAYOUT_VERSION>-<16 hex digits of the BPF object's hash>": a build
 *                           of other programs or another layout gets a set (and directory) of its own.
 *   links, programs         one pinned BPF link per attached program, <NEXTUP_BPF_NODE_DIR>/<set>/link_<program>
 *                           (e.g. link_handle_set_state), and the program itself at <set>/prog_<program> (what
 *                           lets a nextup without CAP_SYS_ADMIN check what a link runs): the set stays
 *                           attached while any nextup uses it.
 *   <set>/ns/<inum>         an empty bpffs directory per registered namespace; every nextup of that namespace
 *                           holds a shared flock on it while it runs: a namespace whose directory nobody holds
 *                           has no nextup left, and its entry goes (on exit, or at the next sweep).
 *   map "peer_stats"        LRU hash, struct peer_key -> struct peer_stats, one entry per remote
 *                           address and port (max_entries = NEXTUP_BPF_MAX_PEERS), one per pod, pinned at
 *                           <NEXTUP_BPF_PIN_DIR>/peer_stats; the least recently updated peer is evicted.
 *   map "peer_stats_meta"   array of one struct peer_stats_meta (key 0), pinned at
 *                           <NEXTUP_BPF_PIN_DIR>/peer_stats_meta: what the pod's map was made for (layout,
 *                           namespace, program set), so that a restarted nextup reuses it only when they match.
 *   PEER_STATS_LAYOUT_VERSION  bumped whenever a struct below or a map above changes meaning or layout.
 *
 * Fixed-width __u* types only, no pointers, explicit padding; no includes: the BPF side has them from
 * vmlinux.h, user space includes <linux/types.h> first. All counters only grow (until the entry is
 * evicted or the pinned map replaced): readers take deltas. */
#ifndef NEXTUP_PEER_STATS_H
#define NEXTUP_PEER_STATS_H

#define PEER_STATS_LAYOUT_VERSION 3

/* Network namespaces one program set can serve (pods running nextup on one node). */
#define NETNS_MAPS_MAX 4096

/* The remote end of a TCP socket. IPv4, and IPv4-mapped IPv6 (an AF_INET6 socket talking to
 * ::ffff:a.b.c.d), are both stored as ::ffff:a.b.c.d with family AF_INET (2), so one peer has one key;
 * other IPv6 addresses have family AF_INET6 (10). port is in host byte order. */
struct peer_key {
    __u8 addr[16];
    __u16 port;
    __u16 family;
    __u32 pad;               /* always 0: the hash covers every byte */
};

/* Counters for one peer, updated atomically from softirq context on any CPU. An entry is created by
 * the first connect() to the peer from the namespace; resets, data retransmits and RTTs of other
 * sockets (accepted connections, whose peers are clients on ephemeral ports) only update an existing
 * entry. One failed connect counts in exactly one of refused, connect_timeouts, unreachable,
 * connect_failures. */
struct peer_stats {
    __u64 connect_attempts;      /* CLOSE -> SYN_SENT */
    __u64 connects_established;  /* SYN_SENT -> ESTABLISHED */
    __u64 connect_failures;      /* SYN_SENT -> CLOSE for any other reason (aborted before a SYN retransmit, ...) */
    __u64 refused;               /* SYN_SENT -> CLOSE, sk_err ECONNREFUSED: a RST answered the SYN */
    __u64 connect_timeouts;      /* SYN_SENT -> CLOSE, sk_err ETIMEDOUT, or no error after SYN retransmits
                                    (the application gave up waiting) */
    __u64 unreachable;           /* SYN_SENT -> CLOSE, sk_err (or sk_err_soft) EHOSTUNREACH / ENETUNREACH */
    __u64 syn_retransmits;       /* tcp_retransmit_skb that went out in SYN_SENT */
    __u64 resets_received;       /* tcp_receive_reset past SYN_SENT (a RST in SYN_SENT is a refusal) */
    __u64 resets_sent;           /* tcp_send_reset on a socket of ours (not RSTs for unknown sockets) */
    __u64 data_retransmits;      /* tcp_retransmit_skb that went out in any other state */
    __u64 srtt_us;               /* last smoothed RTT seen (tcp_sock srtt_us >> 3): at ESTABLISHED and when
                                    a connection leaves ESTABLISHED; 0 until a sample exists */
    __u64 last_failure_ns;       /* bpf_ktime_get_ns (CLOCK_MONOTONIC) of the last connect failure or RST received */
    __u64 last_success_ns;       /* CLOCK_MONOTONIC ns of the last SYN_SENT -> ESTABLISHED */
    __u64 peer_fins;             /* ESTABLISHED -> CLOSE_WAIT: the peer closed first (its FIN before ours) */
};

/* Value of "peer_stats_meta"[0], written once by the loader that created the pinned maps. These first
 * 16 bytes keep their meaning in every layout version (a later one may only append fields): a loader of
 * any version reads the owning namespace from them first, and never replaces another namespace's pins. */
struct peer_stats_meta {
    __u32 layout_version;        /* PEER_STATS_LAYOUT_VERSION */
    __u32 pad;
    __u64 netns_inum;            /* the namespace whose sockets the map counts */
    __u64 set_id;                /* the program set feeding it (the hash in <set>'s name): a map is
                                    registered with one set only, so no event counts twice */
};

#endif
