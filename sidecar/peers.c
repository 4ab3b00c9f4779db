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

struct peer *peers_select(struct peers *set, const struct peer_mask *exclude, uint64_t *rng)
{
    int candidates[PEERS_MAX];
    int n = 0, i, a, b;

    if (!set || set->n == 0)
        return NULL;
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
