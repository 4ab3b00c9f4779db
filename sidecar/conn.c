/* conn: the libevent callbacks (the timer's included) and the deferred free,
 * constructors and the public verbs, and the plain path (readv / writev).
 * Interest, reports to the owner, the read limit and the deadlines are
 * conn_events.c; the TLS path is conn_tls.c. Both are reached through
 * conn_events.h; every libevent callback is here. */
#include "conn.h"
#include "clock.h"
#include "conn_events.h"
#include "conn_tls.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <openssl/ssl.h>

static void conn_destroy(struct conn *c);

/* An owner may free its conn from inside a callback (the upstream pool does);
 * a TLS event can report twice (on_drained, then on_read), so every callback of
 * ours runs between enter() and leave(), and conn_free() inside defers to leave(). */
static void enter(struct conn *c)
{
    c->busy++;
    /* What the owner does in this callback reads the clock once (clock.h). */
    clock_batch_begin();
}

static void leave(struct conn *c)
{
    clock_batch_end();
    if (--c->busy == 0 && c->dead)
        conn_destroy(c);
}

/* ---- plain ------------------------------------------------------------ */

static void plain_read(struct conn *c)
{
    struct evbuffer_iovec vec[2];
    int n_vec;
    ssize_t n;

    n_vec = evbuffer_reserve_space(c->in, READ_SPACE, vec, 2);
    if (n_vec <= 0) {
        conn_emit_event(c, CONN_ERROR | CONN_READING, ENOMEM, c->arg);
        return;
    }
    n = readv(c->fd, (struct iovec *)vec, n_vec);
    if (n < 0) {
        int err = errno;
        evbuffer_commit_space(c->in, vec, 0);
        if (err == EAGAIN || err == EWOULDBLOCK || err == EINTR)
            return;
        c->read_eof = 1;
        conn_rd_update(c);
        conn_emit_event(c, CONN_ERROR | CONN_READING, err, c->arg);
        return;
    }
    if (n == 0) {
        evbuffer_commit_space(c->in, vec, 0);
        c->read_eof = 1;
        conn_rd_update(c);
        conn_emit_event(c, CONN_EOF | CONN_READING, 0, c->arg);
        return;
    }
    /* What readv filled: the first vector, then the second. */
    if ((size_t)n <= vec[0].iov_len) {
        vec[0].iov_len = (size_t)n;
        n_vec = 1;
    } else {
        vec[1].iov_len = (size_t)n - vec[0].iov_len;
    }
    evbuffer_commit_space(c->in, vec, n_vec);
    conn_pause_for_limit(c);
    conn_emit_read(c);
}

/* ---- events ------------------------------------------------------------- */

/* Every activation of the rd or wr event (readable / writable, or made active)
 * restarts that event's timeout, as libevent's persistent timeouts did. */
static void rd_cb(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;

    (void)fd;
    (void)what;
    enter(c);
    conn_deadline_restart(c, &c->rd_deadline, c->read_ms);
    if (!c->ssl) {
        plain_read(c);
    } else if (c->failed) {
        if (c->end_what && c->reading) {
            int w = c->end_what;
            c->end_what = 0;
            conn_emit_event(c, w, c->end_err, c->arg);
        }
    } else if (c->handshaking) {
        conn_tls_handshake(c, CONN_READING);
    } else {
        if (c->wr_want_rd) {
            c->wr_want_rd = 0;
            conn_tls_write_and_report(c);
        }
        if (!c->dead)
            conn_tls_read_and_report(c);
    }
    leave(c);
}

static void connect_done(struct conn *c)
{
    int err = 0;
    socklen_t len = sizeof(err);

    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    if (err == EINPROGRESS)
        return;
    c->connecting = 0;
    if (err) {
        conn_wr_disarm(c);
        if (c->ssl)
            c->failed = 1;
        conn_emit_event(c, CONN_ERROR | CONN_WRITING, err, c->arg);
        return;
    }
    if (c->ssl) {
        /* The ClientHello goes now, in this same callback. */
        conn_tls_handshake(c, CONN_WRITING);
        return;
    }
    /* What was queued while connecting goes now; what is left (or a write
     * error, met again) stays on EV_WRITE. */
    if (evbuffer_get_length(c->out) > 0)
        evbuffer_write(c->out, c->fd);
    if (evbuffer_get_length(c->out) == 0)
        conn_wr_disarm(c);
    conn_rd_update(c);
    conn_emit_event(c, CONN_CONNECTED, 0, c->arg);
}

static void plain_write(struct conn *c)
{
    int n;

    if (evbuffer_get_length(c->out) > 0) {
        n = evbuffer_write(c->out, c->fd);
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            int err = errno;
            conn_wr_disarm(c);
            conn_emit_event(c, CONN_ERROR | CONN_WRITING, err, c->arg);
            return;
        }
    }
    if (evbuffer_get_length(c->out) > 0)
        return;
    conn_wr_disarm(c);
    conn_emit_drained(c);
}

static void wr_cb(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;

    (void)fd;
    (void)what;
    enter(c);
    conn_deadline_restart(c, &c->wr_deadline, c->write_ms);
    if (c->wr_err) {
        int err = c->wr_err;
        c->wr_err = 0;
        c->failed = c->ssl ? 1 : 0;
        c->out_waiting = 0;
        conn_wr_disarm(c);
        conn_emit_event(c, CONN_ERROR | CONN_WRITING, err, c->arg);
    } else if (c->connecting) {
        connect_done(c);
    } else if (!c->ssl) {
        plain_write(c);
    } else if (c->failed) {
        conn_wr_disarm(c);
    } else if (c->handshaking) {
        conn_tls_handshake(c, CONN_WRITING);
    } else {
        if (c->rd_want_wr) {
            c->rd_want_wr = 0;
            conn_tls_read_and_report(c);
        }
        if (!c->dead && !c->failed)
            conn_tls_write_and_report(c);
        if (!c->dead)
            conn_wr_update(c);
    }
    leave(c);
}

/* The deadline that passed first by <now>, or NULL. */
static int64_t *first_passed(struct conn *c, int64_t now)
{
    int64_t *each[] = { &c->connect_deadline, &c->rd_deadline, &c->wr_deadline }, *first = NULL;

    for (size_t i = 0; i < sizeof(each) / sizeof(each[0]); i++)
        if (*each[i] && *each[i] <= now && (!first || *each[i] < *first))
            first = each[i];
    return first;
}

/* What passed deadline <d> reports, as each event's own timeout did: the
 * connect deadline once; a read or write timeout again a period later while it
 * keeps running (a persistent event's timeout restarted when it fired). */
static void report_passed(struct conn *c, int64_t *d, int64_t now)
{
    if (d == &c->connect_deadline) {
        *d = 0;
        conn_emit_event(c, CONN_TIMEOUT | ((c->connecting || c->hs_want_wr) ? CONN_WRITING : CONN_READING), 0,
                        c->arg);
    } else if (d == &c->rd_deadline) {
        *d = conn_deadline_after(now, c->read_ms);
        /* A read event armed only for a write (TLS waiting for the peer) times out that write. */
        conn_emit_event(c, CONN_TIMEOUT | (c->reading || !c->wr_want_rd ? CONN_READING : CONN_WRITING), 0, c->arg);
    } else {
        /* A write event armed only for a read (TLS sending its own record) times out that read. */
        int dir = c->ssl && c->rd_want_wr && !c->out_waiting ? CONN_READING : CONN_WRITING;
        *d = conn_deadline_after(now, c->write_ms);
        /* A failed write already queued on the wr event is reported there instead, as before. */
        if (!c->wr_err)
            conn_emit_event(c, CONN_TIMEOUT | dir, 0, c->arg);
    }
}

/* The timer rang: reports each deadline that passed (the earliest first; the
 * owner may stop the others, or free the conn), then sets the timer for what is
 * left. A deadline pushed later since the timer was set has not passed. */
static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    int64_t now = conn_clock_us(), *d;

    (void)fd;
    (void)what;
    c->timer_at = 0;
    enter(c);
    for (int i = 0; i < 3 && !c->dead && (d = first_passed(c, now)) != NULL; i++)
        report_passed(c, d, now);
    if (!c->dead)
        conn_timer_rearm(c, now);
    leave(c);
}

/* ---- constructors ------------------------------------------------------- */

static struct conn *conn_alloc(struct event_base *base, int fd)
{
    struct conn *c = calloc(1, sizeof(*c));

    if (!c)
        return NULL;
    c->in = evbuffer_new();
    c->out = evbuffer_new();
    if (!c->in || !c->out) {
        if (c->in)
            evbuffer_free(c->in);
        if (c->out)
            evbuffer_free(c->out);
        free(c);
        return NULL;
    }
    c->base = base;
    c->fd = fd;
    event_assign(&c->rd, base, fd, EV_READ | EV_PERSIST, rd_cb, c);
    event_assign(&c->wr, base, fd, EV_WRITE | EV_PERSIST, wr_cb, c);
    evtimer_assign(&c->timer, base, timer_cb, c);
    return c;
}

struct conn *conn_plain_new(struct event_base *base, int fd)
{
    return conn_alloc(base, fd);
}

/* A non-blocking socket whose connect to <sa> started: the fd, or -1 with errno. */
static int connect_start(const struct sockaddr *sa, socklen_t salen)
{
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return -1;
    if (connect(fd, sa, salen) < 0 && errno != EINPROGRESS) {
        int err = errno;
        close(fd);
        errno = err;
        return -1;
    }
    return fd;
}

struct conn *conn_plain_connect(struct event_base *base, const struct sockaddr *sa, socklen_t salen,
                                int timeout_ms)
{
    int fd = connect_start(sa, salen);
    struct conn *c;

    if (fd < 0)
        return NULL;
    c = conn_plain_new(base, fd);
    if (!c) {
        close(fd);
        errno = ENOMEM;
        return NULL;
    }
    c->connecting = 1;
    c->write_ms = timeout_ms > 0 ? timeout_ms : 0;
    /* Whether it finished at once or not, CONNECTED comes from the loop. */
    conn_wr_arm(c);
    return c;
}

struct conn *conn_tls_new(struct event_base *base, int fd, SSL *ssl, int accepting)
{
    struct conn *c = conn_alloc(base, fd);

    if (!c)
        return NULL;
    if (conn_tls_attach(c, ssl, accepting) < 0) {
        c->fd = -1;
        conn_destroy(c);
        return NULL;
    }
    /* The server waits for the ClientHello; a client sends its own from the loop. */
    if (accepting)
        c->hs_want_rd = 1;
    else
        c->hs_want_wr = 1;
    conn_rd_update(c);
    conn_wr_update(c);
    return c;
}

struct conn *conn_tls_connect(struct event_base *base, const struct sockaddr *sa, socklen_t salen, SSL *ssl,
                              int timeout_ms)
{
    int fd = connect_start(sa, salen);
    struct conn *c;

    if (fd < 0) {
        /* Only an allocation failure leaves <ssl> to the caller (see conn.h). */
        int err = errno;
        if (err != ENOMEM)
            SSL_free(ssl);
        errno = err;
        return NULL;
    }
    c = conn_alloc(base, fd);
    if (!c || conn_tls_attach(c, ssl, 0) < 0) {
        if (c) {
            c->fd = -1;
            conn_destroy(c);
        }
        close(fd);
        errno = ENOMEM;
        return NULL;
    }
    c->connecting = 1;
    /* One deadline for the connect and the handshake together. */
    conn_deadline_start(c, &c->connect_deadline, timeout_ms);
    conn_wr_update(c);
    return c;
}

/* ---- both --------------------------------------------------------------- */

static void conn_destroy(struct conn *c)
{
    event_del(&c->rd);
    event_del(&c->wr);
    event_del(&c->timer);
    if (c->resume_cb)
        evbuffer_remove_cb_entry(c->in, c->resume_cb);
    evbuffer_free(c->in);
    evbuffer_free(c->out);
    /* No close_notify: libevent's OpenSSL bufferevent sent none either (it freed
     * the SSL and closed the socket), and tls.c's session copies expect that. */
    if (c->ssl)
        SSL_free(c->ssl);
    if (c->fd >= 0)
        close(c->fd);
    free(c);
}

void conn_free(struct conn *c)
{
    if (!c)
        return;
    if (c->busy) {
        /* Inside one of its own callbacks: nothing more is reported, the rest
         * when that callback is done. */
        c->dead = 1;
        c->on_read = NULL;
        c->on_drained = NULL;
        c->on_event = NULL;
        event_del(&c->rd);
        event_del(&c->wr);
        c->rd_added = c->wr_added = 0;
        c->rd_deadline = c->wr_deadline = c->connect_deadline = 0;
        return;
    }
    conn_destroy(c);
}

void conn_set_cbs(struct conn *c, conn_read_cb on_read, conn_drained_cb on_drained, conn_event_cb on_event,
                  void *arg)
{
    if (c->dead)
        return;
    c->on_read = on_read;
    c->on_drained = on_drained;
    c->on_event = on_event;
    c->arg = arg;
}

struct evbuffer *conn_input(struct conn *c)
{
    return c->in;
}

struct evbuffer *conn_output(struct conn *c)
{
    return c->out;
}

size_t conn_flush(struct conn *c)
{
    size_t left = evbuffer_get_length(c->out);

    if (left == 0)
        return 0;
    if (c->ssl)
        return conn_tls_flush(c);
    if (c->connecting || c->wr_added)
        return left;
    if (evbuffer_write(c->out, c->fd) < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        /* The write callback meets the error again and reports it from the loop. */
        conn_wr_arm(c);
        return left;
    }
    left = evbuffer_get_length(c->out);
    if (left > 0)
        conn_wr_arm(c);
    return left;
}

void conn_read(struct conn *c, int on)
{
    int was = c->reading;

    c->reading = on ? 1 : 0;
    conn_rd_update(c);
    if (on && !was)
        conn_rd_kick(c);
}

void conn_set_read_limit(struct conn *c, size_t high)
{
    c->read_high = high;
    if (c->resume_cb && (!high || evbuffer_get_length(c->in) < high)) {
        evbuffer_remove_cb_entry(c->in, c->resume_cb);
        c->resume_cb = NULL;
        conn_rd_update(c);
        conn_rd_kick(c);
    } else {
        conn_pause_for_limit(c);
    }
}

/* A running direction restarts at its new value (or stops); one whose event is
 * not added starts when it is. Usually only stores: see conn_deadline_start(). */
void conn_set_timeouts(struct conn *c, int read_ms, int write_ms)
{
    c->read_ms = read_ms > 0 ? read_ms : 0;
    c->write_ms = write_ms > 0 ? write_ms : 0;
    if (c->rd_added)
        conn_deadline_start(c, &c->rd_deadline, c->read_ms);
    if (c->wr_added)
        conn_deadline_start(c, &c->wr_deadline, c->write_ms);
}

void conn_set_priority(struct conn *c, int prio)
{
    /* TLS too, now that its events are these two (libevent's OpenSSL bufferevent
     * had deferred callbacks of its own that, at the first priority, ran ahead of
     * every other connection): nothing here re-runs by itself but tls_read()'s
     * bounded bursts, and TLS_MAX_IDLE_RAW (both in conn_tls.c) ends a peer that
     * keeps a read event busy without sending data. */
    event_priority_set(&c->rd, prio);
    event_priority_set(&c->wr, prio);
    /* The timer stays at the normal priority: a pooled connection's idle timeout
     * gains nothing by running first (upstream_acquire checks the idle time
     * itself, and a connection handed out stops its deadlines before the timer
     * could report them). */
}

void conn_shutdown_write(struct conn *c)
{
    if (!c->ssl && evbuffer_get_length(c->out) == 0)
        shutdown(c->fd, SHUT_WR);
}

int conn_fd(const struct conn *c)
{
    return c->fd;
}

int conn_is_tls(const struct conn *c)
{
    return c->ssl != NULL;
}

SSL *conn_ssl(const struct conn *c)
{
    return c->ssl;
}

unsigned long conn_tls_error(struct conn *c)
{
    return c->tls_err;
}
