#include "conn.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

/* One read asks for this much space: a request or response of a sidecar's
 * usual size arrives in one readv, and a level-triggered loop comes back for more. */
#define READ_SPACE 16384

struct conn {
    struct event_base *base;
    int fd;                         /* owned (plain); -1 for TLS, whose bufferevent owns it */
    struct bufferevent *bev;        /* owned: TLS only */
    struct evbuffer *in, *out;      /* owned (plain); the bufferevent's for TLS */
    struct event rd, wr;            /* plain only */
    struct evbuffer_cb_entry *resume_cb; /* set while reading is paused by the read limit */
    conn_read_cb on_read;
    conn_drained_cb on_drained;
    conn_event_cb on_event;
    void *arg;
    struct timeval read_tv, write_tv;
    size_t read_high;
    unsigned reading : 1;           /* the owner wants reads */
    unsigned rd_added : 1;
    unsigned wr_added : 1;
    unsigned connecting : 1;        /* plain connect in progress (EV_WRITE belongs to it) */
    unsigned connected : 1;         /* TLS: handshake done; write callbacks are ours */
    unsigned accepting : 1;         /* TLS server side */
    unsigned read_eof : 1;
};

/* A conn whose owner let go (callbacks NULL) reports nothing. */
static void emit_event(struct conn *c, int what, int err, void *arg)
{
    if (c->on_event)
        c->on_event(c, what, err, arg);
}

static void emit_read(struct conn *c)
{
    if (c->on_read)
        c->on_read(c, c->arg);
}

static struct timeval ms_tv(int ms)
{
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
    return tv;
}

static int tv_set(const struct timeval *tv)
{
    return tv->tv_sec || tv->tv_usec;
}

/* ---- plain ------------------------------------------------------------ */

static void event_add_tv(struct event *ev, const struct timeval *tv)
{
    if (tv_set(tv))
        event_add(ev, tv);
    else {
        event_add(ev, NULL);
        event_remove_timer(ev);
    }
}

/* Adds or removes the read event to match what the owner wants. */
static void rd_update(struct conn *c)
{
    int want = c->reading && !c->resume_cb && !c->connecting && !c->read_eof;

    if (want && !c->rd_added) {
        event_add_tv(&c->rd, &c->read_tv);
        c->rd_added = 1;
    } else if (!want && c->rd_added) {
        event_del(&c->rd);
        c->rd_added = 0;
    }
}

static void wr_arm(struct conn *c)
{
    if (!c->wr_added) {
        event_add_tv(&c->wr, &c->write_tv);
        c->wr_added = 1;
    }
}

static void wr_disarm(struct conn *c)
{
    if (c->wr_added) {
        event_del(&c->wr);
        c->wr_added = 0;
    }
}

static void resume_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    struct conn *c = arg;

    (void)info;
    if (evbuffer_get_length(buf) >= c->read_high)
        return;
    evbuffer_remove_cb_entry(buf, c->resume_cb);
    c->resume_cb = NULL;
    rd_update(c);
}

static void pause_for_limit(struct conn *c)
{
    if (c->resume_cb || !c->read_high || evbuffer_get_length(c->in) < c->read_high)
        return;
    c->resume_cb = evbuffer_add_cb(c->in, resume_cb, c);
    rd_update(c);
}

static void rd_cb(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    struct evbuffer_iovec vec[2];
    int n_vec;
    ssize_t n;

    if (what & EV_TIMEOUT) {
        emit_event(c, CONN_TIMEOUT | CONN_READING, 0, c->arg);
        return;
    }
    n_vec = evbuffer_reserve_space(c->in, READ_SPACE, vec, 2);
    if (n_vec <= 0) {
        emit_event(c, CONN_ERROR | CONN_READING, ENOMEM, c->arg);
        return;
    }
    n = readv(fd, (struct iovec *)vec, n_vec);
    if (n < 0) {
        int err = errno;
        evbuffer_commit_space(c->in, vec, 0);
        if (err == EAGAIN || err == EWOULDBLOCK || err == EINTR)
            return;
        c->read_eof = 1;
        rd_update(c);
        emit_event(c, CONN_ERROR | CONN_READING, err, c->arg);
        return;
    }
    if (n == 0) {
        evbuffer_commit_space(c->in, vec, 0);
        c->read_eof = 1;
        rd_update(c);
        emit_event(c, CONN_EOF | CONN_READING, 0, c->arg);
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
    pause_for_limit(c);
    emit_read(c);
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
        wr_disarm(c);
        emit_event(c, CONN_ERROR | CONN_WRITING, err, c->arg);
        return;
    }
    /* What was queued while connecting goes now; what is left (or a write
     * error, met again) stays on EV_WRITE. */
    if (evbuffer_get_length(c->out) > 0)
        evbuffer_write(c->out, c->fd);
    if (evbuffer_get_length(c->out) == 0)
        wr_disarm(c);
    rd_update(c);
    emit_event(c, CONN_CONNECTED, 0, c->arg);
}

static void wr_cb(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    int n;

    if (what & EV_TIMEOUT) {
        emit_event(c, CONN_TIMEOUT | CONN_WRITING, 0, c->arg);
        return;
    }
    if (c->connecting) {
        connect_done(c);
        return;
    }
    if (evbuffer_get_length(c->out) > 0) {
        n = evbuffer_write(c->out, fd);
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            int err = errno;
            wr_disarm(c);
            emit_event(c, CONN_ERROR | CONN_WRITING, err, c->arg);
            return;
        }
    }
    if (evbuffer_get_length(c->out) > 0)
        return;
    wr_disarm(c);
    if (c->on_drained)
        c->on_drained(c, c->arg);
}

static struct conn *conn_alloc(struct event_base *base)
{
    struct conn *c = calloc(1, sizeof(*c));

    if (!c)
        return NULL;
    c->base = base;
    c->fd = -1;
    return c;
}

struct conn *conn_plain_new(struct event_base *base, int fd)
{
    struct conn *c = conn_alloc(base);

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
    c->fd = fd;
    event_assign(&c->rd, base, fd, EV_READ | EV_PERSIST, rd_cb, c);
    event_assign(&c->wr, base, fd, EV_WRITE | EV_PERSIST, wr_cb, c);
    return c;
}

struct conn *conn_plain_connect(struct event_base *base, const struct sockaddr *sa, socklen_t salen,
                                int timeout_ms)
{
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct conn *c;

    if (fd < 0)
        return NULL;
    if (connect(fd, sa, salen) < 0 && errno != EINPROGRESS) {
        int err = errno;
        close(fd);
        errno = err;
        return NULL;
    }
    c = conn_plain_new(base, fd);
    if (!c) {
        close(fd);
        errno = ENOMEM;
        return NULL;
    }
    c->connecting = 1;
    c->write_tv = ms_tv(timeout_ms);
    /* Whether it finished at once or not, CONNECTED comes from the loop. */
    wr_arm(c);
    return c;
}

/* ---- TLS (libevent's OpenSSL bufferevent) ------------------------------ */

static void bev_read_cb(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;

    (void)bev;
    emit_read(c);
}

/* libevent's OpenSSL bufferevent defers its write callbacks: one queued by an
 * earlier write can run after new bytes were queued, so "drained" is checked,
 * not assumed. While connecting, EV_WRITE is libevent's. */
static void bev_write_cb(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;

    if (!c->connected || evbuffer_get_length(bufferevent_get_output(bev)) > 0)
        return;
    bufferevent_disable(bev, EV_WRITE);
    if (c->on_drained)
        c->on_drained(c, c->arg);
}

/* A client's request often comes in the same flight as its last handshake
 * message: OpenSSL then holds it already, and libevent 2.1's socket-based TLS
 * bufferevent does not look for it until the socket is readable again, which
 * may be never. Whatever OpenSSL holds is moved into the input. 1 if any. */
static int tls_take_early_bytes(struct conn *c)
{
    SSL *ssl = bufferevent_openssl_get_ssl(c->bev);
    struct evbuffer *in = bufferevent_get_input(c->bev);
    char buf[16384];
    int n, got = 0;

    if (!ssl || !SSL_has_pending(ssl))
        return 0;
    /* The input's end is frozen for everyone but libevent itself. */
    evbuffer_unfreeze(in, 0);
    while (SSL_has_pending(ssl) && (n = SSL_read(ssl, buf, sizeof(buf))) > 0) {
        evbuffer_add(in, buf, (size_t)n);
        got = 1;
    }
    evbuffer_freeze(in, 0);
    ERR_clear_error();
    return got;
}

static void bev_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct conn *c = arg;
    int err = EVUTIL_SOCKET_ERROR();
    int out = 0;

    (void)bev;
    if (what & BEV_EVENT_CONNECTED) {
        c->connected = 1;
        emit_event(c, CONN_CONNECTED, 0, c->arg);
        /* A client's first bytes may be in OpenSSL already (the owner does not
         * free a conn inside its own callback, so <c> is still there). */
        if (c->accepting && tls_take_early_bytes(c))
            emit_read(c);
        return;
    }
    if (what & BEV_EVENT_READING)
        out |= CONN_READING;
    if (what & BEV_EVENT_WRITING)
        out |= CONN_WRITING;
    if (what & BEV_EVENT_TIMEOUT)
        out |= CONN_TIMEOUT;
    else if (what & BEV_EVENT_ERROR)
        out |= CONN_ERROR;
    else if (what & BEV_EVENT_EOF)
        out |= CONN_EOF;
    if ((what & BEV_EVENT_EOF) && (what & BEV_EVENT_ERROR))
        out |= CONN_EOF;
    emit_event(c, out, (out & CONN_ERROR) ? err : 0, c->arg);
}

/* Gives <c> its OpenSSL bufferevent <bev>. */
static void tls_wrap(struct conn *c, struct bufferevent *bev, int accepting)
{
    c->bev = bev;
    c->accepting = accepting ? 1 : 0;
    c->in = bufferevent_get_input(bev);
    c->out = bufferevent_get_output(bev);
    bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    bufferevent_setcb(bev, bev_read_cb, bev_write_cb, bev_event_cb, c);
}

struct conn *conn_tls_new(struct event_base *base, int fd, SSL *ssl, int accepting)
{
    struct conn *c = conn_alloc(base);
    struct bufferevent *bev;

    if (!c)
        return NULL;
    bev = bufferevent_openssl_socket_new(base, fd, ssl, accepting ? BUFFEREVENT_SSL_ACCEPTING : BUFFEREVENT_SSL_CONNECTING,
                                         BEV_OPT_CLOSE_ON_FREE);
    if (!bev) {
        free(c);
        return NULL;
    }
    tls_wrap(c, bev, accepting);
    /* A new bufferevent starts with EV_WRITE on; writes are the owner's (conn_flush). */
    bufferevent_disable(bev, EV_WRITE);
    return c;
}

struct conn *conn_tls_connect(struct event_base *base, const struct sockaddr *sa, socklen_t salen, SSL *ssl,
                              int timeout_ms)
{
    struct conn *c = conn_alloc(base);
    struct timeval tv = ms_tv(timeout_ms);
    struct bufferevent *bev;

    if (!c) {
        errno = ENOMEM;
        return NULL;
    }
    bev = bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_CONNECTING, BEV_OPT_CLOSE_ON_FREE);
    if (!bev) {
        free(c);
        errno = ENOMEM;
        return NULL;
    }
    tls_wrap(c, bev, 0);
    /* The write timeout while connecting is libevent's connect timeout; the
     * handshake then waits to read, so <timeout_ms> bounds it too. */
    bufferevent_set_timeouts(bev, &tv, &tv);
    if (bufferevent_socket_connect(bev, sa, (int)salen) < 0) {
        int err = EVUTIL_SOCKET_ERROR();
        conn_free(c);
        errno = err ? err : ECONNREFUSED;
        return NULL;
    }
    bufferevent_enable(bev, EV_READ | EV_WRITE);
    return c;
}

/* ---- both --------------------------------------------------------------- */

void conn_free(struct conn *c)
{
    if (!c)
        return;
    if (c->bev) {
        bufferevent_free(c->bev);
    } else {
        event_del(&c->rd);
        event_del(&c->wr);
        if (c->resume_cb)
            evbuffer_remove_cb_entry(c->in, c->resume_cb);
        evbuffer_free(c->in);
        evbuffer_free(c->out);
        if (c->fd >= 0)
            close(c->fd);
    }
    free(c);
}

void conn_set_cbs(struct conn *c, conn_read_cb on_read, conn_drained_cb on_drained, conn_event_cb on_event,
                  void *arg)
{
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
    if (c->bev) {
        /* TLS writes go through OpenSSL: libevent does them, on EV_WRITE. */
        bufferevent_enable(c->bev, EV_WRITE);
        return left;
    }
    if (c->connecting || c->wr_added)
        return left;
    if (evbuffer_write(c->out, c->fd) < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        /* The write callback meets the error again and reports it from the loop. */
        wr_arm(c);
        return left;
    }
    left = evbuffer_get_length(c->out);
    if (left > 0)
        wr_arm(c);
    return left;
}

void conn_read(struct conn *c, int on)
{
    if (c->bev) {
        if (on)
            bufferevent_enable(c->bev, EV_READ);
        else
            bufferevent_disable(c->bev, EV_READ);
        return;
    }
    c->reading = on ? 1 : 0;
    rd_update(c);
}

void conn_set_read_limit(struct conn *c, size_t high)
{
    if (c->bev) {
        bufferevent_setwatermark(c->bev, EV_READ, 0, high);
        return;
    }
    c->read_high = high;
    if (c->resume_cb && (!high || evbuffer_get_length(c->in) < high)) {
        evbuffer_remove_cb_entry(c->in, c->resume_cb);
        c->resume_cb = NULL;
        rd_update(c);
    } else {
        pause_for_limit(c);
    }
}

void conn_set_timeouts(struct conn *c, int read_ms, int write_ms)
{
    struct timeval r = ms_tv(read_ms), w = ms_tv(write_ms);

    if (c->bev) {
        bufferevent_set_timeouts(c->bev, read_ms ? &r : NULL, write_ms ? &w : NULL);
        return;
    }
    c->read_tv = r;
    c->write_tv = w;
    if (c->rd_added)
        event_add_tv(&c->rd, &c->read_tv);
    if (c->wr_added)
        event_add_tv(&c->wr, &c->write_tv);
}

void conn_set_priority(struct conn *c, int prio)
{
    /* TLS is left at the normal priority: libevent's OpenSSL bufferevent keeps
     * its own events busy (handshake, session tickets), and one left first in
     * the loop (a priority cannot change while its event is active) would run
     * ahead of every other connection. */
    if (c->bev)
        return;
    event_priority_set(&c->rd, prio);
    event_priority_set(&c->wr, prio);
}

void conn_shutdown_write(struct conn *c)
{
    if (!c->bev && evbuffer_get_length(c->out) == 0)
        shutdown(c->fd, SHUT_WR);
}

int conn_fd(const struct conn *c)
{
    return c->bev ? bufferevent_getfd(c->bev) : c->fd;
}

int conn_is_tls(const struct conn *c)
{
    return c->bev != NULL;
}

SSL *conn_ssl(const struct conn *c)
{
    return c->bev ? bufferevent_openssl_get_ssl(c->bev) : NULL;
}

unsigned long conn_tls_error(struct conn *c)
{
    return c->bev ? bufferevent_get_openssl_error(c->bev) : 0;
}
