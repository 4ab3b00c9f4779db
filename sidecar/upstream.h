/* upstream: connections to peers and a bounded keep-alive pool per peer, one
 * pool per worker (no sharing, no locks).
 *
 * API:
 *   upstream_pool_new() / upstream_pool_free()
 *   upstream_acquire()    a pooled connection, or a fresh one being connected
 *   upstream_release()    back to the pool when reusable, else closed
 *   upstream_close()      close now
 *   upstream_bytes_acked() TCP_INFO tcpi_bytes_acked of the socket
 * A connection handed out belongs to the caller, who sets its bufferevent
 * callbacks; while pooled it belongs to the pool, which closes it when the
 * peer closes it or it idles past the idle timeout. */
#ifndef SIDECAR_UPSTREAM_H
#define SIDECAR_UPSTREAM_H

#include <stdint.h>

struct event_base;
struct conn;
struct peer;
struct upstream_pool;

struct upconn {
    struct conn *conn;              /* owned */
    struct peer *peer;
    struct upstream_pool *pool;
    int reused;                     /* served a request before this one */
    int tls;                        /* the bufferevent is an OpenSSL one */
    unsigned tls_generation;        /* the upstream TLS context it was made with */
    int tls_session_kept;           /* its resumable session is in the pool's cache */
    int64_t acked_at_open;          /* tcpi_bytes_acked once connected; -1 unknown */
    uint64_t bytes_done;            /* request bytes of the requests it completed */
    int64_t idle_since_ms;          /* when it went back to the pool (monotonic) */
    int idle_limit_ms;              /* ... and how long it may idle there */
    struct upconn *next_idle;       /* pool list link while idle */
    struct upconn *prev_idle;
};

/* <n_peers> peer slots (PEERS_MAX: peers come and go); <max_idle> connections kept per peer; <connect_timeout_ms> bounds connects and
 * <idle_timeout_ms> bounds time in the pool. NULL on allocation failure. */
struct upstream_pool *upstream_pool_new(struct event_base *base, int n_peers, int max_idle, int connect_timeout_ms,
                                        int idle_timeout_ms);
void upstream_pool_free(struct upstream_pool *pool);

/* A connection to <peer>: a pooled, connected one (reused = 1) unless <fresh>,
 * or a new one whose connect is in progress (reused = 0; the caller's event
 * callback gets BEV_EVENT_CONNECTED, or ERROR / TIMEOUT with errno set).
 * Callbacks are unset: the caller sets them. NULL with errno on failure. */
struct upconn *upstream_acquire(struct upstream_pool *pool, struct peer *peer, int fresh);

/* Keeps <c>'s TLS session (if any, and resumable) for the next connection to
 * that peer: after the handshake, and again after a response (TLS 1.3 tickets). */
void upstream_tls_keep_session(struct upconn *c);

/* Gives <c> back: pooled when the pool has room and nothing is pending in its
 * buffers, closed otherwise. <c> must not be used afterwards. */
void upstream_release(struct upconn *c);

/* <peer> sent bytes no request asked for: for UPSTREAM_DISTRUST_MS its
 * connections close after each response instead of going back to the pool, so
 * that no later stray of its can pass for the answer to another request. */
#define UPSTREAM_DISTRUST_MS 60000
void upstream_distrust(struct peer *peer);

/* Closes <c> and frees it. */
void upstream_close(struct upconn *c);

/* Bytes of ours the peer acknowledged (TCP_INFO), or -1 when unknown. */
int64_t upstream_bytes_acked(const struct upconn *c);

/* Closes the pooled connections of peers discovery removed. */
void upstream_pool_close_inactive(struct upstream_pool *pool);

/* Closes every pooled connection (drain). */
void upstream_pool_close_idle(struct upstream_pool *pool);

#endif
