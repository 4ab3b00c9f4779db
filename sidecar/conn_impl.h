/* conn_impl: internal to conn.c and conn_tls.c -- included by nobody else; other
 * modules see only conn.h.
 *
 * What both halves of one conn share:
 *   struct conn                      the layout: fd, SSL, buffers, events, state bits
 *   READ_SPACE                       how much space one read reserves (plain and TLS)
 * conn.c -> conn_tls.c, the whole way into the TLS path (all called from conn.c's
 * event callbacks or verbs, between enter() and leave() when from a callback):
 *   conn_tls_attach()                a new SSL on the conn's fd, modes set (constructors)
 *   conn_tls_handshake()             one step of the handshake (rd_cb, wr_cb, connect_done)
 *   conn_tls_read_and_report()       SSL_read into the input, then on_read / the end
 *   conn_tls_write_and_report()      SSL_write of a waiting output, then on_drained
 *   conn_tls_flush()                 conn_flush() of a TLS conn
 *   conn_tls_has_pending()           OpenSSL holds bytes no readable event announces
 * conn_tls.c -> conn.c, helpers it calls back (never the callbacks or the free path):
 *   conn_emit_event() / conn_emit_read() / conn_emit_drained()   to the owner, if any
 *   conn_owner_reads()               the owner's reads can run now
 *   conn_rd_update() / conn_wr_update()   the events to match the state bits
 *   conn_pause_for_limit()           reading pauses above the read limit
 * conn_tls.c runs no libevent callback of its own and never frees a conn. */
#ifndef SIDECAR_CONN_IMPL_H
#define SIDECAR_CONN_IMPL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/time.h>

#include <event2/event_struct.h>

#include "conn.h"

/* One read asks for this much space: a request or response of a sidecar's
 * usual size arrives in one readv, and a level-triggered loop comes back for more.
 * It is also one TLS record's largest plaintext, so one SSL_read fills it at most. */
#define READ_SPACE 16384

struct conn {
    struct event_base *base;
    int fd;                         /* owned */
    struct ssl_st *ssl;             /* owned: TLS only */
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

/* ---- conn.c, for conn_tls.c --------------------------------------------- */

/* To the owner's callbacks; a conn whose owner let go (callbacks NULL) reports nothing. */
void conn_emit_event(struct conn *c, int what, int err, void *arg);
void conn_emit_read(struct conn *c);
void conn_emit_drained(struct conn *c);
/* 1 when the owner's reads can run now (TLS: the handshake is over, no write blocks them). */
int conn_owner_reads(const struct conn *c);
/* Add or remove the read / write event to match the state bits; only a change touches epoll. */
void conn_rd_update(struct conn *c);
void conn_wr_update(struct conn *c);
/* Pauses reading once the input holds the read limit; resumes by itself below it. */
void conn_pause_for_limit(struct conn *c);

/* ---- conn_tls.c, for conn.c --------------------------------------------- */

/* Gives <c> <ssl> on <c->fd>, each side's modes set. 0, or -ENOMEM (<ssl> untouched
 * but for its modes; still the caller's). */
int conn_tls_attach(struct conn *c, struct ssl_st *ssl, int accepting);
/* One step of the handshake; <dir> (CONN_READING / CONN_WRITING) is the direction
 * of the event that drove it, and of the ERROR reported if it fails. */
void conn_tls_handshake(struct conn *c, int dir);
/* A readable (or, for SSL_read's WANT_WRITE, writable) event's reads: the bytes,
 * then the end of the stream if any. May report; c->dead may be set on return. */
void conn_tls_read_and_report(struct conn *c);
/* A waiting output's turn: on_drained once it is written, ERROR on a failure.
 * May report; c->dead may be set on return. */
void conn_tls_write_and_report(struct conn *c);
/* conn_flush() for TLS: the bytes still queued; reports nothing (an error goes
 * to the loop through wr_err). */
size_t conn_tls_flush(struct conn *c);
/* 1 when OpenSSL holds bytes that no readable event will announce. */
int conn_tls_has_pending(const struct conn *c);

#endif
