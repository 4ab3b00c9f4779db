/* net: listening sockets. */
#ifndef SIDECAR_NET_H
#define SIDECAR_NET_H

#include <sys/socket.h>

/* A non-blocking listening TCP socket bound to <sa>, with SO_REUSEADDR and,
 * when <reuseport>, SO_REUSEPORT (one per worker, the kernel spreads accepts).
 * The fd, or a negative errno. */
int net_listen(const struct sockaddr *sa, socklen_t salen, int reuseport);

#endif
