/* The accessors of nextup.h: what the decision hook may read of a request. A
 * struct nextup_session is a struct request (request.h). */
#include "nextup.h"

#include <llhttp.h>

#include "config.h"
#include "ctx.h"
#include "downstream.h"
#include "http1.h"
#include "request.h"
#include "retry.h"
#include "service.h"

static const struct request *request_of(const struct nextup_session *session)
{
    return (const struct request *)session;
}

const struct nextup_error *nextup_builtin_decision(struct nextup_session *session,
                                                   const struct nextup_response *response, void **ctx)
{
    static const struct nextup_error retry_status = { 1, 0, "status in NEXTUP_RETRY_ON" };

    (void)ctx;
    return retry_status_matches(&request_of(session)->svc->retry->policy, nextup_response_status(response))
               ? &retry_status
               : NULL;
}

int nextup_response_status(const struct nextup_response *response)
{
    return ((const struct http_head *)response)->status;
}

const char *nextup_response_header(const struct nextup_response *response, const char *name, size_t *len)
{
    size_t dummy;
    return http_head_get((const struct http_head *)response, name, len ? len : &dummy);
}

const char *nextup_request_method(const struct nextup_session *session)
{
    return llhttp_method_name((llhttp_method_t)downstream_head(request_of(session)->ds)->method);
}

const char *nextup_request_target(const struct nextup_session *session, size_t *len)
{
    const struct http_head *req = downstream_head(request_of(session)->ds);

    if (len)
        *len = req->first_len;
    return req->buf + req->first_off;
}

const char *nextup_request_header(const struct nextup_session *session, const char *name, size_t *len)
{
    size_t dummy;
    return http_head_get(downstream_head(request_of(session)->ds), name, len ? len : &dummy);
}

const char *nextup_peer_address(const struct nextup_session *session)
{
    const struct request *r = request_of(session);
    return r->st.peer ? r->st.peer->addr_text : "";
}

int nextup_attempt(const struct nextup_session *session)
{
    return request_of(session)->st.attempts;
}
