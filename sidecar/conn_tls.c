/* conn_tls: the TLS path of a conn -- the non-blocking handshake, the SSL_read and
 * SSL_write loops with their WANT_READ / WANT_WRITE, OpenSSL's error mapping, the
 * read burst and the flood guard. Called only from conn.c (see conn_events.h); it
 * reports to the owner through conn.c's emit helpers and frees nothing. */
#include "conn_events.h"
#include "conn_tls.h"

#include <errno.h>
#include <limits.h>
#include <stdint.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

/* What one TLS readable event may decrypt before the connection lets the rest of
 * the loop run; what OpenSSL still holds then is read on the loop's next pass. */
#define TLS_READ_BURST (4 * READ_SPACE)

/* A TLS peer that sends this many bytes of records without data (tickets, say)
 * since its last data keeps the loop busy for nothing: a pooled connection's read
 * event runs first in a loop turn and would run ahead of everything else. A legal
 * peer sends a few hundred such bytes (OpenSSL itself caps key updates, warning
 * alerts and empty records); one record is at most 16 KiB and some. */
#define TLS_MAX_IDLE_RAW (64 * 1024)

/* Bytes OpenSSL holds that no readable event will announce: decrypted ones, or
 * whole records it read ahead. */
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

    while (conn_owner_reads(c)) {
        struct evbuffer_iovec vec;
        int want_r, want_w, err = 0, r;

        if (got >= TLS_READ_BURST) {
            /* The rest on the loop's next pass, after other connections. */
            if (conn_tls_has_pending(c))
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
            conn_pause_for_limit(c);
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
void conn_tls_read_and_report(struct conn *c)
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
    conn_rd_update(c);
    conn_wr_update(c);
    if (got > 0) {
        conn_emit_read(c);
        if (c->dead)
            return;
    }
    if (c->end_what && (c->reading || (c->end_what & CONN_ERROR))) {
        int what = c->end_what, err = c->end_err;
        c->end_what = 0;
        conn_emit_event(c, what, err, c->arg);
    }
}

/* The output's turn on a writable (or, for WANT_READ, readable) event: on_drained
 * once an armed write emptied it. */
void conn_tls_write_and_report(struct conn *c)
{
    int err = 0, r;

    if (!c->out_waiting)
        return;
    r = tls_write(c, &err);
    if (r < 0) {
        c->failed = 1;
        c->out_waiting = 0;
        conn_rd_update(c);
        conn_wr_update(c);
        conn_emit_event(c, CONN_ERROR | CONN_WRITING, err, c->arg);
        return;
    }
    if (r == 0) {
        conn_rd_update(c);
        conn_wr_update(c);
        return;
    }
    c->out_waiting = 0;
    conn_rd_update(c);
    conn_wr_update(c);
    conn_emit_drained(c);
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
    c->connect_deadline = 0;    /* the timer, if set for it, rings and finds nothing */
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
    conn_rd_update(c);
    conn_wr_update(c);
    conn_emit_event(c, CONN_CONNECTED, 0, c->arg);
    if (c->dead || !conn_owner_reads(c) || !SSL_has_pending(c->ssl))
        return;
    conn_tls_read_and_report(c);
}

/* One step of the handshake; <dir> is the direction of the event that drove it. */
void conn_tls_handshake(struct conn *c, int dir)
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
        conn_rd_update(c);
        conn_wr_update(c);
        return;
    }
    /* A close during the handshake is a failed handshake, not an end of stream. */
    if (!err)
        err = ECONNRESET;
    c->failed = 1;
    c->read_eof = 1;
    conn_rd_update(c);
    conn_wr_update(c);
    conn_emit_event(c, CONN_ERROR | dir, err, c->arg);
}

/* Gives <c> <ssl> on <c->fd>, each side's modes set. 0, or -ENOMEM (<ssl> untouched
 * but for its modes). */
int conn_tls_attach(struct conn *c, SSL *ssl, int accepting)
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

size_t conn_tls_flush(struct conn *c)
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
        conn_rd_update(c);
        conn_wr_update(c);
    }
    return left;
}
