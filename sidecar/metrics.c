#include "metrics.h"

#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <event2/buffer.h>

#include "peers.h"
#include "service.h"
#include "version.h"

_Atomic uint64_t metrics[M_COUNT];

static void write_histograms(struct evbuffer *out);

static uint64_t service_total(enum metric_id id);

/* A counter's value: for one kept per service, the services' counts plus what
 * no service took (metrics_service_inc counts each event once, in one place). */
static uint64_t get(enum metric_id id)
{
    return atomic_load_explicit(&metrics[id], memory_order_relaxed) + service_total(id);
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
    write_histograms(out);
}

/* ---- histograms ----------------------------------------------------------------------
 * Each thread that observes gets a shard of its own on first use (a thread-local pointer),
 * which only it writes: an increment is a relaxed load and store, no locked instruction, no
 * cache line shared with another worker. /metrics sums the shards. Threads beyond
 * METRICS_SHARDS - 1 share the last shard, with atomic adds. */

#define METRICS_SHARDS 80        /* 64 workers, the main thread, and room */
#define N_CODES 6                /* 1xx..5xx, and "none" (no status: client gone, attempt failed) */
#define N_HIST 3

enum { H_REQUEST, H_UPSTREAM_HEAD, H_CONNECT };

static const int64_t bucket_us[METRICS_BUCKETS] = {
    500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000,
    1000000, 2500000, 5000000, 10000000, 30000000,
};

struct hist {
    _Atomic uint64_t bucket[METRICS_BUCKETS + 1];   /* not cumulative; the last is +Inf */
    _Atomic uint64_t sum_us;
};

struct shard {
    struct hist h[N_HIST][N_CODES];
} __attribute__((aligned(64)));

static struct shard shards[METRICS_SHARDS];
static _Atomic int shards_taken;
static _Thread_local struct shard *my_shard;
static _Thread_local int my_shard_shared;

static inline void bump(_Atomic uint64_t *c, uint64_t v)
{
    if (my_shard_shared)
        atomic_fetch_add_explicit(c, v, memory_order_relaxed);
    else
        atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + v, memory_order_relaxed);
}

static void observe(int which, int code_index, int64_t us)
{
    struct hist *h;
    int b = 0;

    if (!my_shard) {
        int i = atomic_fetch_add(&shards_taken, 1);
        my_shard_shared = i >= METRICS_SHARDS - 1;
        my_shard = &shards[my_shard_shared ? METRICS_SHARDS - 1 : i];
    }
    if (us < 0)
        us = 0;
    while (b < METRICS_BUCKETS && us > bucket_us[b])
        b++;
    h = &my_shard->h[which][code_index];
    bump(&h->bucket[b], 1);
    bump(&h->sum_us, (uint64_t)us);
}

static int code_index(int status)
{
    return status >= 100 && status <= 599 ? status / 100 - 1 : 5;
}

void metrics_observe_request(int status, int64_t us)
{
    observe(H_REQUEST, code_index(status), us);
}

void metrics_observe_upstream_head(int status, int64_t us)
{
    observe(H_UPSTREAM_HEAD, code_index(status), us);
}

void metrics_observe_connect(int ok, int64_t us)
{
    observe(H_CONNECT, ok ? 0 : 1, us);
}

static void write_hist(struct evbuffer *out, int which, const char *name, const char *help, const char *label,
                       const char *const *values, int n_values)
{
    evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    for (int c = 0; c < n_values; c++) {
        uint64_t counts[METRICS_BUCKETS + 1] = { 0 }, sum_us = 0, cum = 0;
        for (int s = 0; s < METRICS_SHARDS; s++) {
            const struct hist *h = &shards[s].h[which][c];
            for (int b = 0; b <= METRICS_BUCKETS; b++)
                counts[b] += atomic_load_explicit(&h->bucket[b], memory_order_relaxed);
            sum_us += atomic_load_explicit(&h->sum_us, memory_order_relaxed);
        }
        for (int b = 0; b <= METRICS_BUCKETS; b++) {
            cum += counts[b];
            if (b < METRICS_BUCKETS)
                evbuffer_add_printf(out, "%s_bucket{%s=\"%s\",le=\"%g\"} %" PRIu64 "\n", name, label, values[c],
                                    (double)bucket_us[b] / 1e6, cum);
            else
                evbuffer_add_printf(out, "%s_bucket{%s=\"%s\",le=\"+Inf\"} %" PRIu64 "\n", name, label, values[c], cum);
        }
        evbuffer_add_printf(out, "%s_sum{%s=\"%s\"} %.6f\n%s_count{%s=\"%s\"} %" PRIu64 "\n", name, label, values[c],
                            (double)sum_us / 1e6, name, label, values[c], cum);
    }
}

static void write_histograms(struct evbuffer *out)
{
    static const char *const codes[N_CODES] = { "1xx", "2xx", "3xx", "4xx", "5xx", "none" };
    static const char *const results[2] = { "ok", "failed" };

    write_hist(out, H_REQUEST, "nextup_downstream_request_duration_seconds",
               "Requests from head read to last byte sent, by status class sent (none: the client left first).",
               "code", codes, N_CODES);
    write_hist(out, H_UPSTREAM_HEAD, "nextup_upstream_response_head_seconds",
               "Attempts from request sent to response head, by status class (none: failed without a head).",
               "code", codes, N_CODES);
    write_hist(out, H_CONNECT, "nextup_upstream_connect_seconds",
               "Fresh upstream connections from connect() to usable (TLS handshake included), by result.", "result",
               results, 2);
}

/* ---- per service and per peer --------------------------------------------------------
 * Per peer by slot (struct peer's index) within its service's set: a handful of shared atomics
 * per peer, next to the <outstanding> count the request path already changes. Service 0's are
 * static (there before metrics_services_init(), and all a single-service nextup has); the others
 * are made by metrics_services_init() before the workers start and only read as pointers after. */

struct peer_series {
    _Atomic uint64_t attempts;
    _Atomic uint64_t responses[5];              /* 1xx..5xx */
    _Atomic uint64_t failures[METRICS_FAIL_COUNT];
} __attribute__((aligned(64)));

/* The counters kept per service (svc_slot[] below gives their places); and its ejections. */
#define SVC_COUNTERS 17

struct service_series {
    _Atomic uint64_t counters[SVC_COUNTERS];
    _Atomic uint64_t ejections;
    struct peer_series peers[PEERS_MAX];
};

static struct service_series service0;
static struct service_series **services;    /* owned, [1..n_services) (slot 0 unused: &service0) */
static const char *const *service_names;
static int n_services = 1;
/* Index in svc_ids[] + 1; 0: not kept per service. */
static const signed char svc_slot[M_COUNT] = {
    [M_REQUESTS] = 1, [M_RESP_1XX] = 2, [M_RESP_2XX] = 3, [M_RESP_3XX] = 4, [M_RESP_4XX] = 5, [M_RESP_5XX] = 6,
    [M_UPSTREAM_ATTEMPTS] = 7, [M_RETRY_REFUSED] = 8, [M_RETRY_CONNECT_FAILURE] = 9, [M_RETRY_RESET] = 10,
    [M_RETRY_TIMEOUT] = 11, [M_RETRY_STATUS] = 12, [M_NORETRY_POLICY] = 13, [M_NORETRY_EXHAUSTED] = 14,
    [M_NORETRY_METHOD] = 15, [M_NORETRY_BUFFER] = 16, [M_NORETRY_BUDGET] = 17,
};

static struct service_series *series_of(int svc)
{
    if (svc == 0)
        return &service0;
    if (svc < 0 || svc >= n_services)
        return NULL;
    return services[svc];
}

int metrics_services_init(int n, const char *const *names)
{
    metrics_services_free();
    service_names = names;
    if (n <= 1)
        return 0;
    services = calloc((size_t)n, sizeof(*services));
    if (!services)
        return -ENOMEM;
    for (int i = 1; i < n; i++) {
        /* aligned_alloc: the peer series are cache-line aligned. */
        services[i] = aligned_alloc(64, sizeof(struct service_series));
        if (!services[i]) {
            n_services = i;
            metrics_services_free();
            return -ENOMEM;
        }
        memset(services[i], 0, sizeof(struct service_series));
    }
    n_services = n;
    return 0;
}

void metrics_services_free(void)
{
    if (services)
        for (int i = 1; i < n_services; i++)
            free(services[i]);
    free(services);
    services = NULL;
    service_names = NULL;
    n_services = 1;
}

void metrics_service_inc(int svc, enum metric_id id)
{
    struct service_series *ss;

    if ((unsigned)id >= M_COUNT)
        return;
    /* One atomic add per event: the process-wide value is summed when scraped. */
    if (svc_slot[id] && (ss = series_of(svc)))
        atomic_fetch_add_explicit(&ss->counters[svc_slot[id] - 1], 1, memory_order_relaxed);
    else
        metrics_inc(id);
}

static uint64_t service_total(enum metric_id id)
{
    uint64_t sum = 0;

    if (!svc_slot[id])
        return 0;
    for (int s = 0; s < n_services; s++) {
        const struct service_series *ss = series_of(s);
        if (ss)
            sum += atomic_load_explicit(&ss->counters[svc_slot[id] - 1], memory_order_relaxed);
    }
    return sum;
}

void metrics_service_request(int svc)
{
    metrics_service_inc(svc, M_REQUESTS);
}

void metrics_service_response(int svc, int status)
{
    static const enum metric_id classes[5] = { M_RESP_1XX, M_RESP_2XX, M_RESP_3XX, M_RESP_4XX, M_RESP_5XX };

    if (status >= 100 && status <= 599)
        metrics_service_inc(svc, classes[status / 100 - 1]);
}

void metrics_service_ejection(int svc)
{
    struct service_series *ss = series_of(svc);

    if (ss)
        atomic_fetch_add_explicit(&ss->ejections, 1, memory_order_relaxed);
}

static struct peer_series *peer_series_of(int svc, int index)
{
    struct service_series *ss = series_of(svc);

    if (!ss || index < 0 || index >= PEERS_MAX)
        return NULL;
    return &ss->peers[index];
}

static const char *const fail_names[METRICS_FAIL_COUNT] = {
    [METRICS_FAIL_REFUSED] = "refused", [METRICS_FAIL_CONNECT] = "connect_failure", [METRICS_FAIL_TLS] = "tls",
    [METRICS_FAIL_RESET] = "reset", [METRICS_FAIL_TIMEOUT] = "timeout", [METRICS_FAIL_BAD_RESPONSE] = "bad_response",
};

void metrics_service_peer_reset(int svc, int index)
{
    struct peer_series *ps = peer_series_of(svc, index);

    if (!ps)
        return;
    atomic_store(&ps->attempts, 0);
    for (int i = 0; i < 5; i++)
        atomic_store(&ps->responses[i], 0);
    for (int i = 0; i < METRICS_FAIL_COUNT; i++)
        atomic_store(&ps->failures[i], 0);
}

void metrics_service_peer_attempt(int svc, int index)
{
    struct peer_series *ps = peer_series_of(svc, index);

    if (ps)
        atomic_fetch_add_explicit(&ps->attempts, 1, memory_order_relaxed);
}

void metrics_service_peer_response(int svc, int index, int status)
{
    struct peer_series *ps = peer_series_of(svc, index);

    if (ps && status >= 100 && status <= 599)
        atomic_fetch_add_explicit(&ps->responses[status / 100 - 1], 1, memory_order_relaxed);
}

void metrics_service_peer_failure(int svc, int index, enum metrics_failure cls)
{
    struct peer_series *ps = peer_series_of(svc, index);

    if (ps && (unsigned)cls < METRICS_FAIL_COUNT)
        atomic_fetch_add_explicit(&ps->failures[cls], 1, memory_order_relaxed);
}

void metrics_peer_reset(int index)
{
    metrics_service_peer_reset(0, index);
}

void metrics_peer_attempt(int index)
{
    metrics_service_peer_attempt(0, index);
}

void metrics_peer_response(int index, int status)
{
    metrics_service_peer_response(0, index, status);
}

void metrics_peer_failure(int index, enum metrics_failure cls)
{
    metrics_service_peer_failure(0, index, cls);
}

static uint64_t load(_Atomic uint64_t *v)
{
    return atomic_load_explicit(v, memory_order_relaxed);
}

/* The series of <set>'s service and, in <label>, its ",service=..." (empty unless <labelled>). */
static struct service_series *set_series(const struct peers *set, int labelled, char *label, size_t len)
{
    snprintf(label, len, labelled && service_names ? ",service=\"%s\"" : "",
             labelled && service_names ? service_names[set->service] : "");
    return series_of(set->service);
}

/* One per-peer family over <n_sets> sets: <n_values> series a peer, value k of a peer's series read by
 * <value_of>, its label "<label_name>=<values[k]>" (no label when <label_name> is NULL). */
static void write_peer_family(struct evbuffer *out, struct peers *const *sets, int n_sets, int labelled,
                              const char *family, const char *label_name, const char *const *values, int n_values,
                              uint64_t (*value_of)(struct peer_series *ps, int k))
{
    char svc_label[96];

    for (int s = 0; s < n_sets; s++) {
        int n = atomic_load_explicit(&sets[s]->n, memory_order_acquire);
        struct service_series *ss = set_series(sets[s], labelled, svc_label, sizeof(svc_label));
        if (!ss)
            continue;
        for (int i = 0; i < n; i++)
            if (peer_is_active(sets[s]->peer[i]))
                for (int k = 0; k < n_values; k++)
                    evbuffer_add_printf(out, "%s{%s%s%s%speer=\"%s\"%s} %" PRIu64 "\n", family,
                                        label_name ? label_name : "", label_name ? "=\"" : "",
                                        label_name ? values[k] : "", label_name ? "\"," : "",
                                        sets[s]->peer[i]->addr_text, svc_label, value_of(&ss->peers[i], k));
    }
}

static uint64_t peer_attempts(struct peer_series *ps, int k)
{
    (void)k;
    return load(&ps->attempts);
}

static uint64_t peer_responses(struct peer_series *ps, int k)
{
    return load(&ps->responses[k]);
}

static uint64_t peer_failures(struct peer_series *ps, int k)
{
    return load(&ps->failures[k]);
}

/* The per-peer families over <n> sets; <labelled>: with service="<name>" (the services' view). */
static void write_peer_families(struct evbuffer *out, struct peers *const *sets, int n_sets, int labelled)
{
    static const char *const classes[5] = { "1xx", "2xx", "3xx", "4xx", "5xx" };

    evbuffer_add_printf(out, "# HELP nextup_peer_attempts_total Attempts sent to the peer (first tries and retries).\n"
                             "# TYPE nextup_peer_attempts_total counter\n");
    write_peer_family(out, sets, n_sets, labelled, "nextup_peer_attempts_total", NULL, NULL, 1, peer_attempts);
    evbuffer_add_printf(out, "# HELP nextup_peer_responses_total Response heads from the peer, by status class "
                             "(retried ones included).\n# TYPE nextup_peer_responses_total counter\n");
    write_peer_family(out, sets, n_sets, labelled, "nextup_peer_responses_total", "code", classes, 5, peer_responses);
    evbuffer_add_printf(out, "# HELP nextup_peer_failures_total Attempts to the peer that failed without a response "
                             "head, by class.\n# TYPE nextup_peer_failures_total counter\n");
    write_peer_family(out, sets, n_sets, labelled, "nextup_peer_failures_total", "class", fail_names,
                      METRICS_FAIL_COUNT, peer_failures);
}

void metrics_write_peers(struct evbuffer *out, const struct peers *set)
{
    struct peers *one = (struct peers *)set;   /* only read */

    write_peer_families(out, &one, 1, 0);
}

void metrics_write_services(struct evbuffer *out, const struct services *svcs)
{
    struct peers *sets[CONFIG_MAX_SERVICES];
    int n = svcs->n;
    static const struct { const char *family, *label, *value, *help; int from, count; } fams[] = {
        { "nextup_service_requests_total", NULL, NULL, "Requests whose head was read, by the service they were for.", 0, 1 },
        { "nextup_service_responses_total", "code", "1xx\0" "2xx\0" "3xx\0" "4xx\0" "5xx\0",
          "Responses sent to clients, by service and status class.", 1, 5 },
        { "nextup_service_attempts_total", NULL, NULL, "Tries sent to a peer of the service, first tries and retries.", 6, 1 },
        { "nextup_service_retries_total", "reason", "refused\0" "connect_failure\0" "reset\0" "timeout\0" "status\0",
          "Retries on another peer of the service, by reason.", 7, 5 },
        { "nextup_service_retries_refused_total", "reason", "policy\0" "exhausted\0" "method\0" "buffer\0" "budget\0",
          "Retries wanted but not made, by service and reason.", 12, 5 },
    };
    const char *name;

    for (int s = 0; s < n; s++)
        sets[s] = svcs->svc[s].peers;
    for (size_t f = 0; f < sizeof(fams) / sizeof(fams[0]); f++) {
        evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s counter\n", fams[f].family, fams[f].help, fams[f].family);
        for (int s = 0; s < n; s++) {
            struct service_series *ss = series_of(sets[s]->service);
            const char *v = fams[f].value;
            if (!ss)
                continue;
            name = service_names ? service_names[sets[s]->service] : "default";
            for (int k = 0; k < fams[f].count; k++, v = v ? v + strlen(v) + 1 : NULL) {
                if (fams[f].label)
                    evbuffer_add_printf(out, "%s{%s=\"%s\",service=\"%s\"} %" PRIu64 "\n", fams[f].family,
                                        fams[f].label, v, name, load(&ss->counters[fams[f].from + k]));
                else
                    evbuffer_add_printf(out, "%s{service=\"%s\"} %" PRIu64 "\n", fams[f].family, name,
                                        load(&ss->counters[fams[f].from + k]));
            }
        }
    }
    evbuffer_add_printf(out, "# HELP nextup_service_ejections_total Times a peer of the service was taken out of "
                             "rotation (down, draining or ejected).\n# TYPE nextup_service_ejections_total counter\n");
    for (int s = 0; s < n; s++) {
        struct service_series *ss = series_of(sets[s]->service);
        if (ss)
            evbuffer_add_printf(out, "nextup_service_ejections_total{service=\"%s\"} %" PRIu64 "\n",
                                service_names ? service_names[sets[s]->service] : "default", load(&ss->ejections));
    }
    write_peer_families(out, sets, n, 1);
}

/* ---- build and process -------------------------------------------------------------- */

static _Atomic int64_t upstream_open;

void metrics_upstream_conn_opened(void)
{
    atomic_fetch_add_explicit(&upstream_open, 1, memory_order_relaxed);
}

void metrics_upstream_conn_closed(void)
{
    atomic_fetch_sub_explicit(&upstream_open, 1, memory_order_relaxed);
}

/* Fields 14 (utime), 15 (stime), 22 (starttime), 24 (rss) of /proc/self/stat. 0, or -1. */
static int read_stat(double *cpu_s, double *start_since_boot_s, double *rss_bytes)
{
    char buf[1024], *p;
    unsigned long long utime, stime, start;
    long rss, tck = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
    FILE *f = fopen("/proc/self/stat", "re");
    size_t n;

    if (!f)
        return -1;
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* The command name (field 2) may hold spaces and parentheses: fields count from the last ')'. */
    p = strrchr(buf, ')');
    if (!p || tck <= 0 ||
        sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d %*d %*d %*d %*d %llu %*u %ld",
               &utime, &stime, &start, &rss) != 4)
        return -1;
    *cpu_s = (double)(utime + stime) / (double)tck;
    *start_since_boot_s = (double)start / (double)tck;
    *rss_bytes = (double)rss * (double)page;
    return 0;
}

static long boot_time(void)
{
    char line[256];
    long btime = -1;
    FILE *f = fopen("/proc/stat", "re");

    if (!f)
        return -1;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "btime %ld", &btime) == 1)
            break;
    fclose(f);
    return btime;
}

static int open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    int n = 0;

    if (!d)
        return -1;
    while ((e = readdir(d)))
        n += e->d_name[0] != '.';
    closedir(d);
    return n - 1;   /* the directory's own descriptor */
}

void metrics_write_process(struct evbuffer *out, int downstream_open)
{
    double cpu, start, rss;
    struct rlimit rl;
    long btime = boot_time();
    int fds = open_fds();

    evbuffer_add_printf(out, "# HELP nextup_build_info The running nextup's version and its libraries'.\n"
                             "# TYPE nextup_build_info gauge\n"
                             "nextup_build_info{version=\"%s\",libevent=\"%s\",openssl=\"%s\",libbpf=\"%s\"} 1\n",
                        NEXTUP_VERSION, version_libevent(), version_openssl(), version_libbpf());
    evbuffer_add_printf(out, "# HELP nextup_downstream_connections_open Client connections open now.\n"
                             "# TYPE nextup_downstream_connections_open gauge\n"
                             "nextup_downstream_connections_open %d\n"
                             "# HELP nextup_upstream_connections_open Upstream connections open now, in use or pooled.\n"
                             "# TYPE nextup_upstream_connections_open gauge\n"
                             "nextup_upstream_connections_open %" PRId64 "\n",
                        downstream_open, atomic_load_explicit(&upstream_open, memory_order_relaxed));
    if (read_stat(&cpu, &start, &rss) == 0) {
        struct rusage ru;
        /* In µs: /proc's clock ticks say 0 for a process younger than 10 ms of CPU. */
        if (getrusage(RUSAGE_SELF, &ru) == 0)
            cpu = (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                  (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
        evbuffer_add_printf(out, "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n"
                                 "# TYPE process_cpu_seconds_total counter\n"
                                 "process_cpu_seconds_total %.6f\n"
                                 "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
                                 "# TYPE process_resident_memory_bytes gauge\n"
                                 "process_resident_memory_bytes %.0f\n", cpu, rss);
        if (btime > 0)
            evbuffer_add_printf(out, "# HELP process_start_time_seconds Start time of the process since unix epoch in "
                                     "seconds.\n# TYPE process_start_time_seconds gauge\n"
                                     "process_start_time_seconds %.2f\n", (double)btime + start);
    }
    if (fds >= 0)
        evbuffer_add_printf(out, "# HELP process_open_fds Number of open file descriptors.\n"
                                 "# TYPE process_open_fds gauge\nprocess_open_fds %d\n", fds);
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        evbuffer_add_printf(out, "# HELP process_max_fds Maximum number of open file descriptors.\n"
                                 "# TYPE process_max_fds gauge\nprocess_max_fds %.0f\n",
                            rl.rlim_cur == RLIM_INFINITY ? -1.0 : (double)rl.rlim_cur);
}
