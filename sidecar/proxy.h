/* proxy: one client connection and the request it is serving: llhttp parsing,
 * the attempt loop (select -> connect -> send -> response head -> forward or
 * retry), streaming both ways with backpressure, errors answered with a status.
 *
 * API:
 *   proxy_init()           once at startup (parser settings)
 *   downstream_new()       takes an accepted socket
 *   downstream_drain()     finish the current request, then close; idle: close now */
#ifndef SIDECAR_PROXY_H
#define SIDECAR_PROXY_H

#include <sys/socket.h>

struct worker;
struct downstream;

void proxy_init(void);

/* Serves the accepted socket <fd> on <w>'s loop. Takes <fd> on success; on
 * failure (-ENOMEM) the caller still owns it. */
int downstream_new(struct worker *w, int fd, const struct sockaddr *peer_addr, socklen_t peer_len);

/* For drain: closes an idle connection now, else closes it after the response. */
void downstream_drain(struct downstream *ds);

/* Frees every connection of <w> at once; only once its loop has stopped. */
void proxy_free_all(struct worker *w);

/* Next connection in the worker's list (drain walks it). */
struct downstream *downstream_next(struct downstream *ds);

#endif
