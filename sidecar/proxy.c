#include "proxy.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <event2/buffer.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <llhttp.h>

#include "accesslog.h"
#include "clock.h"
#include "config.h"
#include "conn.h"
#include "hook.h"
#include "http1.h"
#include "log.h"
#include "metrics.h"
#include "nextup.h"
#include "peers.h"
#include "request_id.h"
#include "retry.h"
#include "tls.h"
#include "upstream.h"
#include "worker.h"

/* Above this many bytes waiting in one side's output, the other side stops
 * reading (le-proxy's backpressure): memory per connection stays bounded
 * whatever the body size. */
#define HIGH_WATER (256 * 1024)
/* Unparsed client bytes held while a request is in flight (pipelining). */
#define CLIENT_READ_HIGH (64 * 1024)

enum ds_state {
    DS_IDLE,      /* between requests, no byte of the next one yet */
    DS_HEAD,      /* reading a request head */
    DS_BODY,      /* head read, body still arriving; the attempt loop runs */
    DS_WAIT,      /* request read whole; waiting for or streaming the response */
    DS_TUNNEL,    /* after 101: bytes flow both ways unparsed */
    DS_CLOSING,   /* last bytes being written, then freed */
};

/* Why an attempt failed before a response head arrived; drives the retry decision. */
enum fail_class {
    FAIL_REFUSED,          /* ECONNREFUSED */
    FAIL_CONNECT_TIMEOUT,  /* no SYN-ACK within NEXTUP_CONNECT_TIMEOUT_MS */
    FAIL_CONNECT_ERROR,    /* unreachable, no route, ... */
    FAIL_CLOSED,           /* reset or closed after connect, before any response byte */
    FAIL_BAD_RESPONSE,     /* malformed or truncated response head */
    FAIL_TRY_TIMEOUT,      /* no head within NEXTUP_PER_TRY_TIMEOUT_MS */
    FAIL_TLS,              /* TCP connected, TLS handshake failed (certificate refused, ...) */
};

/* What only a request in hand needs: taken when its first byte arrives, given
 * back when the connection goes idle, so that an idle keep-alive connection
 * holds none of it (a worker keeps a few for the next request). */
struct request_state {
    struct request_state *next_free;      /* worker's cache link */
    struct evbuffer *tosend;              /* owned: produced, not yet handed to a connection */
    struct evbuffer *replay;              /* owned: every body byte produced, while replay_whole (the
                                             head is written again from the request for a retry) */
    llhttp_t resp_parser;
    struct http_head resp;
    struct event req_timer;               /* NEXTUP_REQUEST_TIMEOUT_MS until the response head */
    struct event try_timer;               /* NEXTUP_PER_TRY_TIMEOUT_MS for one attempt */
    struct event backoff_timer;           /* delay before a retry to a peer already tried */
    /* The last response aborted for a retry, kept whole when it arrived whole,
     * so that if no later attempt gets a response the client still gets a real
     * one (DESIGN invariant 3), not a made-up 502. */
    struct http_head held;                /* owned buffer */
    struct evbuffer *held_body;           /* owned */
    struct { uint8_t cause; uint16_t status; } retry_log[18];  /* for the access log */
    int n_retry_log;
};

struct downstream {
    struct worker *w;
    struct downstream *next, *prev;       /* worker's list */
    struct conn *conn;                    /* owned: the client socket */
    struct event timer;                   /* header / idle timeout */
    struct event free_ev;                 /* deferred free, never inside a callback of ours */
    llhttp_t parser;
    enum ds_state state;
    char client_ip[INET6_ADDRSTRLEN];
    struct http_head req;                 /* owned buffer, reused request after request */
    int error_status;                     /* set by a parser callback: answer this and close */
    const char *error_reason;
    int start_pending;                    /* head complete: start attempts after this parse batch */
    int req_complete;
    int keep_alive;                       /* client connection stays open after this response */
    int client_eof;
    uint64_t req_offset, resp_offset;     /* bytes parsed so far on each side (obs-fold check) */
    int client_paused;                    /* client reads stopped: upstream output is full */
    int up_paused;                        /* upstream reads stopped: client output is full */

    /* The request being served. */
    int replay_whole;
    int sent_any;                         /* some byte went to a connection */
    struct peer_mask tried;
    int attempts, retries;
    int race_resent;
    struct upconn *up;                    /* owned while set */
    struct peer *peer;                    /* outstanding counted while up is set */
    int up_connected;
    int64_t acked_base;                   /* tcpi_bytes_acked value before this attempt's first byte */
    uint64_t attempt_bytes;               /* request bytes handed to this attempt's connection */
    int aborted;                          /* ds_abort ran: no more I/O */
    int fin_seen;                         /* the connection's failure came with the peer's FIN */
    int tls;                              /* the client connection is TLS */
    int tls_up;                           /* ... and its handshake completed */
    int lingering;                        /* closing: the rest of the request body is read and dropped */
    uint64_t lingered;
    const char *tls_fail_reason;          /* "verify" or "handshake" for a FAIL_TLS */
    int resp_any;                         /* a response byte arrived on this attempt */
    int resp_head_done;                   /* the head was written: no retry from here on */
    int resp_committed;                   /* ... and moved to the client's output: the client may have it */
    int resp_complete;
    enum resp_framing framing;
    int has_idempotency_key;
    int retry_after_abort;                /* the hook aborted this response: retry once the parser returns */
    const struct nextup_error *hook_error; /* the hook ended the request with this error */
    void *user_ctx;                       /* the hook's per-request pointer, freed by request_done */
    struct request_state *rq;             /* owned while a request is in hand; NULL on an idle connection */
    enum { HELD_NONE, HELD_COLLECTING, HELD_WHOLE } held_state;
    /* For the access log and the histograms. */
    int64_t start_mono_ms, start_unix_ms;
    int64_t start_us;                     /* request head read (monotonic µs) */
    int64_t connect_us;                   /* this attempt's fresh connection was asked for */
    int64_t sent_us;                      /* this attempt's request head was handed to its connection */
    int64_t upstream_us;                  /* the answering attempt: sent -> response head; -1 none */
    uint64_t req_body_bytes;              /* request body bytes read from the client */
    enum access_status_source status_source; /* who produced the status (set where decided) */
    char request_id[REQUEST_ID_MAX + 1];  /* X-Request-Id sent upstream */
    int request_id_made;                  /* ... made here (the client's, if any, replaced) */
    const char *no_retry;                 /* why the last failure was not retried (retry_verdict_name) */
    uint64_t resp_bytes;                  /* body bytes sent to the client */
    int logged;                           /* this request's line is written */
    int aborted_status;                   /* status of the response the hook last aborted */
};

#define RETRY_LOG_KEEPALIVE_RACE 255      /* retry_log cause for a keep-alive race resend */

/* A held response larger than this is dropped rather than kept in memory. */
#define HELD_BODY_MAX (64 * 1024)

/* Shared by every worker: requests and retries of the last 10 s. */
static struct retry_budget budget;

static llhttp_settings_t req_settings;
static llhttp_settings_t resp_settings;

static void ds_parse_input(struct downstream *ds);
static void ex_attempt(struct downstream *ds, int fresh_same_peer);
static void up_read_cb(struct conn *conn, void *arg);
static void up_drained_cb(struct conn *conn, void *arg);
static void up_event_cb(struct conn *conn, int what, int err, void *arg);
static void ds_balance(struct downstream *ds);

static struct timeval ms_tv(int ms)
{
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
    return tv;
}

static void count_response(int status)
{
    if (status < 200)
        metrics_inc(M_RESP_1XX);
    else if (status < 300)
        metrics_inc(M_RESP_2XX);
    else if (status < 400)
        metrics_inc(M_RESP_3XX);
    else if (status < 500)
        metrics_inc(M_RESP_4XX);
    else
        metrics_inc(M_RESP_5XX);
}

static void retry_log_add(struct downstream *ds, int cause, int status)
{
    if (ds->rq->n_retry_log < (int)(sizeof(ds->rq->retry_log) / sizeof(ds->rq->retry_log[0]))) {
        ds->rq->retry_log[ds->rq->n_retry_log].cause = (uint8_t)cause;
        ds->rq->retry_log[ds->rq->n_retry_log].status = (uint16_t)status;
        ds->rq->n_retry_log++;
    }
}

/* The request's access log line, once: at its end, however it ended. */
static void log_request(struct downstream *ds, int status)
{
    static const char *const cause_names[] = {
        [CAUSE_REFUSED] = "refused", [CAUSE_CONNECT_FAILURE] = "connect_failure", [CAUSE_RESET] = "reset",
        [CAUSE_TIMEOUT] = "timeout", [CAUSE_STATUS] = "status",
    };
    char texts[18][24];
    const char *reasons[18];
    struct access_entry e = ACCESS_ENTRY_INIT;
    int i, n_retries;

    /* Nothing to say about a connection that sent nothing; a bad request line is logged as "-". */
    if (ds->logged || (ds->req.first_len == 0 && ds->state == DS_IDLE))
        return;
    ds->logged = 1;
    n_retries = ds->rq ? ds->rq->n_retry_log : 0;
    for (i = 0; i < n_retries; i++) {
        int c = ds->rq->retry_log[i].cause;
        if (c == RETRY_LOG_KEEPALIVE_RACE)
            snprintf(texts[i], sizeof(texts[i]), "keepalive_race");
        else if (c == CAUSE_STATUS)
            snprintf(texts[i], sizeof(texts[i]), "status_%d", ds->rq->retry_log[i].status);
        else
            snprintf(texts[i], sizeof(texts[i]), "%s", cause_names[c]);
        reasons[i] = texts[i];
    }
    e.start_unix_ms = ds->start_unix_ms ? ds->start_unix_ms : clock_unix_ms();
    e.duration_ms = ds->start_mono_ms ? clock_mono_ms() - ds->start_mono_ms : 0;
    e.client = ds->client_ip;
    /* llhttp has the method once the target began (the method comes first). */
    e.method = ds->req.first_len ? llhttp_method_name((llhttp_method_t)llhttp_get_method(&ds->parser)) : "-";
    e.path = ds->req.first_len ? ds->req.buf + ds->req.first_off : "-";
    e.path_len = ds->req.first_len ? ds->req.first_len : 1;
    e.status = status;
    e.bytes = ds->resp_bytes;
    e.upstream = ds->peer && ds->attempts ? ds->peer->addr_text : "";
    e.attempts = ds->attempts;
    e.retries = reasons;
    e.n_retries = n_retries;
    if (ds->start_us) {
        size_t len;
        const char *v;
        e.request_id = ds->request_id;
        e.request_id_len = strlen(ds->request_id);
        if ((v = http_head_get(&ds->req, "traceparent", &len))) {
            e.traceparent = v;
            e.traceparent_len = len;
        }
        if ((v = http_head_get(&ds->req, "host", &len))) {
            e.host = v;
            e.host_len = len;
        }
        e.protocol = ds->req.minor == 0 ? "HTTP/1.0" : "HTTP/1.1";
        e.request_bytes = (int64_t)ds->req_body_bytes;
        e.upstream_ms = ds->upstream_us >= 0 ? ds->upstream_us / 1000 : -1;
    }
    e.status_source = status == 499 ? ACCESS_SOURCE_CLIENT_CLOSED
                      : ds->status_source ? ds->status_source
                      : status < 500 && !ds->attempts ? ACCESS_SOURCE_BAD_REQUEST
                                                      : ACCESS_SOURCE_UPSTREAM;
    metrics_observe_request(status == 499 ? 0 : status, ds->start_us ? clock_mono_us() - ds->start_us : 0);
    access_log_write(ds->w->alog, &e);
}

/* ---- lifetime ---------------------------------------------------------- */

static void up_detach(struct downstream *ds, int reusable)
{
    if (!ds->up)
        return;
    atomic_fetch_sub_explicit(&ds->peer->outstanding, 1, memory_order_relaxed);
    if (reusable)
        upstream_release(ds->up);
    else
        upstream_close(ds->up);
    ds->up = NULL;
    ds->up_connected = 0;
    ds->up_paused = 0;
}

/* The request is over: the hook's context goes back to its owner. */
static void request_end(struct downstream *ds)
{
    const struct nextup_hooks *h = hook_active();

    if (ds->user_ctx && h->request_done)
        h->request_done(ds->user_ctx);
    ds->user_ctx = NULL;
}

static void stop_timers(struct downstream *ds)
{
    event_del(&ds->timer);
    if (ds->rq) {
        event_del(&ds->rq->req_timer);
        event_del(&ds->rq->try_timer);
        event_del(&ds->rq->backoff_timer);
    }
}

/* A worker keeps at most this many request states for reuse. */
#define RQ_CACHE_MAX 64

static void req_timer_cb(evutil_socket_t fd, short what, void *arg);
static void try_timer_cb(evutil_socket_t fd, short what, void *arg);
static void backoff_cb(evutil_socket_t fd, short what, void *arg);

static void rq_destroy(struct request_state *rq)
{
    evbuffer_free(rq->tosend);
    evbuffer_free(rq->replay);
    evbuffer_free(rq->held_body);
    http_head_free(&rq->resp);
    http_head_free(&rq->held);
    free(rq);
}

/* Gives <ds> its request state (from the worker's cache, else new). 0 or -ENOMEM. */
static int rq_take(struct downstream *ds)
{
    struct worker *w = ds->w;
    struct request_state *rq = w->rq_free;

    if (ds->rq)
        return 0;
    if (rq) {
        w->rq_free = rq->next_free;
        w->n_rq_free--;
    } else {
        rq = calloc(1, sizeof(*rq));
        if (!rq)
            return -ENOMEM;
        rq->tosend = evbuffer_new();
        rq->replay = evbuffer_new();
        rq->held_body = evbuffer_new();
        if (!rq->tosend || !rq->replay || !rq->held_body) {
            if (rq->tosend)
                evbuffer_free(rq->tosend);
            if (rq->replay)
                evbuffer_free(rq->replay);
            if (rq->held_body)
                evbuffer_free(rq->held_body);
            free(rq);
            return -ENOMEM;
        }
    }
    evtimer_assign(&rq->req_timer, w->base, req_timer_cb, ds);
    evtimer_assign(&rq->try_timer, w->base, try_timer_cb, ds);
    evtimer_assign(&rq->backoff_timer, w->base, backoff_cb, ds);
    ds->rq = rq;
    return 0;
}

/* Takes <ds>'s request state back: timers stopped, buffers emptied, cached or freed. */
static void rq_give_back(struct downstream *ds)
{
    struct request_state *rq = ds->rq;
    struct worker *w = ds->w;

    if (!rq)
        return;
    ds->rq = NULL;
    event_del(&rq->req_timer);
    event_del(&rq->try_timer);
    event_del(&rq->backoff_timer);
    evbuffer_drain(rq->tosend, evbuffer_get_length(rq->tosend));
    evbuffer_drain(rq->replay, evbuffer_get_length(rq->replay));
    evbuffer_drain(rq->held_body, evbuffer_get_length(rq->held_body));
    rq->n_retry_log = 0;
    if (w->n_rq_free >= RQ_CACHE_MAX) {
        rq_destroy(rq);
        return;
    }
    /* Kept with their head buffers: the next request reuses them as they are. */
    http_head_reset(&rq->resp);
    http_head_reset(&rq->held);
    rq->next_free = w->rq_free;
    w->rq_free = rq;
    w->n_rq_free++;
}

static void ds_free_cb(evutil_socket_t fd, short what, void *arg)
{
    struct downstream *ds = arg;
    struct worker *w = ds->w;

    (void)fd;
    (void)what;
    request_end(ds);
    up_detach(ds, 0);
    if (ds->prev)
        ds->prev->next = ds->next;
    else
        w->conns = ds->next;
    if (ds->next)
        ds->next->prev = ds->prev;
    conn_free(ds->conn);
    event_del(&ds->timer);
    rq_give_back(ds);
    http_head_free(&ds->req);
    free(ds);
    worker_connection_closed(w);
}

/* Ends the connection now: no callback reaches <ds> again; freed on the next loop turn. */
static void ds_abort(struct downstream *ds)
{
    /* A request cut short: 499 (client gone) unless a response head already went out. */
    if (ds->state != DS_IDLE && ds->state != DS_CLOSING && ds->state != DS_TUNNEL)
        log_request(ds, ds->resp_head_done ? ds->rq->resp.status : 499);
    ds->aborted = 1;
    up_detach(ds, 0);
    conn_set_cbs(ds->conn, NULL, NULL, NULL, NULL);
    conn_read(ds->conn, 0);
    stop_timers(ds);
    ds->state = DS_CLOSING;
    event_active(&ds->free_ev, 0, 0);
}

/* Closes once the bytes already queued for the client are written. */
/* Lingering close: a response that came before the whole request body (an
 * early 200 or 413 from the replica, an error of nextup's) is not followed by
 * an abrupt close, which would reset the connection under the client's feet
 * and could destroy the response before it is read: the rest of the body is
 * read and thrown away for up to LINGER_MS or LINGER_BYTES, as nginx does. */
#define LINGER_MS 2000
#define LINGER_BYTES (64 * 1024 * 1024)

/* Once the response is out, the client is told "no more" (FIN) while what it
 * still sends is read and dropped; TLS has no half-close, its connection just waits. */
static void linger_half_close(struct downstream *ds)
{
    if (ds->lingering)
        conn_shutdown_write(ds->conn);
}

static void ds_close_after_write(struct downstream *ds)
{
    int body_unread = ds->state == DS_BODY || ds->state == DS_HEAD;

    up_detach(ds, 0);
    ds->state = DS_CLOSING;
    stop_timers(ds);
    ds->lingering = body_unread && !ds->client_eof;
    if (!ds->lingering)
        conn_read(ds->conn, 0);
    if (conn_flush(ds->conn) == 0 && !ds->lingering) {
        ds_abort(ds);
        return;
    }
    if (ds->lingering) {
        struct timeval tv = ms_tv(LINGER_MS);
        conn_set_read_limit(ds->conn, 0);
        conn_read(ds->conn, 1);
        evtimer_add(&ds->timer, &tv);
        linger_half_close(ds);
    }
    /* on_drained frees once the output is empty; the idle timeout bounds a client that never reads. */
}

/* While lingering: what the client still sends is read and dropped. */
static void linger_drain(struct downstream *ds)
{
    struct evbuffer *in = conn_input(ds->conn);

    ds->lingered += evbuffer_get_length(in);
    evbuffer_drain(in, evbuffer_get_length(in));
    if (ds->lingered > LINGER_BYTES)
        ds_abort(ds);
}

/* Sends the held response (the last real one) instead of a made-up error. */
static void reply_held(struct downstream *ds, const char *why_not_later)
{
    struct evbuffer *out = conn_output(ds->conn);
    int is_head = ds->req.method == HTTP_HEAD;

    LOG_INFO("%s: later attempts failed (%s); forwarding the %d held from an earlier attempt", ds->client_ip,
             why_not_later, ds->rq->held.status);
    /* Its body is whole in memory now: a Content-Length says so, whatever the peer's framing was. */
    ds->rq->held.chunked = 0;
    ds->rq->held.has_content_length = 1;
    ds->rq->held.content_length = evbuffer_get_length(ds->rq->held_body);
    count_response(ds->rq->held.status);
    ds->status_source = ACCESS_SOURCE_UPSTREAM;
    ds->resp_bytes = is_head ? 0 : evbuffer_get_length(ds->rq->held_body);
    log_request(ds, ds->rq->held.status);
    if (http1_write_response_head(out, &ds->rq->held, is_head ? RESP_NO_BODY : RESP_CONTENT_LENGTH, 1,
                                  ds->req.major == 1 && ds->req.minor == 0) < 0 ||
        (!is_head && evbuffer_add_buffer(out, ds->rq->held_body) < 0)) {
        ds_abort(ds);
        return;
    }
    ds->resp_head_done = 1;
    ds_close_after_write(ds);
}

/* Answers with a response made by nextup and closes. Only while no byte of an
 * upstream response has gone downstream: after that, an abort is all that is left. */
static void ds_reply_error(struct downstream *ds, int status, const char *reason)
{
    if (ds->resp_head_done) {
        ds_abort(ds);
        return;
    }
    up_detach(ds, 0);
    if (status >= 500 && ds->held_state == HELD_WHOLE) {
        reply_held(ds, reason);
        return;
    }
    /* The one line of a request nextup answered itself. */
    if (ds->attempts)
        LOG_INFO("%s: %s %.*s: %d %s (last peer %s, %d attempt(s)%s%s)", ds->client_ip,
                 nextup_request_method((struct nextup_session *)ds), (int)ds->req.first_len,
                 ds->req.buf + ds->req.first_off, status, reason, ds->peer ? ds->peer->addr_text : "-", ds->attempts,
                 ds->no_retry ? "; no retry: " : "", ds->no_retry ? ds->no_retry : "");
    else
        LOG_INFO("%s: %d %s", ds->client_ip, status, reason);
    if (!ds->status_source)
        ds->status_source = status == 503 ? ACCESS_SOURCE_OVERLOAD : ACCESS_SOURCE_BAD_REQUEST;
    count_response(status);
    ds->resp_bytes = 9 + strlen(reason);
    log_request(ds, status);
    if (status < 500)
        metrics_inc(M_BAD_REQUESTS);
    if (http1_write_error(conn_output(ds->conn), status, reason) < 0) {
        ds_abort(ds);
        return;
    }
    ds->resp_head_done = 1;
    ds_close_after_write(ds);
}

/* ---- request bytes towards the upstream -------------------------------- */

static struct evbuffer *request_sink(struct downstream *ds)
{
    return ds->up && ds->up_connected ? conn_output(ds->up->conn) : ds->rq->tosend;
}

static void replay_keep(struct downstream *ds, const void *data, size_t len)
{
    if (!ds->replay_whole)
        return;
    if (!retry_buffer_fits(evbuffer_get_length(ds->rq->replay), len, (uint64_t)ds->w->cfg->retry_buffer_bytes) ||
        evbuffer_add(ds->rq->replay, data, len) < 0) {
        /* Past the retry buffer the request still streams, but it cannot be replayed. */
        ds->replay_whole = 0;
        evbuffer_drain(ds->rq->replay, evbuffer_get_length(ds->rq->replay));
    }
}

static int produce(struct downstream *ds, const void *data, size_t len)
{
    struct evbuffer *sink = request_sink(ds);

    replay_keep(ds, data, len);
    if (sink != ds->rq->tosend) {
        ds->sent_any = 1;
        ds->attempt_bytes += len;
    }
    return evbuffer_add(sink, data, len);
}

/* Copies every byte of <src> into <dst>, leaving <src> as it was. */
static int evbuffer_copy_all(struct evbuffer *dst, struct evbuffer *src)
{
    struct evbuffer_iovec vec[16];
    struct evbuffer_ptr pos;
    int n, i;

    evbuffer_ptr_set(src, &pos, 0, EVBUFFER_PTR_SET);
    for (;;) {
        n = evbuffer_peek(src, -1, &pos, vec, 16);
        if (n <= 0)
            return 0;
        for (i = 0; i < n && i < 16; i++) {
            if (evbuffer_add(dst, vec[i].iov_base, vec[i].iov_len) < 0)
                return -ENOMEM;
            if (evbuffer_ptr_set(src, &pos, vec[i].iov_len, EVBUFFER_PTR_ADD) < 0)
                return 0;
        }
        if (n <= 16)
            return 0;
    }
}

/* le-proxy's backpressure, both ways: a side stops reading while the other
 * side's output holds more than HIGH_WATER, and reads again once it is below
 * (after a flush, or from on_drained). */
static void ds_balance(struct downstream *ds)
{
    size_t queued;

    if (ds->aborted || ds->state == DS_CLOSING)
        return;
    if (ds->rq || ds->state == DS_TUNNEL) {
        queued = ds->state == DS_TUNNEL ? (ds->up ? evbuffer_get_length(conn_output(ds->up->conn)) : 0)
                                        : evbuffer_get_length(request_sink(ds));
        if (!ds->client_paused && queued > HIGH_WATER) {
            conn_read(ds->conn, 0);
            ds->client_paused = 1;
        } else if (ds->client_paused && queued <= HIGH_WATER) {
            ds->client_paused = 0;
            conn_read(ds->conn, 1);
        }
    }
    if (ds->up && (ds->resp_head_done || ds->state == DS_TUNNEL)) {
        queued = evbuffer_get_length(conn_output(ds->conn));
        if (!ds->up_paused && queued > HIGH_WATER) {
            conn_read(ds->up->conn, 0);
            ds->up_paused = 1;
        } else if (ds->up_paused && queued <= HIGH_WATER) {
            ds->up_paused = 0;
            conn_read(ds->up->conn, 1);
        }
    }
}

/* Runs <parser> over everything in <in>, draining what it consumed; stops at
 * a pause or an error. Returns llhttp's last errno. */
static llhttp_errno_t parse_evbuffer(llhttp_t *parser, struct evbuffer *in, struct http_head *head,
                                     uint64_t *stream_offset)
{
    struct evbuffer_iovec vec[8];
    llhttp_errno_t err = HPE_OK;

    while (err == HPE_OK) {
        size_t consumed = 0;
        int n = evbuffer_peek(in, -1, NULL, vec, 8), i;
        if (n <= 0)
            break;
        for (i = 0; i < n && i < 8 && err == HPE_OK; i++) {
            http_head_chunk(head, vec[i].iov_base, *stream_offset + consumed);
            err = llhttp_execute(parser, vec[i].iov_base, vec[i].iov_len);
            if (err == HPE_OK)
                consumed += vec[i].iov_len;
            else if (err == HPE_PAUSED || err == HPE_PAUSED_UPGRADE)
                consumed += (size_t)(llhttp_get_error_pos(parser) - (const char *)vec[i].iov_base);
        }
        evbuffer_drain(in, consumed);
        *stream_offset += consumed;
    }
    return err;
}

static int parse_failed(llhttp_errno_t err)
{
    return err != HPE_OK && err != HPE_PAUSED && err != HPE_PAUSED_UPGRADE;
}

/* ---- request parser callbacks ------------------------------------------ */

static struct downstream *req_ds(llhttp_t *p)
{
    return p->data;
}

static int parser_fail(struct downstream *ds, int status, const char *reason)
{
    if (!ds->error_status) {
        ds->error_status = status;
        ds->error_reason = reason;
    }
    return -1;
}

static int on_req_begin(llhttp_t *p)
{
    struct downstream *ds = req_ds(p);
    struct timeval tv = ms_tv(ds->w->cfg->header_timeout_ms);

    if (rq_take(ds) < 0)
        return parser_fail(ds, 503, "out of memory");

    http_head_reset(&ds->req);
    ds->state = DS_HEAD;
    evtimer_add(&ds->timer, &tv);
    return 0;
}

static int head_feed_result(struct downstream *ds, int r)
{
    if (r == 0 && http_head_size(&ds->req) <= (size_t)ds->w->cfg->max_header_bytes)
        return 0;
    if (r == -ENOMEM)
        return parser_fail(ds, 503, "out of memory");
    if (r == -EPROTO)
        return parser_fail(ds, 400, "obs-fold (a header line continued on the next line) is not accepted");
    return parser_fail(ds, 431, "request head larger than NEXTUP_MAX_HEADER_BYTES");
}

static int on_req_url(llhttp_t *p, const char *at, size_t len)
{
    struct downstream *ds = req_ds(p);
    return head_feed_result(ds, http_head_add_first(&ds->req, at, len, (size_t)ds->w->cfg->max_header_bytes));
}

static int on_req_field(llhttp_t *p, const char *at, size_t len)
{
    struct downstream *ds = req_ds(p);
    return head_feed_result(ds, http_head_add_field(&ds->req, at, len, (size_t)ds->w->cfg->max_header_bytes));
}

static int on_req_value(llhttp_t *p, const char *at, size_t len)
{
    struct downstream *ds = req_ds(p);
    return head_feed_result(ds, http_head_add_value(&ds->req, at, len, (size_t)ds->w->cfg->max_header_bytes));
}

static int on_req_value_complete(llhttp_t *p)
{
    http_head_value_complete(&req_ds(p)->req);
    return 0;
}

static int on_resp_value_complete(llhttp_t *p)
{
    http_head_value_complete(&((struct downstream *)p->data)->rq->resp);
    return 0;
}

static int on_req_headers_complete(llhttp_t *p)
{
    struct downstream *ds = req_ds(p);
    const char *reason = NULL;
    int status;

    http_head_take_parser_facts(&ds->req, p);
    metrics_inc(M_REQUESTS);
    status = http1_check_request(&ds->req, &reason);
    if (status)
        return parser_fail(ds, status, reason);
    ds->keep_alive = ds->req.keep_alive && !ds->w->draining;
    ds->state = DS_BODY;
    ds->start_pending = 1;
    event_del(&ds->timer);
    /* Paused: ds_parse_input starts the attempts, then parses the body. */
    return HPE_PAUSED;
}

static int on_req_body(llhttp_t *p, const char *at, size_t len)
{
    struct downstream *ds = req_ds(p);
    char line[24];
    int n;

    ds->req_body_bytes += len;
    if (ds->req.chunked) {
        /* Bodies are re-chunked: the peer sees framing nextup wrote, never the client's. */
        n = snprintf(line, sizeof(line), "%zx\r\n", len);
        if (produce(ds, line, (size_t)n) < 0 || produce(ds, at, len) < 0 || produce(ds, "\r\n", 2) < 0)
            return parser_fail(ds, 503, "out of memory");
    } else if (produce(ds, at, len) < 0) {
        return parser_fail(ds, 503, "out of memory");
    }
    return 0;
}

static int on_req_complete(llhttp_t *p)
{
    struct downstream *ds = req_ds(p);

    if (ds->req.chunked && produce(ds, "0\r\n\r\n", 5) < 0)
        return parser_fail(ds, 503, "out of memory");
    ds->req_complete = 1;
    ds->state = DS_WAIT;
    {
        conn_set_timeouts(ds->conn, 0, ds->w->cfg->idle_timeout_ms);
    }
    /* One request at a time: pipelined bytes wait in the input until this response is done. */
    return HPE_PAUSED;
}

/* ---- the attempt loop --------------------------------------------------- */

static int request_replayable(const struct downstream *ds)
{
    return !ds->sent_any || ds->replay_whole;
}

/* The head sent upstream, into <out>: written once per attempt, never copied. */
static int write_upstream_head(struct downstream *ds, struct evbuffer *out)
{
    const char *host_fallback = ds->w->peers->n > 0 ? ds->w->peers->peer[0]->name : "localhost";

    return http1_write_request_head(out, &ds->req, ds->client_ip, host_fallback, ds->tls ? "https" : "http",
                                    ds->request_id_made ? ds->request_id : NULL);
}

/* The client's X-Request-Id passed through, or one made (and sent upstream). */
static void take_request_id(struct downstream *ds)
{
    size_t len = 0;
    const char *v = http_head_get(&ds->req, "x-request-id", &len);

    if (request_id_decide(v, len, http_head_count(&ds->req, "x-request-id")) == REQUEST_ID_KEEP &&
        len <= REQUEST_ID_MAX) {
        memcpy(ds->request_id, v, len);
        ds->request_id[len] = 0;
        ds->request_id_made = 0;
        return;
    }
    request_id_make(&ds->w->rng, ds->request_id);
    ds->request_id_made = 1;
}

/* The request head is whole (the parser paused right after it): its attempts
 * start now, before any body byte is parsed, so the head goes first. */
static void start_request(struct downstream *ds)
{
    struct timeval tv = ms_tv(ds->w->cfg->request_timeout_ms);

    ds->start_pending = 0;
    ds->start_us = clock_mono_us();
    ds->upstream_us = -1;
    ds->status_source = ACCESS_SOURCE_UNSET;
    take_request_id(ds);
    ds->start_mono_ms = clock_mono_ms();
    ds->start_unix_ms = clock_unix_ms();
    retry_budget_note_request(&budget, ds->start_mono_ms / 1000);
    ds->has_idempotency_key = http_head_get(&ds->req, "idempotency-key", &(size_t){ 0 }) != NULL;
    if (write_upstream_head(ds, ds->rq->tosend) < 0) {
        ds_reply_error(ds, 503, "out of memory");
        return;
    }
    /* 100 Continue only to a client that waits for it: no body byte has come yet. */
    if (ds->req.method != HTTP_HEAD && evbuffer_get_length(conn_input(ds->conn)) == 0 &&
        http_head_has_token(&ds->req, "expect", "100-continue") && ds->req.major == 1 && ds->req.minor >= 1)
        evbuffer_add(conn_output(ds->conn), "HTTP/1.1 100 Continue\r\n\r\n", 25);
    conn_set_timeouts(ds->conn, ds->w->cfg->idle_timeout_ms, ds->w->cfg->idle_timeout_ms);
    evtimer_add(&ds->rq->req_timer, &tv);
    ex_attempt(ds, 0);
}

static void ex_connected(struct downstream *ds)
{
    struct upconn *c = ds->up;

    conn_set_timeouts(c->conn, 0, 0);
    ds->up_connected = 1;
    /* The baseline for the "nothing acknowledged" proof: one getsockopt per
     * connection; after that, every byte of the requests it completed. */
    if (!c->reused) {
        c->acked_at_open = upstream_bytes_acked(c);
        upstream_tls_keep_session(c);
    }
    ds->acked_base = c->acked_at_open >= 0 ? c->acked_at_open + (int64_t)c->bytes_done : -1;
    ds->sent_us = clock_mono_us();
    if (!c->reused)
        metrics_observe_connect(1, ds->sent_us - ds->connect_us);
    ds->attempt_bytes = evbuffer_get_length(ds->rq->tosend);
    if (ds->attempt_bytes > 0)
        ds->sent_any = 1;
    evbuffer_add_buffer(conn_output(c->conn), ds->rq->tosend);
    conn_read(c->conn, 1);
    conn_flush(c->conn);
}

static const char *fail_text(enum fail_class c)
{
    switch (c) {
    case FAIL_REFUSED: return "connection refused";
    case FAIL_CONNECT_TIMEOUT: return "connect timed out";
    case FAIL_CONNECT_ERROR: return "connect failed";
    case FAIL_CLOSED: return "connection closed before a response";
    case FAIL_BAD_RESPONSE: return "malformed response";
    case FAIL_TRY_TIMEOUT: return "no response head within NEXTUP_PER_TRY_TIMEOUT_MS";
    case FAIL_TLS: return "TLS handshake failed";
    }
    return "failed";
}

/* Puts every byte of the request back in tosend for another attempt. */
static int rewind_request(struct downstream *ds)
{
    if (!ds->sent_any)
        return 0;
    evbuffer_drain(ds->rq->tosend, evbuffer_get_length(ds->rq->tosend));
    if (write_upstream_head(ds, ds->rq->tosend) < 0)
        return -ENOMEM;
    return evbuffer_copy_all(ds->rq->tosend, ds->rq->replay);
}

static void backoff_cb(evutil_socket_t fd, short what, void *arg)
{
    struct downstream *ds = arg;

    (void)fd;
    (void)what;
    ex_attempt(ds, 0);
}

/* Whether this failed attempt may be retried: retry_decide() on its facts,
 * then the budget. A refusal is counted by reason. */
static enum retry_verdict retry_verdict_for(struct downstream *ds, enum retry_cause cause, int say)
{
    static const enum metric_id refused_metric[] = {
        [RETRY_NO_POLICY] = M_NORETRY_POLICY, [RETRY_NO_EXHAUSTED] = M_NORETRY_EXHAUSTED,
        [RETRY_NO_METHOD] = M_NORETRY_METHOD, [RETRY_NO_BUFFER] = M_NORETRY_BUFFER,
        [RETRY_NO_BUDGET] = M_NORETRY_BUDGET,
    };
    struct attempt a = {
        .cause = cause,
        .method = ds->req.method,
        .has_idempotency_key = ds->has_idempotency_key,
        .buffer_whole = request_replayable(ds),
        .retries_done = ds->retries,
        .budget_ok = 1,
    };
    const struct retry_policy *pol = &ds->w->cfg->retry;
    enum retry_verdict v = retry_decide(pol, &a);

    /* The budget is only spent on retries that are otherwise allowed. */
    if (v == RETRY_GO && retry_cause_reached_peer(cause) && !retry_budget_try_take(&budget, pol, clock_mono_ms() / 1000)) {
        a.budget_ok = 0;
        v = retry_decide(pol, &a);
    }
    if (v != RETRY_GO) {
        metrics_inc(refused_metric[v]);
        /* A response forwarded unchanged says why here; nextup's own answer says it in its one line. */
        if (say)
            LOG_INFO("%s: %s %.*s: no retry (%s)", ds->client_ip, nextup_request_method((struct nextup_session *)ds),
                 (int)ds->req.first_len, ds->req.buf + ds->req.first_off, retry_verdict_name(v));
    }
    return v;
}

/* Starts the next attempt on another peer: at once when an untried healthy
 * peer is left (the failure was that replica's), else after a jittered backoff. */
static void retry_go(struct downstream *ds, enum retry_cause cause)
{
    static const enum metric_id retry_metric[] = {
        [CAUSE_REFUSED] = M_RETRY_REFUSED, [CAUSE_CONNECT_FAILURE] = M_RETRY_CONNECT_FAILURE,
        [CAUSE_RESET] = M_RETRY_RESET, [CAUSE_TIMEOUT] = M_RETRY_TIMEOUT, [CAUSE_STATUS] = M_RETRY_STATUS,
    };
    struct worker *w = ds->w;
    int delay = 0;

    ds->retries++;
    metrics_inc(retry_metric[cause]);
    retry_log_add(ds, cause, cause == CAUSE_STATUS ? ds->aborted_status : 0);
    if (rewind_request(ds) < 0) {
        ds_reply_error(ds, 503, "out of memory");
        return;
    }
    if (retry_cause_reached_peer(cause) && !peers_has_fresh(w->peers, &ds->tried, clock_mono_ms()))
        delay = retry_backoff_ms(&w->cfg->retry, ds->retries, peers_rand(&w->rng));
    if (delay > 0) {
        struct timeval tv = ms_tv(delay);
        evtimer_add(&ds->rq->backoff_timer, &tv);
        return;
    }
    ex_attempt(ds, 0);
}

/* An attempt failed before any response byte went downstream: retry on another
 * peer when the policy allows, else answer 502/504 naming the last failure. */
static void ex_fail(struct downstream *ds, enum fail_class cls)
{
    struct upconn *c = ds->up;
    int reused = c && c->reused;
    int connected = c && ds->up_connected;
    int64_t acked = c && connected ? upstream_bytes_acked(c) : -1;
    /* The kernel's word that the peer never got a byte of this request. It holds
     * only with the peer's FIN: a bare RST's ACK field is not processed, and a peer
     * that read the request within its delayed-ACK time and then reset looks, by
     * tcpi_bytes_acked alone, like one that never got it. A FIN that acknowledges
     * nothing of ours was sent before our bytes arrived (the keep-alive race). */
    int none_acked = !connected || (ds->fin_seen && !c->tls && acked >= 0 && ds->acked_base >= 0 &&
                                    acked <= ds->acked_base);
    const char *peer_text = ds->peer ? ds->peer->addr_text : "?";
    enum retry_cause cause;
    enum retry_verdict verdict;

    if (!connected && !reused)
        metrics_observe_connect(0, clock_mono_us() - ds->connect_us);
    else if (connected)
        metrics_observe_upstream_head(0, clock_mono_us() - ds->sent_us);
    up_detach(ds, 0);
    event_del(&ds->rq->try_timer);
    if (cls == FAIL_CLOSED && reused && !ds->resp_any && !ds->race_resent && request_replayable(ds) && none_acked) {
        /* The keep-alive race: the peer closed the pooled connection as we reused it,
         * and its kernel acknowledged none of the request (a peer that got the bytes
         * and then reset is a `reset`, for NEXTUP_RETRY_ON to decide). Same peer,
         * fresh connection, and it does not count as a retry. */
        LOG_DEBUG("%s: pooled connection to %s was closed; resending on a fresh one", ds->client_ip, peer_text);
        ds->race_resent = 1;
        metrics_inc(M_KEEPALIVE_RACE_RESENDS);
        retry_log_add(ds, RETRY_LOG_KEEPALIVE_RACE, 0);
        if (rewind_request(ds) < 0) {
            ds_reply_error(ds, 503, "out of memory");
            return;
        }
        ex_attempt(ds, 1);
        return;
    }
    switch (cls) {
    case FAIL_REFUSED:
        cause = CAUSE_REFUSED;
        break;
    case FAIL_CONNECT_TIMEOUT:
    case FAIL_CONNECT_ERROR:
    case FAIL_TLS:
        cause = CAUSE_CONNECT_FAILURE;
        break;
    case FAIL_CLOSED:
        /* Nothing acknowledged: as safe to replay as a connect failure, whatever the method. */
        cause = none_acked && !ds->resp_any ? CAUSE_CONNECT_FAILURE : CAUSE_RESET;
        if (cause == CAUSE_CONNECT_FAILURE && connected)
            metrics_inc(M_UNSENT_PROOFS);
        break;
    case FAIL_TRY_TIMEOUT:
        cause = CAUSE_TIMEOUT;
        break;
    default:
        cause = CAUSE_RESET;
        break;
    }
    if (ds->peer)
        metrics_peer_failure(ds->peer->index, cls == FAIL_REFUSED ? METRICS_FAIL_REFUSED : cls == FAIL_TLS ? METRICS_FAIL_TLS
                             : cls == FAIL_CLOSED ? METRICS_FAIL_RESET : cls == FAIL_TRY_TIMEOUT ? METRICS_FAIL_TIMEOUT
                             : cls == FAIL_BAD_RESPONSE ? METRICS_FAIL_BAD_RESPONSE : METRICS_FAIL_CONNECT);
    if (ds->peer)
        peers_report(ds->w->peers, ds->peer,
                     cls == FAIL_REFUSED || cls == FAIL_CONNECT_TIMEOUT || cls == FAIL_CONNECT_ERROR
                         ? PEER_CONNECT_FAILED
                     : cls == FAIL_TLS ? PEER_TLS_FAILED
                                       : PEER_GATEWAY_ERROR,
                     clock_mono_ms());
    verdict = cls == FAIL_BAD_RESPONSE ? RETRY_NO_POLICY : retry_verdict_for(ds, cause, 0);
    ds->no_retry = cls == FAIL_BAD_RESPONSE ? NULL : retry_verdict_name(verdict);
    if (verdict == RETRY_GO) {
        LOG_DEBUG("%s: %s: %s; retrying on another peer", ds->client_ip, peer_text, fail_text(cls));
        retry_go(ds, cause);
        return;
    }
    {
        static const enum access_status_source source[] = {
            [FAIL_REFUSED] = ACCESS_SOURCE_REFUSED, [FAIL_CONNECT_TIMEOUT] = ACCESS_SOURCE_CONNECT_FAILURE,
            [FAIL_CONNECT_ERROR] = ACCESS_SOURCE_CONNECT_FAILURE, [FAIL_CLOSED] = ACCESS_SOURCE_RESET,
            [FAIL_BAD_RESPONSE] = ACCESS_SOURCE_BAD_RESPONSE, [FAIL_TRY_TIMEOUT] = ACCESS_SOURCE_PER_TRY_TIMEOUT,
            [FAIL_TLS] = ACCESS_SOURCE_TLS,
        };
        ds->status_source = verdict == RETRY_NO_BUDGET ? ACCESS_SOURCE_BUDGET : source[cls];
    }
    switch (cls) {
    case FAIL_CONNECT_TIMEOUT:
        ds_reply_error(ds, 504, "upstream connect timed out");
        break;
    case FAIL_TRY_TIMEOUT:
        ds_reply_error(ds, 504, "upstream did not answer within NEXTUP_PER_TRY_TIMEOUT_MS");
        break;
    case FAIL_REFUSED:
        ds_reply_error(ds, 502, "upstream refused the connection");
        break;
    case FAIL_CONNECT_ERROR:
        ds_reply_error(ds, 502, "upstream unreachable");
        break;
    case FAIL_CLOSED:
        ds_reply_error(ds, 502, "upstream closed the connection before responding");
        break;
    case FAIL_BAD_RESPONSE:
        ds_reply_error(ds, 502, "upstream sent a malformed response");
        break;
    case FAIL_TLS:
        ds_reply_error(ds, 502, "upstream TLS handshake failed");
        break;
    }
}

static void try_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct downstream *ds = arg;

    (void)fd;
    (void)what;
    if (ds->resp_head_done || ds->state == DS_CLOSING || !ds->up)
        return;
    ex_fail(ds, FAIL_TRY_TIMEOUT);
}

static enum fail_class classify_connect_errno(int err)
{
    if (err == ECONNREFUSED)
        return FAIL_REFUSED;
    if (err == ETIMEDOUT)
        return FAIL_CONNECT_TIMEOUT;
    return FAIL_CONNECT_ERROR;
}

/* A request that could be replayed elsewhere if it fails: the one to send as a
 * peer's trial, so that a trial that fails costs the client nothing. */
static int request_may_trial(const struct downstream *ds)
{
    const struct retry_policy *pol = &ds->w->cfg->retry;

    return request_replayable(ds) && ds->retries < pol->max_retries &&
           (ds->has_idempotency_key || (ds->req.method >= 0 && ds->req.method < 64 && ((pol->methods >> ds->req.method) & 1)));
}

static struct peer *choose_peer(struct downstream *ds, int fresh_same_peer)
{
    struct worker *w = ds->w;
    int64_t now = clock_mono_ms();
    struct peer *p;

    if (fresh_same_peer && ds->peer)
        return ds->peer;
    /* A peer whose time out is up gets one request, which decides. */
    if (!w->cfg->probe_path[0] && request_may_trial(ds) &&
        (p = peers_take_trial(w->peers, &ds->tried, now, w->cfg->request_timeout_ms)))
        return p;
    return peers_select(w->peers, &ds->tried, now, &w->rng);
}

static void ex_attempt(struct downstream *ds, int fresh_same_peer)
{
    struct worker *w = ds->w;
    struct peer *p = choose_peer(ds, fresh_same_peer);
    struct upconn *c;

    if (!p) {
        ds->status_source = ACCESS_SOURCE_NO_PEER;
        ds_reply_error(ds, 502, "no upstream peers");
        return;
    }
    peer_mask_set(&ds->tried, p->index);
    ds->attempts++;
    ds->peer = p;
    ds->resp_any = 0;
    ds->fin_seen = 0;
    metrics_inc(M_UPSTREAM_ATTEMPTS);
    metrics_peer_attempt(p->index);
    ds->connect_us = clock_mono_us();
    c = upstream_acquire(w->pool, p, fresh_same_peer);
    if (!c) {
        ex_fail(ds, classify_connect_errno(errno));
        return;
    }
    ds->up = c;
    atomic_fetch_add_explicit(&p->outstanding, 1, memory_order_relaxed);
    llhttp_init(&ds->rq->resp_parser, HTTP_RESPONSE, &resp_settings);
    ds->rq->resp_parser.data = ds;
    http_head_reset(&ds->rq->resp);
    conn_set_cbs(c->conn, up_read_cb, up_drained_cb, up_event_cb, ds);
    conn_set_read_limit(c->conn, HIGH_WATER);
    if (w->cfg->per_try_timeout_ms > 0) {
        struct timeval tv = ms_tv(w->cfg->per_try_timeout_ms);
        evtimer_add(&ds->rq->try_timer, &tv);
    }
    if (c->reused)
        ex_connected(ds);
    else
        conn_read(c->conn, 1);
}

/* ---- response ----------------------------------------------------------- */

static int on_resp_begin(llhttp_t *p)
{
    struct downstream *ds = p->data;
    http_head_reset(&ds->rq->resp);
    return 0;
}

static int resp_feed_result(struct downstream *ds, int r)
{
    if (r == 0 && http_head_size(&ds->rq->resp) <= (size_t)ds->w->cfg->max_header_bytes)
        return 0;
    return -1;
}

static int on_resp_status(llhttp_t *p, const char *at, size_t len)
{
    struct downstream *ds = p->data;
    return resp_feed_result(ds, http_head_add_first(&ds->rq->resp, at, len, (size_t)ds->w->cfg->max_header_bytes));
}

static int on_resp_field(llhttp_t *p, const char *at, size_t len)
{
    struct downstream *ds = p->data;
    return resp_feed_result(ds, http_head_add_field(&ds->rq->resp, at, len, (size_t)ds->w->cfg->max_header_bytes));
}

static int on_resp_value(llhttp_t *p, const char *at, size_t len)
{
    struct downstream *ds = p->data;
    return resp_feed_result(ds, http_head_add_value(&ds->rq->resp, at, len, (size_t)ds->w->cfg->max_header_bytes));
}

/* Where the response parser's callbacks write what goes to the client: the
 * worker's stage, moved to the client's output once a parse batch ends well
 * (commit_response), so that a response found bad in the batch that brought its
 * head has sent nothing, and a 502 can still be given. */
static struct evbuffer *resp_out(struct downstream *ds)
{
    return ds->w->resp_stage;
}

/* What a final response head says of its peer. A 503 that closes the
 * connection is how servers say they are shutting down (nginx, Envoy, Go's
 * and Node's servers during graceful shutdown): the first one counts. */
static enum peer_outcome response_outcome(struct peer *p, const struct http_head *resp)
{
    int closes = resp->major == 1 && resp->minor >= 1 && http_head_has_token(resp, "connection", "close");

    /* Counted for the health view, which compares a replica's closes with its habit. */
    if (closes)
        atomic_fetch_add_explicit(&p->closing_responses, 1, memory_order_relaxed);
    if (resp->status == 503 && closes)
        return PEER_SAID_LEAVING;
    if (resp->status >= 502 && resp->status <= 504)
        return PEER_GATEWAY_ERROR;
    return PEER_OK;
}

static int on_resp_headers_complete(llhttp_t *p)
{
    struct downstream *ds = p->data;
    struct evbuffer *out = resp_out(ds);
    int is_head = ds->req.method == HTTP_HEAD;
    int close;

    http_head_take_parser_facts(&ds->rq->resp, p);
    {
        const char *reason;
        if (http1_check_fields(&ds->rq->resp, &reason) < 0 ||
            (!http1_only_chunked(&ds->rq->resp) && (reason = "unsupported transfer coding"))) {
            LOG_WARN("%s: %s: bad response head: %s", ds->client_ip, ds->peer->addr_text, reason);
            return -1;
        }
    }
    /* Interim responses (100, 103) are not forwarded: nextup answered the
     * client's 100-continue itself, and the final head is what the decision is about. */
    if (ds->rq->resp.status < 200 && ds->rq->resp.status != 101)
        return 0;
    event_del(&ds->rq->try_timer);
    metrics_peer_response(ds->peer->index, ds->rq->resp.status);
    ds->upstream_us = clock_mono_us() - ds->sent_us;
    metrics_observe_upstream_head(ds->rq->resp.status, ds->upstream_us);
    peers_report(ds->w->peers, ds->peer, response_outcome(ds->peer, &ds->rq->resp), clock_mono_ms());
    if (ds->rq->resp.status != 101) {
        /* The decision point: nothing of this response has gone downstream yet. */
        const struct nextup_error *e = hook_active()->upstream_response_decision(
            (struct nextup_session *)ds, (const struct nextup_response *)&ds->rq->resp, &ds->user_ctx);
        if (e && !e->retryable) {
            ds->hook_error = e;
            return -1;
        }
        if (e && retry_verdict_for(ds, CAUSE_STATUS, 1) == RETRY_GO) {
            struct http_head swap = ds->rq->held;
            LOG_INFO("%s: %s answered %d (%s); retrying on another peer", ds->client_ip, ds->peer->addr_text,
                     ds->rq->resp.status, e->reason ? e->reason : "hook");
            ds->retry_after_abort = 1;
            ds->aborted_status = ds->rq->resp.status;
            /* Keep this response (head now, body as far as it has come) in case no later attempt gets one. */
            ds->rq->held = ds->rq->resp;
            ds->rq->resp = swap;
            http_head_reset(&ds->rq->resp);
            evbuffer_drain(ds->rq->held_body, evbuffer_get_length(ds->rq->held_body));
            ds->held_state = HELD_COLLECTING;
            return is_head ? 1 : 0;
        }
        /* No retry possible: the client gets this response unchanged. */
    }
    event_del(&ds->rq->req_timer);
    ds->framing = http1_response_framing(&ds->rq->resp, is_head, ds->req.major, ds->req.minor);
    if (ds->rq->resp.status == 101 && !ds->req.upgrade)
        return -1;
    /* A body that ends with the close (an HTTP/1.0 client, no length) ends the connection too. */
    close = !ds->keep_alive || ds->client_eof || ds->w->draining || ds->rq->resp.status == 101 ||
            ds->framing == RESP_CLOSE;
    if (close)
        ds->keep_alive = 0;
    if (http1_write_response_head(out, &ds->rq->resp, ds->framing, close,
                                  ds->req.major == 1 && ds->req.minor == 0) < 0)
        return -1;
    ds->resp_head_done = 1;
    conn_set_timeouts(ds->up->conn, ds->w->cfg->idle_timeout_ms, 0);
    return is_head ? 1 : 0;
}

static int on_resp_body(llhttp_t *p, const char *at, size_t len)
{
    struct downstream *ds = p->data;
    struct evbuffer *out = resp_out(ds);

    if (ds->held_state == HELD_COLLECTING) {
        if (evbuffer_get_length(ds->rq->held_body) + len > HELD_BODY_MAX || evbuffer_add(ds->rq->held_body, at, len) < 0) {
            ds->held_state = HELD_NONE;
            return -1;
        }
        return 0;
    }
    ds->resp_bytes += len;
    if (ds->framing == RESP_CHUNKED)
        return evbuffer_add_printf(out, "%zx\r\n", len) < 0 || evbuffer_add(out, at, len) < 0 ||
                       evbuffer_add(out, "\r\n", 2) < 0
                   ? -1
                   : 0;
    return evbuffer_add(out, at, len) < 0 ? -1 : 0;
}

static int on_resp_complete(llhttp_t *p)
{
    struct downstream *ds = p->data;

    if (ds->held_state == HELD_COLLECTING) {
        ds->held_state = HELD_WHOLE;
        return HPE_PAUSED;
    }
    if (ds->rq->resp.status < 200 && ds->rq->resp.status != 101) {
        http_head_reset(&ds->rq->resp);
        return 0;
    }
    if (ds->framing == RESP_CHUNKED && evbuffer_add(resp_out(ds), "0\r\n\r\n", 5) < 0)
        return -1;
    ds->resp_complete = 1;
    return HPE_PAUSED;
}

/* A tunnel with no byte either way for NEXTUP_IDLE_TIMEOUT_MS is closed (ds_timer_cb). */
static void tunnel_touch(struct downstream *ds)
{
    struct timeval idle = ms_tv(ds->w->cfg->idle_timeout_ms);

    evtimer_add(&ds->timer, &idle);
}

/* After 101: both sides' leftover bytes cross over, then plain relaying. */
static void start_tunnel(struct downstream *ds)
{
    struct conn *uc = ds->up->conn;

    log_request(ds, 101);
    ds->state = DS_TUNNEL;
    conn_set_timeouts(uc, 0, 0);
    conn_set_timeouts(ds->conn, 0, 0);
    conn_set_read_limit(ds->conn, HIGH_WATER);
    evbuffer_add_buffer(conn_output(uc), conn_input(ds->conn));
    evbuffer_add_buffer(conn_output(ds->conn), conn_input(uc));
    conn_read(ds->conn, 1);
    conn_read(uc, 1);
    tunnel_touch(ds);
}

/* The response is whole: pool or close the upstream connection, then go on
 * with the next request on this client connection or close it. */
static void ex_finish(struct downstream *ds)
{
    /* Bytes behind a complete response answer no request of ours: whatever they
     * are, the connection can no longer be trusted to frame the next answer. */
    int stray = evbuffer_get_length(conn_input(ds->up->conn)) > 0;
    int reusable = llhttp_should_keep_alive(&ds->rq->resp_parser) && ds->req_complete && !stray &&
                   evbuffer_get_length(conn_output(ds->up->conn)) == 0;

    if (stray && ds->rq->resp.status != 101) {
        metrics_inc(ds->req.method == HTTP_HEAD ? M_PROTO_HEAD_BODY : M_PROTO_AFTER_RESPONSE);
        upstream_distrust(ds->peer);
    }

    event_del(&ds->rq->req_timer);
    event_del(&ds->rq->try_timer);
    if (reusable)
        ds->up->bytes_done += ds->attempt_bytes;
    if (ds->up->tls)
        upstream_tls_keep_session(ds->up);
    up_detach(ds, reusable);
    request_end(ds);
    log_request(ds, ds->rq->resp.status);
    if (!ds->keep_alive || ds->client_eof || !ds->req_complete || ds->req.upgrade) {
        ds_close_after_write(ds);
        return;
    }
    /* Ready for the next request on this connection. */
    ds->state = DS_IDLE;
    ds->req_complete = 0;
    ds->resp_head_done = 0;
    ds->resp_committed = 0;
    ds->resp_complete = 0;
    ds->sent_any = 0;
    ds->replay_whole = 1;
    ds->attempts = ds->retries = ds->race_resent = 0;
    ds->held_state = HELD_NONE;
    ds->logged = 0;
    ds->resp_bytes = 0;
    ds->start_mono_ms = ds->start_unix_ms = 0;
    ds->start_us = 0;
    ds->no_retry = NULL;
    ds->req_body_bytes = 0;
    ds->status_source = ACCESS_SOURCE_UNSET;
    ds->peer = NULL;
    memset(&ds->tried, 0, sizeof(ds->tried));
    /* An idle connection keeps no request memory: the next request takes it again. */
    rq_give_back(ds);
    http_head_free(&ds->req);
    {
        struct timeval idle = ms_tv(ds->w->cfg->idle_timeout_ms);
        evtimer_add(&ds->timer, &idle);
        conn_set_timeouts(ds->conn, 0, ds->w->cfg->idle_timeout_ms);
    }
    ds->client_paused = 0;
    conn_read(ds->conn, 1);
    llhttp_resume(&ds->parser);
    if (evbuffer_get_length(conn_input(ds->conn)) > 0)
        ds_parse_input(ds);
}

/* Moves what the parser staged to the client's output; the first time, the
 * response counts as sent. */
static void commit_response(struct downstream *ds)
{
    struct evbuffer *stage = ds->w->resp_stage;

    if (evbuffer_get_length(stage) == 0)
        return;
    if (!ds->resp_committed) {
        ds->resp_committed = 1;
        count_response(ds->rq->resp.status);
    }
    evbuffer_add_buffer(conn_output(ds->conn), stage);
}

/* Runs the response parser over what the upstream sent. */
static void parse_response(struct downstream *ds)
{
    struct evbuffer *in = conn_input(ds->up->conn);
    llhttp_errno_t err;

    if (evbuffer_get_length(in) > 0)
        ds->resp_any = 1;
    err = parse_evbuffer(&ds->rq->resp_parser, in, &ds->rq->resp, &ds->resp_offset);
    if (parse_failed(err) && !ds->resp_committed) {
        /* Bad before any of it reached the client (a bad first chunk): the
         * attempt failed like one with a malformed head. */
        evbuffer_drain(ds->w->resp_stage, evbuffer_get_length(ds->w->resp_stage));
        ds->resp_head_done = 0;
    }
    commit_response(ds);
    if (ds->retry_after_abort) {
        /* An aborted response is never pooled: its body may be unread. A body
         * still on its way is not waited for: the held copy is kept only if whole. */
        ds->retry_after_abort = 0;
        if (ds->held_state != HELD_WHOLE)
            ds->held_state = HELD_NONE;
        up_detach(ds, 0);
        retry_go(ds, CAUSE_STATUS);
        return;
    }
    if (ds->hook_error) {
        const struct nextup_error *e = ds->hook_error;
        ds->hook_error = NULL;
        ds_reply_error(ds, e->status ? e->status : 502, e->reason ? e->reason : "refused by the decision hook");
        return;
    }
    if (parse_failed(err)) {
        LOG_WARN("%s: %s: bad response: %s", ds->client_ip, ds->peer->addr_text,
                 llhttp_get_error_reason(&ds->rq->resp_parser));
        if (!ds->resp_head_done)
            ex_fail(ds, FAIL_BAD_RESPONSE);
        else
            ds_abort(ds);
        return;
    }
    if (ds->resp_complete) {
        if (ds->rq->resp.status == 101) {
            start_tunnel(ds);
            return;
        }
        ex_finish(ds);
        return;
    }
}

/* Sends what a callback queued on either side, unless <ds> was torn down. */
static void ds_flush(struct downstream *ds)
{
    if (ds->aborted)
        return;
    conn_flush(ds->conn);
    if (ds->up && ds->up_connected)
        conn_flush(ds->up->conn);
    ds_balance(ds);
}

static void up_read_cb(struct conn *conn, void *arg)
{
    struct downstream *ds = arg;

    if (ds->state == DS_TUNNEL) {
        evbuffer_add_buffer(conn_output(ds->conn), conn_input(conn));
        tunnel_touch(ds);
    } else
        parse_response(ds);
    ds_flush(ds);
}

/* The upstream took what was queued: the client may send more. */
static void up_drained_cb(struct conn *conn, void *arg)
{
    struct downstream *ds = arg;

    (void)conn;
    ds_balance(ds);
}

static void up_event(struct conn *conn, int what, int err, struct downstream *ds)
{
    /* The peer's FIN came (EOF, or EPIPE: FIN then RST). Unlike a bare RST, a FIN
     * segment's ACK field is processed, so tcpi_bytes_acked is up to date with it. */
    ds->fin_seen = (what & CONN_EOF) || ((what & CONN_ERROR) && err == EPIPE);
    if (what & CONN_CONNECTED) {
        ex_connected(ds);
        return;
    }
    if (ds->state == DS_TUNNEL) {
        ds_close_after_write(ds);
        return;
    }
    if (!ds->up_connected && ds->up->tls && !(what & CONN_TIMEOUT) && err != ECONNREFUSED &&
        err != ETIMEDOUT && err != EHOSTUNREACH && err != ENETUNREACH) {
        /* The TCP connect worked (or no socket error says otherwise): the handshake failed. */
        char why[256];
        SSL *ssl = conn_ssl(conn);
        const char *kind = tls_upstream_failure(ssl, conn_tls_error(conn), why, sizeof(why));
        metrics_inc(strcmp(kind, "verify") == 0 ? M_TLS_UP_VERIFY : M_TLS_UP_HANDSHAKE);
        LOG_WARN("%s: TLS handshake with %s failed (%s): %s", ds->client_ip, ds->peer->addr_text, kind, why);
        ERR_clear_error();
        ex_fail(ds, FAIL_TLS);
        return;
    }
    if (!ds->up_connected) {
        ex_fail(ds, (what & CONN_TIMEOUT) ? FAIL_CONNECT_TIMEOUT : classify_connect_errno(err));
        return;
    }
    if ((what & CONN_TIMEOUT) && (what & CONN_READING) && !ds->resp_head_done) {
        /* No read timeout is ours before the head (the per-try and request timers
         * are separate): this is the pool's idle timeout, queued in the loop turn
         * that handed the connection out. Reading goes on. */
        conn_read(conn, 1);
        return;
    }
    if ((what & CONN_EOF) && ds->resp_head_done) {
        struct upconn *c = ds->up;
        /* A close-delimited body ends here; any other framing was cut short. */
        if (evbuffer_get_length(conn_input(conn)) > 0)
            parse_response(ds);
        if (ds->state == DS_CLOSING || ds->up != c || ds->resp_complete)
            return;
        /* llhttp_finish() runs on_resp_complete for a body that ends with the
         * close, and returns the HPE_PAUSED that callback returns. */
        llhttp_finish(&ds->rq->resp_parser);
        commit_response(ds);
        if (ds->resp_complete) {
            ex_finish(ds);
            return;
        }
        LOG_WARN("%s: %s: response cut short", ds->client_ip, ds->peer->addr_text);
        ds_close_after_write(ds);
        return;
    }
    if (what & CONN_TIMEOUT) {
        LOG_WARN("%s: %s: response stalled past NEXTUP_IDLE_TIMEOUT_MS", ds->client_ip, ds->peer->addr_text);
        ds_close_after_write(ds);
        return;
    }
    if (ds->resp_head_done) {
        ds_close_after_write(ds);
        return;
    }
    if (ds->resp_any && (what & CONN_EOF)) {
        /* Part of a head, then EOF. */
        struct upconn *c = ds->up;
        parse_response(ds);
        if (ds->state == DS_CLOSING || ds->up != c || ds->resp_head_done)
            return;
        llhttp_finish(&ds->rq->resp_parser);
        commit_response(ds);
        if (ds->resp_complete) {
            ex_finish(ds);
            return;
        }
        ex_fail(ds, FAIL_BAD_RESPONSE);
        return;
    }
    ex_fail(ds, ds->resp_any ? FAIL_BAD_RESPONSE : FAIL_CLOSED);
}

static void up_event_cb(struct conn *conn, int what, int err, void *arg)
{
    struct downstream *ds = arg;

    up_event(conn, what, err, ds);
    ds_flush(ds);
}

static void req_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct downstream *ds = arg;

    (void)fd;
    (void)what;
    if (ds->resp_head_done || ds->state == DS_CLOSING)
        return;
    metrics_inc(M_REQUEST_TIMEOUTS);
    ds->status_source = ACCESS_SOURCE_TIMEOUT;
    if (ds->up && ds->peer) {
        metrics_peer_failure(ds->peer->index, METRICS_FAIL_TIMEOUT);
        if (ds->up_connected)
            metrics_observe_upstream_head(0, clock_mono_us() - ds->sent_us);
    }
    LOG_WARN("%s: no response head from %s within NEXTUP_REQUEST_TIMEOUT_MS", ds->client_ip,
             ds->peer ? ds->peer->addr_text : "any peer");
    ds_reply_error(ds, 504, "upstream did not answer within NEXTUP_REQUEST_TIMEOUT_MS");
}

/* ---- the client side ---------------------------------------------------- */

static void ds_parse_input(struct downstream *ds)
{
    llhttp_errno_t err;

    if (ds->state == DS_WAIT || ds->state == DS_CLOSING)
        return;
    err = parse_evbuffer(&ds->parser, conn_input(ds->conn), &ds->req, &ds->req_offset);
    if (ds->error_status || parse_failed(err)) {
        int status = ds->error_status ? ds->error_status : 400;
        const char *reason = ds->error_reason ? ds->error_reason : llhttp_get_error_reason(&ds->parser);
        if (!reason)
            reason = "malformed request";
        ds_reply_error(ds, status, reason);
        return;
    }
    if (ds->start_pending && err == HPE_PAUSED) {
        start_request(ds);
        if (ds->state == DS_CLOSING || ds->aborted)
            return;
        llhttp_resume(&ds->parser);
        /* llhttp ends a bodiless request only when executed again: with no
         * byte left that happens here, on nothing. */
        if (evbuffer_get_length(conn_input(ds->conn)) == 0) {
            static const char nothing[1];
            err = llhttp_execute(&ds->parser, nothing, 0);
            if (ds->error_status || parse_failed(err)) {
                ds_reply_error(ds, ds->error_status ? ds->error_status : 400,
                               ds->error_reason ? ds->error_reason : "malformed request");
                return;
            }
            return;
        }
        ds_parse_input(ds);
    }
}

static void ds_read_cb(struct conn *conn, void *arg)
{
    struct downstream *ds = arg;

    if (ds->state == DS_TUNNEL) {
        if (ds->up)
            evbuffer_add_buffer(conn_output(ds->up->conn), conn_input(conn));
        tunnel_touch(ds);
    } else if (ds->lingering) {
        linger_drain(ds);
        return;
    } else {
        ds_parse_input(ds);
    }
    ds_flush(ds);
}

static void ds_drained_cb(struct conn *conn, void *arg)
{
    struct downstream *ds = arg;

    (void)conn;
    if (ds->state == DS_CLOSING) {
        /* A lingering connection ends when the client closes or the linger time is up. */
        if (!ds->lingering)
            ds_abort(ds);
        else
            linger_half_close(ds);
        return;
    }
    ds_balance(ds);
}

static void ds_event_cb(struct conn *conn, int what, int err, void *arg)
{
    struct downstream *ds = arg;

    (void)err;
    if (what & CONN_CONNECTED) {
        ds->tls_up = 1;     /* the client's TLS handshake is done */
        return;
    }
    if (ds->tls && !ds->tls_up && (what & CONN_ERROR)) {
        /* Plain HTTP on the TLS port, a refused client certificate, ...: one line, one connection. */
        const char *why = ERR_reason_error_string(conn_tls_error(conn));
        metrics_inc(M_TLS_DOWN_HANDSHAKE);
        LOG_INFO("%s: TLS handshake failed (%s)", ds->client_ip,
                 why ? why : "not a TLS client? plain HTTP on the TLS port is closed");
        ERR_clear_error();
        ds_abort(ds);
        return;
    }
    if (ds->lingering && (what & CONN_EOF) && !(what & CONN_ERROR) &&
        evbuffer_get_length(conn_output(ds->conn)) > 0) {
        /* The client is done sending: on_drained closes once the response is out. */
        ds->lingering = 0;
        return;
    }
    if ((what & CONN_EOF) && !(what & CONN_ERROR) && ds->state == DS_WAIT) {
        /* A client may half-close after its request: the response is still wanted. */
        ds->client_eof = 1;
        ds->keep_alive = 0;
        return;
    }
    if ((what & CONN_TIMEOUT) && (what & CONN_READING) && ds->state == DS_BODY && !ds->resp_head_done) {
        ds_reply_error(ds, 408, "request body stalled past NEXTUP_IDLE_TIMEOUT_MS");
        ds_flush(ds);
        return;
    }
    if (ds->state == DS_TUNNEL && (what & CONN_EOF) && ds->up) {
        /* Flush what the client sent last, then close both. */
        evbuffer_add_buffer(conn_output(ds->up->conn), conn_input(ds->conn));
    }
    ds_abort(ds);
}

static void ds_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct downstream *ds = arg;

    (void)fd;
    (void)what;
    if (ds->state == DS_HEAD) {
        ds_reply_error(ds, 408, "request head not received within NEXTUP_HEADER_TIMEOUT_MS");
        return;
    }
    if (ds->state == DS_TUNNEL)
        LOG_INFO("%s: tunnel idle for NEXTUP_IDLE_TIMEOUT_MS: closed", ds->client_ip);
    if (ds->state == DS_IDLE || ds->state == DS_TUNNEL || ds->lingering)
        ds_abort(ds);
}

void proxy_init(void)
{
    retry_budget_init(&budget);
    llhttp_settings_init(&req_settings);
    req_settings.on_message_begin = on_req_begin;
    req_settings.on_url = on_req_url;
    req_settings.on_header_field = on_req_field;
    req_settings.on_header_value = on_req_value;
    req_settings.on_header_value_complete = on_req_value_complete;
    req_settings.on_headers_complete = on_req_headers_complete;
    req_settings.on_body = on_req_body;
    req_settings.on_message_complete = on_req_complete;

    llhttp_settings_init(&resp_settings);
    resp_settings.on_message_begin = on_resp_begin;
    resp_settings.on_status = on_resp_status;
    resp_settings.on_header_field = on_resp_field;
    resp_settings.on_header_value = on_resp_value;
    resp_settings.on_header_value_complete = on_resp_value_complete;
    resp_settings.on_headers_complete = on_resp_headers_complete;
    resp_settings.on_body = on_resp_body;
    resp_settings.on_message_complete = on_resp_complete;
}

int downstream_new(struct worker *w, int fd, const struct sockaddr *peer_addr, socklen_t peer_len)
{
    struct downstream *ds = calloc(1, sizeof(*ds));
    struct timeval header_tv = ms_tv(w->cfg->header_timeout_ms);
    int one = 1;

    (void)peer_len;
    if (!ds)
        return -ENOMEM;
    if (!w->resp_stage && !(w->resp_stage = evbuffer_new())) {
        free(ds);
        return -ENOMEM;
    }
    ds->w = w;
    evtimer_assign(&ds->timer, w->base, ds_timer_cb, ds);
    event_assign(&ds->free_ev, w->base, -1, 0, ds_free_cb, ds);
    /* Created last: from here on the conn closes <fd> when freed. */
    if (tls_listener_enabled()) {
        SSL *ssl = tls_listener_new();
        if (ssl && !(ds->conn = conn_tls_new(w->base, fd, ssl, 1)))
            SSL_free(ssl);
        ds->tls = 1;
    } else {
        ds->conn = conn_plain_new(w->base, fd);
    }
    if (!ds->conn) {
        free(ds);
        return -ENOMEM;
    }
    ds->replay_whole = 1;
    if (peer_addr->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)peer_addr)->sin_addr, ds->client_ip, sizeof(ds->client_ip));
    else if (peer_addr->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)peer_addr)->sin6_addr, ds->client_ip,
                  sizeof(ds->client_ip));
    else
        snprintf(ds->client_ip, sizeof(ds->client_ip), "unknown");
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    llhttp_init(&ds->parser, HTTP_REQUEST, &req_settings);
    ds->parser.data = ds;
    ds->state = DS_IDLE;
    ds->next = w->conns;
    if (w->conns)
        w->conns->prev = ds;
    w->conns = ds;
    conn_set_cbs(ds->conn, ds_read_cb, ds_drained_cb, ds_event_cb, ds);
    conn_set_read_limit(ds->conn, CLIENT_READ_HIGH);
    conn_set_timeouts(ds->conn, 0, w->cfg->idle_timeout_ms);
    conn_read(ds->conn, 1);
    /* A new connection must send its first head within the header timeout. */
    evtimer_add(&ds->timer, &header_tv);
    return 0;
}

void downstream_drain(struct downstream *ds)
{
    if (ds->state == DS_IDLE) {
        ds_abort(ds);
        return;
    }
    ds->keep_alive = 0;
}

void proxy_free_all(struct worker *w)
{
    while (w->conns)
        ds_free_cb(-1, 0, w->conns);
    if (w->resp_stage)
        evbuffer_free(w->resp_stage);
    w->resp_stage = NULL;
    while (w->rq_free) {
        struct request_state *rq = w->rq_free;
        w->rq_free = rq->next_free;
        rq_destroy(rq);
    }
    w->n_rq_free = 0;
}

struct downstream *downstream_next(struct downstream *ds)
{
    return ds->next;
}

/* ---- the public accessors (nextup.h) ------------------------------------ */

const struct nextup_error *nextup_builtin_decision(struct nextup_session *session,
                                                   const struct nextup_response *response, void **ctx)
{
    static const struct nextup_error retry_status = { 1, 0, "status in NEXTUP_RETRY_ON" };
    const struct downstream *ds = (const struct downstream *)session;

    (void)ctx;
    return retry_status_matches(&ds->w->cfg->retry, nextup_response_status(response)) ? &retry_status : NULL;
}

int nextup_response_status(const struct nextup_response *response)
{
    return ((const struct http_head *)response)->status;
}

const char *nextup_response_header(const struct nextup_response *response, const char *name, size_t *len)
{
    size_t dummy;
    return http_head_get((const struct http_head *)response, name, len ? len : &dummy);
}

const char *nextup_request_method(const struct nextup_session *session)
{
    const struct downstream *ds = (const struct downstream *)session;
    return llhttp_method_name((llhttp_method_t)ds->req.method);
}

const char *nextup_request_target(const struct nextup_session *session, size_t *len)
{
    const struct downstream *ds = (const struct downstream *)session;
    if (len)
        *len = ds->req.first_len;
    return ds->req.buf + ds->req.first_off;
}

const char *nextup_request_header(const struct nextup_session *session, const char *name, size_t *len)
{
    const struct downstream *ds = (const struct downstream *)session;
    size_t dummy;
    return http_head_get(&ds->req, name, len ? len : &dummy);
}

const char *nextup_peer_address(const struct nextup_session *session)
{
    const struct downstream *ds = (const struct downstream *)session;
    return ds->peer ? ds->peer->addr_text : "";
}

int nextup_attempt(const struct nextup_session *session)
{
    return ((const struct downstream *)session)->attempts;
}
