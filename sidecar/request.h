/* request: the state of one request across its attempts, shared by the files
 * that serve it: proxy.c (the attempts), replay.c (request bytes towards the
 * upstream and the retry buffer), route.c (which service it is for), answer.c (how it ends: the access-log
 * line, nextup's own replies, the held response) and session.c (what nextup.h lets the decision hook read). Nothing
 * else includes this header.
 *
 * API:
 *   request_log()           the access-log line, once per request
 *   request_log_retry()     one retry (or keep-alive resend) for that line
 *   request_count_response() a response sent, by status class
 *   request_answer_error()  nextup's own answer (or the held response), then close
 *   request_produce() / request_write_head() / request_rewind() / request_replayable()   replay.c */
#ifndef SIDECAR_REQUEST_H
#define SIDECAR_REQUEST_H

#include <stdint.h>

#include <event2/event_struct.h>

#include "accesslog.h"
#include "http1.h"
#include "peers.h"
#include "request_id.h"

#define RETRY_LOG_MAX 18
#define RETRY_LOG_KEEPALIVE_RACE 255      /* retry log cause of a keep-alive race resend */

struct downstream;
struct evbuffer;
struct exchange;
struct loop_ctx;
struct service;

/* One request, across its attempts. Taken when its first byte arrives, given
 * back when it is answered, so that an idle keep-alive connection holds none of
 * it. The buffers survive reuse; <st> is cleared for every request. */
struct request {
    struct request *next_free;            /* the loop's cache link */
    struct loop_ctx *lc;
    struct downstream *ds;                /* the client connection it came on */
    const struct service *svc;            /* the service it is for (route_request); NULL before, or none */
    struct exchange *ex;                  /* owned: the current attempt's exchange */
    struct evbuffer *tosend;              /* owned: request bytes not yet handed to a connection */
    struct evbuffer *replay;              /* owned: body bytes as forwarded, while st.replay_whole */
    /* The last response aborted for a retry, kept whole when it arrived whole,
     * so that if no later attempt gets a response the client still gets a real
     * one (DESIGN invariant 3), not a made-up 502. */
    struct http_head held;                /* owned buffer */
    struct evbuffer *held_body;           /* owned */
    struct event req_timer;               /* NEXTUP_REQUEST_TIMEOUT_MS until the response head */
    struct event try_timer;               /* NEXTUP_PER_TRY_TIMEOUT_MS for one attempt */
    struct event backoff_timer;           /* delay before a retry to a peer already tried */
    struct {
        int replay_whole;                 /* every body byte is in <replay> */
        int sent_any;                     /* some request byte went to a connected socket */
        struct peer_mask tried;
        struct peer *peer;                /* the current (or last) attempt's */
        int attempts, retries;
        int race_resent;                  /* the keep-alive race resend was used */
        int has_idempotency_key;
        int resp_head_done;               /* a response head went to the client: no retry from here on */
        int resp_status;
        enum resp_framing framing;
        int held_whole;                   /* <held> is a whole response */
        int aborted_status;               /* status of the response the hook last aborted */
        void *user_ctx;                   /* the hook's per-request pointer, freed by request_done */
        int logged;                       /* this request's line is written */
        int64_t start_mono_ms, start_unix_ms;
        int64_t start_us;                 /* request head read (monotonic µs) */
        int64_t upstream_us;              /* the answering attempt: sent -> response head; -1 none */
        uint64_t req_body_bytes;          /* request body bytes read from the client */
        uint64_t resp_bytes;              /* body bytes sent to the client */
        enum access_status_source status_source; /* who produced the status (set where decided) */
        const char *no_retry;             /* why the last failure was not retried */
        struct http1_rewrite rewrite;     /* target and Host sent upstream, where not the client's */
        char reason[192];                 /* a made-up answer's reason that names something */
        char request_id[REQUEST_ID_MAX + 1]; /* X-Request-Id sent upstream */
        int request_id_made;              /* ... made here (the client's, if any, replaced) */
        struct { uint8_t cause; uint16_t status; } retry_log[RETRY_LOG_MAX];
        int n_retry_log;
    } st;
};

/* Writes <r>'s access-log line with <status> unless written already, and
 * observes the request's duration. */
void request_log(struct request *r, int status);
/* Notes a retry with <cause> (retry_cause, or RETRY_LOG_KEEPALIVE_RACE) and, for a status retry, <status>. */
void request_log_retry(struct request *r, int cause, int status);
void request_count_response(const struct request *r, int status);
/* Answers <status> with <reason> (the held response instead, for a 5xx, when
 * one is whole), logs the request and closes after the write. The caller has
 * stopped the attempt. After a response head went out: aborts. */
void request_answer_error(struct request *r, int status, const char *reason);

/* Chooses r->svc from the request's authority and what is rewritten on the
 * way (origin-form target, Host). 0, or the status to answer (400: an
 * absolute-form target nextup does not proxy; 421: no service claims the
 * authority) with <*reason> (valid while <r> is). Counts the request. */
int request_route(struct request *r, const char **reason);

/* 1 while every byte of the request can be sent again (nothing sent yet, or all kept). */
int request_replayable(const struct request *r);
/* Request bytes for the peer: to the current attempt, and kept for a replay
 * while they fit NEXTUP_RETRY_BUFFER_BYTES. 0 or -ENOMEM. */
int request_produce(struct request *r, const void *data, size_t len);
/* The head sent upstream, into <out>: written once per attempt, never copied. 0 or -ENOMEM. */
int request_write_head(struct request *r, struct evbuffer *out);
/* Puts every byte of the request back in r->tosend for another attempt. 0 or -ENOMEM. */
int request_rewind(struct request *r);

#endif
