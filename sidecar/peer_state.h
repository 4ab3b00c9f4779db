/* peer_state: the health decision for one peer, as a pure function.
 *
 * API:
 *   peer_state_next()   state x evidence x cap x time -> state (no clock, no I/O, no locks)
 *   peer_state_at()     the state selection sees at a time (a spent ejection or drain is a trial)
 *   peer_state_name(), peer_reason_text()   constant texts for logs, /debug/peers and metrics
 *
 * States: HEALTHY takes requests. DOWN (refused, unreachable, SYN unanswered) and
 * DRAINING (the replica said it is leaving) have no capacity: they never count
 * against the ejection cap and never keep another peer in. EJECTED (5xx, resets,
 * timeouts) is soft evidence and is capped. Out-of-rotation ends on evidence only:
 * DOWN when a probe connects (or a response comes back); EJECTED and DRAINING,
 * once their time is up, become TRIAL: one request decides, success reinstates,
 * failure ejects again for twice as long. */
#ifndef SIDECAR_PEER_STATE_H
#define SIDECAR_PEER_STATE_H

#include <stdint.h>

enum peer_state {
    PEER_HEALTHY,
    PEER_DRAINING,
    PEER_DOWN,
    PEER_EJECTED,
    PEER_TRIAL,
    PEER_STATE_COUNT
};

/* Why a peer left HEALTHY (the evidence), kept with its state. */
enum peer_reason {
    REASON_NONE,
    REASON_CONNECT_FAILURES,  /* nextup's connects refused, timed out or unreachable */
    REASON_GATEWAY_ERRORS,    /* consecutive 502/503/504, resets, per-try timeouts seen by nextup */
    REASON_TLS,               /* TCP connected, the TLS handshake failed */
    REASON_KERNEL_CONNECT,    /* the kernel saw connects to it refused, timed out or unreachable */
    REASON_KERNEL_SYN,        /* the kernel saw SYNs to it retransmitted with no SYN-ACK */
    REASON_KERNEL_RESETS,     /* the kernel saw it reset connections (the application's too) */
    REASON_DRAIN_503,         /* it answered 503 with Connection: close */
    REASON_DRAIN_CLOSES,      /* it closed connections in a burst, well above its own habit */
    REASON_TRIAL_FAILED,      /* the trial request after its time out failed */
};

enum peer_evidence {
    EVIDENCE_OK,              /* a response that is not a gateway error */
    EVIDENCE_NO_CONNECT,      /* a connect refused, timed out or unreachable (nextup's or the kernel's) */
    EVIDENCE_SOFT_FAILURE,    /* a gateway error, a reset, a per-try timeout, a failed TLS handshake */
    EVIDENCE_DRAINING,        /* the replica said it is leaving */
    EVIDENCE_PROBE_OK,        /* a probe connected */
};

/* What is stored for a peer and what a decision changes. */
struct peer_health {
    enum peer_state state;
    enum peer_reason reason;
    int64_t until_ms;             /* DRAINING / EJECTED: out until then, then TRIAL; else 0 */
    int ejections;                /* times out in a row: each doubles the time out */
    int consecutive_failures;     /* failures since the last success */
};

/* Thresholds and times (NEXTUP_EJECT_*, NEXTUP_MAX_EJECTION_PERCENT). */
struct peer_state_policy {
    int connect_failures_to_down;   /* consecutive; 0 = nextup's own connect failures never take it out */
    int soft_failures_to_eject;     /* consecutive; 0 = never */
    int eject_base_ms, eject_max_ms;
    int max_eject_percent;
};

/* The cap's facts, from the whole set, this peer not counted. */
struct peer_cap {
    int takers;                   /* other active peers that take connections: not DOWN, not DRAINING */
    int soft_out;                 /* of them, EJECTED or TRIAL */
};

/* The state at <now_ms>: EJECTED or DRAINING whose time is up reads as TRIAL. */
enum peer_state peer_state_at(const struct peer_health *h, int64_t now_ms);

/* Applies <ev> (with <reason>, for failures) to <h> at <now_ms>. Pure: reads
 * only its arguments. 1 if the state or its reason changed (a transition to log). */
int peer_state_next(struct peer_health *h, enum peer_evidence ev, enum peer_reason reason,
                    const struct peer_state_policy *pol, const struct peer_cap *cap, int64_t now_ms);

const char *peer_state_name(enum peer_state s);
const char *peer_reason_text(enum peer_reason r);

#endif
