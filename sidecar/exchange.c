#include "exchange.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <llhttp.h>
#include <openssl/err.h>

#include "clock.h"
#include "config.h"
#include "conn.h"
#include "http1.h"
#include "log.h"
#include "metrics.h"
#include "parse.h"
#include "peers.h"
#include "retry.h"
#include "tls.h"
#include "upstream.h"

/* Response bytes held unread in the upstream input while the client's output is full. */
#define UP_READ_HIGH (256 * 1024)

struct exchange {
    const struct config *cfg;
    const struct exchange_cbs *cbs;
    void *arg;
    struct evbuffer *pending;       /* the owner's: request bytes while not connected */
    struct evbuffer *body;          /* owned: decoded body bytes of the current batch */
    llhttp_t parser;
    struct http_head resp;          /* owned buffer */
    uint64_t resp_offset;           /* response bytes parsed (obs-fold check) */
    const char *who;                /* the client, for log lines */
    int flags;                      /* EXCHANGE_REQ_* */

    /* The current attempt. */
    struct upconn *up;              /* owned while set */
    struct peer *peer;              /* outstanding counted while up is set */
    int connected;
    int paused;
    int resp_any;                   /* a response byte arrived */
    int head_ready;                 /* the final head (or 101) was parsed... */
    int head_reported;              /* ... and given to on_head */
    int complete;                   /* the response was parsed whole */
    int fin_seen;                   /* the failure came with the peer's FIN */
    uint64_t body_left;             /* a Content-Length body still to come, moved unparsed */
    int64_t acked_base;             /* tcpi_bytes_acked before this request's first byte; -1 unknown */
    uint64_t attempt_bytes;         /* request bytes handed to this connection */
    int64_t connect_us, sent_us, head_us;
};

static llhttp_settings_t settings;

/* ---- response parser callbacks: they only collect ---------------------- */

static int feed_result(struct exchange *ex, int r)
{
    return r == 0 && http_head_size(&ex->resp) <= (size_t)ex->cfg->max_header_bytes ? 0 : -1;
}

static int on_begin(llhttp_t *p)
{
    http_head_reset(&((struct exchange *)p->data)->resp);
    return 0;
}

static int on_status(llhttp_t *p, const char *at, size_t len)
{
    struct exchange *ex = p->data;
    return feed_result(ex, http_head_add_first(&ex->resp, at, len, (size_t)ex->cfg->max_header_bytes));
}

static int on_field(llhttp_t *p, const char *at, size_t len)
{
    struct exchange *ex = p->data;
    return feed_result(ex, http_head_add_field(&ex->resp, at, len, (size_t)ex->cfg->max_header_bytes));
}

static int on_value(llhttp_t *p, const char *at, size_t len)
{
    struct exchange *ex = p->data;
    return feed_result(ex, http_head_add_value(&ex->resp, at, len, (size_t)ex->cfg->max_header_bytes));
}

static int on_value_complete(llhttp_t *p)
{
    http_head_value_complete(&((struct exchange *)p->data)->resp);
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    struct exchange *ex = p->data;
    const char *reason;

    http_head_take_parser_facts(&ex->resp, p);
    if (http1_check_fields(&ex->resp, &reason) < 0 ||
        (!http1_only_chunked(&ex->resp) && (reason = "unsupported transfer coding"))) {
        LOG_WARN("%s: %s: bad response head: %s", ex->who, ex->peer->addr_text, reason);
        return -1;
    }
    /* Interim responses (100, 103) are not forwarded: nextup answered the
     * client's 100-continue itself, and the final head is what the decision is about. */
    if (ex->resp.status < 200 && ex->resp.status != 101)
        return 0;
    if (ex->resp.status == 101 && !(ex->flags & EXCHANGE_REQ_UPGRADE))
        return -1;
    ex->head_ready = 1;
    if (ex->flags & EXCHANGE_REQ_HEAD)
        return 1;
    if (ex->resp.has_content_length && !ex->resp.chunked && ex->resp.content_length > 0 && ex->resp.status != 101 &&
        ex->resp.status != 204 && ex->resp.status != 304) {
        /* A body of known length needs no parser: its bytes are moved as they
         * come (take_body), not copied out of llhttp's callbacks. */
        ex->body_left = ex->resp.content_length;
        return HPE_PAUSED;
    }
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    struct exchange *ex = p->data;
    return evbuffer_add(ex->body, at, len) < 0 ? -1 : 0;
}

static int on_complete(llhttp_t *p)
{
    struct exchange *ex = p->data;

    if (!ex->head_ready) {
        http_head_reset(&ex->resp);
        return 0;
    }
    ex->complete = 1;
    /* Paused: bytes behind a response stay in the input, where exchange_release sees them. */
    return HPE_PAUSED;
}

/* ---- the attempt ------------------------------------------------------- */

static void detach(struct exchange *ex, int reusable)
{
    if (!ex->up)
        return;
    atomic_fetch_sub_explicit(&ex->peer->outstanding, 1, memory_order_relaxed);
    if (reusable)
        upstream_release(ex->up);
    else
        upstream_close(ex->up);
    ex->up = NULL;
    ex->connected = 0;
    ex->paused = 0;
    evbuffer_drain(ex->body, evbuffer_get_length(ex->body));
}

/* The facts of the failure, the attempt's timing recorded, the connection closed. */
static void end_failed(struct exchange *ex, int kind, int after_head, struct failure_facts *f)
{
    struct upconn *c = ex->up;
    int64_t acked = c && ex->connected ? upstream_bytes_acked(c) : -1;

    memset(f, 0, sizeof(*f));
    f->kind = (enum upstream_failure)kind;
    f->reused = c && c->reused;
    f->connected = ex->connected;
    f->response_started = ex->resp_any;
    f->after_head = after_head;
    /* The kernel's word that the peer never got a byte of this request. It holds
     * only with the peer's FIN: a bare RST's ACK field is not processed, and a peer
     * that read the request within its delayed-ACK time and then reset looks, by
     * tcpi_bytes_acked alone, like one that never got it. A FIN that acknowledges
     * nothing of ours was sent before our bytes arrived (the keep-alive race). */
    f->nothing_acked = !ex->connected || (ex->fin_seen && c && !c->tls && acked >= 0 && ex->acked_base >= 0 &&
                                          acked <= ex->acked_base);
    if (!ex->connected && !f->reused)
        metrics_observe_connect(0, clock_mono_us() - ex->connect_us);
    else if (ex->connected && !ex->head_reported)
        metrics_observe_upstream_head(0, clock_mono_us() - ex->sent_us);
    detach(ex, 0);
}

static void fail(struct exchange *ex, int kind, int after_head)
{
    struct failure_facts f;

    end_failed(ex, kind, after_head, &f);
    ex->cbs->on_fail(ex->arg, &f);
}

/* Moves what arrived of a Content-Length body into <body>. */
static void take_body(struct exchange *ex)
{
    struct evbuffer *in = conn_input(ex->up->conn);
    size_t n = evbuffer_get_length(in);

    if (!ex->body_left || !n)
        return;
    if (n > ex->body_left)
        n = (size_t)ex->body_left;
    if (evbuffer_remove_buffer(in, ex->body, n) != (int)n)
        return;
    ex->body_left -= n;
    if (!ex->body_left)
        ex->complete = 1;
}

/* What the parser collected in one batch, reported in order. <failed>: the
 * batch ended in a parse error. */
static void report(struct exchange *ex, int failed)
{
    if (!failed)
        take_body(ex);
    if (ex->head_ready && !ex->head_reported) {
        if (failed) {
            fail(ex, UPF_BAD_RESPONSE, 0);
            return;
        }
        ex->head_reported = 1;
        ex->head_us = clock_mono_us() - ex->sent_us;
        metrics_service_peer_response(ex->peer->service, ex->peer->index, ex->resp.status);
        metrics_observe_upstream_head(ex->resp.status, ex->head_us);
        if (ex->cbs->on_head(ex->arg, &ex->resp) != EXCHANGE_GO || !ex->up)
            return;
        /* The body may pause while the client reads; a silent peer is bounded by the idle time. */
        conn_set_timeouts(ex->up->conn, ex->cfg->idle_timeout_ms, 0);
    }
    if (!ex->head_reported) {
        if (failed)
            fail(ex, UPF_BAD_RESPONSE, 0);
        else
            ex->cbs->on_progress(ex->arg);
        return;
    }
    if (evbuffer_get_length(ex->body) > 0) {
        ex->cbs->on_body(ex->arg, ex->body);
        if (!ex->up)
            return;
    }
    if (failed)
        fail(ex, UPF_BAD_RESPONSE, 1);
    else if (ex->complete)
        ex->cbs->on_done(ex->arg);
    else
        ex->cbs->on_progress(ex->arg);
}

/* Parses what arrived; 1 if the batch failed. */
static int parse(struct exchange *ex)
{
    struct evbuffer *in = conn_input(ex->up->conn);
    llhttp_errno_t err;

    if (evbuffer_get_length(in) > 0)
        ex->resp_any = 1;
    if (ex->body_left || ex->complete)
        return 0;   /* a Content-Length body: take_body moves it */
    err = parse_evbuffer(&ex->parser, in, &ex->resp, &ex->resp_offset);
    if (!parse_failed(err))
        return 0;
    LOG_WARN("%s: %s: bad response: %s", ex->who, ex->peer->addr_text, llhttp_get_error_reason(&ex->parser));
    return 1;
}

static void connected(struct exchange *ex)
{
    struct upconn *c = ex->up;

    conn_set_timeouts(c->conn, 0, 0);
    ex->connected = 1;
    /* The baseline for the "nothing acknowledged" proof: one getsockopt per
     * connection; after that, every byte of the requests it completed. */
    if (!c->reused) {
        c->acked_at_open = upstream_bytes_acked(c);
        upstream_tls_keep_session(c);
    }
    ex->acked_base = c->acked_at_open >= 0 ? c->acked_at_open + (int64_t)c->bytes_done : -1;
    ex->sent_us = clock_mono_us();
    if (!c->reused)
        metrics_observe_connect(1, ex->sent_us - ex->connect_us);
    ex->attempt_bytes = evbuffer_get_length(ex->pending);
    evbuffer_add_buffer(conn_output(c->conn), ex->pending);
    conn_read(c->conn, 1);
    conn_flush(c->conn);
}

static void read_cb(struct conn *conn, void *arg)
{
    struct exchange *ex = arg;

    (void)conn;
    report(ex, parse(ex));
}

static void drained_cb(struct conn *conn, void *arg)
{
    struct exchange *ex = arg;

    (void)conn;
    ex->cbs->on_progress(ex->arg);
}

static int connect_failure(int err)
{
    return err == ECONNREFUSED ? UPF_REFUSED : err == ETIMEDOUT ? UPF_CONNECT_TIMEOUT : UPF_CONNECT_ERROR;
}

/* The peer closed: a close-delimited body ends here; anything else was cut short. */
static void at_eof(struct exchange *ex)
{
    int failed = parse(ex);

    if (!failed)
        take_body(ex);
    if (!failed && !ex->complete && ex->resp_any && !ex->body_left) {
        /* llhttp_finish() runs on_complete for a body that ends with the close,
         * and returns the HPE_PAUSED that callback returns. */
        failed = parse_failed(llhttp_finish(&ex->parser));
    }
    if (ex->complete || failed) {
        report(ex, failed);
        return;
    }
    if (ex->head_reported) {
        if (evbuffer_get_length(ex->body) > 0) {
            ex->cbs->on_body(ex->arg, ex->body);
            if (!ex->up)
                return;
        }
        LOG_WARN("%s: %s: response cut short", ex->who, ex->peer->addr_text);
        fail(ex, UPF_CLOSED, 1);
        return;
    }
    fail(ex, ex->resp_any ? UPF_BAD_RESPONSE : UPF_CLOSED, 0);
}

static void event_cb(struct conn *conn, int what, int err, void *arg)
{
    struct exchange *ex = arg;

    /* The peer's FIN came (EOF, or EPIPE: FIN then RST). Unlike a bare RST, a FIN
     * segment's ACK field is processed, so tcpi_bytes_acked is up to date with it. */
    ex->fin_seen = (what & CONN_EOF) || ((what & CONN_ERROR) && err == EPIPE);
    if (what & CONN_CONNECTED) {
        connected(ex);
        ex->cbs->on_progress(ex->arg);
        return;
    }
    if (!ex->connected && ex->up->tls && !(what & CONN_TIMEOUT) && err != ECONNREFUSED && err != ETIMEDOUT &&
        err != EHOSTUNREACH && err != ENETUNREACH) {
        /* The TCP connect worked (or no socket error says otherwise): the handshake failed. */
        char why[256];
        const char *kind = tls_upstream_failure(conn_ssl(conn), conn_tls_error(conn), why, sizeof(why));
        metrics_inc(strcmp(kind, "verify") == 0 ? M_TLS_UP_VERIFY : M_TLS_UP_HANDSHAKE);
        LOG_WARN("%s: TLS handshake with %s failed (%s): %s", ex->who, ex->peer->addr_text, kind, why);
        ERR_clear_error();
        fail(ex, UPF_TLS, 0);
        return;
    }
    if (!ex->connected) {
        fail(ex, (what & CONN_TIMEOUT) ? UPF_CONNECT_TIMEOUT : connect_failure(err), 0);
        return;
    }
    if (what & CONN_EOF) {
        at_eof(ex);
        return;
    }
    if (what & CONN_TIMEOUT) {
        LOG_WARN("%s: %s: %s stalled past NEXTUP_IDLE_TIMEOUT_MS", ex->who, ex->peer->addr_text,
                 ex->head_reported ? "response" : "request");
        fail(ex, UPF_TRY_TIMEOUT, ex->head_reported);
        return;
    }
    fail(ex, ex->head_reported || !ex->resp_any ? UPF_CLOSED : UPF_BAD_RESPONSE, ex->head_reported);
}

/* ---- API --------------------------------------------------------------- */

void exchange_init(void)
{
    llhttp_settings_init(&settings);
    settings.on_message_begin = on_begin;
    settings.on_status = on_status;
    settings.on_header_field = on_field;
    settings.on_header_value = on_value;
    settings.on_header_value_complete = on_value_complete;
    settings.on_headers_complete = on_headers_complete;
    settings.on_body = on_body;
    settings.on_message_complete = on_complete;
}

struct exchange *exchange_new(const struct config *cfg, const struct exchange_cbs *cbs, void *arg,
                              struct evbuffer *pending)
{
    struct exchange *ex = calloc(1, sizeof(*ex));

    if (!ex)
        return NULL;
    ex->body = evbuffer_new();
    if (!ex->body) {
        free(ex);
        return NULL;
    }
    ex->cfg = cfg;
    ex->cbs = cbs;
    ex->arg = arg;
    ex->pending = pending;
    ex->head_us = -1;
    return ex;
}

void exchange_free(struct exchange *ex)
{
    if (!ex)
        return;
    detach(ex, 0);
    evbuffer_free(ex->body);
    http_head_free(&ex->resp);
    free(ex);
}

int exchange_start(struct exchange *ex, struct upstream_pool *pool, struct peer *peer, int fresh, int flags,
                   const char *who)
{
    struct upconn *c;

    detach(ex, 0);
    ex->peer = peer;
    ex->flags = flags;
    ex->who = who;
    ex->resp_any = ex->head_ready = ex->head_reported = ex->complete = ex->fin_seen = 0;
    ex->attempt_bytes = 0;
    ex->body_left = 0;
    ex->resp_offset = 0;
    ex->head_us = -1;
    ex->connect_us = clock_mono_us();
    c = upstream_acquire(pool, peer, fresh);
    if (!c) {
        int err = errno ? errno : EIO;
        metrics_observe_connect(0, clock_mono_us() - ex->connect_us);
        return -err;
    }
    ex->up = c;
    atomic_fetch_add_explicit(&peer->outstanding, 1, memory_order_relaxed);
    llhttp_init(&ex->parser, HTTP_RESPONSE, &settings);
    ex->parser.data = ex;
    http_head_reset(&ex->resp);
    conn_set_cbs(c->conn, read_cb, drained_cb, event_cb, ex);
    conn_set_read_limit(c->conn, UP_READ_HIGH);
    if (c->reused)
        connected(ex);
    else
        conn_read(c->conn, 1);
    return 0;
}

int exchange_send(struct exchange *ex, const void *data, size_t len)
{
    if (ex->up && ex->connected) {
        ex->attempt_bytes += len;
        return evbuffer_add(conn_output(ex->up->conn), data, len);
    }
    return evbuffer_add(ex->pending, data, len);
}

void exchange_flush(struct exchange *ex)
{
    if (ex->up && ex->connected)
        conn_flush(ex->up->conn);
}

size_t exchange_queued(const struct exchange *ex)
{
    return ex->up && ex->connected ? evbuffer_get_length(conn_output(ex->up->conn))
                                   : evbuffer_get_length(ex->pending);
}

void exchange_pause_reading(struct exchange *ex, int paused)
{
    if (!ex->up || ex->paused == paused)
        return;
    ex->paused = paused;
    conn_read(ex->up->conn, !paused);
}

int exchange_active(const struct exchange *ex)
{
    return ex->up != NULL;
}

int exchange_connected(const struct exchange *ex)
{
    return ex->up && ex->connected;
}

struct evbuffer *exchange_body(struct exchange *ex)
{
    return ex->body;
}

int exchange_complete(const struct exchange *ex)
{
    return ex->complete;
}

void exchange_take_head(struct exchange *ex, struct http_head *into)
{
    struct http_head swap = *into;

    *into = ex->resp;
    ex->resp = swap;
    http_head_reset(&ex->resp);
}

int64_t exchange_head_us(const struct exchange *ex)
{
    return ex->head_us;
}

void exchange_release(struct exchange *ex, int request_whole)
{
    struct upconn *c = ex->up;
    int stray, reusable;

    if (!c)
        return;
    /* Bytes behind a complete response answer no request of ours: whatever they
     * are, the connection can no longer be trusted to frame the next answer. */
    stray = evbuffer_get_length(conn_input(c->conn)) > 0;
    /* The head's keep-alive (llhttp_should_keep_alive at its end): a body moved
     * unparsed leaves the parser paused after the head. */
    reusable = ex->resp.keep_alive && request_whole && !stray &&
               evbuffer_get_length(conn_output(c->conn)) == 0;
    if (stray && ex->resp.status != 101) {
        metrics_inc((ex->flags & EXCHANGE_REQ_HEAD) ? M_PROTO_HEAD_BODY : M_PROTO_AFTER_RESPONSE);
        upstream_distrust(ex->peer);
    }
    if (reusable)
        c->bytes_done += ex->attempt_bytes;
    if (c->tls)
        upstream_tls_keep_session(c);
    detach(ex, reusable);
}

void exchange_close(struct exchange *ex)
{
    detach(ex, 0);
}

void exchange_cancel(struct exchange *ex, int kind, struct failure_facts *f)
{
    struct failure_facts local;

    if (!ex->up)
        return;
    end_failed(ex, kind, ex->head_reported, f ? f : &local);
}

struct upconn *exchange_take_conn(struct exchange *ex)
{
    struct upconn *c = ex->up;

    ex->up = NULL;
    ex->connected = 0;
    ex->paused = 0;
    return c;
}
