/* A decision plugin with the classic policy: retry 502, 503 and 504 while the
 * attempt count is below 3, counting attempts in the per-request context.
 *
 * Build:  cc -shared -fPIC -Isidecar -o retry_gateway_plugin.so examples/retry_gateway_plugin.c
 * Use:    NEXTUP_DECISION_PLUGIN=/path/retry_gateway_plugin.so nextup
 * The accessors (nextup_response_status, ...) come from the nextup binary,
 * which exports them. The retry still goes through nextup's policy: method,
 * retry buffer, NEXTUP_MAX_RETRIES and the budget can each refuse it, and then
 * the client gets this response unchanged. */
#include <stdio.h>
#include <stdlib.h>

#include "nextup.h"

struct plugin_ctx {
    int attempts_seen;        /* responses this request has had so far */
};

static const struct nextup_error retry_gateway = { 1, 0, "plugin: gateway error" };

static const struct nextup_error *decide(struct nextup_session *session, const struct nextup_response *response,
                                         void **ctx)
{
    struct plugin_ctx *c = *ctx;
    int status = nextup_response_status(response);

    (void)session;
    if (!c) {
        c = calloc(1, sizeof(*c));
        if (!c)
            return NULL;    /* no memory: forward rather than fail the request */
        *ctx = c;
    }
    c->attempts_seen++;
    if ((status == 502 || status == 503 || status == 504) && c->attempts_seen < 3)
        return &retry_gateway;
    return NULL;
}

static void done(void *ctx)
{
    free(ctx);
}

const struct nextup_hooks nextup_plugin_hooks = {
    .abi_version = NEXTUP_ABI_VERSION,
    .upstream_response_decision = decide,
    .request_done = done,
};
