/* metrics: process-wide counters, atomic, shared by all workers.
 * API: metrics_inc(), metrics_add(), metrics_write_prometheus(). */
#ifndef SIDECAR_METRICS_H
#define SIDECAR_METRICS_H

#include <stdatomic.h>
#include <stdint.h>

struct evbuffer;

enum metric_id {
    M_DOWNSTREAM_CONNECTIONS,      /* accepted client connections */
    M_DOWNSTREAM_REJECTED,         /* refused over NEXTUP_MAX_CONNECTIONS */
    M_DOWNSTREAM_ACCEPT_ERRORS,    /* accept() calls that failed (EMFILE, ENFILE, ENOBUFS, ENOMEM, ...) */
    M_REQUESTS,                    /* requests whose head was read */
    M_RESP_1XX, M_RESP_2XX, M_RESP_3XX, M_RESP_4XX, M_RESP_5XX,  /* responses sent, by class */
    M_UPSTREAM_ATTEMPTS,           /* tries sent to a peer (first tries and retries) */
    M_UPSTREAM_CONNECTS,           /* fresh upstream connections opened */
    M_UPSTREAM_REUSED,             /* tries on a pooled keep-alive connection */
    M_RETRY_REFUSED,               /* retries after ECONNREFUSED */
    M_RETRY_CONNECT_FAILURE,       /* retries after connect timeout/error, or a close with nothing acknowledged */
    M_RETRY_RESET,                 /* retries after a reset once the peer had the request */
    M_RETRY_TIMEOUT,               /* retries after NEXTUP_PER_TRY_TIMEOUT_MS */
    M_RETRY_STATUS,                /* retries after the decision hook aborted a response */
    M_NORETRY_POLICY,              /* retries not made: condition not in NEXTUP_RETRY_ON */
    M_NORETRY_EXHAUSTED,           /* ... NEXTUP_MAX_RETRIES reached */
    M_NORETRY_METHOD,              /* ... method not replayable */
    M_NORETRY_BUFFER,              /* ... body larger than NEXTUP_RETRY_BUFFER_BYTES */
    M_NORETRY_BUDGET,              /* ... retry budget spent */
    M_UNSENT_PROOFS,               /* TCP_INFO proved a failed request never reached the peer */
    M_KEEPALIVE_RACE_RESENDS,      /* pooled connection found closed: request resent on a fresh one */
    M_REQUEST_TIMEOUTS,            /* 504 after NEXTUP_REQUEST_TIMEOUT_MS */
    M_BAD_REQUESTS,                /* 4xx answered by nextup itself */
    M_DNS_REFRESHES,               /* host name resolutions answered */
    M_DNS_FAILURES,                /* resolutions that failed: the last good set was kept */
    M_DNS_EMPTY,                   /* empty answers (NXDOMAIN, no records) */
    M_TLS_UP_VERIFY,               /* upstream handshakes failed: certificate refused */
    M_TLS_UP_HANDSHAKE,            /* upstream handshakes failed otherwise */
    M_TLS_DOWN_HANDSHAKE,          /* client handshakes failed (plain HTTP on the TLS port, ...) */
    M_TLS_RELOADS,                 /* certificate sets taken after a change on disk */
    M_TLS_RELOAD_FAILURES,         /* changed certificate sets refused (the old ones stayed) */
    M_POOL_CLOSED_BY_PEER,         /* pooled connections the peer closed while idle */
    M_PROTO_IDLE_BYTES,            /* pooled upstream connections that received bytes with no request: closed */
    M_PROTO_AFTER_RESPONSE,        /* bytes right behind a complete response: connection closed */
    M_PROTO_HEAD_BODY,             /* ... behind the head answering a HEAD request (a body) */
    M_COUNT
};

extern _Atomic uint64_t metrics[M_COUNT];

static inline void metrics_inc(enum metric_id id)
{
    atomic_fetch_add_explicit(&metrics[id], 1, memory_order_relaxed);
}

/* Appends every counter in Prometheus text format (HELP, TYPE, samples) to <out>. */
void metrics_write_prometheus(struct evbuffer *out);

#endif
