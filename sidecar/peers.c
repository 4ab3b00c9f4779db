#include "peers.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

/* A removed peer's slot is reused for another address only after this long:
 * workers have closed its pooled connections by then. */
#define PEERS_SLOT_REUSE_MS 30000

/* Publishes <p>->health to the copies the request path reads. Under p->lock. */
static void publish(struct peer *p)
{
    atomic_store_explicit(&p->until_ms, p->health.until_ms, memory_order_relaxed);
    atomic_store_explicit(&p->reason, (int)p->health.reason, memory_order_relaxed);
    atomic_store_explicit(&p->state, (int)p->health.state, memory_order_relaxed);
    atomic_store_explicit(&p->unsettled, p->health.consecutive_failures > 0 || p->health.ejections > 0,
                          memory_order_relaxed);
}

/* Who is told of slot reuse and ejections (the metrics); set once at startup. */
static const struct peers_observer *observer;

void peers_set_observer(const struct peers_observer *o)
{
    observer = o;
}

static void peer_init_state(struct peer *p)
{
    atomic_store(&p->active, 1);
    atomic_store(&p->inactive_since_ms, 0);
    atomic_store(&p->outstanding, 0);
    memset(&p->health, 0, sizeof(p->health));
    publish(p);
    atomic_store(&p->trial_until_ms, 0);
    atomic_store(&p->idle_close_ms, 0);
    atomic_store(&p->no_reuse_until_ms, 0);
    atomic_store(&p->ejections_total, 0);
    atomic_store(&p->closing_responses, 0);
    atomic_store(&p->closes_in_a_row, 0);
    atomic_store(&p->kept_alive, 0);
    atomic_store(&p->responses, 0);
    atomic_store(&p->gateway_errors, 0);
    atomic_store(&p->connect_failures, 0);
    if (observer && observer->slot_reset)
        observer->slot_reset(p->service, p->index);
}

struct peers *peers_new(const struct config_upstream *ups, int n)
{
    return peers_new_service(0, ups, n);
}

struct peers *peers_new_service(int service, const struct config_upstream *ups, int n)
{
    struct peers *set = calloc(1, sizeof(*set));
    int i;

    if (!set)
        return NULL;
    set->service = service;
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
        p->service = service;
        pthread_mutex_init(&p->lock, NULL);
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
    for (i = 0; i < set->n; i++) {
        pthread_mutex_destroy(&set->peer[i]->lock);
        free(set->peer[i]);
    }
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
            !peer_is_out(set->peer[i], now_ms))
            candidates[n++] = i;
    /* Panic mode: every untried peer is out of rotation, so health is ignored rather than fail. */
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
        p->service = set->service;
        pthread_mutex_init(&p->lock, NULL);
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

int peers_usable_count(const struct peers *set, int64_t now_ms)
{
    int n = atomic_load_explicit(&set->n, memory_order_acquire), usable = 0;

    for (int i = 0; i < n; i++) {
        enum peer_state st;
        if (!peer_is_active(set->peer[i]))
            continue;
        st = peer_state_now(set->peer[i], now_ms);
        usable += st != PEER_DOWN && st != PEER_DRAINING;
    }
    return usable;
}

int peers_has_fresh(const struct peers *set, const struct peer_mask *exclude, int64_t now_ms)
{
    int i;

    for (i = 0; i < set->n; i++)
        if (peer_is_active(set->peer[i]) && (!exclude || !peer_mask_has(exclude, i)) &&
            !peer_is_out(set->peer[i], now_ms))
            return 1;
    return 0;
}

/* The cap's facts for <p>: the other active peers that take connections, and
 * how many of them soft evidence has out (ejected or in trial). */
static struct peer_cap cap_for(const struct peers *set, const struct peer *p, int64_t now_ms)
{
    struct peer_cap cap = { 0, 0 };
    int i, n = atomic_load_explicit(&set->n, memory_order_acquire);

    for (i = 0; i < n; i++) {
        const struct peer *q = set->peer[i];
        enum peer_state st;
        if (q == p || !peer_is_active(q))
            continue;
        st = peer_state_now(q, now_ms);
        if (st == PEER_DOWN || st == PEER_DRAINING)
            continue;
        cap.takers++;
        cap.soft_out += st == PEER_EJECTED || st == PEER_TRIAL;
    }
    return cap;
}

int peers_observe(struct peers *set, struct peer *p, enum peer_evidence ev, enum peer_reason reason,
                  const char *detail, int64_t now_ms)
{
    const struct peer_policy *pol = &set->policy;
    struct peer_state_policy sp = {
        .connect_failures_to_down = pol->connect_failures_to_eject,
        .soft_failures_to_eject = pol->gateway_errors_to_eject,
        .eject_base_ms = pol->eject_base_ms,
        .eject_max_ms = pol->eject_max_ms,
        .max_eject_percent = pol->max_eject_percent,
    };
    struct peer_cap cap = cap_for(set, p, now_ms);
    enum peer_state before, after;
    int changed;

    pthread_mutex_lock(&p->lock);
    before = peer_state_at(&p->health, now_ms);
    changed = peer_state_next(&p->health, ev, reason, &sp, &cap, now_ms);
    after = p->health.state;
    if (changed && after != PEER_HEALTHY) {
        atomic_fetch_add_explicit(&p->ejections_total, 1, memory_order_relaxed);
        if (observer && observer->ejected)
            observer->ejected(set->service);
    }
    publish(p);
    /* Any outcome ends a trial: the next one may go when the state asks for it. */
    atomic_store_explicit(&p->trial_until_ms, 0, memory_order_relaxed);
    pthread_mutex_unlock(&p->lock);
    if (!changed)
        return 0;
    /* The one line for this transition, with its evidence. */
    if (after == PEER_DRAINING || after == PEER_EJECTED)
        LOG_INFO("peer %s: %s -> %s for %lld ms: %s%s%s", p->addr_text, peer_state_name(before),
                 peer_state_name(after), (long long)(atomic_load(&p->until_ms) - now_ms),
                 peer_reason_text((enum peer_reason)atomic_load(&p->reason)), detail ? " " : "",
                 detail ? detail : "");
    else
        LOG_INFO("peer %s: %s -> %s: %s%s%s", p->addr_text, peer_state_name(before), peer_state_name(after),
                 after != PEER_HEALTHY ? peer_reason_text((enum peer_reason)atomic_load(&p->reason))
                 : ev == EVIDENCE_PROBE_OK ? "a probe connected"
                                           : "it answered",
                 detail ? " " : "", detail ? detail : "");
    return 1;
}

void peers_report(struct peers *set, struct peer *p, enum peer_outcome outcome, int64_t now_ms)
{
    static const struct { enum peer_evidence ev; enum peer_reason reason; } as_evidence[] = {
        [PEER_OK] = { EVIDENCE_OK, REASON_NONE },
        [PEER_CONNECT_FAILED] = { EVIDENCE_NO_CONNECT, REASON_CONNECT_FAILURES },
        [PEER_TLS_FAILED] = { EVIDENCE_SOFT_FAILURE, REASON_TLS },
        [PEER_GATEWAY_ERROR] = { EVIDENCE_SOFT_FAILURE, REASON_GATEWAY_ERRORS },
        [PEER_SAID_LEAVING] = { EVIDENCE_DRAINING, REASON_DRAIN_503 },
    };

    if (outcome == PEER_OK) {
        atomic_fetch_add_explicit(&p->responses, 1, memory_order_relaxed);
        /* The request path's common case: a healthy peer with nothing to forget. */
        if (atomic_load_explicit(&p->state, memory_order_relaxed) == PEER_HEALTHY &&
            !atomic_load_explicit(&p->unsettled, memory_order_relaxed))
            return;
    } else if (outcome == PEER_CONNECT_FAILED || outcome == PEER_TLS_FAILED) {
        atomic_fetch_add_explicit(&p->connect_failures, 1, memory_order_relaxed);
    } else {
        atomic_fetch_add_explicit(&p->gateway_errors, 1, memory_order_relaxed);
    }
    peers_observe(set, p, as_evidence[outcome].ev, as_evidence[outcome].reason, NULL, now_ms);
}

struct peer *peers_take_trial(struct peers *set, const struct peer_mask *exclude, int64_t now_ms, int hold_ms)
{
    int i, n = atomic_load_explicit(&set->n, memory_order_acquire);

    for (i = 0; i < n; i++) {
        struct peer *p = set->peer[i];
        if (peer_is_active(p) && !(exclude && peer_mask_has(exclude, i)) && peers_take_trial_of(p, now_ms, hold_ms))
            return p;
    }
    return NULL;
}

int peers_take_trial_of(struct peer *p, int64_t now_ms, int hold_ms)
{
    int64_t held;

    if (peer_state_now(p, now_ms) != PEER_TRIAL)
        return 0;
    held = atomic_load_explicit(&p->trial_until_ms, memory_order_relaxed);
    /* One trial at a time: whoever swaps the token in sends it. */
    return held <= now_ms && atomic_compare_exchange_strong_explicit(&p->trial_until_ms, &held, now_ms + hold_ms,
                                                                     memory_order_relaxed, memory_order_relaxed);
}

void peers_report_response(struct peers *set, struct peer *p, int status, int closes, int64_t now_ms)
{
    enum peer_outcome outcome = PEER_OK;

    /* Counted for the health view, which compares a replica's closes with its habit
     * and with what it did just before (a keep-alive replica that starts closing). */
    if (closes) {
        atomic_fetch_add_explicit(&p->closing_responses, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&p->closes_in_a_row, 1, memory_order_relaxed);
    } else {
        if (atomic_load_explicit(&p->closes_in_a_row, memory_order_relaxed))
            atomic_store_explicit(&p->closes_in_a_row, 0, memory_order_relaxed);
        if (!atomic_load_explicit(&p->kept_alive, memory_order_relaxed))
            atomic_store_explicit(&p->kept_alive, 1, memory_order_relaxed);
    }
    if (status == 503 && closes)
        outcome = PEER_SAID_LEAVING;
    else if (status >= 502 && status <= 504)
        outcome = PEER_GATEWAY_ERROR;
    peers_report(set, p, outcome, now_ms);
}
