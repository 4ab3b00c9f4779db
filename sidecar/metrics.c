#include "metrics.h"

#include <event2/buffer.h>
#include <inttypes.h>

_Atomic uint64_t metrics[M_COUNT];

static uint64_t get(enum metric_id id)
{
    return atomic_load_explicit(&metrics[id], memory_order_relaxed);
}

static void counter(struct evbuffer *out, const char *name, const char *help, enum metric_id id)
{
    evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s counter\n%s %" PRIu64 "\n", name, help, name, name,
                        get(id));
}

void metrics_write_prometheus(struct evbuffer *out)
{
    static const struct { const char *label; enum metric_id id; } classes[] = {
        { "1xx", M_RESP_1XX }, { "2xx", M_RESP_2XX }, { "3xx", M_RESP_3XX },
        { "4xx", M_RESP_4XX }, { "5xx", M_RESP_5XX },
    };
    static const struct { const char *label; enum metric_id id; } reasons[] = {
        { "refused", M_RETRY_REFUSED }, { "connect_failure", M_RETRY_CONNECT_FAILURE },
        { "reset", M_RETRY_RESET }, { "timeout", M_RETRY_TIMEOUT }, { "status", M_RETRY_STATUS },
    };
    static const struct { const char *label; enum metric_id id; } refusals[] = {
        { "policy", M_NORETRY_POLICY }, { "exhausted", M_NORETRY_EXHAUSTED }, { "method", M_NORETRY_METHOD },
        { "buffer", M_NORETRY_BUFFER }, { "budget", M_NORETRY_BUDGET },
    };
    size_t i;

    counter(out, "nextup_downstream_connections_total", "Client connections accepted.",
            M_DOWNSTREAM_CONNECTIONS);
    counter(out, "nextup_downstream_rejected_total",
            "Client connections refused because NEXTUP_MAX_CONNECTIONS was reached.", M_DOWNSTREAM_REJECTED);
    counter(out, "nextup_downstream_accept_errors_total",
            "accept() calls that failed; out of descriptors or memory, that worker pauses accepting for up to "
            "100 ms.",
            M_DOWNSTREAM_ACCEPT_ERRORS);
    counter(out, "nextup_downstream_requests_total", "Requests whose head was read.", M_REQUESTS);
    evbuffer_add_printf(out, "# HELP nextup_downstream_responses_total Responses sent to clients, by status class.\n"
                             "# TYPE nextup_downstream_responses_total counter\n");
    for (i = 0; i < sizeof(classes) / sizeof(classes[0]); i++)
        evbuffer_add_printf(out, "nextup_downstream_responses_total{code=\"%s\"} %" PRIu64 "\n", classes[i].label,
                            get(classes[i].id));
    counter(out, "nextup_upstream_attempts_total", "Tries sent to a peer, first tries and retries.",
            M_UPSTREAM_ATTEMPTS);
    counter(out, "nextup_upstream_connects_total", "Fresh upstream connections opened.", M_UPSTREAM_CONNECTS);
    counter(out, "nextup_upstream_reused_total", "Tries sent on a pooled keep-alive connection.",
            M_UPSTREAM_REUSED);
    evbuffer_add_printf(out, "# HELP nextup_retries_total Retries on another peer, by reason.\n"
                             "# TYPE nextup_retries_total counter\n");
    for (i = 0; i < sizeof(reasons) / sizeof(reasons[0]); i++)
        evbuffer_add_printf(out, "nextup_retries_total{reason=\"%s\"} %" PRIu64 "\n", reasons[i].label,
                            get(reasons[i].id));
    evbuffer_add_printf(out, "# HELP nextup_retries_refused_total Retries wanted but not made, by reason.\n"
                             "# TYPE nextup_retries_refused_total counter\n");
    for (i = 0; i < sizeof(refusals) / sizeof(refusals[0]); i++)
        evbuffer_add_printf(out, "nextup_retries_refused_total{reason=\"%s\"} %" PRIu64 "\n", refusals[i].label,
                            get(refusals[i].id));
    counter(out, "nextup_unsent_proofs_total",
            "Failed requests the kernel proved never reached the peer (no byte acknowledged), so replayable.",
            M_UNSENT_PROOFS);
    counter(out, "nextup_keepalive_race_resends_total",
            "Requests resent on a fresh connection after a pooled one was found closed.",
            M_KEEPALIVE_RACE_RESENDS);
    counter(out, "nextup_upstream_pool_closed_by_peer_total",
            "Pooled connections the peer closed while they were idle (nextup keeps them below the idle time it "
            "learned).", M_POOL_CLOSED_BY_PEER);
    counter(out, "nextup_request_timeouts_total", "Requests answered 504 after NEXTUP_REQUEST_TIMEOUT_MS.",
            M_REQUEST_TIMEOUTS);
    counter(out, "nextup_bad_requests_total", "Requests refused by nextup with a 4xx.", M_BAD_REQUESTS);
    evbuffer_add_printf(out, "# HELP nextup_upstream_tls_failures_total Upstream TLS handshakes that failed, by "
                             "reason (each one retried like a connect failure).\n"
                             "# TYPE nextup_upstream_tls_failures_total counter\n"
                             "nextup_upstream_tls_failures_total{reason=\"verify\"} %" PRIu64 "\n"
                             "nextup_upstream_tls_failures_total{reason=\"handshake\"} %" PRIu64 "\n",
                        get(M_TLS_UP_VERIFY), get(M_TLS_UP_HANDSHAKE));
    counter(out, "nextup_downstream_tls_failures_total", "Client TLS handshakes that failed.", M_TLS_DOWN_HANDSHAKE);
    counter(out, "nextup_tls_reloads_total", "Certificate sets taken after a change on disk.", M_TLS_RELOADS);
    counter(out, "nextup_tls_reload_failures_total", "Changed certificate sets refused; the old ones stayed.",
            M_TLS_RELOAD_FAILURES);
    evbuffer_add_printf(out, "# HELP nextup_upstream_protocol_errors_total Upstream connections closed because "
                             "they sent bytes no request asked for, by where the bytes came.\n"
                             "# TYPE nextup_upstream_protocol_errors_total counter\n"
                             "nextup_upstream_protocol_errors_total{reason=\"idle_bytes\"} %" PRIu64 "\n"
                             "nextup_upstream_protocol_errors_total{reason=\"bytes_after_response\"} %" PRIu64 "\n"
                             "nextup_upstream_protocol_errors_total{reason=\"body_after_head\"} %" PRIu64 "\n",
                        get(M_PROTO_IDLE_BYTES), get(M_PROTO_AFTER_RESPONSE), get(M_PROTO_HEAD_BODY));
    counter(out, "nextup_dns_refreshes_total", "Re-resolutions of upstream host names that got an answer.",
            M_DNS_REFRESHES);
    counter(out, "nextup_dns_failures_total",
            "Re-resolutions that failed (server error, timeout); the last good set of peers was kept.",
            M_DNS_FAILURES);
    counter(out, "nextup_dns_empty_answers_total",
            "Empty answers; the peers of that name are removed only when it repeats.", M_DNS_EMPTY);
}
