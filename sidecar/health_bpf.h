/* health_bpf: loads bpf/peer_stats.bpf.c, pins its map and links, and reads per-peer kernel counters.
 *
 * API:
 *   health_bpf_open()     reuse the programs pinned in <pin_dir> for this build and namespace, or load,
 *                         attach and pin a set of our own: <pin_dir>/peer_stats, peer_stats_meta and
 *                         link_<program>; never the pins of another network namespace
 *   health_bpf_lookup()   the counters of one peer address
 *   health_bpf_map_fd()   the map, for callers that iterate it
 *   health_bpf_close()    drop this process's references; the pins stay, the programs go on counting
 * One set of programs feeds a pinned map: a second nextup on the same pin dir (a hand-over) shares the
 * first one's, and the counters cover restarts. `rm -r <pin_dir>` detaches the programs once no running
 * nextup uses them. The counters only grow: the health view takes deltas over its window. struct
 * peer_stats is the contract in bpf/peer_stats.h (include <linux/types.h> before it). */
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
};

/* 0 with *out set; or 0 with *out NULL when mode is off, or when mode is auto and loading failed
 * (one warning logged with the reason). When mode is on and loading failed: a negative errno and one
 * line in <err> naming NEXTUP_BPF and the reason (no CAP_BPF / not root, no kernel BTF, pin dir not on
 * bpffs, ...), nothing logged. -EBUSY (auto: the warning) when <pin_dir> holds pins made for another
 * network namespace: the reason names NEXTUP_BPF_PIN_DIR and both namespaces, and the pins are left
 * alone. Routes libbpf's messages to the debug log (process-wide). */
int health_bpf_open(const struct health_bpf_opts *o, struct health_bpf **out, char *err, size_t errlen);

/* Copies the kernel counters for the peer at <sa> (AF_INET, or AF_INET6 where ::ffff:a.b.c.d is the
 * same peer as a.b.c.d) into <out>. 0; -ENOENT when the map has no entry (never seen, or evicted);
 * -EAFNOSUPPORT for another family; another negative errno from the kernel. */
int health_bpf_lookup(struct health_bpf *h, const struct sockaddr *sa, struct peer_stats *out);

/* Frees <h> (NULL is fine) and its fds on the map and links; the pins stay, and with them the
 * programs' attachment. */
void health_bpf_close(struct health_bpf *h);

/* The peer_stats map's fd, owned by <h> (valid until health_bpf_close); -EINVAL for NULL. */
int health_bpf_map_fd(const struct health_bpf *h);

#endif
