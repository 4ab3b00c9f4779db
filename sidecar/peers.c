#include "peers.h"

#include <stdlib.h>
#include <string.h>

struct peers *peers_new(const struct config_upstream *ups, int n)
{
    struct peers *set = calloc(1, sizeof(*set));
    int i;

    if (!set)
        return NULL;
    for (i = 0; i < n && i < PEERS_MAX; i++) {
        struct peer *p = calloc(1, sizeof(*p));
        if (!p) {
            peers_free(set);
            return NULL;
        }
        p->index = i;
        memcpy(&p->sa, &ups[i].sa, sizeof(p->sa));
        p->salen = ups[i].salen;
        snprintf(p->name, sizeof(p->name), "%s", ups[i].name);
        snprintf(p->addr_text, sizeof(p->addr_text), "%s", ups[i].addr_text);
        atomic_init(&p->outstanding, 0);
        atomic_init(&p->consecutive_failures, 0);
        atomic_init(&p->ejections, 0);
        atomic_init(&p->ejected_until_ms, 0);
        set->peer[i] = p;
        set->n = i + 1;
    }
    return set;
}

void peers_free(struct peers *set)
{
    int i;

    if (!set)
        return;
    for (i = 0; i < set->n; i++)
        free(set->peer[i]);
    free(set);
}

uint64_t peers_rand(uint64_t *state)
{
    uint64_t x = *state;

    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

struct peer *peers_select(struct peers *set, const struct peer_mask *exclude, int64_t now_ms, uint64_t *rng)
{
    int candidates[PEERS_MAX];
    int n = 0, i, a, b;

    if (!set || set->n == 0)
        return NULL;
    for (i = 0; i < set->n; i++)
        if ((!exclude || !peer_mask_has(exclude, i)) && !peer_is_ejected(set->peer[i], now_ms))
            candidates[n++] = i;
    /* Panic mode: every untried peer is ejected, so health is ignored rather than fail. */
    if (n == 0)
        for (i = 0; i < set->n; i++)
            if (!exclude || !peer_mask_has(exclude, i))
                candidates[n++] = i;
    /* Every peer excluded: a request must still get a peer, so all are candidates. */
    if (n == 0)
        for (i = 0; i < set->n; i++)
            candidates[n++] = i;
    if (n == 1)
        return set->peer[candidates[0]];
    a = candidates[peers_rand(rng) % (uint64_t)n];
    /* Second choice drawn from the others so the two are distinct. */
    b = candidates[peers_rand(rng) % (uint64_t)(n - 1)];
    if (b == a)
        b = candidates[n - 1];
    if (atomic_load_explicit(&set->peer[b]->outstanding, memory_order_relaxed) <
        atomic_load_explicit(&set->peer[a]->outstanding, memory_order_relaxed))
        return set->peer[b];
    return set->peer[a];
}

static int ejected_count(const struct peers *set, int64_t now_ms)
{
    int i, n = 0;

    for (i = 0; i < set->n; i++)
        n += peer_is_ejected(set->peer[i], now_ms);
    return n;
}

void peers_report(struct peers *set, struct peer *p, enum peer_outcome outcome, int64_t now_ms)
{
    int failures, threshold, times;
    int64_t ms;

    if (outcome == PEER_OK) {
        atomic_store_explicit(&p->consecutive_failures, 0, memory_order_relaxed);
        if (!peer_is_ejected(p, now_ms))
            atomic_store_explicit(&p->ejections, 0, memory_order_relaxed);
        return;
    }
    failures = atomic_fetch_add_explicit(&p->consecutive_failures, 1, memory_order_relaxed) + 1;
    threshold = outcome == PEER_CONNECT_FAILED ? 1 : PEERS_GATEWAY_ERRORS_TO_EJECT;
    if (failures < threshold || peer_is_ejected(p, now_ms))
        return;
    /* Never eject past the cap: with too few peers left, load would pile on them. */
    if ((ejected_count(set, now_ms) + 1) * 100 > set->n * PEERS_MAX_EJECT_PERCENT)
        return;
    times = atomic_fetch_add_explicit(&p->ejections, 1, memory_order_relaxed);
    ms = PEERS_EJECT_BASE_MS;
    while (times-- > 0 && ms < PEERS_EJECT_MAX_MS)
        ms *= 2;
    if (ms > PEERS_EJECT_MAX_MS)
        ms = PEERS_EJECT_MAX_MS;
    atomic_store_explicit(&p->consecutive_failures, 0, memory_order_relaxed);
    atomic_store_explicit(&p->ejected_until_ms, now_ms + ms, memory_order_relaxed);
}

int peers_has_fresh(const struct peers *set, const struct peer_mask *exclude, int64_t now_ms)
{
    int i;

    for (i = 0; i < set->n; i++)
        if ((!exclude || !peer_mask_has(exclude, i)) && !peer_is_ejected(set->peer[i], now_ms))
            return 1;
    return 0;
}
