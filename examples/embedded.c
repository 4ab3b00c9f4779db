/* nextup in-process: a program that links libnextup.a and brings its own
 * upstream_response_decision. This one retries 503 only when the replica did
 * not send Retry-After (a replica that names a time wants the client to wait),
 * and otherwise defers to the built-in policy (NEXTUP_RETRY_ON).
 *
 * Build: make build/examples/embedded */
#include <string.h>

#include "nextup.h"

static const struct nextup_error retry_unavailable = { 1, 0, "embedded: 503 without Retry-After" };

static const struct nextup_error *decide(struct nextup_session *session, const struct nextup_response *response,
                                         void **ctx)
{
    size_t len;

    if (nextup_response_status(response) == 503)
        return nextup_response_header(response, "retry-after", &len) ? NULL : &retry_unavailable;
    return nextup_builtin_decision(session, response, ctx);
}

int main(int argc, char **argv)
{
    static const struct nextup_hooks hooks = {
        .abi_version = NEXTUP_ABI_VERSION,
        .upstream_response_decision = decide,
    };
    return nextup_main(argc, argv, &hooks);
}
