/* SPDX-License-Identifier: GPL-2.0 */
/* peer_stats: per-peer TCP counters for nextup's health view (bpf/peer_stats.h is the contract).
 *
 * Programs (all tp_btf: no kprobes, no tracefs), keyed by the socket's REMOTE address and port:
 *   inet_sock_set_state   CLOSE->SYN_SENT connect_attempts; SYN_SENT->ESTABLISHED connects_established,
 *                         last_success_ns, srtt_us; SYN_SENT->CLOSE one failure class by sk_err and
 *                         last_failure_ns; ESTABLISHED->anything srtt_us (the connection's last RTT);
 *                         ESTABLISHED->CLOSE_WAIT peer_fins (the peer closed first)
 *   tcp_receive_reset     resets_received, last_failure_ns (not in SYN_SENT: that RST is counted once,
 *                         as refused, by the SYN_SENT->CLOSE transition that follows it)
 *   tcp_send_reset        resets_sent
 *   tcp_retransmit_skb    syn_retransmits in SYN_SENT, data_retransmits otherwise; only transmits that
 *                         went out (newer kernels, 6.18 among them, also fire it for failed ones, with err)
 * One set of these programs serves every nextup of a node: each event looks up its socket's network
 * namespace (ns.inum) in netns_maps, the map of the namespaces nextups registered, and counts into that
 * pod's own LRU map; a namespace nobody registered costs one failed lookup. Entries are created by
 * active opens only (the SYN_SENT events); the other events update the entry of a peer that has one,
 * so clients connecting in do not fill the map. Everything runs in softirq or in the context of
 * whichever task touched the socket: nothing here reads the current task. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

#include "peer_stats.h"

#define AF_INET         2
#define AF_INET6        10
#define ENETUNREACH     101
#define ETIMEDOUT       110
#define ECONNREFUSED    111
#define EHOSTUNREACH    113

/* One pod's counters. The programs never use this map by name: each nextup loads the object to
 * get one (sized by NEXTUP_BPF_MAX_PEERS, with BTF for bpftool), pins it in its own pin dir and
 * registers it in netns_maps. */
struct peer_stats_map {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 4096);
    __type(key, struct peer_key);
    __type(value, struct peer_stats);
};

struct peer_stats_map peer_stats SEC(".maps");

/* Network namespace inode -> that pod's peer_stats. Filled from user space only (programs may only
 * look up a map of maps). */
struct {
    __uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
    __uint(max_entries, NETNS_MAPS_MAX);
    __type(key, __u64);
    __array(values, struct peer_stats_map);
} netns_maps SEC(".maps");

/* Not used by the programs: written by the loader, read back on restart to decide on reuse. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct peer_stats_meta);
} peer_stats_meta SEC(".maps");

/* The peer_stats map of <sk>'s network namespace; NULL when no nextup registered it. */
static __always_inline void *pod_map_of(const struct sock *sk)
{
    __u64 netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);

    return bpf_map_lookup_elem(&netns_maps, &netns);
}

/* The remote end of <sk> as a peer_key; false for a family other than IPv4/IPv6. Reads only
 * sock_common, so it is valid for full, request and timewait sockets alike. */
static __always_inline bool peer_key_of(const struct sock *sk, struct peer_key *key)
{
    __u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
    struct in6_addr a6;

    __builtin_memset(key, 0, sizeof(*key));
    if (family == AF_INET) {
        __u32 daddr = BPF_CORE_READ(sk, __sk_common.skc_daddr);

        key->addr[10] = 0xff;
        key->addr[11] = 0xff;
        __builtin_memcpy(&key->addr[12], &daddr, sizeof(daddr));
        key->family = AF_INET;
    } else if (family == AF_INET6) {
        BPF_CORE_READ_INTO(&a6, sk, __sk_common.skc_v6_daddr);
        __builtin_memcpy(key->addr, &a6, sizeof(key->addr));
        /* One peer, one key: an AF_INET6 socket talking to ::ffff:a.b.c.d counts as IPv4. */
        if (a6.in6_u.u6_addr32[0] == 0 && a6.in6_u.u6_addr32[1] == 0 &&
            a6.in6_u.u6_addr32[2] == bpf_htonl(0xffff))
            key->family = AF_INET;
        else
            key->family = AF_INET6;
    } else {
        return false;
    }
    key->port = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
    return true;
}

/* The entry for <sk>'s peer; NULL when the socket is not counted, or when it has none and <create>
 * is false. Only events of active opens create entries: accepted connections come from clients'
 * ephemeral ports, and an entry for each would churn the LRU and evict the upstreams nextup asks about. */
static __always_inline struct peer_stats *stats_of(const struct sock *sk, bool create)
{
    struct peer_stats zero = {};
    struct peer_key key;
    struct peer_stats *s;
    void *map;

    /* The namespace first: for the sockets of pods without nextup that is all an event costs. */
    map = pod_map_of(sk);
    if (!map || !peer_key_of(sk, &key))
        return NULL;
    /* Lookup first: an LRU update takes a free node (possibly evicting a peer) before it finds
     * out that the key exists, so BPF_NOEXIST is only tried for a key that was missing. */
    s = bpf_map_lookup_elem(map, &key);
    if (s || !create)
        return s;
    /* Another CPU may win the race to create it: EEXIST is fine, the lookup finds its entry. */
    bpf_map_update_elem(map, &key, &zero, BPF_NOEXIST);
    return bpf_map_lookup_elem(map, &key);
}

static __always_inline __u64 srtt_of(const struct sock *sk)
{
    return BPF_CORE_READ((const struct tcp_sock *)sk, srtt_us) >> 3;
}

static __always_inline void connect_failed(const struct sock *sk, struct peer_stats *s)
{
    int err = BPF_CORE_READ(sk, sk_err);

    /* A connect closed by the application has no hard error; an ICMP error that arrived while the
     * socket was locked by the user is only in sk_err_soft. */
    if (!err)
        err = BPF_CORE_READ(sk, sk_err_soft);
    switch (err) {
    case ECONNREFUSED:
        __sync_fetch_and_add(&s->refused, 1);
        break;
    case ETIMEDOUT:
        __sync_fetch_and_add(&s->connect_timeouts, 1);
        break;
    case EHOSTUNREACH:
    case ENETUNREACH:
        __sync_fetch_and_add(&s->unreachable, 1);
        break;
    case 0:
        /* No error: the application closed a socket still in SYN_SENT. After a SYN retransmit
         * that is a peer too slow to answer; before one, an abort we cannot blame on it. */
        if (BPF_CORE_READ((const struct tcp_sock *)sk, total_retrans))
            __sync_fetch_and_add(&s->connect_timeouts, 1);
        else
            __sync_fetch_and_add(&s->connect_failures, 1);
        break;
    default:
        __sync_fetch_and_add(&s->connect_failures, 1);
        break;
    }
    s->last_failure_ns = bpf_ktime_get_ns();
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(handle_set_state, const struct sock *sk, const int oldstate, const int newstate)
{
    struct peer_stats *s;
    __u64 srtt;

    /* The tracepoint also fires for DCCP, SCTP and MPTCP sockets. sk_protocol is a plain u16 since 5.6. */
    if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
        return 0;

    if (oldstate == TCP_CLOSE && newstate == TCP_SYN_SENT) {
        /* connect() sets daddr/dport before this transition, so the key is the peer's. */
        s = stats_of(sk, true);
        if (s)
            __sync_fetch_and_add(&s->connect_attempts, 1);
    } else if (oldstate == TCP_SYN_SENT && newstate == TCP_ESTABLISHED) {
        s = stats_of(sk, true);
        if (!s)
            return 0;
        __sync_fetch_and_add(&s->connects_established, 1);
        s->last_success_ns = bpf_ktime_get_ns();
        /* The SYN-ACK was acked before the state change: srtt holds the handshake sample
         * (0 when the SYN was retransmitted: Karn's rule). */
        srtt = srtt_of(sk);
        if (srtt)
            s->srtt_us = srtt;
    } else if (oldstate == TCP_SYN_SENT && newstate == TCP_CLOSE) {
        s = stats_of(sk, true);
        if (s)
            connect_failed(sk, s);
    } else if (oldstate == TCP_ESTABLISHED) {
        s = stats_of(sk, false);
        if (!s)
            return 0;
        /* The peer's FIN came first: a server closing its keep-alive connections (as it
         * drains, or on its idle timeout), or after a response it framed by the close. */
        if (newstate == TCP_CLOSE_WAIT)
            __sync_fetch_and_add(&s->peer_fins, 1);
        srtt = srtt_of(sk);
        if (srtt)
            s->srtt_us = srtt;
    }
    return 0;
}

SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(handle_receive_reset, struct sock *sk)
{
    struct peer_stats *s;

    /* In SYN_SENT the RST is a refusal: tcp_reset() sets sk_err = ECONNREFUSED and closes the
     * socket, and handle_set_state counts it there, once. */
    if (BPF_CORE_READ(sk, __sk_common.skc_state) == TCP_SYN_SENT)
        return 0;
    s = stats_of(sk, false);
    if (!s)
        return 0;
    __sync_fetch_and_add(&s->resets_received, 1);
    s->last_failure_ns = bpf_ktime_get_ns();
    return 0;
}

/* (sk, skb, reason) since 6.10, (sk, skb) before: only sk is read, so one program fits both. */
SEC("tp_btf/tcp_send_reset")
int BPF_PROG(handle_send_reset, const struct sock *sk)
{
    struct peer_stats *s;
    int state;

    /* NULL: a RST answering a segment for no socket (a closed port); not a peer of ours.
     * A listener has no remote end. */
    if (!sk)
        return 0;
    state = BPF_CORE_READ(sk, __sk_common.skc_state);
    if (state == TCP_LISTEN)
        return 0;
    s = stats_of(sk, false);
    if (s)
        __sync_fetch_and_add(&s->resets_sent, 1);
    return 0;
}

static __always_inline void retransmitted(const struct sock *sk)
{
    bool syn_sent = BPF_CORE_READ(sk, __sk_common.skc_state) == TCP_SYN_SENT;
    struct peer_stats *s = stats_of(sk, syn_sent);

    if (!s)
        return;
    if (syn_sent)
        __sync_fetch_and_add(&s->syn_retransmits, 1);
    else
        __sync_fetch_and_add(&s->data_retransmits, 1);
}

/* Newer kernels (6.18 here): (sk, skb, err), fired for failed retransmits too (err != 0: nothing was
 * sent, e.g. -EBUSY while the original still sits in a host queue). */
SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(handle_retransmit_skb, const struct sock *sk, const struct sk_buff *skb, int err)
{
    if (err)
        return 0;
    retransmitted(sk);
    return 0;
}

/* Before that: (sk, skb), fired only for retransmits that went out. The loader enables exactly one
 * of the two after reading the tracepoint's prototype from the kernel's BTF: the verifier rejects a
 * program that reads an argument the tracepoint does not have. */
SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(handle_retransmit_skb_noerr, const struct sock *sk)
{
    retransmitted(sk);
    return 0;
}

#ifdef PEER_STATS_BUILD_TAG
/* Only in the test build of "another nextup build" (bpf.mk's variant): other bytes in the object, so
 * another program set on the node, with the same code. */
const volatile char build_tag[] = PEER_STATS_BUILD_TAG;
#endif

char LICENSE[] SEC("license") = "GPL";
