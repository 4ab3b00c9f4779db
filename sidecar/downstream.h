/* downstream: one client connection. It reads and checks requests (llhttp,
 * limits, header and idle timers), one at a time with pipelined bytes kept
 * waiting, answers with nextup's own replies, lingers on close, and frees
 * itself on a later loop turn. What a request means is its owner's (proxy.c):
 * the connection reports through struct downstream_cbs and is driven by the verbs below.
 *
 * API:
 *   downstream_new()                      an accepted socket on a loop
 *   downstream_drain() / downstream_free_all() / downstream_next()   for the worker
 *   downstream_head() / _client_ip() / _method_name() / _is_tls()    the request read
 *   downstream_output() / _flush() / _after_io() / _queued() / _pause_reading()
 *   downstream_response_begun() / _keep_alive() / _set_close() / _request_complete()
 *   downstream_reply_error() / _close_after_write() / _abort() / _request_done() / _tunnel() */
#ifndef SIDECAR_DOWNSTREAM_H
#define SIDECAR_DOWNSTREAM_H

#include <stddef.h>
#include <sys/socket.h>

struct downstream;
struct evbuffer;
struct http_head;
struct loop_ctx;
struct upconn;

struct downstream_cbs {
    /* A request's first byte came: the owner takes what a request needs and
     * calls downstream_set_owner(). 0, or -ENOMEM (answered 503 here). */
    int (*on_begin)(struct downstream *ds);
    /* The head is whole and valid; no body byte has been parsed yet. */
    void (*on_head)(struct downstream *ds);
    /* Body bytes, decoded (no chunk framing). 0, or -ENOMEM. */
    int (*on_body)(struct downstream *ds, const char *at, size_t len);
    /* The body is whole. 0, or -ENOMEM. */
    int (*on_complete)(struct downstream *ds);
    /* The request cannot be served as read (malformed, too large, timed out,
     * stalled): the owner answers <status> (downstream_reply_error). */
    void (*on_bad)(struct downstream *ds, int status, const char *reason);
    /* Client bytes were handled or its output drained: the owner flushes the
     * upstream side and rebalances. */
    void (*on_progress)(struct downstream *ds);
    /* The connection is ending with the request still owned: the owner lets
     * it go (and calls downstream_set_owner(ds, NULL)). */
    void (*on_gone)(struct downstream *ds);
};

/* Once at startup, before any worker runs: the request parser's settings. */
void downstream_init(void);

/* Serves the accepted socket <fd> on <lc>'s loop. Takes <fd> on success; on
 * failure (-ENOMEM) the caller still owns it. */
int downstream_new(struct loop_ctx *lc, const struct downstream_cbs *cbs, int fd, const struct sockaddr *peer_addr,
                   socklen_t peer_len);
/* For drain: closes an idle connection now, else closes it after the response. */
void downstream_drain(struct downstream *ds);
/* Frees every connection of <lc> at once; only once its loop has stopped. */
void downstream_free_all(struct loop_ctx *lc);
/* Next connection in the loop's list (drain walks it). */
struct downstream *downstream_next(struct downstream *ds);

void downstream_set_owner(struct downstream *ds, void *owner);
void *downstream_owner(const struct downstream *ds);
/* The loop the connection lives on. */
struct loop_ctx *downstream_loop(const struct downstream *ds);

/* The request head as read (valid from on_head until downstream_request_done). */
const struct http_head *downstream_head(const struct downstream *ds);
const char *downstream_client_ip(const struct downstream *ds);
/* The method's name once the request line began, else "-". */
const char *downstream_method_name(const struct downstream *ds);
int downstream_is_tls(const struct downstream *ds);
/* 1 if client bytes are waiting unparsed (a body already on its way). */
int downstream_has_unread(const struct downstream *ds);

/* The client's output: the owner queues the response there. */
struct evbuffer *downstream_output(struct downstream *ds);
/* Writes what is queued; bytes left wait for EV_WRITE. */
void downstream_flush(struct downstream *ds);
/* After the owner handled an upstream event: flushes the client side, then on_progress. */
void downstream_after_io(struct downstream *ds);
size_t downstream_queued(const struct downstream *ds);
/* Stops (1) or resumes (0) reading the client: the upstream side is full. */
void downstream_pause_reading(struct downstream *ds, int paused);

/* A response head went to the output: from now on no reply of nextup's can follow. */
void downstream_response_begun(struct downstream *ds);
/* 1 while the connection may carry another request (client's wish, no EOF, not draining). */
int downstream_keep_alive(const struct downstream *ds);
/* The connection closes after this response. */
void downstream_set_close(struct downstream *ds);
/* 1 once the request body was read whole. */
int downstream_request_complete(const struct downstream *ds);

/* Answers <status> with a short text body and closes; after a response began, aborts. */
void downstream_reply_error(struct downstream *ds, int status, const char *reason);
/* Closes once the queued output is written (lingering while a body is unread). */
void downstream_close_after_write(struct downstream *ds);
/* Ends the connection now; no callback reaches its owner again but on_gone. */
void downstream_abort(struct downstream *ds);
/* The owner is done with the request (it has let it go): the next one is read, or the connection closes. */
void downstream_request_done(struct downstream *ds);
/* After a 101: relays bytes both ways with <up> (taken) until either side ends. */
void downstream_tunnel(struct downstream *ds, struct upconn *up);

#endif
