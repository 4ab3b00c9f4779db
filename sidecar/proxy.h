/* proxy: one request's attempts, between the client connection (downstream.c)
 * and one upstream exchange at a time (exchange.c): select a peer -> exchange
 * -> decide on the head -> forward, or retry elsewhere; the retry buffer, the
 * tried set, the held response, the request timers, the access-log line, and
 * the accessors of nextup.h for the decision hook.
 *
 * API:
 *   proxy_init()     once at startup
 *   proxy_accept()   an accepted socket becomes a client connection served here
 *   proxy_free_all() a stopped loop's connections and cached request states */
#ifndef SIDECAR_PROXY_H
#define SIDECAR_PROXY_H

#include <sys/socket.h>

struct loop_ctx;

void proxy_init(void);

/* Serves the accepted socket <fd> on <lc>'s loop. Takes <fd> on success; on
 * failure (-ENOMEM) the caller still owns it. */
int proxy_accept(struct loop_ctx *lc, int fd, const struct sockaddr *peer_addr, socklen_t peer_len);

/* Frees the request states <lc> keeps beyond what it reuses; from a timer of
 * the loop (never inside a connection's callback). */
void proxy_trim(struct loop_ctx *lc);

/* Frees every connection of <lc> and its cached request states; only once its loop has stopped. */
void proxy_free_all(struct loop_ctx *lc);

#endif
