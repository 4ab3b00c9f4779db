#include "proxy.h"

#include <errno.h>
#include <stdio.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <llhttp.h>

#include "accesslog.h"
#include "clock.h"
#include "config.h"
#include "ctx.h"
#include "downstream.h"
#include "exchange.h"
#include "hook.h"
#include "http1.h"
#include "log.h"
#include "metrics.h"
#include "nextup.h"
#include "peers.h"
#include "request_id.h"
#include "request.h"
#include "retry.h"
#include "service.h"
#include "timeouts.h"

/* Above this many request bytes waiting for the upstream, the client is not
 * read; above this many response bytes waiting for the client, the upstream is
 * not read (le-proxy's backpressure): memory per request stays bounded. */
#define HIGH_WATER (256 * 1024)
/* A held response larger than this is dropped rather than kept in memory. */
#define HELD_BODY_MAX (64 * 1024)
/* A loop keeps at most this many request states for reuse. */
#define REQUEST_CACHE_MAX 64

/* Shared by every worker: requests and retries of the last 10 s. */
static struct retry_budget budget;

static const struct downstream_cbs client_cbs;
static const struct exchange_cbs upstream_cbs;
static void attempt(struct request *r, int fresh_same_peer);

static struct timeval ms_tv(int ms)
{
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
    return tv;
}

/* The request's service's retry settings (the globals where it sets none). */
static const struct retry_settings *retry_of(const struct request *r)
{
    return r->svc->retry;
}

static int svc_index(const struct request *r)
{
    return r->svc ? r->svc->index : -1;
}

/* ---- request states ---------------------------------------------------- */

static void request_destroy(struct request *r)
{
    exchange_free(r->ex);
    if (r->tosend)
        evbuffer_free(r->tosend);
    if (r->replay)
        evbuffer_free(r->replay);
    if (r->held_body)
        evbuffer_free(r->held_body);
    http_head_free(&r->held);
    free(r);
}

static void req_timer_cb(evutil_socket_t fd, short what, void *arg);
static void try_timer_cb(evutil_socket_t fd, short what, void *arg);
static void backoff_cb(evutil_socket_t fd, short what, void *arg);

/* A request state for <ds>: from the loop's cache, else new. NULL on ENOMEM. */
static struct request *request_take(struct loop_ctx *lc, struct downstream *ds)
{
    struct request *r = lc->requests_free;

    if (r) {
        lc->requests_free = r->next_free;
        lc->n_requests_free--;
    } else {
        r = calloc(1, sizeof(*r));
        if (!r)
            return NULL;
        r->lc = lc;
        r->tosend = evbuffer_new();
        r->replay = evbuffer_new();
        r->held_body = evbuffer_new();
        r->ex = r->tosend ? exchange_new(lc->cfg, &upstream_cbs, r, r->tosend) : NULL;
        if (!r->tosend || !r->replay || !r->held_body || !r->ex) {
            request_destroy(r);
            return NULL;
        }
        evtimer_assign(&r->req_timer, lc->base, req_timer_cb, r);
        evtimer_assign(&r->try_timer, lc->base, try_timer_cb, r);
        evtimer_assign(&r->backoff_timer, lc->base, backoff_cb, r);
    }
    memset(&r->st, 0, sizeof(r->st));
    r->st.replay_whole = 1;
    r->st.upstream_us = -1;
    r->ds = ds;
    r->svc = NULL;
    return r;
}

static void request_stop_timers(struct request *r)
{
    event_del(&r->req_timer);
    event_del(&r->try_timer);
    event_del(&r->backoff_timer);
}

/* Ends what runs for <r> (timers, the attempt), leaving the client connection. */
static void request_stop(struct request *r)
{
    request_stop_timers(r);
    exchange_close(r->ex);
}

/* Lets <r> go: the hook's context back to its owner, the state to the cache. */
static void request_give_back(struct request *r)
{
    const struct nextup_hooks *h = hook_active();
    struct loop_ctx *lc = r->lc;

    request_stop(r);
    if (r->st.user_ctx && h->request_done)
        h->request_done(r->st.user_ctx);
    r->st.user_ctx = NULL;
    downstream_set_owner(r->ds, NULL);
    r->ds = NULL;
    evbuffer_drain(r->tosend, evbuffer_get_length(r->tosend));
    evbuffer_drain(r->replay, evbuffer_get_length(r->replay));
    evbuffer_drain(r->held_body, evbuffer_get_length(r->held_body));
    /* Never freed here: this may run inside a callback of its own exchange
     * (a client gone mid-response). proxy_trim() frees the surplus later. */
    http_head_reset(&r->held);
    r->next_free = lc->requests_free;
    lc->requests_free = r;
    lc->n_requests_free++;
}

/* Answers with nextup's own response (or the held one) and closes; once a
 * response head went out, an abort is all that is left. */
static void reply_error(struct request *r, int status, const char *reason)
{
    if (!r->st.resp_head_done)
        request_stop(r);
    request_answer_error(r, status, reason);
}

/* le-proxy's backpressure, both ways: the client is not read while the
 * upstream has more than HIGH_WATER to take, nor the upstream while the client has. */
static void balance(struct request *r)
{
    downstream_pause_reading(r->ds, exchange_queued(r->ex) > HIGH_WATER);
    if (r->st.resp_head_done)
        exchange_pause_reading(r->ex, downstream_queued(r->ds) > HIGH_WATER);
}

/* ---- the attempt loop --------------------------------------------------- */

/* Whether this failed attempt may be retried, by retry_decide() and the
 * budget. A refusal is counted by reason. */
static enum retry_verdict verdict_for(struct request *r, enum retry_cause cause, int say)
{
    static const enum metric_id refused_metric[] = {
        [RETRY_NO_POLICY] = M_NORETRY_POLICY, [RETRY_NO_EXHAUSTED] = M_NORETRY_EXHAUSTED,
        [RETRY_NO_METHOD] = M_NORETRY_METHOD, [RETRY_NO_BUFFER] = M_NORETRY_BUFFER,
        [RETRY_NO_BUDGET] = M_NORETRY_BUDGET,
    };
    const struct http_head *req = downstream_head(r->ds);
    struct attempt a = {
        .cause = cause,
        .method = req->method,
        .has_idempotency_key = r->st.has_idempotency_key,
        .buffer_whole = request_replayable(r),
        .retries_done = r->st.retries,
    };
    enum retry_verdict v = retry_decide_budgeted(&retry_of(r)->policy, &a, &budget, clock_mono_ms() / 1000);

    if (v != RETRY_GO) {
        metrics_service_inc(svc_index(r), refused_metric[v]);
        /* A response forwarded unchanged says why here; nextup's own answer says it in its one line. */
        if (say)
            LOG_INFO("%s: %s %.*s: no retry (%s)", downstream_client_ip(r->ds), downstream_method_name(r->ds),
                     (int)req->first_len, req->buf + req->first_off, retry_verdict_name(v));
    }
    return v;
}

/* Starts the next attempt on another peer: at once when an untried healthy
 * peer is left (the failure was that replica's), else after a jittered backoff. */
static void retry_go(struct request *r, enum retry_cause cause)
{
    static const enum metric_id retry_metric[] = {
        [CAUSE_REFUSED] = M_RETRY_REFUSED, [CAUSE_CONNECT_FAILURE] = M_RETRY_CONNECT_FAILURE,
        [CAUSE_RESET] = M_RETRY_RESET, [CAUSE_TIMEOUT] = M_RETRY_TIMEOUT, [CAUSE_STATUS] = M_RETRY_STATUS,
    };
    int delay = 0;

    r->st.retries++;
    metrics_service_inc(svc_index(r), retry_metric[cause]);
    request_log_retry(r, cause, cause == CAUSE_STATUS ? r->st.aborted_status : 0);
    if (request_rewind(r) < 0) {
        reply_error(r, 503, "out of memory");
        return;
    }
    if (retry_cause_reached_peer(cause) && !peers_has_fresh(r->svc->peers, &r->st.tried, clock_mono_ms()))
        delay = retry_backoff_ms(&retry_of(r)->policy, r->st.retries, peers_rand(&r->lc->rng));
    if (delay > 0) {
        struct timeval tv = ms_tv(delay);
        evtimer_add(&r->backoff_timer, &tv);
        return;
    }
    attempt(r, 0);
}

/* An attempt failed before any response byte went downstream: resent, retried
 * on another peer when the policy allows, else answered 502/504 naming the failure. */
static void attempt_failed(struct request *r, const struct failure_facts *f)
{
    static const enum metrics_failure peer_failure[] = {
        [UPF_REFUSED] = METRICS_FAIL_REFUSED, [UPF_CONNECT_TIMEOUT] = METRICS_FAIL_CONNECT,
        [UPF_CONNECT_ERROR] = METRICS_FAIL_CONNECT, [UPF_CLOSED] = METRICS_FAIL_RESET,
        [UPF_BAD_RESPONSE] = METRICS_FAIL_BAD_RESPONSE, [UPF_TRY_TIMEOUT] = METRICS_FAIL_TIMEOUT,
        [UPF_TLS] = METRICS_FAIL_TLS,
    };
    static const enum access_status_source source[] = {
        [UPF_REFUSED] = ACCESS_SOURCE_REFUSED, [UPF_CONNECT_TIMEOUT] = ACCESS_SOURCE_CONNECT_FAILURE,
        [UPF_CONNECT_ERROR] = ACCESS_SOURCE_CONNECT_FAILURE, [UPF_CLOSED] = ACCESS_SOURCE_RESET,
        [UPF_BAD_RESPONSE] = ACCESS_SOURCE_BAD_RESPONSE, [UPF_TRY_TIMEOUT] = ACCESS_SOURCE_PER_TRY_TIMEOUT,
        [UPF_TLS] = ACCESS_SOURCE_TLS,
    };
    const char *peer_text = r->st.peer ? r->st.peer->addr_text : "?";
    struct failure_class c;
    enum retry_verdict verdict;
    const char *reason;
    int status;

    event_del(&r->try_timer);
    if (f->connected)
        r->st.sent_any = 1;
    c = retry_classify(f, request_replayable(r), r->st.race_resent);
    if (c.resend_same_peer) {
        LOG_DEBUG("%s: pooled connection to %s was closed; resending on a fresh one", downstream_client_ip(r->ds),
                  peer_text);
        r->st.race_resent = 1;
        metrics_inc(M_KEEPALIVE_RACE_RESENDS);
        request_log_retry(r, RETRY_LOG_KEEPALIVE_RACE, 0);
        if (request_rewind(r) < 0) {
            reply_error(r, 503, "out of memory");
            return;
        }
        attempt(r, 1);
        return;
    }
    if (c.proved_unsent)
        metrics_inc(M_UNSENT_PROOFS);
    if (r->st.peer) {
        metrics_service_peer_failure(r->st.peer->service, r->st.peer->index, peer_failure[f->kind]);
        peers_report(r->svc->peers, r->st.peer,
                     f->kind == UPF_REFUSED || f->kind == UPF_CONNECT_TIMEOUT || f->kind == UPF_CONNECT_ERROR
                         ? PEER_CONNECT_FAILED
                     : f->kind == UPF_TLS ? PEER_TLS_FAILED
                                          : PEER_GATEWAY_ERROR,
                     clock_mono_ms());
    }
    verdict = c.never_retried ? RETRY_NO_POLICY : verdict_for(r, c.cause, 0);
    r->st.no_retry = c.never_retried ? NULL : retry_verdict_name(verdict);
    if (verdict == RETRY_GO) {
        LOG_DEBUG("%s: %s: %s; retrying on another peer", downstream_client_ip(r->ds), peer_text,
                  upstream_failure_text(f->kind));
        retry_go(r, c.cause);
        return;
    }
    r->st.status_source = verdict == RETRY_NO_BUDGET ? ACCESS_SOURCE_BUDGET : source[f->kind];
    status = upstream_failure_status(f->kind, &reason);
    reply_error(r, status, reason);
}

/* A request that could be replayed elsewhere if it fails: the one to send as a
 * peer's trial, so that a trial that fails costs the client nothing. */
static int request_may_trial(const struct request *r)
{
    const struct retry_policy *pol = &retry_of(r)->policy;
    int method = downstream_head(r->ds)->method;

    return request_replayable(r) && r->st.retries < pol->max_retries &&
           (r->st.has_idempotency_key || (method >= 0 && method < 64 && ((pol->methods >> method) & 1)));
}

static struct peer *choose_peer(struct request *r, int fresh_same_peer)
{
    struct loop_ctx *lc = r->lc;
    int64_t now = clock_mono_ms();
    struct peer *p;

    if (fresh_same_peer && r->st.peer)
        return r->st.peer;
    /* A peer whose time out is up gets one request, which decides. */
    if (!lc->cfg->probe_path[0] && request_may_trial(r) &&
        (p = peers_take_trial(r->svc->peers, &r->st.tried, now, retry_of(r)->request_timeout_ms)))
        return p;
    return peers_select(r->svc->peers, &r->st.tried, now, &lc->rng);
}

static void attempt(struct request *r, int fresh_same_peer)
{
    const struct http_head *req = downstream_head(r->ds);
    struct peer *p = choose_peer(r, fresh_same_peer);
    int flags = (req->method == HTTP_HEAD ? EXCHANGE_REQ_HEAD : 0) | (req->upgrade ? EXCHANGE_REQ_UPGRADE : 0);
    int rc;

    if (!p) {
        r->st.status_source = ACCESS_SOURCE_NO_PEER;
        reply_error(r, 502, "no upstream peers");
        return;
    }
    peer_mask_set(&r->st.tried, p->index);
    r->st.attempts++;
    r->st.peer = p;
    metrics_service_inc(svc_index(r), M_UPSTREAM_ATTEMPTS);
    metrics_service_peer_attempt(p->service, p->index);
    if (retry_of(r)->per_try_timeout_ms > 0) {
        struct timeval tv;
        evtimer_add(&r->try_timer, loop_timeout(r->lc, retry_of(r)->per_try_timeout_ms, &tv));
    }
    rc = exchange_start(r->ex, r->lc->pools[r->svc->index], p, fresh_same_peer, flags, downstream_client_ip(r->ds));
    if (rc < 0) {
        struct failure_facts f = { .nothing_acked = 1 };
        f.kind = rc == -ECONNREFUSED ? UPF_REFUSED : rc == -ETIMEDOUT ? UPF_CONNECT_TIMEOUT : UPF_CONNECT_ERROR;
        attempt_failed(r, &f);
    }
}

static void backoff_cb(evutil_socket_t fd, short what, void *arg)
{
    struct request *r = arg;
    struct downstream *ds = r->ds;

    (void)fd;
    (void)what;
    attempt(r, 0);
    downstream_after_io(ds);
}

static void try_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct request *r = arg;
    struct downstream *ds = r->ds;
    struct failure_facts f;

    (void)fd;
    (void)what;
    if (r->st.resp_head_done || !exchange_active(r->ex))
        return;
    exchange_cancel(r->ex, UPF_TRY_TIMEOUT, &f);
    attempt_failed(r, &f);
    downstream_after_io(ds);
}

static void req_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct request *r = arg;
    struct downstream *ds = r->ds;

    (void)fd;
    (void)what;
    if (r->st.resp_head_done)
        return;
    metrics_inc(M_REQUEST_TIMEOUTS);
    r->st.status_source = ACCESS_SOURCE_TIMEOUT;
    if (exchange_active(r->ex) && r->st.peer)
        metrics_service_peer_failure(r->st.peer->service, r->st.peer->index, METRICS_FAIL_TIMEOUT);
    exchange_cancel(r->ex, UPF_TRY_TIMEOUT, NULL);
    LOG_WARN("%s: no response head from %s within NEXTUP_REQUEST_TIMEOUT_MS", downstream_client_ip(ds),
             r->st.peer ? r->st.peer->addr_text : "any peer");
    reply_error(r, 504, "upstream did not answer within NEXTUP_REQUEST_TIMEOUT_MS");
    downstream_after_io(ds);
}

/* ---- the response (exchange callbacks) ---------------------------------- */

/* The hook aborted the response for a retry: it is kept (head, and body when
 * whole and small) in case no later attempt gets one. */
static void hold_response(struct request *r)
{
    struct evbuffer *body = exchange_body(r->ex);

    r->st.held_whole = exchange_complete(r->ex) && evbuffer_get_length(body) <= HELD_BODY_MAX;
    evbuffer_drain(r->held_body, evbuffer_get_length(r->held_body));
    if (r->st.held_whole && evbuffer_add_buffer(r->held_body, body) < 0)
        r->st.held_whole = 0;
    exchange_take_head(r->ex, &r->held);
}

/* The decision point: nothing of this response has gone downstream yet. */
static int up_head(void *arg, const struct http_head *resp)
{
    struct request *r = arg;
    const struct http_head *req = downstream_head(r->ds);
    int close;

    event_del(&r->try_timer);
    r->st.sent_any = 1;
    r->st.upstream_us = exchange_head_us(r->ex);
    peers_report_response(r->svc->peers, r->st.peer, resp->status,
                          resp->major == 1 && resp->minor >= 1 && http_head_field_has_token(resp, HF_CONNECTION, "close"),
                          clock_mono_ms());
    if (resp->status != 101) {
        const struct nextup_error *e = hook_active()->upstream_response_decision(
            (struct nextup_session *)r, (const struct nextup_response *)resp, &r->st.user_ctx);
        if (e && !e->retryable) {
            exchange_close(r->ex);
            reply_error(r, e->status ? e->status : 502, e->reason ? e->reason : "refused by the decision hook");
            return EXCHANGE_STOP;
        }
        if (e && verdict_for(r, CAUSE_STATUS, 1) == RETRY_GO) {
            LOG_INFO("%s: %s answered %d (%s); retrying on another peer", downstream_client_ip(r->ds),
                     r->st.peer->addr_text, resp->status, e->reason ? e->reason : "hook");
            r->st.aborted_status = resp->status;
            /* An aborted response is never pooled: its body may be unread. */
            hold_response(r);
            exchange_close(r->ex);
            retry_go(r, CAUSE_STATUS);
            return EXCHANGE_STOP;
        }
        /* No retry possible: the client gets this response unchanged. */
    }
    event_del(&r->req_timer);
    r->st.framing = http1_response_framing(resp, req->method == HTTP_HEAD, req->major, req->minor);
    /* A body that ends with the close (an HTTP/1.0 client, no length) ends the connection too. */
    close = !downstream_keep_alive(r->ds) || resp->status == 101 || r->st.framing == RESP_CLOSE;
    if (close)
        downstream_set_close(r->ds);
    if (http1_write_response_head(downstream_output(r->ds), resp, r->st.framing, close,
                                  req->major == 1 && req->minor == 0) < 0) {
        downstream_abort(r->ds);
        return EXCHANGE_STOP;
    }
    r->st.resp_head_done = 1;
    r->st.resp_status = resp->status;
    request_count_response(r, resp->status);
    downstream_response_begun(r->ds);
    return EXCHANGE_GO;
}

static void up_body(void *arg, struct evbuffer *body)
{
    struct request *r = arg;
    struct evbuffer *out = downstream_output(r->ds);
    size_t len = evbuffer_get_length(body);
    int bad;

    r->st.resp_bytes += len;
    /* Re-chunked: one chunk per batch read from the peer, whatever its chunks were. */
    if (r->st.framing == RESP_CHUNKED)
        bad = evbuffer_add_printf(out, "%zx\r\n", len) < 0 || evbuffer_add_buffer(out, body) < 0 ||
              evbuffer_add(out, "\r\n", 2) < 0;
    else
        bad = evbuffer_add_buffer(out, body) < 0;
    if (bad)
        downstream_abort(r->ds);
}

/* The response is whole: the upstream connection pooled or closed, then the
 * client connection goes on with its next request or closes. */
static void up_done(void *arg)
{
    struct request *r = arg;
    struct downstream *ds = r->ds;

    request_stop_timers(r);
    if (r->st.resp_status == 101) {
        struct upconn *up = exchange_take_conn(r->ex);
        request_log(r, 101);
        request_give_back(r);
        downstream_tunnel(ds, up);
        return;
    }
    if (r->st.framing == RESP_CHUNKED && evbuffer_add(downstream_output(ds), "0\r\n\r\n", 5) < 0) {
        downstream_abort(ds);
        return;
    }
    exchange_release(r->ex, downstream_request_complete(ds));
    request_log(r, r->st.resp_status);
    request_give_back(r);
    downstream_request_done(ds);
    downstream_after_io(ds);
}

static void up_fail(void *arg, const struct failure_facts *f)
{
    struct request *r = arg;
    struct downstream *ds = r->ds;

    if (f->after_head) {
        /* Part of the response is with the client: it gets what came, then the close. */
        request_stop_timers(r);
        if (f->kind == UPF_BAD_RESPONSE)
            downstream_abort(ds);
        else
            downstream_close_after_write(ds);
        return;
    }
    attempt_failed(r, f);
    downstream_after_io(ds);
}

static void up_progress(void *arg)
{
    struct request *r = arg;

    downstream_after_io(r->ds);
}

static const struct exchange_cbs upstream_cbs = { up_head, up_body, up_done, up_fail, up_progress };

/* ---- the request (client connection callbacks) -------------------------- */

static int client_begin(struct downstream *ds)
{
    struct loop_ctx *lc = downstream_loop(ds);
    struct request *r = request_take(lc, ds);

    if (!r)
        return -ENOMEM;
    downstream_set_owner(ds, r);
    return 0;
}

/* The client's X-Request-Id passed through, or one made (and sent upstream). */
static void take_request_id(struct request *r)
{
    const struct http_head *req = downstream_head(r->ds);
    size_t len = 0;
    const char *v = http_head_field(req, HF_X_REQUEST_ID, &len);

    if (request_id_decide(v, len, http_head_field_count(req, HF_X_REQUEST_ID)) == REQUEST_ID_KEEP && len <= REQUEST_ID_MAX) {
        memcpy(r->st.request_id, v, len);
        r->st.request_id[len] = 0;
        r->st.request_id_made = 0;
        return;
    }
    request_id_make(&r->lc->rng, r->st.request_id);
    r->st.request_id_made = 1;
}

/* The head is whole and no body byte parsed yet: the attempts start now, so
 * that the head goes first. */
static void client_head(struct downstream *ds)
{
    struct request *r = downstream_owner(ds);
    const struct http_head *req = downstream_head(ds);
    const char *reason;
    struct timeval tv;
    int status;

    r->st.start_us = clock_mono_us();
    if ((status = request_route(r, &reason))) {
        reply_error(r, status, reason);
        return;
    }
    take_request_id(r);
    r->st.start_mono_ms = r->st.start_us / 1000;
    r->st.start_unix_ms = clock_unix_ms();
    retry_budget_note_request(&budget, r->st.start_mono_ms / 1000);
    r->st.has_idempotency_key = http_head_field(req, HF_IDEMPOTENCY_KEY, &(size_t){ 0 }) != NULL;
    if (request_write_head(r, r->tosend) < 0) {
        reply_error(r, 503, "out of memory");
        return;
    }
    /* 100 Continue only to a client that waits for it: no body byte has come yet. */
    if (req->method != HTTP_HEAD && !downstream_has_unread(ds) && http_head_field_has_token(req, HF_EXPECT, "100-continue") &&
        req->major == 1 && req->minor >= 1)
        evbuffer_add(downstream_output(ds), "HTTP/1.1 100 Continue\r\n\r\n", 25);
    evtimer_add(&r->req_timer, loop_timeout(r->lc, retry_of(r)->request_timeout_ms, &tv));
    attempt(r, 0);
}

static int client_body(struct downstream *ds, const char *at, size_t len)
{
    struct request *r = downstream_owner(ds);
    char line[24];
    int n;

    r->st.req_body_bytes += len;
    if (!downstream_head(ds)->chunked)
        return request_produce(r, at, len);
    /* Bodies are re-chunked: the peer sees framing nextup wrote, never the client's. */
    n = snprintf(line, sizeof(line), "%zx\r\n", len);
    return request_produce(r, line, (size_t)n) < 0 || request_produce(r, at, len) < 0 || request_produce(r, "\r\n", 2) < 0 ? -ENOMEM : 0;
}

static int client_complete(struct downstream *ds)
{
    struct request *r = downstream_owner(ds);

    return downstream_head(ds)->chunked && request_produce(r, "0\r\n\r\n", 5) < 0 ? -ENOMEM : 0;
}

static void client_bad(struct downstream *ds, int status, const char *reason)
{
    reply_error(downstream_owner(ds), status, reason);
}

static void client_progress(struct downstream *ds)
{
    struct request *r = downstream_owner(ds);

    exchange_flush(r->ex);
    balance(r);
}

/* The client connection ends under the request: 499 (client gone) unless a
 * response head already went out. */
static void client_gone(struct downstream *ds)
{
    struct request *r = downstream_owner(ds);

    request_log(r, r->st.resp_head_done ? r->st.resp_status : 499);
    request_give_back(r);
}

static const struct downstream_cbs client_cbs = {
    client_begin, client_head, client_body, client_complete, client_bad, client_progress, client_gone,
};

/* ---- API ---------------------------------------------------------------- */

void proxy_init(void)
{
    retry_budget_init(&budget);
    downstream_init();
    exchange_init();
}

int proxy_accept(struct loop_ctx *lc, int fd, const struct sockaddr *peer_addr, socklen_t peer_len)
{
    return downstream_new(lc, &client_cbs, fd, peer_addr, peer_len);
}

void proxy_trim(struct loop_ctx *lc)
{
    while (lc->n_requests_free > REQUEST_CACHE_MAX) {
        struct request *r = lc->requests_free;
        lc->requests_free = r->next_free;
        lc->n_requests_free--;
        request_destroy(r);
    }
}

void proxy_free_all(struct loop_ctx *lc)
{
    downstream_free_all(lc);
    while (lc->requests_free) {
        struct request *r = lc->requests_free;
        lc->requests_free = r->next_free;
        request_destroy(r);
    }
    lc->n_requests_free = 0;
}
