/* nextup.h: the public API for code that decides about upstream responses.
 *
 * Once per attempt, when an upstream response head has arrived and before any
 * byte of it goes to the client, nextup calls upstream_response_decision().
 * Returning NULL forwards the response. Returning an error aborts it:
 *   - retryable: the same retry loop as a connect failure runs (another peer,
 *     the request replayed from the retry buffer, the hook called again on the
 *     new response) when the retry policy allows it (method or Idempotency-Key,
 *     whole body in the retry buffer, retries left, budget). When it does not,
 *     the client gets this upstream response unchanged.
 *   - not retryable: the request ends with the error's status, made by nextup.
 *
 * Two ways to supply the hook:
 *   - in-process: link build/libnextup.a and call nextup_main() with hooks;
 *   - as a plugin: a shared object named by NEXTUP_DECISION_PLUGIN that exports
 *     `const struct nextup_hooks nextup_plugin_hooks` (NEXTUP_PLUGIN_SYMBOL).
 * The accessors below are valid only during the call they are given to. */
#ifndef SIDECAR_PUBLIC_H
#define SIDECAR_PUBLIC_H

#include <stddef.h>

#define NEXTUP_ABI_VERSION 1
#define NEXTUP_PLUGIN_SYMBOL "nextup_plugin_hooks"

struct nextup_session;    /* one client request, across all its attempts */
struct nextup_response;   /* the head of one upstream response */

struct nextup_error {
    int retryable;          /* 1: abort this response and retry elsewhere if the policy allows */
    int status;             /* not retryable: the status the client gets; 0 means 502 */
    const char *reason;     /* static text: logs, metrics label, the error body */
};

/* NULL to forward <response>; an error to abort it (see above). <ctx> points
 * at the request's user pointer, NULL at the first call, kept across attempts. */
typedef const struct nextup_error *(*nextup_decision_fn)(struct nextup_session *session,
                                                          const struct nextup_response *response, void **ctx);

struct nextup_hooks {
    int abi_version;                                 /* NEXTUP_ABI_VERSION */
    nextup_decision_fn upstream_response_decision;   /* NULL: the built-in policy (NEXTUP_RETRY_ON) */
    void (*request_done)(void *ctx);                 /* called once when the request ends, if ctx != NULL */
};

/* The built-in decision: a retryable error for statuses in NEXTUP_RETRY_ON. User
 * hooks may call it to extend rather than replace it. */
const struct nextup_error *nextup_builtin_decision(struct nextup_session *session,
                                                   const struct nextup_response *response, void **ctx);

/* Response accessors. */
int nextup_response_status(const struct nextup_response *response);
/* Value of the first header named <name> (case-insensitive), not NUL-terminated: length in <*len>. NULL if absent. */
const char *nextup_response_header(const struct nextup_response *response, const char *name, size_t *len);

/* Request accessors. */
const char *nextup_request_method(const struct nextup_session *session);            /* "GET" */
const char *nextup_request_target(const struct nextup_session *session, size_t *len); /* "/path?q", not NUL-terminated */
const char *nextup_request_header(const struct nextup_session *session, const char *name, size_t *len);
/* The peer that sent this response, "10.0.0.7:8080". */
const char *nextup_peer_address(const struct nextup_session *session);
/* 1 for the first try, 2 for the first retry, ... */
int nextup_attempt(const struct nextup_session *session);

/* Runs nextup as the nextup binary does (NEXTUP_* environment, --help), with
 * <hooks> in place of the built-in decision (NULL: built-in, or the plugin).
 * Returns the process exit status. */
int nextup_main(int argc, char **argv, const struct nextup_hooks *hooks);

#endif
