#include "request.h"

#include <stdio.h>
#include <string.h>

#include "ctx.h"
#include "downstream.h"
#include "http1.h"
#include "metrics.h"
#include "service.h"

/* The authority of an absolute-form target (a client using nextup as its
 * HTTP_PROXY) must be a configured service's; a Host may fall back to the
 * default service. A request for none connects nowhere: nextup stays a closed
 * proxy. */
int request_route(struct request *r, const char **reason)
{
    const struct http_head *req = downstream_head(r->ds);
    const struct services *svcs = r->lc->services;
    const char *target = req->buf + req->first_off, *authority;
    size_t len = 0;

    r->svc = NULL;
    memset(&r->st.rewrite, 0, sizeof(r->st.rewrite));
    if (http1_is_absolute_form(target, req->first_len)) {
        struct request_target t;
        if (!svcs->slots) {
            metrics_service_inc(-1, M_REQUESTS);
            *reason = "request target must be a path: absolute-form is only for the hosts of NEXTUP_SERVICES";
            return 400;
        }
        if (service_parse_target(target, req->first_len, &t) < 0 || !t.scheme_is_http) {
            metrics_service_inc(-1, M_REQUESTS);
            *reason = t.form == TARGET_BAD ? t.why : "only http:// targets are proxied (nextup makes the TLS)";
            return 400;
        }
        authority = t.authority;
        len = t.authority_len;
        r->svc = services_route_exact(svcs, authority, len);
        r->st.rewrite.target = t.path;
        r->st.rewrite.target_len = t.path_len;
        r->st.rewrite.target_slash = t.path_slash;
        /* In origin-form the authority travels as the Host (RFC 9112 3.2.2). */
        r->st.rewrite.host = authority;
        r->st.rewrite.host_len = len;
    } else if (!svcs->slots) {
        /* NEXTUP_UPSTREAMS alone: its one service takes every authority. */
        authority = NULL;
        r->svc = svcs->default_service;
    } else {
        authority = http_head_field(req, HF_HOST, &len);
        r->svc = services_route(svcs, authority ? authority : "", authority ? len : 0);
    }
    metrics_service_inc(r->svc ? r->svc->index : -1, M_REQUESTS);
    if (!r->svc) {
        snprintf(r->st.reason, sizeof(r->st.reason), "no service is configured for the authority \"%.*s\"",
                 (int)(len > 128 ? 128 : len), authority ? authority : "");
        r->st.status_source = ACCESS_SOURCE_NO_SERVICE;
        *reason = r->st.reason;
        return 421;
    }
    if (r->svc->upstream_host) {
        r->st.rewrite.host = r->svc->upstream_host;
        r->st.rewrite.host_len = strlen(r->svc->upstream_host);
    }
    return 0;
}
