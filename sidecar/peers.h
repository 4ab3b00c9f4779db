/* peers: the upstream peer set and selection with exclusions.
 *
 * API:
 *   peers_new() / peers_free()   the set, built once from the configuration
 *   peers_select()               least outstanding requests, power of two choices,
 *                                skipping excluded peers; NULL only when the set is empty
 *   peer_mask_*()                a small bit set of peer indexes ("tried for this request")
 * Peers are shared by all workers: only <outstanding> changes, atomically. */
#ifndef NEXTUP_PEERS_H
#define NEXTUP_PEERS_H

#include <stdatomic.h>
#include <stdint.h>
#include <sys/socket.h>

#include "config.h"

#define PEERS_MAX CONFIG_MAX_UPSTREAMS

struct peer {
    int index;                       /* position in the set, bit in a peer_mask */
    struct sockaddr_storage sa;
    socklen_t salen;
    char name[128];                  /* as configured, e.g. "orders:8080" */
    char addr_text[64];              /* numeric, e.g. "10.0.0.7:8080" */
    _Atomic int outstanding;         /* requests in flight to this peer, all workers */
};

struct peers {
    int n;
    struct peer *peer[PEERS_MAX];    /* owned */
};

struct peer_mask {
    uint64_t bits[PEERS_MAX / 64];
};

static inline void peer_mask_set(struct peer_mask *m, int i)
{
    m->bits[i / 64] |= (uint64_t)1 << (i % 64);
}

static inline int peer_mask_has(const struct peer_mask *m, int i)
{
    return (m->bits[i / 64] >> (i % 64)) & 1;
}

/* Builds the set from the configured upstreams. NULL on allocation failure. */
struct peers *peers_new(const struct config_upstream *ups, int n);
void peers_free(struct peers *set);

/* Picks a peer whose bit in <exclude> is clear (<exclude> may be NULL): of two
 * random candidates, the one with fewer outstanding requests. When every peer is
 * excluded, picks among all peers rather than none. <rng> is the caller's
 * xorshift state (per worker, no sharing). NULL only when the set is empty. */
struct peer *peers_select(struct peers *set, const struct peer_mask *exclude, uint64_t *rng);

/* xorshift64*: the per-worker random source for selection and jitter. */
uint64_t peers_rand(uint64_t *state);

#endif
