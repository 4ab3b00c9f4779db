/* conn_events (internal to conn): what conn.c, conn_events.c and conn_tls.c
 * share -- included by nobody else; other modules see only conn.h.
 *   struct conn                      the layout: fd, SSL, buffers, events, state bits
 *   READ_SPACE                       how much space one read reserves (plain and TLS)
 *   conn_emit_event() / conn_emit_read() / conn_emit_drained()   to the owner, if any
 *   conn_owner_reads()               the owner's reads can run now
 *   conn_rd_update() / conn_wr_update() / conn_wr_arm() / conn_wr_disarm()   events to match the state
 *   conn_pause_for_limit() / conn_rd_kick()   the read limit, and reads resumed from the loop
 *   conn_clock_us() / conn_deadline_after() / conn_deadline_start() / conn_deadline_restart() /
 *   conn_timer_rearm()               the timeouts: deadlines, and the one timer that checks them
 *   conn_tls_has_pending()           OpenSSL holds bytes no readable event announces
 * Control goes one way: conn.c calls conn_tls.c (conn_tls.h) and conn_events.c;
 * conn_tls.c calls conn_events.c; conn_events.c calls neither. conn_tls.c runs
 * no libevent callback of its own and never frees a conn. */
#ifndef SIDECAR_CONN_EVENTS_H
#define SIDECAR_CONN_EVENTS_H

#include <stddef.h>
#include <stdint.h>

#include <event2/event_struct.h>
#include <openssl/ssl.h>

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
    struct event rd, wr;            /* no timeout of their own: see timer */
    struct event timer;             /* rings at or before the earliest deadline below */
    struct evbuffer_cb_entry *resume_cb; /* set while reading is paused by the read limit */
    conn_read_cb on_read;
    conn_drained_cb on_drained;
    conn_event_cb on_event;
    void *arg;
    int read_ms, write_ms;          /* conn_set_timeouts(); the write one also bounds a plain connect */
    /* Deadlines on conn_clock_us()'s scale, 0: none. rd_ / wr_deadline run while
     * the rd / wr event is added and its timeout is set, restarted by each of its
     * activations; connect_deadline (TLS connect) bounds the connect and the handshake. */
    int64_t rd_deadline, wr_deadline, connect_deadline;
    int64_t timer_at;               /* the deadline timer is set for; 0: not set */
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
    unsigned handshaking : 1;       /* TLS: SSL_do_handshake() has not returned 1 yet */
    unsigned hs_want_rd : 1;        /* ... and waits for the socket to be readable */
    unsigned hs_want_wr : 1;        /* ... or writable */
    unsigned out_waiting : 1;       /* TLS: the output waits for the socket (an armed write) */
    unsigned wr_want_rd : 1;        /* TLS: SSL_write said WANT_READ */
    unsigned rd_want_wr : 1;        /* TLS: SSL_read said WANT_WRITE */
    unsigned failed : 1;            /* TLS: a fatal error; OpenSSL is not called again */
};

/* ---- conn_events.c, for conn.c and conn_tls.c ------------------------------ */

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
/* The write event armed / disarmed now (plain: where a write leaves output / empties it). */
void conn_wr_arm(struct conn *c);
void conn_wr_disarm(struct conn *c);
/* The owner's reads became possible again: what OpenSSL holds, or an end not yet
 * reported, is read from the loop (never from inside the verb). */
void conn_rd_kick(struct conn *c);

/* Timeouts are deadlines, checked by one timer per conn (nginx's and HAProxy's
 * way): restarting one stores a time and touches libevent only when the timer
 * is set for later than that (or not set); the timer, once it rings, reports
 * what passed and is set again for what is left (conn.c's timer_cb).
 * The clock: CLOCK_MONOTONIC_COARSE in us (a vDSO read, no system call). */
int64_t conn_clock_us(void);
/* The deadline of a timeout of <ms> started at <now>: late enough that it never
 * passes early on the coarse clock; 0 when <ms> is 0 (none). */
int64_t conn_deadline_after(int64_t now, int ms);
/* *<deadline> (one of c's) starts now for <ms> (0: stops); the timer moves only
 * if it would ring too late. */
void conn_deadline_start(struct conn *c, int64_t *deadline, int ms);
/* The timer set for c's earliest deadline if it is not set for that or earlier. */
void conn_timer_rearm(struct conn *c, int64_t now);

/* A running deadline restarts (an activation of its event); a stopped one stays stopped. */
static inline void conn_deadline_restart(struct conn *c, int64_t *deadline, int ms)
{
    if (*deadline)
        conn_deadline_start(c, deadline, ms);
}

/* 1 when OpenSSL holds bytes that no readable event will announce. */
static inline int conn_tls_has_pending(const struct conn *c)
{
    return c->ssl && !c->failed && SSL_has_pending(c->ssl);
}

#endif
