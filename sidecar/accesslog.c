#include "accesslog.h"

#include "json.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#define FLUSH_BYTES (32 * 1024)

struct access_log {
    int enabled;
    struct evbuffer *buf;           /* owned: whole lines only */
    struct event *timer;            /* owned */
    time_t when_secs;               /* the second <when> spells, -1 before the first line */
    char when[32];                  /* {"time":"YYYY-MM-DDTHH:MM:SS. of when_secs */
    size_t when_len;
};

static void flush(struct access_log *l)
{
    /* stdout may be a pipe or a file: write until taken, dropping only on a hard error. */
    while (evbuffer_get_length(l->buf) > 0)
        if (evbuffer_write(l->buf, STDOUT_FILENO) <= 0)
            break;
    evbuffer_drain(l->buf, evbuffer_get_length(l->buf));
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    flush(arg);
}

struct access_log *access_log_new(struct event_base *base, int enabled)
{
    struct access_log *l = calloc(1, sizeof(*l));
    struct timeval tv = { 0, 200 * 1000 };

    if (!l)
        return NULL;
    l->enabled = enabled;
    l->when_secs = -1;
    if (!enabled)
        return l;
    l->buf = evbuffer_new();
    l->timer = event_new(base, -1, EV_PERSIST, timer_cb, l);
    if (!l->buf || !l->timer || event_add(l->timer, &tv) < 0) {
        access_log_free(l);
        return NULL;
    }
    return l;
}

void access_log_free(struct access_log *l)
{
    if (!l)
        return;
    if (l->buf) {
        flush(l);
        evbuffer_free(l->buf);
    }
    if (l->timer)
        event_free(l->timer);
    free(l);
}

const char *access_status_source_name(enum access_status_source src)
{
    static const char *const names[ACCESS_SOURCE_COUNT] = {
        [ACCESS_SOURCE_UPSTREAM] = "upstream", [ACCESS_SOURCE_TIMEOUT] = "nextup:timeout",
        [ACCESS_SOURCE_PER_TRY_TIMEOUT] = "nextup:per_try_timeout", [ACCESS_SOURCE_REFUSED] = "nextup:refused",
        [ACCESS_SOURCE_CONNECT_FAILURE] = "nextup:connect_failure", [ACCESS_SOURCE_RESET] = "nextup:reset",
        [ACCESS_SOURCE_TLS] = "nextup:tls", [ACCESS_SOURCE_BAD_RESPONSE] = "nextup:bad_response",
        [ACCESS_SOURCE_BUDGET] = "nextup:budget", [ACCESS_SOURCE_NO_PEER] = "nextup:no_peer", [ACCESS_SOURCE_NO_SERVICE] = "nextup:no_service",
        [ACCESS_SOURCE_BAD_REQUEST] = "nextup:bad_request", [ACCESS_SOURCE_OVERLOAD] = "nextup:overload",
        [ACCESS_SOURCE_CLIENT_CLOSED] = "client_closed",
    };
    return (unsigned)src < ACCESS_SOURCE_COUNT ? names[src] : NULL;
}

static void json_field(struct evbuffer *out, const char *s, size_t n)
{
    json_add_str(out, s, n, ACCESS_LOG_CAP_FIELD);
}

static void json_opt(struct evbuffer *out, const char *key, const char *s, size_t n)
{
    if (!s)
        return;
    evbuffer_add_printf(out, ",\"%s\":", key);
    json_field(out, s, n);
}

int access_log_enabled(const struct access_log *l)
{
    return l && l->enabled;
}

void access_log_write(struct access_log *l, const struct access_entry *e)
{
    time_t secs;
    int i, ms;
    char msz[6];
    const char *source;

    if (!l || !l->enabled)
        return;
    /* The date is formatted once a second, not once a request. */
    secs = (time_t)(e->start_unix_ms / 1000);
    if (secs != l->when_secs) {
        struct tm tm;
        gmtime_r(&secs, &tm);
        l->when_len = strftime(l->when, sizeof(l->when), "{\"time\":\"%Y-%m-%dT%H:%M:%S.", &tm);
        l->when_secs = secs;
    }
    ms = (int)(e->start_unix_ms % 1000);
    msz[0] = (char)('0' + ms / 100);
    msz[1] = (char)('0' + ms / 10 % 10);
    msz[2] = (char)('0' + ms % 10);
    memcpy(msz + 3, "Z\"", 2);
    evbuffer_add(l->buf, l->when, l->when_len);
    evbuffer_add(l->buf, msz, 5);
    evbuffer_add(l->buf, ",\"client\":", 10);
    json_field(l->buf, e->client, strlen(e->client));
    evbuffer_add(l->buf, ",\"method\":", 10);
    json_field(l->buf, e->method, strlen(e->method));
    evbuffer_add(l->buf, ",\"path\":", 8);
    json_add_str(l->buf, e->path, e->path_len, ACCESS_LOG_CAP_PATH);
    json_opt(l->buf, "host", e->host, e->host_len);
    json_opt(l->buf, "protocol", e->protocol, e->protocol ? strlen(e->protocol) : 0);
    json_opt(l->buf, "request_id", e->request_id, e->request_id_len);
    json_opt(l->buf, "traceparent", e->traceparent, e->traceparent_len);
    if (e->request_bytes >= 0)
        evbuffer_add_printf(l->buf, ",\"request_bytes\":%lld", (long long)e->request_bytes);
    evbuffer_add_printf(l->buf, ",\"status\":%d,\"bytes\":%llu,\"duration_ms\":%lld,\"upstream\":", e->status,
                        (unsigned long long)e->bytes, (long long)e->duration_ms);
    json_field(l->buf, e->upstream, strlen(e->upstream));
    if (e->service) {
        evbuffer_add_printf(l->buf, ",\"service\":");
        json_field(l->buf, e->service, strlen(e->service));
    }
    if (e->upstream_ms >= 0)
        evbuffer_add_printf(l->buf, ",\"upstream_ms\":%lld", (long long)e->upstream_ms);
    source = access_status_source_name(e->status_source);
    if (source)
        evbuffer_add_printf(l->buf, ",\"status_source\":\"%s\"", source);
    evbuffer_add_printf(l->buf, ",\"attempts\":%d,\"retries\":[", e->attempts);
    /* Retry reasons are nextup's own short words; at most 18 of them (1 + NEXTUP_MAX_RETRIES). */
    for (i = 0; i < e->n_retries && i < 18; i++) {
        if (i)
            evbuffer_add(l->buf, ",", 1);
        json_add_str(l->buf, e->retries[i], strlen(e->retries[i]), 64);
    }
    evbuffer_add(l->buf, "]}\n", 3);
    if (evbuffer_get_length(l->buf) >= FLUSH_BYTES)
        flush(l);
}
