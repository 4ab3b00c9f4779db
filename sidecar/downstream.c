#include "downstream.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <llhttp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "config.h"
#include "conn.h"
#include "ctx.h"
#include "http1.h"
#include "log.h"
#include "metrics.h"
#include "parse.h"
#include "peers.h"
#include "timeouts.h"
#include "tls.h"
#include "tunnel.h"
#include "upstream.h"

/* Unparsed client bytes held while a request is in flight (pipelining). */
#define CLIENT_READ_HIGH (64 * 1024)

/* Lingering close: a response that came before the whole request body (an
 * early 200 or 413 from the replica, an error of nextup's) is not followed by
 * an abrupt close, which would reset the connection under the client's feet
 * and could destroy the response before it is read: the rest of the body is
 * read and thrown away for up to LINGER_MS or LINGER_BYTES, as nginx does. */
#define LINGER_MS 2000
#define LINGER_BYTES (64 * 1024 * 1024)

enum ds_state {
    DS_IDLE,      /* between requests, no byte of the next one yet */
    DS_HEAD,      /* reading a request head */
    DS_BODY,      /* head read, body still arriving; the owner's attempts run */
    DS_WAIT,      /* request read whole; waiting for or streaming the response */
    DS_TUNNEL,    /* after 101: bytes flow both ways unparsed */
    DS_CLOSING,   /* last bytes being written, then freed */
};

struct downstream {
    struct loop_ctx *lc;
    const struct downstream_cbs *cbs;
    void *owner;                          /* the request's owner, while it has one */
    struct downstream *next, *prev;       /* the loop's list */
    struct conn *conn;                    /* owned: the client socket */
    struct tunnel *tunnel;                /* owned after a 101 */
    struct event timer;                   /* header / idle / linger timeout */
    struct event free_ev;                 /* deferred free, never inside a callback of ours */
    llhttp_t parser;
    enum ds_state state;
    char client_ip[INET6_ADDRSTRLEN];
    struct http_head req;                 /* owned buffer, reused request after request */
    uint64_t req_offset;                  /* request bytes parsed so far (obs-fold check) */
    int error_status;                     /* set by a parser callback: answer this and close */
    const char *error_reason;
    int start_pending;                    /* head complete: report it once this parse batch stops */
    int req_complete;
    int keep_alive;                       /* the connection stays open after this response */
    int client_eof;
    int paused;                           /* reading stopped: the upstream side is full */
    int response_begun;                   /* a response head went to the output */
    int aborted;                          /* downstream_abort ran: no more I/O */
    int tls;                              /* the connection is TLS */
    int tls_up;                           /* ... and its handshake completed */
    int lingering;                        /* closing: the rest of the request body is read and dropped */
    uint64_t lingered;
};

static llhttp_settings_t req_settings;

static void parse_input(struct downstream *ds);

static void free_cb(evutil_socket_t fd, short what, void *arg)
{
    struct downstream *ds = arg;
    struct loop_ctx *lc = ds->lc;

    (void)fd;
    (void)what;
    if (ds->owner)
        ds->cbs->on_gone(ds);
    if (ds->tunnel)
        tunnel_free(ds->tunnel);
    if (ds->prev)
        ds->prev->next = ds->next;
    else
        lc->conns = ds->next;
    if (ds->next)
        ds->next->prev = ds->prev;
    conn_free(ds->conn);
    event_del(&ds->timer);
    http_head_free(&ds->req);
    free(ds);
    lc->on_conn_closed(lc->on_conn_closed_arg);
}

void downstream_abort(struct downstream *ds)
{
    if (ds->aborted)
        return;
    ds->aborted = 1;
    if (ds->owner)
        ds->cbs->on_gone(ds);
    if (ds->tunnel) {
        tunnel_free(ds->tunnel);
        ds->tunnel = NULL;
    }
    conn_set_cbs(ds->conn, NULL, NULL, NULL, NULL);
    conn_read(ds->conn, 0);
    event_del(&ds->timer);
    ds->state = DS_CLOSING;
    event_active(&ds->free_ev, 0, 0);
}

/* Once the response is out, the client is told "no more" (FIN) while what it
 * still sends is read and dropped; TLS has no half-close, its connection just waits. */
static void linger_half_close(struct downstream *ds)
{
    if (ds->lingering)
        conn_shutdown_write(ds->conn);
}

void downstream_close_after_write(struct downstream *ds)
{
    int body_unread = ds->state == DS_BODY || ds->state == DS_HEAD;

    if (ds->aborted)
        return;
    ds->state = DS_CLOSING;
    event_del(&ds->timer);
    ds->lingering = body_unread && !ds->client_eof;
    if (!ds->lingering)
        conn_read(ds->conn, 0);
    if (conn_flush(ds->conn) == 0 && !ds->lingering) {
        downstream_abort(ds);
        return;
    }
    if (ds->lingering) {
        struct timeval tv;
        conn_set_read_limit(ds->conn, 0);
        conn_read(ds->conn, 1);
        evtimer_add(&ds->timer, loop_timeout(ds->lc, LINGER_MS, &tv));
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
        downstream_abort(ds);
}

void downstream_reply_error(struct downstream *ds, int status, const char *reason)
{
    if (ds->aborted)
        return;
    if (ds->response_begun || http1_write_error(conn_output(ds->conn), status, reason) < 0) {
        downstream_abort(ds);
        return;
    }
    ds->response_begun = 1;
    downstream_close_after_write(ds);
}

/* The request cannot be served: its owner answers (and logs); with none, this does. */
static void bad_request(struct downstream *ds, int status, const char *reason)
{
    if (ds->owner)
        ds->cbs->on_bad(ds, status, reason);
    else
        downstream_reply_error(ds, status, reason);
}

/* ---- request parser callbacks ------------------------------------------ */

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
    struct downstream *ds = p->data;

    http_head_reset(&ds->req);
    ds->state = DS_HEAD;
    /* The idle timer ends; the header timer starts only if the head is not all
     * here (arm_header_timer), which in the common case it is. */
    event_del(&ds->timer);
    if (!ds->owner && ds->cbs->on_begin(ds) < 0)
        return parser_fail(ds, 503, "out of memory");
    return 0;
}

static int head_feed_result(struct downstream *ds, int r)
{
    if (r == 0 && http_head_size(&ds->req) <= (size_t)ds->lc->cfg->max_header_bytes)
        return 0;
    if (r == -ENOMEM)
        return parser_fail(ds, 503, "out of memory");
    if (r == -EPROTO)
        return parser_fail(ds, 400, "obs-fold (a header line continued on the next line) is not accepted");
    return parser_fail(ds, 431, "request head larger than NEXTUP_MAX_HEADER_BYTES");
}

static int on_req_url(llhttp_t *p, const char *at, size_t len)
{
    struct downstream *ds = p->data;
    return head_feed_result(ds, http_head_add_first(&ds->req, at, len, (size_t)ds->lc->cfg->max_header_bytes));
}

static int on_req_field(llhttp_t *p, const char *at, size_t len)
{
    struct downstream *ds = p->data;
    return head_feed_result(ds, http_head_add_field(&ds->req, at, len, (size_t)ds->lc->cfg->max_header_bytes));
}

static int on_req_value(llhttp_t *p, const char *at, size_t len)
{
    struct downstream *ds = p->data;
    return head_feed_result(ds, http_head_add_value(&ds->req, at, len, (size_t)ds->lc->cfg->max_header_bytes));
}

static int on_req_value_complete(llhttp_t *p)
{
    http_head_value_complete(&((struct downstream *)p->data)->req);
    return 0;
}

static int on_req_headers_complete(llhttp_t *p)
{
    struct downstream *ds = p->data;
    const char *reason = NULL;
    int status;

    http_head_take_parser_facts(&ds->req, p);
    status = http1_check_request(&ds->req, &reason);
    if (status) {
        metrics_inc(M_REQUESTS);    /* the owner counts the others, by service */
        return parser_fail(ds, status, reason);
    }
    ds->keep_alive = ds->req.keep_alive && !ds->lc->draining;
    ds->state = DS_BODY;
    ds->start_pending = 1;
    event_del(&ds->timer);
    /* Paused: parse_input reports the head, then parses the body, so that the
     * owner can send the head before any body byte. */
    return HPE_PAUSED;
}

static int on_req_body(llhttp_t *p, const char *at, size_t len)
{
    struct downstream *ds = p->data;

    if (!ds->owner || ds->cbs->on_body(ds, at, len) < 0)
        return parser_fail(ds, 503, "out of memory");
    return 0;
}

static int on_req_complete(llhttp_t *p)
{
    struct downstream *ds = p->data;

    if (!ds->owner || ds->cbs->on_complete(ds) < 0)
        return parser_fail(ds, 503, "out of memory");
    ds->req_complete = 1;
    ds->state = DS_WAIT;
    conn_set_timeouts(ds->conn, 0, ds->lc->cfg->idle_timeout_ms);
    /* One request at a time: pipelined bytes wait in the input until this response is done. */
    return HPE_PAUSED;
}

/* ---- the client side ---------------------------------------------------- */

static void parse_input(struct downstream *ds)
{
    llhttp_errno_t err;

    if (ds->state == DS_WAIT || ds->state == DS_CLOSING || ds->state == DS_TUNNEL)
        return;
    err = parse_evbuffer(&ds->parser, conn_input(ds->conn), &ds->req, &ds->req_offset);
    if (ds->error_status || parse_failed(err)) {
        int status = ds->error_status ? ds->error_status : 400;
        const char *reason = ds->error_reason ? ds->error_reason : llhttp_get_error_reason(&ds->parser);
        bad_request(ds, status, reason ? reason : "malformed request");
        return;
    }
    if (ds->start_pending && err == HPE_PAUSED) {
        ds->start_pending = 0;
        /* The owner's attempts run from here, with the body still to come. */
        conn_set_timeouts(ds->conn, ds->lc->cfg->idle_timeout_ms, ds->lc->cfg->idle_timeout_ms);
        ds->cbs->on_head(ds);
        if (ds->state == DS_CLOSING || ds->aborted)
            return;
        llhttp_resume(&ds->parser);
        /* llhttp ends a bodiless request only when executed again: with no
         * byte left that happens here, on nothing. */
        if (evbuffer_get_length(conn_input(ds->conn)) == 0) {
            static const char nothing[1];
            err = llhttp_execute(&ds->parser, nothing, 0);
            if (ds->error_status || parse_failed(err))
                bad_request(ds, ds->error_status ? ds->error_status : 400,
                            ds->error_reason ? ds->error_reason : "malformed request");
            return;
        }
        parse_input(ds);
    }
}

void downstream_after_io(struct downstream *ds)
{
    if (ds->aborted)
        return;
    conn_flush(ds->conn);
    if (ds->owner)
        ds->cbs->on_progress(ds);
}

/* After parsing: a head begun and not complete waits for its bytes under
 * NEXTUP_HEADER_TIMEOUT_MS, counted from here, where the first wait begins. */
static void arm_header_timer(struct downstream *ds)
{
    struct timeval tv;

    if (ds->state == DS_HEAD && !ds->aborted && !evtimer_pending(&ds->timer, NULL))
        evtimer_add(&ds->timer, loop_timeout(ds->lc, ds->lc->cfg->header_timeout_ms, &tv));
}

static void read_cb(struct conn *conn, void *arg)
{
    struct downstream *ds = arg;

    (void)conn;
    if (ds->lingering) {
        linger_drain(ds);
        return;
    }
    parse_input(ds);
    arm_header_timer(ds);
    downstream_after_io(ds);
}

static void drained_cb(struct conn *conn, void *arg)
{
    struct downstream *ds = arg;

    (void)conn;
    if (ds->state == DS_CLOSING) {
        /* A lingering connection ends when the client closes or the linger time is up. */
        if (!ds->lingering)
            downstream_abort(ds);
        else
            linger_half_close(ds);
        return;
    }
    if (ds->owner)
        ds->cbs->on_progress(ds);
}

static void event_cb(struct conn *conn, int what, int err, void *arg)
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
        downstream_abort(ds);
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
    if ((what & CONN_TIMEOUT) && (what & CONN_READING) && ds->state == DS_BODY && !ds->response_begun) {
        bad_request(ds, 408, "request body stalled past NEXTUP_IDLE_TIMEOUT_MS");
        downstream_after_io(ds);
        return;
    }
    downstream_abort(ds);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct downstream *ds = arg;

    (void)fd;
    (void)what;
    if (ds->state == DS_HEAD) {
        bad_request(ds, 408, "request head not received within NEXTUP_HEADER_TIMEOUT_MS");
        return;
    }
    if (ds->state == DS_IDLE || ds->lingering)
        downstream_abort(ds);
}

/* ---- tunnel ----------------------------------------------------------- */

static void tunnel_end(void *arg, enum tunnel_end how)
{
    struct downstream *ds = arg;

    tunnel_free(ds->tunnel);
    ds->tunnel = NULL;
    conn_set_cbs(ds->conn, read_cb, drained_cb, event_cb, ds);
    if (how == TUNNEL_UPSTREAM_CLOSED) {
        downstream_close_after_write(ds);
        return;
    }
    if (how == TUNNEL_IDLE)
        LOG_INFO("%s: tunnel idle for NEXTUP_IDLE_TIMEOUT_MS: closed", ds->client_ip);
    downstream_abort(ds);
}

void downstream_tunnel(struct downstream *ds, struct upconn *up)
{
    event_del(&ds->timer);
    ds->state = DS_TUNNEL;
    ds->tunnel = tunnel_start(ds->lc->base, ds->conn, up, ds->lc->cfg->idle_timeout_ms, tunnel_end, ds);
    if (!ds->tunnel) {
        atomic_fetch_sub_explicit(&up->peer->outstanding, 1, memory_order_relaxed);
        upstream_close(up);
        downstream_abort(ds);
    }
}

/* ---- verbs ------------------------------------------------------------ */

void downstream_request_done(struct downstream *ds)
{
    if (ds->aborted || ds->state == DS_CLOSING)
        return;
    if (!ds->keep_alive || ds->client_eof || !ds->req_complete || ds->req.upgrade) {
        downstream_close_after_write(ds);
        return;
    }
    /* Ready for the next request on this connection; an idle one keeps no head memory. */
    ds->state = DS_IDLE;
    ds->req_complete = 0;
    ds->response_begun = 0;
    http_head_free(&ds->req);
    {
        struct timeval idle;
        evtimer_add(&ds->timer, loop_timeout(ds->lc, ds->lc->cfg->idle_timeout_ms, &idle));
        conn_set_timeouts(ds->conn, 0, ds->lc->cfg->idle_timeout_ms);
    }
    ds->paused = 0;
    conn_read(ds->conn, 1);
    llhttp_resume(&ds->parser);
    if (evbuffer_get_length(conn_input(ds->conn)) > 0) {
        parse_input(ds);
        arm_header_timer(ds);
    }
}

void downstream_set_owner(struct downstream *ds, void *owner)
{
    ds->owner = owner;
}

void *downstream_owner(const struct downstream *ds)
{
    return ds->owner;
}

struct loop_ctx *downstream_loop(const struct downstream *ds)
{
    return ds->lc;
}

const struct http_head *downstream_head(const struct downstream *ds)
{
    return &ds->req;
}

const char *downstream_client_ip(const struct downstream *ds)
{
    return ds->client_ip;
}

const char *downstream_method_name(const struct downstream *ds)
{
    /* llhttp has the method once the target began (the method comes first). */
    return ds->req.first_len ? llhttp_method_name((llhttp_method_t)llhttp_get_method((llhttp_t *)&ds->parser)) : "-";
}

int downstream_is_tls(const struct downstream *ds)
{
    return ds->tls;
}

int downstream_has_unread(const struct downstream *ds)
{
    return evbuffer_get_length(conn_input(ds->conn)) > 0;
}

struct evbuffer *downstream_output(struct downstream *ds)
{
    return conn_output(ds->conn);
}

void downstream_flush(struct downstream *ds)
{
    if (!ds->aborted)
        conn_flush(ds->conn);
}

size_t downstream_queued(const struct downstream *ds)
{
    return evbuffer_get_length(conn_output(ds->conn));
}

void downstream_pause_reading(struct downstream *ds, int paused)
{
    if (ds->aborted || ds->state == DS_CLOSING || ds->state == DS_TUNNEL || ds->paused == paused)
        return;
    ds->paused = paused;
    conn_read(ds->conn, !paused);
}

void downstream_response_begun(struct downstream *ds)
{
    ds->response_begun = 1;
}

int downstream_keep_alive(const struct downstream *ds)
{
    return ds->keep_alive && !ds->client_eof && !ds->lc->draining;
}

void downstream_set_close(struct downstream *ds)
{
    ds->keep_alive = 0;
}

int downstream_request_complete(const struct downstream *ds)
{
    return ds->req_complete;
}

/* ---- the loop's connections ------------------------------------------- */

void downstream_init(void)
{
    llhttp_settings_t s;

    llhttp_settings_init(&s);
    s.on_message_begin = on_req_begin;
    s.on_url = on_req_url;
    s.on_header_field = on_req_field;
    s.on_header_value = on_req_value;
    s.on_header_value_complete = on_req_value_complete;
    s.on_headers_complete = on_req_headers_complete;
    s.on_body = on_req_body;
    s.on_message_complete = on_req_complete;
    req_settings = s;
}

int downstream_new(struct loop_ctx *lc, const struct downstream_cbs *cbs, int fd, const struct sockaddr *peer_addr,
                   socklen_t peer_len)
{
    struct downstream *ds = calloc(1, sizeof(*ds));
    struct timeval header_tv;
    int one = 1;

    (void)peer_len;
    if (!ds)
        return -ENOMEM;
    ds->lc = lc;
    ds->cbs = cbs;
    evtimer_assign(&ds->timer, lc->base, timer_cb, ds);
    event_assign(&ds->free_ev, lc->base, -1, 0, free_cb, ds);
    /* Created last: from here on the conn closes <fd> when freed. */
    if (tls_listener_enabled()) {
        SSL *ssl = tls_listener_new();
        if (ssl && !(ds->conn = conn_tls_new(lc->base, fd, ssl, 1)))
            SSL_free(ssl);
        ds->tls = 1;
    } else {
        ds->conn = conn_plain_new(lc->base, fd);
    }
    if (!ds->conn) {
        free(ds);
        return -ENOMEM;
    }
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
    ds->next = lc->conns;
    if (lc->conns)
        lc->conns->prev = ds;
    lc->conns = ds;
    conn_set_cbs(ds->conn, read_cb, drained_cb, event_cb, ds);
    conn_set_read_limit(ds->conn, CLIENT_READ_HIGH);
    conn_set_timeouts(ds->conn, 0, lc->cfg->idle_timeout_ms);
    conn_read(ds->conn, 1);
    /* A new connection must send its first head within the header timeout. */
    evtimer_add(&ds->timer, loop_timeout(lc, lc->cfg->header_timeout_ms, &header_tv));
    return 0;
}

void downstream_drain(struct downstream *ds)
{
    if (ds->state == DS_IDLE) {
        downstream_abort(ds);
        return;
    }
    ds->keep_alive = 0;
}

void downstream_free_all(struct loop_ctx *lc)
{
    while (lc->conns)
        free_cb(-1, 0, lc->conns);
}

struct downstream *downstream_next(struct downstream *ds)
{
    return ds->next;
}
