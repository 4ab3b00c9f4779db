#include "peers.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A removed peer's slot is reused for another address only after this long:
 * workers have closed its pooled connections by then. */
#define PEERS_SLOT_REUSE_MS 30000

static void peer_init_state(struct peer *p)
{
    atomic_store(&p->active, 1);
    atomic_store(&p->inactive_since_ms, 0);
    atomic_store(&p->outstanding, 0);
    atomic_store(&p->consecutive_failures, 0);
    atomic_store(&p->ejections, 0);
    atomic_store(&p->ejected_until_ms, 0);
    atomic_store(&p->eject_reason, EJECT_NONE);
    atomic_store(&p->ejections_total, 0);
    atomic_store(&p->responses, 0);
    atomic_store(&p->gateway_errors, 0);
    atomic_store(&p->connect_failures, 0);
}

struct peers *peers_new(const struct config_upstream *ups, int n)
{
    struct peers *set = calloc(1, sizeof(*set));
    int i;

    if (!set)
        return NULL;
    set->policy.connect_failures_to_eject = 1;
    set->policy.gateway_errors_to_eject = PEERS_GATEWAY_ERRORS_TO_EJECT;
    set->policy.eject_base_ms = PEERS_EJECT_BASE_MS;
    set->policy.eject_max_ms = PEERS_EJECT_MAX_MS;
    set->policy.max_eject_percent = PEERS_MAX_EJECT_PERCENT;
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
        peer_init_state(p);
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

    int total = set ? atomic_load_explicit(&set->n, memory_order_acquire) : 0;

    for (i = 0; i < total; i++)
        if (peer_is_active(set->peer[i]) && (!exclude || !peer_mask_has(exclude, i)) &&
            !peer_is_ejected(set->peer[i], now_ms))
            candidates[n++] = i;
    /* Panic mode: every untried peer is ejected, so health is ignored rather than fail. */
    if (n == 0)
        for (i = 0; i < total; i++)
            if (peer_is_active(set->peer[i]) && (!exclude || !peer_mask_has(exclude, i)))
                candidates[n++] = i;
    /* Every peer excluded: a request must still get a peer, so all are candidates. */
    if (n == 0)
        for (i = 0; i < total; i++)
            if (peer_is_active(set->peer[i]))
                candidates[n++] = i;
    if (n == 0)
        return NULL;
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
        n += peer_is_active(set->peer[i]) && peer_is_ejected(set->peer[i], now_ms);
    return n;
}

int peers_active_count(const struct peers *set)
{
    int i, n = 0;

    for (i = 0; i < set->n; i++)
        n += peer_is_active(set->peer[i]);
    return n;
}

void peers_format_addr(const struct sockaddr *sa, char *out, size_t outlen)
{
    char ip[INET6_ADDRSTRLEN];

    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof(ip));
        snprintf(out, outlen, "[%s]:%u", ip, ntohs(s6->sin6_port));
    } else {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof(ip));
        snprintf(out, outlen, "%s:%u", ip, ntohs(s4->sin_port));
    }
}

static int same_addr(const struct sockaddr_storage *a, const struct sockaddr *b)
{
    if (a->ss_family != b->sa_family)
        return 0;
    if (b->sa_family == AF_INET) {
        const struct sockaddr_in *x = (const struct sockaddr_in *)a, *y = (const struct sockaddr_in *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (b->sa_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)a, *y = (const struct sockaddr_in6 *)b;
        return x->sin6_port == y->sin6_port && memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
    }
    return 0;
}

struct peer *peers_add(struct peers *set, const struct sockaddr *sa, socklen_t salen, const char *name,
                       int64_t now_ms)
{
    int i, n = atomic_load(&set->n);
    struct peer *p;

    for (i = 0; i < n; i++) {
        p = set->peer[i];
        if (same_addr(&p->sa, sa)) {
            /* Back again: same slot, health history kept (per address). */
            atomic_store_explicit(&p->active, 1, memory_order_release);
            return p;
        }
    }
    if (n < PEERS_MAX) {
        p = calloc(1, sizeof(*p));
        if (!p)
            return NULL;
        p->index = n;
    } else {
        p = NULL;
        for (i = 0; i < n && !p; i++) {
            struct peer *q = set->peer[i];
            if (!peer_is_active(q) && atomic_load(&q->outstanding) == 0 &&
                now_ms - atomic_load(&q->inactive_since_ms) > PEERS_SLOT_REUSE_MS)
                p = q;
        }
        if (!p)
            return NULL;
        /* Hidden while rewritten: inactive peers are never selected. */
        atomic_fetch_add(&p->generation, 1);
    }
    memset(&p->sa, 0, sizeof(p->sa));
    memcpy(&p->sa, sa, salen);
    p->salen = salen;
    snprintf(p->name, sizeof(p->name), "%s", name);
    peers_format_addr(sa, p->addr_text, sizeof(p->addr_text));
    peer_init_state(p);
    if (p->index == n) {
        set->peer[n] = p;
        atomic_store_explicit(&set->n, n + 1, memory_order_release);
    }
    return p;
}

void peers_remove(struct peer *p, int64_t now_ms)
{
    if (!peer_is_active(p))
        return;
    atomic_store(&p->inactive_since_ms, now_ms);
    atomic_store_explicit(&p->active, 0, memory_order_release);
}

int peers_eject(struct peers *set, struct peer *p, enum peer_eject_reason reason, int64_t now_ms)
{
    const struct peer_policy *pol = &set->policy;
    int times;
    int64_t ms;

    if (peer_is_ejected(p, now_ms))
        return 0;
    /* Never eject past the cap: with too few peers left, load would pile on them. */
    if ((ejected_count(set, now_ms) + 1) * 100 > peers_active_count(set) * pol->max_eject_percent)
        return 0;
    times = atomic_fetch_add_explicit(&p->ejections, 1, memory_order_relaxed);
    ms = pol->eject_base_ms;
    while (times-- > 0 && ms < pol->eject_max_ms)
        ms *= 2;
    if (ms > pol->eject_max_ms)
        ms = pol->eject_max_ms;
    atomic_store_explicit(&p->consecutive_failures, 0, memory_order_relaxed);
    atomic_store_explicit(&p->eject_reason, (int)reason, memory_order_relaxed);
    atomic_fetch_add_explicit(&p->ejections_total, 1, memory_order_relaxed);
    atomic_store_explicit(&p->ejected_until_ms, now_ms + ms, memory_order_relaxed);
    return 1;
}

void peers_reinstate(struct peer *p)
{
    atomic_store_explicit(&p->consecutive_failures, 0, memory_order_relaxed);
    atomic_store_explicit(&p->ejected_until_ms, 0, memory_order_relaxed);
}

void peers_report(struct peers *set, struct peer *p, enum peer_outcome outcome, int64_t now_ms)
{
    int failures, threshold;

    if (outcome == PEER_OK) {
        atomic_fetch_add_explicit(&p->responses, 1, memory_order_relaxed);
        atomic_store_explicit(&p->consecutive_failures, 0, memory_order_relaxed);
        if (!peer_is_ejected(p, now_ms))
            atomic_store_explicit(&p->ejections, 0, memory_order_relaxed);
        return;
    }
    if (outcome == PEER_CONNECT_FAILED) {
        atomic_fetch_add_explicit(&p->connect_failures, 1, memory_order_relaxed);
        threshold = set->policy.connect_failures_to_eject;
    } else {
        atomic_fetch_add_explicit(&p->gateway_errors, 1, memory_order_relaxed);
        threshold = set->policy.gateway_errors_to_eject;
    }
    failures = atomic_fetch_add_explicit(&p->consecutive_failures, 1, memory_order_relaxed) + 1;
    if (threshold > 0 && failures >= threshold)
        peers_eject(set, p, outcome == PEER_CONNECT_FAILED ? EJECT_CONNECT_FAILURES : EJECT_GATEWAY_ERRORS,
                    now_ms);
}

const char *peers_eject_reason_text(enum peer_eject_reason reason)
{
    switch (reason) {
    case EJECT_NONE: return "";
    case EJECT_CONNECT_FAILURES: return "connect failures seen by nextup";
    case EJECT_GATEWAY_ERRORS: return "consecutive gateway errors seen by nextup";
    case EJECT_KERNEL_CONNECT: return "kernel: connects refused, timed out or unreachable";
    case EJECT_KERNEL_SYN: return "kernel: SYN retransmitted with no SYN-ACK";
    case EJECT_KERNEL_RESETS: return "kernel: connections reset by the peer";
    }
    return "unknown";
}

int peers_has_fresh(const struct peers *set, const struct peer_mask *exclude, int64_t now_ms)
{
    int i;

    for (i = 0; i < set->n; i++)
        if (peer_is_active(set->peer[i]) && (!exclude || !peer_mask_has(exclude, i)) &&
            !peer_is_ejected(set->peer[i], now_ms))
            return 1;
    return 0;
}
