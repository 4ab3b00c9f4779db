#include "conn.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

/* One read asks for this much space: a request or response of a sidecar's
 * usual size arrives in one readv, and a level-triggered loop comes back for more.
 * It is also one TLS record's largest plaintext, so one SSL_read fills it at most. */
#define READ_SPACE 16384

/* What one TLS readable event may decrypt before the connection lets the rest of
 * the loop run; what OpenSSL still holds then is read on the loop's next pass. */
#define TLS_READ_BURST (4 * READ_SPACE)

/* A TLS peer that sends this many bytes of records without data (tickets, say)
 * since its last data keeps the loop busy for nothing: a pooled connection's read
 * event runs first in a loop turn and would run ahead of everything else. A legal
 * peer sends a few hundred such bytes (OpenSSL itself caps key updates, warning
 * alerts and empty records); one record is at most 16 KiB and some. */
#define TLS_MAX_IDLE_RAW (64 * 1024)

struct conn {
    struct event_base *base;
    int fd;                         /* owned */
    SSL *ssl;                       /* owned: TLS only */
    struct evbuffer *in, *out;      /* owned */
    struct event rd, wr;
    struct event deadline;          /* TLS connect: bounds the connect and the handshake */
    struct evbuffer_cb_entry *resume_cb; /* set while reading is paused by the read limit */
    conn_read_cb on_read;
    conn_drained_cb on_drained;
    conn_event_cb on_event;
    void *arg;
    struct timeval read_tv, write_tv;
    size_t read_high;
    unsigned long tls_err;          /* the last OpenSSL error code of a failure */
    int end_what, end_err;          /* TLS: the read side's EOF / ERROR, until reported */
    int wr_err;                     /* a failed flush's errno, reported from the loop */
    int busy;                       /* inside one of our event callbacks */
    uint64_t raw_mark;              /* TLS: bytes the socket had given OpenSSL at the last data */
    unsigned reading : 1;           /* the owner wants reads */
    unsigned rd_added : 1;
    unsigned wr_added : 1;
    unsigned connecting : 1;        /* TCP connect in progress (EV_WRITE belongs to it) */
    unsigned read_eof : 1;          /* no more reads: EOF or a read error was met */
    unsigned dead : 1;              /* conn_free() ran inside a callback: freed on the way out */
    unsigned deadline_set : 1;
    unsigned handshaking : 1;       /* TLS: SSL_do_handshake() has not returned 1 yet */
    unsigned hs_want_rd : 1;        /* ... and waits for the socket to be readable */
    unsigned hs_want_wr : 1;        /* ... or writable */
    unsigned out_waiting : 1;       /* TLS: the output waits for the socket (an armed write) */
    unsigned wr_want_rd : 1;        /* TLS: SSL_write said WANT_READ */
    unsigned rd_want_wr : 1;        /* TLS: SSL_read said WANT_WRITE */
    unsigned failed : 1;            /* TLS: a fatal error; OpenSSL is not called again */
};

static void conn_destroy(struct conn *c);

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

static void emit_drained(struct conn *c)
{
    if (c->on_drained)
        c->on_drained(c, c->arg);
}

/* An owner may free its conn from inside a callback (the upstream pool does);
 * a TLS event can report twice (on_drained, then on_read), so every callback of
 * ours runs between enter() and leave(), and conn_free() inside defers to leave(). */
static void enter(struct conn *c)
{
    c->busy++;
}

static void leave(struct conn *c)
{
    if (--c->busy == 0 && c->dead)
        conn_destroy(c);
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

static void event_add_tv(struct event *ev, const struct timeval *tv)
{
    if (tv_set(tv))
        event_add(ev, tv);
    else {
        event_add(ev, NULL);
        event_remove_timer(ev);
    }
}

/* ---- interest ------------------------------------------------------------ */

/* The owner's reads can run now (TLS: the handshake is over, no write blocks them). */
static int owner_reads(const struct conn *c)
{
    return c->reading && !c->resume_cb && !c->connecting && !c->read_eof && !c->handshaking &&
           !c->rd_want_wr && !c->failed;
}

static int want_rd(const struct conn *c)
{
    if (c->failed)
        return 0;
    return owner_reads(c) || (c->handshaking && c->hs_want_rd) || c->wr_want_rd;
}

static int want_wr(const struct conn *c)
{
    if (!c->ssl)
        return c->wr_added;         /* plain: armed and disarmed where it happens */
    if (c->failed)
        return 0;
    return c->connecting || (c->handshaking && c->hs_want_wr) || c->rd_want_wr ||
           (c->out_waiting && !c->wr_want_rd && !c->handshaking);
}

/* Adds or removes the read event to match what the owner (and TLS) wants. Only
 * a change touches epoll. */
static void rd_update(struct conn *c)
{
    int want = want_rd(c);

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

static void wr_update(struct conn *c)
{
    if (want_wr(c))
        wr_arm(c);
    else
        wr_disarm(c);
}

/* Bytes OpenSSL holds that no readable event will announce: decrypted ones, or
 * whole records it read ahead. */
static int tls_has_pending(const struct conn *c)
{
    return c->ssl && !c->failed && SSL_has_pending(c->ssl);
}

/* The owner's reads became possible again: what OpenSSL holds is read from the
 * loop (never from inside the verb), as is an end of the stream not yet reported. */
static void rd_kick(struct conn *c)
{
    if (owner_reads(c) && tls_has_pending(c))
        event_active(&c->rd, EV_READ, 1);
    else if (c->reading && c->end_what)
        event_active(&c->rd, EV_READ, 1);
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
    rd_kick(c);
}

static void pause_for_limit(struct conn *c)
{
    if (c->resume_cb || !c->read_high || evbuffer_get_length(c->in) < c->read_high)
        return;
    c->resume_cb = evbuffer_add_cb(c->in, resume_cb, c);
    rd_update(c);
}

/* ---- plain ------------------------------------------------------------ */

static void plain_read(struct conn *c)
{
    struct evbuffer_iovec vec[2];
    int n_vec;
    ssize_t n;

    n_vec = evbuffer_reserve_space(c->in, READ_SPACE, vec, 2);
    if (n_vec <= 0) {
        emit_event(c, CONN_ERROR | CONN_READING, ENOMEM, c->arg);
        return;
    }
    n = readv(c->fd, (struct iovec *)vec, n_vec);
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

/* ---- TLS ---------------------------------------------------------------- */

/* Takes what the thread's error queue says about a failure: the last code is
 * kept for conn_tls_error(), the queue is left empty for the next connection. */
static void tls_take_errors(struct conn *c)
{
    unsigned long e, last = 0;

    while ((e = ERR_get_error()) != 0)
        last = e;
    if (last)
        c->tls_err = last;
}

/* SSL_get_error() reads the thread's error queue, shared by every connection of
 * the loop: it must be empty before each SSL_* call. Peeking first is cheaper
 * than clearing an empty queue on every read and write. */
static void tls_clear_stale(void)
{
    if (ERR_peek_error() != 0)
        ERR_clear_error();
}

enum tls_io { TLS_IO_OK, TLS_IO_WANT, TLS_IO_EOF, TLS_IO_FAIL };

/* Sorts a failed SSL_* call <r> into wait (sets the want flags through
 * <want_rd> / <want_wr>), the end of the stream, or a failure with *<err>. */
static enum tls_io tls_sort(struct conn *c, int r, int *want_rd, int *want_wr, int *err)
{
    int saved = errno;
    int e = SSL_get_error(c->ssl, r);

    *want_rd = *want_wr = 0;
    switch (e) {
    case SSL_ERROR_WANT_READ:
        *want_rd = 1;
        return TLS_IO_WANT;
    case SSL_ERROR_WANT_WRITE:
        *want_wr = 1;
        return TLS_IO_WANT;
    case SSL_ERROR_ZERO_RETURN:
        /* close_notify */
        return TLS_IO_EOF;
    case SSL_ERROR_SYSCALL:
        if (ERR_peek_error() == 0 && (r == 0 || saved == 0)) {
            /* A TCP close without close_notify, as OpenSSL 1.1 reports it: a
             * "dirty shutdown", taken as the end (HTTP frames its messages). */
            return TLS_IO_EOF;
        }
        tls_take_errors(c);
        *err = saved ? saved : ECONNRESET;
        return TLS_IO_FAIL;
    case SSL_ERROR_SSL:
        if (ERR_GET_REASON(ERR_peek_last_error()) == SSL_R_UNEXPECTED_EOF_WHILE_READING && !c->handshaking) {
            /* The same dirty shutdown, as OpenSSL 3 reports it. */
            ERR_clear_error();
            return TLS_IO_EOF;
        }
        tls_take_errors(c);
        *err = EPROTO;
        return TLS_IO_FAIL;
    default:
        tls_take_errors(c);
        *err = EPROTO;
        return TLS_IO_FAIL;
    }
}

/* Writes the output through SSL_write, one record's worth of contiguous bytes at
 * a time, until it is empty (1), the socket is full or OpenSSL must read first
 * (0: flags set), or a failure (-1, *<err>). */
static int tls_write(struct conn *c, int *err)
{
    size_t len;

    c->wr_want_rd = 0;
    while ((len = evbuffer_get_length(c->out)) > 0) {
        int want_r, want_w, r;
        unsigned char *p;

        /* Small chunks (a head, then a body) go out as one record, not one each:
         * one system call. A chunk already that long is not copied. */
        if (len > READ_SPACE)
            len = READ_SPACE;
        p = evbuffer_pullup(c->out, (ssize_t)len);
        if (!p) {
            *err = ENOMEM;
            return -1;
        }
        tls_clear_stale();
        r = SSL_write(c->ssl, p, (int)len);
        if (r > 0) {
            evbuffer_drain(c->out, (size_t)r);
            continue;
        }
        switch (tls_sort(c, r, &want_r, &want_w, err)) {
        case TLS_IO_WANT:
            c->wr_want_rd = want_r ? 1 : 0;
            return 0;
        case TLS_IO_EOF:
            /* A write meets a close as a failure, as send() would. */
            *err = EPIPE;
            return -1;
        default:
            return -1;
        }
    }
    return 1;
}

/* Decrypts into the input what the socket and OpenSSL hold: SSL_read again while
 * OpenSSL has bytes (read ahead, so one read(2) brings many records) that no
 * readable event would announce. Records its end in end_what. Returns the bytes
 * read. Reports nothing. */
static size_t tls_read(struct conn *c)
{
    size_t got = 0;

    while (owner_reads(c)) {
        struct evbuffer_iovec vec;
        int want_r, want_w, err = 0, r;

        if (got >= TLS_READ_BURST) {
            /* The rest on the loop's next pass, after other connections. */
            if (tls_has_pending(c))
                event_active(&c->rd, EV_READ, 1);
            break;
        }
        if (evbuffer_reserve_space(c->in, READ_SPACE, &vec, 1) != 1) {
            c->end_what = CONN_ERROR | CONN_READING;
            c->end_err = ENOMEM;
            c->read_eof = 1;
            break;
        }
        tls_clear_stale();
        r = SSL_read(c->ssl, vec.iov_base, vec.iov_len > INT_MAX ? INT_MAX : (int)vec.iov_len);
        if (r > 0) {
            vec.iov_len = (size_t)r;
            evbuffer_commit_space(c->in, &vec, 1);
            got += (size_t)r;
            pause_for_limit(c);
            /* Nothing held: the socket says when there is more (no read(2) for EAGAIN). */
            if (!SSL_has_pending(c->ssl))
                break;
            continue;
        }
        evbuffer_commit_space(c->in, &vec, 0);
        switch (tls_sort(c, r, &want_r, &want_w, &err)) {
        case TLS_IO_WANT:
            /* A read that needs the socket writable (its own key update going out)
             * waits on EV_WRITE; the read event stops meanwhile. */
            if (want_w)
                c->rd_want_wr = 1;
            break;
        case TLS_IO_EOF:
            c->end_what = CONN_EOF | CONN_READING;
            c->read_eof = 1;
            break;
        default:
            c->end_what = CONN_ERROR | CONN_READING;
            c->end_err = err;
            c->read_eof = 1;
            c->failed = 1;
            break;
        }
        break;
    }
    return got;
}

/* What a readable or writable event found for the owner's reads: the bytes, then
 * the end of the stream if any (held back while the owner has reading off). */
static void tls_read_and_report(struct conn *c)
{
    size_t got = tls_read(c);
    uint64_t raw = BIO_number_read(SSL_get_rbio(c->ssl));

    if (got > 0)
        c->raw_mark = raw;
    else if (!c->end_what && raw - c->raw_mark > TLS_MAX_IDLE_RAW) {
        c->end_what = CONN_ERROR | CONN_READING;
        c->end_err = EPROTO;
        c->read_eof = 1;
        c->failed = 1;
    }
    rd_update(c);
    wr_update(c);
    if (got > 0) {
        emit_read(c);
        if (c->dead)
            return;
    }
    if (c->end_what && (c->reading || (c->end_what & CONN_ERROR))) {
        int what = c->end_what, err = c->end_err;
        c->end_what = 0;
        emit_event(c, what, err, c->arg);
    }
}

/* The output's turn on a writable (or, for WANT_READ, readable) event: on_drained
 * once an armed write emptied it. */
static void tls_write_and_report(struct conn *c)
{
    int err = 0, r;

    if (!c->out_waiting)
        return;
    r = tls_write(c, &err);
    if (r < 0) {
        c->failed = 1;
        c->out_waiting = 0;
        rd_update(c);
        wr_update(c);
        emit_event(c, CONN_ERROR | CONN_WRITING, err, c->arg);
        return;
    }
    if (r == 0) {
        rd_update(c);
        wr_update(c);
        return;
    }
    c->out_waiting = 0;
    rd_update(c);
    wr_update(c);
    emit_drained(c);
}

/* The handshake is over: the deadline goes, what was queued is written, and
 * CONNECTED is followed by what OpenSSL already holds (a client's request often
 * comes in the flight of its last handshake message, and the socket may never
 * be readable again). */
static void tls_established(struct conn *c)
{
    int err = 0;

    c->handshaking = 0;
    c->hs_want_rd = c->hs_want_wr = 0;
    c->raw_mark = BIO_number_read(SSL_get_rbio(c->ssl));
    if (c->deadline_set)
        event_del(&c->deadline);
    if (evbuffer_get_length(c->out) > 0) {
        int r = tls_write(c, &err);
        if (r < 0) {
            /* Met again from the loop, like a failed flush. */
            c->wr_err = err;
            event_active(&c->wr, EV_WRITE, 1);
        } else if (r == 0) {
            c->out_waiting = 1;
        }
    }
    rd_update(c);
    wr_update(c);
    emit_event(c, CONN_CONNECTED, 0, c->arg);
    if (c->dead || !owner_reads(c) || !SSL_has_pending(c->ssl))
        return;
    tls_read_and_report(c);
}

/* One step of the handshake; <dir> is the direction of the event that drove it. */
static void tls_handshake(struct conn *c, int dir)
{
    int want_r, want_w, err = 0, r;

    tls_clear_stale();
    r = SSL_do_handshake(c->ssl);
    if (r == 1) {
        tls_established(c);
        return;
    }
    if (tls_sort(c, r, &want_r, &want_w, &err) == TLS_IO_WANT) {
        c->hs_want_rd = want_r ? 1 : 0;
        c->hs_want_wr = want_w ? 1 : 0;
        rd_update(c);
        wr_update(c);
        return;
    }
    /* A close during the handshake is a failed handshake, not an end of stream. */
    if (!err)
        err = ECONNRESET;
    c->failed = 1;
    c->read_eof = 1;
    rd_update(c);
    wr_update(c);
    emit_event(c, CONN_ERROR | dir, err, c->arg);
}

static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;

    (void)fd;
    (void)what;
    enter(c);
    emit_event(c, CONN_TIMEOUT | ((c->connecting || c->hs_want_wr) ? CONN_WRITING : CONN_READING), 0, c->arg);
    leave(c);
}

/* ---- events ------------------------------------------------------------- */

static void rd_cb(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;

    (void)fd;
    enter(c);
    if (what & EV_TIMEOUT) {
        /* A read event armed only for a write (TLS waiting for the peer) times out that write. */
        emit_event(c, CONN_TIMEOUT | (c->reading || !c->wr_want_rd ? CONN_READING : CONN_WRITING), 0, c->arg);
    } else if (!c->ssl) {
        plain_read(c);
    } else if (c->failed) {
        if (c->end_what && c->reading) {
            int w = c->end_what;
            c->end_what = 0;
            emit_event(c, w, c->end_err, c->arg);
        }
    } else if (c->handshaking) {
        tls_handshake(c, CONN_READING);
    } else {
        if (c->wr_want_rd) {
            c->wr_want_rd = 0;
            tls_write_and_report(c);
        }
        if (!c->dead)
            tls_read_and_report(c);
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
        wr_disarm(c);
        if (c->ssl)
            c->failed = 1;
        emit_event(c, CONN_ERROR | CONN_WRITING, err, c->arg);
        return;
    }
    if (c->ssl) {
        /* The ClientHello goes now, in this same callback. */
        tls_handshake(c, CONN_WRITING);
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

static void plain_write(struct conn *c)
{
    int n;

    if (evbuffer_get_length(c->out) > 0) {
        n = evbuffer_write(c->out, c->fd);
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
    emit_drained(c);
}

static void wr_cb(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;

    (void)fd;
    enter(c);
    if (c->wr_err) {
        int err = c->wr_err;
        c->wr_err = 0;
        c->failed = c->ssl ? 1 : 0;
        c->out_waiting = 0;
        wr_disarm(c);
        emit_event(c, CONN_ERROR | CONN_WRITING, err, c->arg);
    } else if (what & EV_TIMEOUT) {
        /* A write event armed only for a read (TLS sending its own record) times out that read. */
        int dir = c->ssl && c->rd_want_wr && !c->out_waiting ? CONN_READING : CONN_WRITING;
        emit_event(c, CONN_TIMEOUT | dir, 0, c->arg);
    } else if (c->connecting) {
        connect_done(c);
    } else if (!c->ssl) {
        plain_write(c);
    } else if (c->failed) {
        wr_disarm(c);
    } else if (c->handshaking) {
        tls_handshake(c, CONN_WRITING);
    } else {
        if (c->rd_want_wr) {
            c->rd_want_wr = 0;
            tls_read_and_report(c);
        }
        if (!c->dead && !c->failed)
            tls_write_and_report(c);
        if (!c->dead)
            wr_update(c);
    }
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
    c->write_tv = ms_tv(timeout_ms);
    /* Whether it finished at once or not, CONNECTED comes from the loop. */
    wr_arm(c);
    return c;
}

/* Gives <c> <ssl> on <c->fd>, each side's modes set. 0, or -ENOMEM (<ssl> untouched
 * but for its modes). */
static int tls_attach(struct conn *c, SSL *ssl, int accepting)
{
    if (SSL_set_fd(ssl, c->fd) != 1) {
        ERR_clear_error();
        return -ENOMEM;
    }
    /* Partial writes: SSL_write returns once a record is out, so the output is
     * drained record by record; moving buffer: a retry may come from a new
     * pullup of the same bytes. Read ahead: one read(2) takes every record the
     * socket holds, tls_read() then empties OpenSSL. */
    SSL_set_mode(ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_set_read_ahead(ssl, 1);
    if (accepting)
        SSL_set_accept_state(ssl);
    else
        SSL_set_connect_state(ssl);
    c->ssl = ssl;
    c->handshaking = 1;
    return 0;
}

struct conn *conn_tls_new(struct event_base *base, int fd, SSL *ssl, int accepting)
{
    struct conn *c = conn_alloc(base, fd);

    if (!c)
        return NULL;
    if (tls_attach(c, ssl, accepting) < 0) {
        c->fd = -1;
        conn_destroy(c);
        return NULL;
    }
    /* The server waits for the ClientHello; a client sends its own from the loop. */
    if (accepting)
        c->hs_want_rd = 1;
    else
        c->hs_want_wr = 1;
    rd_update(c);
    wr_update(c);
    return c;
}

struct conn *conn_tls_connect(struct event_base *base, const struct sockaddr *sa, socklen_t salen, SSL *ssl,
                              int timeout_ms)
{
    struct timeval tv = ms_tv(timeout_ms);
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
    if (!c || tls_attach(c, ssl, 0) < 0) {
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
    if (tv_set(&tv)) {
        evtimer_assign(&c->deadline, base, deadline_cb, c);
        evtimer_add(&c->deadline, &tv);
        c->deadline_set = 1;
    }
    wr_update(c);
    return c;
}

/* ---- both --------------------------------------------------------------- */

static void conn_destroy(struct conn *c)
{
    event_del(&c->rd);
    event_del(&c->wr);
    if (c->deadline_set)
        event_del(&c->deadline);
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

static size_t tls_flush(struct conn *c)
{
    size_t left = evbuffer_get_length(c->out);
    int err = 0, r;

    /* Before the handshake ends, or while a write waits, it goes later. */
    if (c->connecting || c->handshaking || c->failed || c->out_waiting || c->wr_err)
        return left;
    r = tls_write(c, &err);
    if (r < 0) {
        /* Reported from the loop, never from inside the verb. */
        c->wr_err = err;
        event_active(&c->wr, EV_WRITE, 1);
        return left;
    }
    left = evbuffer_get_length(c->out);
    if (left > 0) {
        c->out_waiting = 1;
        rd_update(c);
        wr_update(c);
    }
    return left;
}

size_t conn_flush(struct conn *c)
{
    size_t left = evbuffer_get_length(c->out);

    if (left == 0)
        return 0;
    if (c->ssl)
        return tls_flush(c);
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
    int was = c->reading;

    c->reading = on ? 1 : 0;
    rd_update(c);
    if (on && !was)
        rd_kick(c);
}

void conn_set_read_limit(struct conn *c, size_t high)
{
    c->read_high = high;
    if (c->resume_cb && (!high || evbuffer_get_length(c->in) < high)) {
        evbuffer_remove_cb_entry(c->in, c->resume_cb);
        c->resume_cb = NULL;
        rd_update(c);
        rd_kick(c);
    } else {
        pause_for_limit(c);
    }
}

void conn_set_timeouts(struct conn *c, int read_ms, int write_ms)
{
    c->read_tv = ms_tv(read_ms);
    c->write_tv = ms_tv(write_ms);
    if (c->rd_added)
        event_add_tv(&c->rd, &c->read_tv);
    if (c->wr_added)
        event_add_tv(&c->wr, &c->write_tv);
}

void conn_set_priority(struct conn *c, int prio)
{
    /* TLS too, now that its events are these two (libevent's OpenSSL bufferevent
     * had deferred callbacks of its own that, at the first priority, ran ahead of
     * every other connection): nothing here re-runs by itself but tls_read()'s
     * bounded bursts, and TLS_MAX_IDLE_RAW ends a peer that keeps a read event
     * busy without sending data. */
    event_priority_set(&c->rd, prio);
    event_priority_set(&c->wr, prio);
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
