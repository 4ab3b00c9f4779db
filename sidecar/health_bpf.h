/* health_bpf: one set of bpf/peer_stats.bpf.c's programs per node, one counters map per pod.
 *
 * API:
 *   health_bpf_open()     reuse this build's program set pinned under <node_dir> (or load, attach and pin
 *                         it), reuse the pod's map pinned in <pin_dir> (or make it), and register the map
 *                         for this network namespace; never the pins of another network namespace
 *   health_bpf_lookup()   the counters of one peer address
 *   health_bpf_map_fd()   the pod's map, for callers that iterate it
 *   health_bpf_sweep()    from a timer: entries of namespaces no nextup runs in any more are removed
 *   health_bpf_close()    the last nextup of the namespace removes its entry (and the set, when it was
 *                         the last on the node); the pod's map stays pinned with its counters
 * Each TCP event on the node costs one namespace lookup however many pods run nextup. A second nextup
 * on the same pin dir (a hand-over) shares the map and the entry, and the counters cover restarts. The
 * counters only grow: the health view takes deltas over its window. struct peer_stats is the contract
 * in bpf/peer_stats.h (include <linux/types.h> before it), which also describes the pin layout. */
#ifndef SIDECAR_HEALTH_BPF_H
#define SIDECAR_HEALTH_BPF_H

#include <stddef.h>
#include <linux/types.h>

#include "peer_stats.h"

struct health_bpf;
struct sockaddr;

struct health_bpf_opts {
    int mode;                       /* CONFIG_BPF_AUTO / CONFIG_BPF_ON / CONFIG_BPF_OFF (config.h) */
    const char *pin_dir;            /* NEXTUP_BPF_PIN_DIR (default /sys/fs/bpf/nextup): the map is pinned at
                                       <pin_dir>/peer_stats, the links at <pin_dir>/link_<program> */
    int max_peers;                  /* NEXTUP_BPF_MAX_PEERS: LRU map size; <= 0 means 4096 */
    unsigned long long netns_inum;  /* namespace whose sockets count; 0 = this process's (/proc/self/ns/net) */
    const char *node_dir;           /* NEXTUP_BPF_NODE_DIR (default /sys/fs/bpf/nextup-node): the program sets,
                                       <node_dir>/v<layout>-<build hash>/, shared by the node's nextups */
};

/* How often health_bpf_sweep() really sweeps. */
#define HEALTH_BPF_SWEEP_MS 5000

/* 0 with *out set; or 0 with *out NULL when mode is off, or when mode is auto and loading failed
 * (one warning logged with the reason). When mode is on and loading failed: a negative errno and one
 * line in <err> naming NEXTUP_BPF and the reason (no CAP_BPF / not root, no kernel BTF, pin dir not on
 * bpffs, ...), nothing logged. -EBUSY (auto: the warning) when <pin_dir> holds pins made for another
 * network namespace: the reason names NEXTUP_BPF_PIN_DIR and both namespaces, and the pins are left
 * alone; also -EBUSY when another running nextup counts this namespace into another pin dir's map. Routes libbpf's messages to the debug log (process-wide). */
int health_bpf_open(const struct health_bpf_opts *o, struct health_bpf **out, char *err, size_t errlen);

/* Copies the kernel counters for the peer at <sa> (AF_INET, or AF_INET6 where ::ffff:a.b.c.d is the
 * same peer as a.b.c.d) into <out>. 0; -ENOENT when the map has no entry (never seen, or evicted);
 * -EAFNOSUPPORT for another family; another negative errno from the kernel. */
int health_bpf_lookup(struct health_bpf *h, const struct sockaddr *sa, struct peer_stats *out);

/* At most every HEALTH_BPF_SWEEP_MS (a no-op otherwise, and when another nextup holds the set's lock):
 * removes the entries of namespaces that no running nextup holds (nextups that died without their
 * exit, pods gone), and other builds' sets left unused; puts back this nextup's own entry if it went.
 * How many entries were removed, or a negative errno. */
int health_bpf_sweep(struct health_bpf *h);

/* Frees <h> (NULL is fine) and its fds. When no other running nextup has this namespace, its entry
 * goes from the node's set (its sockets are no longer counted), and the set goes when no namespace is
 * left in it (its programs are detached). The pod's pinned map stays. */
void health_bpf_close(struct health_bpf *h);

/* The peer_stats map's fd, owned by <h> (valid until health_bpf_close); -EINVAL for NULL. */
int health_bpf_map_fd(const struct health_bpf *h);

#endif
