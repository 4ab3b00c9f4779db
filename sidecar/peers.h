/* peers: the upstream peer set and selection with exclusions.
 *
 * API:
 *   peers_new() / peers_free()   the set, built once from the configuration
 *   peers_select()               least outstanding requests, power of two choices,
 *                                skipping excluded peers; NULL only when the set is empty
 *   peer_mask_*()                a small bit set of peer indexes ("tried for this request")
 *   peers_report()               an outcome of nextup's requests
 *   peers_observe()              any evidence; peer_state.h decides, peers stores and logs
 *   peers_take_trial()           a peer whose time out is up, for the one request that decides
 *   peer_state_now(), peer_is_out()   what selection reads
 * Peers are shared by all workers: only <outstanding> changes, atomically. */
#ifndef SIDECAR_PEERS_H
#define SIDECAR_PEERS_H

#include <stdatomic.h>
#include <stdint.h>
#include <sys/socket.h>

#include <pthread.h>

#include "config.h"
#include "peer_state.h"

#define PEERS_MAX CONFIG_MAX_UPSTREAMS

struct peer {
    int index;                       /* position in the set, bit in a peer_mask */
    int service;                     /* its set's service index (struct peers.service) */
    struct sockaddr_storage sa;
    socklen_t salen;
    char name[128];                  /* as configured, e.g. "orders:8080" */
    char addr_text[64];              /* numeric, e.g. "10.0.0.7:8080" */
    _Atomic int active;              /* 1: takes new requests; 0: removed by discovery (in-flight ones finish) */
    _Atomic int64_t inactive_since_ms; /* when it was removed; a slot is reused only long after */
    _Atomic uint32_t generation;     /* bumped when the slot is reused for another address */
    _Atomic int outstanding;         /* requests in flight to this peer, all workers */
    /* Health: decided by peer_state_next() under <lock> (transitions only); the
     * request path reads the atomic copies below and takes no lock. */
    pthread_mutex_t lock;
    struct peer_health health;       /* under lock */
    _Atomic int state;               /* health.state */
    _Atomic int reason;              /* health.reason */
    _Atomic int64_t until_ms;        /* health.until_ms */
    _Atomic int unsettled;           /* failures counted or ejections in a row: a success has work to do */
    _Atomic int64_t trial_until_ms;  /* a trial request is out until then (monotonic ms) */
    _Atomic int64_t no_reuse_until_ms; /* monotonic ms: its connections are not pooled (it sent unasked bytes) */
    _Atomic int idle_close_ms;       /* it closes keep-alive connections idle this long (learned); 0 unknown */
    /* What nextup saw of this peer (L7), for /debug/peers and /metrics. */
    _Atomic uint64_t ejections_total; /* times taken out of rotation (down, draining or ejected) */
    _Atomic uint64_t responses, gateway_errors, connect_failures;
    _Atomic uint64_t closing_responses; /* final responses that closed their connection (Connection: close) */
    _Atomic uint32_t closes_in_a_row;    /* ... the latest of them one after another */
    _Atomic int kept_alive;              /* it answered with keep-alive since its close habit was last learned */
};

/* Ejection thresholds (NEXTUP_EJECT_*, NEXTUP_MAX_EJECTION_PERCENT). */
struct peer_policy {
    int connect_failures_to_eject;   /* consecutive connect failures seen by nextup */
    int gateway_errors_to_eject;     /* consecutive gateway errors seen by nextup */
    int eject_base_ms, eject_max_ms; /* first ejection; doubled per repeated ejection up to max */
    int max_eject_percent;           /* never more than this share of the set ejected at once */
};

/* Outcomes of nextup's own requests that feed the health view. */
enum peer_outcome {
    PEER_OK,              /* a response that is not a gateway error */
    PEER_CONNECT_FAILED,  /* refused, connect timeout, unreachable */
    PEER_GATEWAY_ERROR,   /* 502/503/504, reset before the response head, per-try timeout */
    PEER_TLS_FAILED,      /* TCP connected, the TLS handshake failed */
    PEER_SAID_LEAVING,    /* 503 with Connection: close: the replica is leaving */
};

/* The default policy: one connect failure, or PEERS_GATEWAY_ERRORS_TO_EJECT
 * gateway errors in a row, eject a peer for PEERS_EJECT_BASE_MS doubled per
 * repeated ejection up to PEERS_EJECT_MAX_MS; never more than
 * PEERS_MAX_EJECT_PERCENT of the set at once. */
#define PEERS_GATEWAY_ERRORS_TO_EJECT 2
#define PEERS_EJECT_BASE_MS 1000
#define PEERS_EJECT_MAX_MS 8000
#define PEERS_MAX_EJECT_PERCENT 50

/* Slots [0, n) hold peers, active or removed. Only the main thread (discovery)
 * adds peers: it fills a slot, then publishes it by raising n; peers are never
 * freed while workers run, so a worker may hold a peer pointer without a lock. */
struct peers {
    _Atomic int n;
    int service;                     /* index of the service the set belongs to (service.h); 0 alone */
    struct peer *peer[PEERS_MAX];    /* owned */
    struct peer_policy policy;       /* set before workers start, read-only after */
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
/* The same for service <service>: its peers' metrics and ejections are counted for it. */
struct peers *peers_new_service(int service, const struct config_upstream *ups, int n);
void peers_free(struct peers *set);

/* Picks an active peer whose bit in <exclude> is clear (<exclude> may be NULL) and that
 * is not ejected at <now_ms>: of two random candidates, the one with fewer
 * outstanding requests. With no such peer, ejected ones are considered again
 * (panic mode), then excluded ones: a request always gets a peer. <rng> is the
 * caller's xorshift state (per worker). NULL only when no peer is active. */
struct peer *peers_select(struct peers *set, const struct peer_mask *exclude, int64_t now_ms, uint64_t *rng);

/* Discovery (main thread only). Adds the peer at <sa> named <name>, or makes
 * the removed peer with that address active again (its health state kept).
 * When every slot is taken, reuses a removed one idle for a while. The peer,
 * or NULL when the set is full. */
struct peer *peers_add(struct peers *set, const struct sockaddr *sa, socklen_t salen, const char *name,
                       int64_t now_ms);
/* Takes <p> out of selection; its in-flight requests finish, workers close its pooled connections. */
void peers_remove(struct peer *p, int64_t now_ms);
/* Peers taking new requests. */
int peers_active_count(const struct peers *set);
/* Peers usable at <now_ms>: active, and neither down (refusing connections) nor draining. An
 * ejected peer counts (panic mode still sends to it when nothing else is left). */
int peers_usable_count(const struct peers *set, int64_t now_ms);
/* "1.2.3.4:80" or "[::1]:80" into <out>. */
void peers_format_addr(const struct sockaddr *sa, char *out, size_t outlen);

static inline int peer_is_active(const struct peer *p)
{
    return atomic_load_explicit(&p->active, memory_order_acquire);
}

/* Applies evidence about <p> (from the kernel, a probe, or nextup's requests)
 * at <now_ms>: peer_state_next() with the cap counted over the set. A change
 * is logged once, here, with <detail> (may be NULL) after the reason. 1 if the
 * state changed. */
int peers_observe(struct peers *set, struct peer *p, enum peer_evidence ev, enum peer_reason reason,
                  const char *detail, int64_t now_ms);

/* 1 if some peer is neither excluded nor out of rotation at <now_ms>. */
int peers_has_fresh(const struct peers *set, const struct peer_mask *exclude, int64_t now_ms);

/* What peers tell the layer above (metrics) without calling it by name: a
 * slot taken by a new address (its series start again), a peer ejected. */
struct peers_observer {
    void (*slot_reset)(int service, int index);
    void (*ejected)(int service);
};
/* Sets the observer of every peer set (NULL: none); once, before workers start. */
void peers_set_observer(const struct peers_observer *o);

/* Records an outcome of one of nextup's requests to <p> at <now_ms>. No lock
 * when a healthy peer answers well (the common case). */
void peers_report(struct peers *set, struct peer *p, enum peer_outcome outcome, int64_t now_ms);

/* What a final response head says of its peer, recorded: <status>, and
 * <closes> when it closed its connection (Connection: close on 1.1). A 503 that
 * closes is how servers say they are shutting down (nginx, Envoy, Go's and
 * Node's servers during graceful shutdown): the first one counts. */
void peers_report_response(struct peers *set, struct peer *p, int status, int closes, int64_t now_ms);

/* A peer in TRIAL (its time out is up) that is not excluded, with the trial
 * token taken for <hold_ms> (the trial request's outcome decides, or the token
 * runs out). NULL when there is none. */
struct peer *peers_take_trial(struct peers *set, const struct peer_mask *exclude, int64_t now_ms, int hold_ms);

/* Takes <p>'s trial token for <hold_ms> if it is in TRIAL and no trial is out. 1 if taken. */
int peers_take_trial_of(struct peer *p, int64_t now_ms, int hold_ms);

/* The state selection sees at <now_ms>, without a lock. */
static inline enum peer_state peer_state_now(const struct peer *p, int64_t now_ms)
{
    struct peer_health h = {
        .state = (enum peer_state)atomic_load_explicit(&p->state, memory_order_relaxed),
        .until_ms = atomic_load_explicit(&p->until_ms, memory_order_relaxed),
    };
    return peer_state_at(&h, now_ms);
}

/* Not taking ordinary requests at <now_ms>: down, draining, ejected, or in trial. */
static inline int peer_is_out(const struct peer *p, int64_t now_ms)
{
    return peer_state_now(p, now_ms) != PEER_HEALTHY;
}

/* xorshift64*: the per-worker random source for selection and jitter. */
uint64_t peers_rand(uint64_t *state);

#endif
