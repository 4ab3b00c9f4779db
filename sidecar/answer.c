#include "request.h"

#include <stdio.h>
#include <string.h>

#include <event2/buffer.h>
#include <llhttp.h>

#include "clock.h"
#include "ctx.h"
#include "downstream.h"
#include "log.h"
#include "metrics.h"
#include "retry.h"
#include "service.h"

void request_count_response(const struct request *r, int status)
{
    metrics_service_response(r->svc ? r->svc->index : -1, status < 100 ? 100 : status > 599 ? 599 : status);
}

void request_log_retry(struct request *r, int cause, int status)
{
    if (r->st.n_retry_log < RETRY_LOG_MAX) {
        r->st.retry_log[r->st.n_retry_log].cause = (uint8_t)cause;
        r->st.retry_log[r->st.n_retry_log].status = (uint16_t)status;
        r->st.n_retry_log++;
    }
}

/* The request's duration metric and access log line, once: at its end, however it ended. */
void request_log(struct request *r, int status)
{
    static const char *const cause_names[] = {
        [CAUSE_REFUSED] = "refused", [CAUSE_CONNECT_FAILURE] = "connect_failure", [CAUSE_RESET] = "reset",
        [CAUSE_TIMEOUT] = "timeout", [CAUSE_STATUS] = "status",
    };
    const struct http_head *req = downstream_head(r->ds);
    char texts[RETRY_LOG_MAX][24];
    const char *reasons[RETRY_LOG_MAX];
    struct access_entry e = ACCESS_ENTRY_INIT;
    int64_t now_us;
    int i;

    if (r->st.logged)
        return;
    r->st.logged = 1;
    now_us = clock_mono_us();
    metrics_observe_request(status == 499 ? 0 : status, r->st.start_us ? now_us - r->st.start_us : 0);
    if (!access_log_enabled(r->lc->alog))
        return;
    for (i = 0; i < r->st.n_retry_log; i++) {
        int c = r->st.retry_log[i].cause;
        if (c == RETRY_LOG_KEEPALIVE_RACE)
            snprintf(texts[i], sizeof(texts[i]), "keepalive_race");
        else if (c == CAUSE_STATUS)
            snprintf(texts[i], sizeof(texts[i]), "status_%d", r->st.retry_log[i].status);
        else
            snprintf(texts[i], sizeof(texts[i]), "%s", cause_names[c]);
        reasons[i] = texts[i];
    }
    e.start_unix_ms = r->st.start_unix_ms ? r->st.start_unix_ms : clock_unix_ms();
    e.duration_ms = r->st.start_mono_ms ? now_us / 1000 - r->st.start_mono_ms : 0;
    e.client = downstream_client_ip(r->ds);
    e.method = downstream_method_name(r->ds);
    e.path = req->first_len ? req->buf + req->first_off : "-";
    e.path_len = req->first_len ? req->first_len : 1;
    e.status = status;
    e.bytes = r->st.resp_bytes;
    e.upstream = r->st.peer && r->st.attempts ? r->st.peer->addr_text : "";
    e.service = r->svc ? r->svc->name : NULL;
    e.attempts = r->st.attempts;
    e.retries = reasons;
    e.n_retries = r->st.n_retry_log;
    if (r->st.start_us) {
        size_t len;
        const char *v;
        e.request_id = r->st.request_id;
        e.request_id_len = strlen(r->st.request_id);
        if ((v = http_head_field(req, HF_TRACEPARENT, &len))) {
            e.traceparent = v;
            e.traceparent_len = len;
        }
        if ((v = http_head_field(req, HF_HOST, &len))) {
            e.host = v;
            e.host_len = len;
        }
        e.protocol = req->minor == 0 ? "HTTP/1.0" : "HTTP/1.1";
        e.request_bytes = (int64_t)r->st.req_body_bytes;
        e.upstream_ms = r->st.upstream_us >= 0 ? r->st.upstream_us / 1000 : -1;
    }
    e.status_source = status == 499 ? ACCESS_SOURCE_CLIENT_CLOSED
                      : r->st.status_source ? r->st.status_source
                      : status < 500 && !r->st.attempts ? ACCESS_SOURCE_BAD_REQUEST
                                                        : ACCESS_SOURCE_UPSTREAM;
    access_log_write(r->lc->alog, &e);
}

/* Sends the held response (the last real one) instead of a made-up error. */
static void answer_held(struct request *r, const char *why_not_later)
{
    struct evbuffer *out = downstream_output(r->ds);
    const struct http_head *req = downstream_head(r->ds);
    int is_head = req->method == HTTP_HEAD;

    LOG_INFO("%s: later attempts failed (%s); forwarding the %d held from an earlier attempt",
             downstream_client_ip(r->ds), why_not_later, r->held.status);
    /* Its body is whole in memory now: a Content-Length says so, whatever the peer's framing was. */
    r->held.chunked = 0;
    r->held.has_content_length = 1;
    r->held.content_length = evbuffer_get_length(r->held_body);
    request_count_response(r, r->held.status);
    r->st.status_source = ACCESS_SOURCE_UPSTREAM;
    r->st.resp_bytes = is_head ? 0 : evbuffer_get_length(r->held_body);
    r->st.resp_head_done = 1;
    request_log(r, r->held.status);
    if (http1_write_response_head(out, &r->held, is_head ? RESP_NO_BODY : RESP_CONTENT_LENGTH, 1,
                                  req->major == 1 && req->minor == 0) < 0 ||
        (!is_head && evbuffer_add_buffer(out, r->held_body) < 0)) {
        downstream_abort(r->ds);
        return;
    }
    downstream_response_begun(r->ds);
    downstream_close_after_write(r->ds);
}

void request_answer_error(struct request *r, int status, const char *reason)
{
    const struct http_head *req = downstream_head(r->ds);

    if (r->st.resp_head_done) {
        downstream_abort(r->ds);
        return;
    }
    if (status >= 500 && r->st.held_whole) {
        answer_held(r, reason);
        return;
    }
    /* The one line of a request nextup answered itself. */
    if (r->st.attempts)
        LOG_INFO("%s: %s %.*s: %d %s (last peer %s, %d attempt(s)%s%s)", downstream_client_ip(r->ds),
                 downstream_method_name(r->ds), (int)req->first_len, req->buf + req->first_off, status, reason,
                 r->st.peer ? r->st.peer->addr_text : "-", r->st.attempts, r->st.no_retry ? "; no retry: " : "",
                 r->st.no_retry ? r->st.no_retry : "");
    else
        LOG_INFO("%s: %d %s", downstream_client_ip(r->ds), status, reason);
    if (!r->st.status_source)
        r->st.status_source = status == 503 ? ACCESS_SOURCE_OVERLOAD : ACCESS_SOURCE_BAD_REQUEST;
    request_count_response(r, status);
    r->st.resp_bytes = 9 + strlen(reason);
    request_log(r, status);
    if (status < 500)
        metrics_inc(M_BAD_REQUESTS);
    downstream_reply_error(r->ds, status, reason);
}
