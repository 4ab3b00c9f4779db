/* metrics: process-wide counters, atomic, shared by all workers; latency histograms kept per
 * thread (no shared cache line on the request path); per-peer series by slot.
 *
 * API:
 *   metrics_inc()                     one of the counters below
 *   metrics_observe_request()         downstream request duration, by status class
 *   metrics_observe_upstream_head()   one attempt's time to the response head, by status class
 *   metrics_observe_connect()         one fresh upstream connect's time, by result
 *   metrics_peer_reset() / metrics_peer_attempt() / metrics_peer_response() / metrics_peer_failure()
 *   metrics_upstream_conn_opened() / metrics_upstream_conn_closed()
 *   metrics_write_prometheus()        counters and histograms as Prometheus text
 *   metrics_write_peers()             per-peer series, active peers only
 *   metrics_write_process()           nextup_build_info and process_* (CPU, RSS, fds, start time)
 *   metrics_services_init() / metrics_services_free()   per-service series for n services
 *   metrics_service_inc() / metrics_service_request() / metrics_service_response()
 *   metrics_service_peer_*()          per-peer series of a service's peer set
 *   metrics_write_services()          nextup_service_* and the per-peer series with their service label
 * Every metrics_observe_* and metrics_peer_* call is a few relaxed atomic operations, no lock,
 * callable from any thread. */
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

/* Histogram buckets, upper bounds in microseconds: 0.5 ms to 30 s (then +Inf). */
#define METRICS_BUCKETS 15

/* Failure of one attempt, for nextup_peer_failures_total{class}. */
enum metrics_failure {
    METRICS_FAIL_REFUSED,          /* "refused": ECONNREFUSED */
    METRICS_FAIL_CONNECT,          /* "connect_failure": connect timed out or failed otherwise */
    METRICS_FAIL_TLS,              /* "tls": the handshake failed */
    METRICS_FAIL_RESET,            /* "reset": closed or reset before the response head */
    METRICS_FAIL_TIMEOUT,          /* "timeout": NEXTUP_PER_TRY_TIMEOUT_MS, or the request timeout, hit */
    METRICS_FAIL_BAD_RESPONSE,     /* "bad_response": an unreadable response head */
    METRICS_FAIL_COUNT
};

struct peers;

/* A request's end, as the client saw it: <status> sent (0: none, the client left first),
 * <us> from its head read to its last byte written or its end. */
void metrics_observe_request(int status, int64_t us);
/* One attempt: <us> from its request head written to the response head; <status> of that
 * head, or 0 when the attempt failed without one (then counted as code="none"). */
void metrics_observe_upstream_head(int status, int64_t us);
/* One fresh upstream connection: <us> from connect() to usable (TLS handshake included);
 * <ok> 0 when it failed (refused, timeout, TLS). */
void metrics_observe_connect(int ok, int64_t us);

/* The slot <index> (struct peer's index) now holds another address: its series start at zero.
 * peers.c calls it; the request path never needs to. */
void metrics_peer_reset(int index);
/* An attempt sent to the peer in slot <index> (first tries and retries). */
void metrics_peer_attempt(int index);
/* A response head from the peer, forwarded or not (a retried 503 counts). */
void metrics_peer_response(int index, int status);
/* An attempt to the peer that failed without a response head. */
void metrics_peer_failure(int index, enum metrics_failure cls);

/* ---- per service ----------------------------------------------------------------------
 * Services are numbered 0..n-1 (struct service's index, service.h). Before metrics_services_init()
 * and for the single service of NEXTUP_UPSTREAMS there is service 0, always there: the functions
 * above without a service count for it. A service index outside 0..n-1 counts nothing per service. */

/* Makes the per-service series of <n> services named <names> (borrowed: they must outlive the
 * metrics, e.g. the configuration's). Main thread, before the workers start. 0 or -ENOMEM. */
int metrics_services_init(int n, const char *const *names);
void metrics_services_free(void);

/* The process-wide counter <id> (metrics_inc()) and, when <id> is one of those kept per service, the
 * same counter of service <svc>: M_REQUESTS, M_RESP_1XX..M_RESP_5XX, M_UPSTREAM_ATTEMPTS,
 * M_RETRY_* (retries by reason), M_NORETRY_* (retries refused by reason). <svc> -1: the process-wide
 * one only (a request refused before a service was chosen). One call per event: the request path
 * calls it instead of metrics_inc(), never as well. */
void metrics_service_inc(int svc, enum metric_id id);
/* metrics_service_inc(svc, M_REQUESTS). */
void metrics_service_request(int svc);
/* A response with <status> sent to a client of <svc>: M_RESP_<class>; nothing for a status outside 100..599. */
void metrics_service_response(int svc, int status);
/* A peer of <svc> taken out of rotation (peers.c counts it with the peer's ejections). */
void metrics_service_ejection(int svc);
/* The metrics_peer_*() of the peer in slot <index> of service <svc>'s peer set. */
void metrics_service_peer_reset(int svc, int index);
void metrics_service_peer_attempt(int svc, int index);
void metrics_service_peer_response(int svc, int index, int status);
void metrics_service_peer_failure(int svc, int index, enum metrics_failure cls);
/* Appends nextup_service_* of every service of <svcs> and the per-peer series (as
 * metrics_write_peers(), with service="<name>" on each) of their peer sets. */
struct services;
void metrics_write_services(struct evbuffer *out, const struct services *svcs);

/* An upstream connection opened (pooled or not) / closed, for nextup_upstream_connections_open. */
void metrics_upstream_conn_opened(void);
void metrics_upstream_conn_closed(void);

/* Appends every counter and histogram in Prometheus text format (HELP, TYPE, samples) to <out>. */
void metrics_write_prometheus(struct evbuffer *out);
/* Appends the per-peer series (nextup_peer_attempts_total, _responses_total, _failures_total;
 * in flight is health's nextup_peer_outstanding_requests) of the peers of <set> that are
 * active: a removed peer's series are gone at once. */
void metrics_write_peers(struct evbuffer *out, const struct peers *set);
/* Appends nextup_build_info, nextup_downstream_connections_open / nextup_upstream_connections_open (open
 * now; <downstream_open> from the workers) and the process_* gauges and counter. */
void metrics_write_process(struct evbuffer *out, int downstream_open);

#endif
