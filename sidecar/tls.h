/* tls: OpenSSL contexts for both sides, built from NEXTUP_UPSTREAM_* and
 * NEXTUP_TLS_*, and their rotation: the files are checked every
 * NEXTUP_TLS_RELOAD_MS; a changed, valid set makes new contexts for new
 * handshakes (connections already up keep theirs); a broken one is refused
 * with a log line and the old contexts stay.
 *
 * API:
 *   tls_setup() / tls_shutdown()      at start and exit (main thread)
 *   tls_reload_check()                the rotation check (main thread timer)
 *   tls_upstream_new() / tls_listener_new()   an SSL for one new connection
 *   tls_upstream_failure()            why a handshake to a replica failed
 * Contexts are swapped under a mutex taken once per new connection, never
 * per request. */
#ifndef SIDECAR_TLS_H
#define SIDECAR_TLS_H

#include <stddef.h>

struct config;
struct peer;
typedef struct ssl_st SSL;

/* Builds the contexts the configuration asks for. 0, or -EINVAL with one line in
 * <err> naming the variable and OpenSSL's reason. */
int tls_setup(const struct config *cfg, char *err, size_t errlen);
void tls_shutdown(void);
void tls_reload_check(void);

int tls_upstream_enabled(void);
/* Changes whenever the upstream context is replaced: sessions cached before belong to the old one. */
unsigned tls_client_generation(void);
int tls_listener_enabled(void);

/* A client SSL for a connection to <p>: SNI and the name checked from
 * NEXTUP_UPSTREAM_SNI or the peer's entry, a cached session when there is one
 * (<session_slot> is the caller's per-peer cache, SSL_SESSION *). NULL on failure. */
SSL *tls_upstream_new(const struct peer *p, void **session_slot);
/* Keeps <ssl>'s session, when resumable, in <session_slot> for the next
 * connection (after the handshake for TLS 1.2, after a response for 1.3's tickets).
 * 1 if a session was kept, 0 if there was none resumable yet. */
int tls_upstream_keep_session(SSL *ssl, void **session_slot);
/* Frees a cached session (pool teardown). */
void tls_session_free(void *session);

/* A server SSL for an accepted connection. NULL on failure. */
SSL *tls_listener_new(void);

/* After a failed handshake on <ssl> with the bufferevent's OpenSSL error
 * <ossl_err> (0 if none): writes a short reason into <why> and returns
 * "verify" (the certificate was refused) or "handshake". */
const char *tls_upstream_failure(SSL *ssl, unsigned long ossl_err, char *why, size_t whylen);

#endif
