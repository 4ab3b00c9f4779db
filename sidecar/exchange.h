/* exchange: one HTTP/1 request and its response on one upstream connection.
 *
 * API:
 *   exchange_new() / exchange_free()
 *   exchange_start()     a pooled or fresh connection to a peer; the request bytes handed so far go first
 *   exchange_send()      more request bytes (body)
 *   exchange_flush() / exchange_queued() / exchange_pause_reading()   I/O and backpressure
 *   exchange_release()   after on_done: the connection back to the pool, or closed
 *   exchange_close() / exchange_cancel()   end the attempt now
 *   exchange_take_conn() after a 101: the connection, for a tunnel
 * on_done and on_fail are the last thing the exchange does in that loop turn:
 * the owner may end, reuse or free it there.
 *
 * After each batch of response bytes it reports to its owner, in this order:
 * on_head (the final head, or a 101) once, on_body with the decoded body bytes
 * of the batch, on_done when the response is whole. An attempt that fails
 * reports on_fail once with its facts (struct failure_facts, retry.h), its
 * connection already closed. A head found bad in the batch that brought it is
 * a failure, never reported as a head: nothing of it can have been forwarded.
 * The exchange never writes to the client and decides no retry. */
#ifndef SIDECAR_EXCHANGE_H
#define SIDECAR_EXCHANGE_H

#include <stddef.h>
#include <stdint.h>

struct config;
struct evbuffer;
struct exchange;
struct failure_facts;
struct http_head;
struct peer;
struct upconn;
struct upstream_pool;

enum { EXCHANGE_GO = 0, EXCHANGE_STOP = 1 };

struct exchange_cbs {
    /* The final response head (or a 101) is whole. EXCHANGE_GO: body and done
     * follow; EXCHANGE_STOP: the owner ended the exchange (exchange_close), nothing follows. */
    int (*on_head)(void *arg, const struct http_head *resp);
    /* Decoded body bytes; the owner takes them all (moves or drains <body>). */
    void (*on_body)(void *arg, struct evbuffer *body);
    /* The response is whole: exchange_release() or exchange_take_conn() next. */
    void (*on_done)(void *arg);
    /* The attempt failed; the connection is closed. */
    void (*on_fail)(void *arg, const struct failure_facts *f);
    /* A batch was handled (nothing ended) or the connection took queued request
     * bytes: the owner flushes what it queued and rebalances. */
    void (*on_progress)(void *arg);
};

/* Flags of exchange_start(). */
#define EXCHANGE_REQ_HEAD    1   /* the request is a HEAD: the response has no body */
#define EXCHANGE_REQ_UPGRADE 2   /* the request asks for an upgrade: a 101 may answer it */

/* Once at startup, before any worker runs: the response parser's settings. */
void exchange_init(void);

/* NULL on allocation failure. <cfg> gives the head limit and the idle timeout.
 * <pending> (the owner's, lent for the exchange's life) holds request bytes
 * while no connection is up: they move to the connection once it is. */
struct exchange *exchange_new(const struct config *cfg, const struct exchange_cbs *cbs, void *arg,
                              struct evbuffer *pending);
void exchange_free(struct exchange *ex);

/* Starts an attempt to <peer>: a pooled connection unless <fresh>; what
 * <pending> holds goes first. <who> (kept) names the client in log lines. 0,
 * or a negative errno when no connection could be had at once (nothing is
 * reported then). */
int exchange_start(struct exchange *ex, struct upstream_pool *pool, struct peer *peer, int fresh, int flags,
                   const char *who);

/* Appends request bytes for the peer. 0 or -ENOMEM. */
int exchange_send(struct exchange *ex, const void *data, size_t len);
/* Writes what is queued for the peer. */
void exchange_flush(struct exchange *ex);
/* Request bytes not yet taken by the peer's socket (pending ones included). */
size_t exchange_queued(const struct exchange *ex);
/* Stops (1) or resumes (0) reading the response: the client's output is full. */
void exchange_pause_reading(struct exchange *ex, int paused);

/* 1 while an attempt holds a connection. */
int exchange_active(const struct exchange *ex);
/* 1 while the attempt's connection is up (request bytes go to its socket). */
int exchange_connected(const struct exchange *ex);
/* The body decoded so far and whether the response is whole: for an owner
 * that stops at on_head and keeps the response. */
struct evbuffer *exchange_body(struct exchange *ex);
int exchange_complete(const struct exchange *ex);
/* Moves the response head into <into> (its buffer swapped with the exchange's). */
void exchange_take_head(struct exchange *ex, struct http_head *into);
/* Request sent -> response head, µs, of the last head reported; -1 none. */
int64_t exchange_head_us(const struct exchange *ex);

/* After on_done: the connection goes back to the pool when it may carry another
 * request (<request_whole>: every request byte was sent), else it is closed.
 * Bytes behind the response count as a protocol error and distrust the peer. */
void exchange_release(struct exchange *ex, int request_whole);
/* Ends the attempt now; nothing is reported. */
void exchange_close(struct exchange *ex);
/* Ends the attempt now as <kind> (a timeout of the owner's): fills <f> like an
 * on_fail would, records the attempt's timing, and closes. */
void exchange_cancel(struct exchange *ex, int kind, struct failure_facts *f);
/* After on_done of a 101: the connection (still counted as outstanding on its peer). */
struct upconn *exchange_take_conn(struct exchange *ex);

#endif
