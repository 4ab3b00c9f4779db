/* net: listening sockets, and what a listener does when accept() fails.
 * API: net_listen(), net_accept_must_pause(), net_accept_log(). */
#ifndef SIDECAR_NET_H
#define SIDECAR_NET_H

#include <stdatomic.h>
#include <stdint.h>
#include <sys/socket.h>

/* A non-blocking listening TCP socket bound to <sa>, with SO_REUSEADDR and,
 * when <reuseport>, SO_REUSEPORT (one per worker, the kernel spreads accepts).
 * The fd, or a negative errno. */
int net_listen(const struct sockaddr *sa, socklen_t salen, int reuseport);

/* 1 when accept() failing with <err> (EMFILE, ENFILE, ENOBUFS, ENOMEM) leaves the
 * connection in the backlog and the listener readable: asking again at once would spin. */
int net_accept_must_pause(int err);

/* The rate limit of one listener's accept() failures (or of several listeners' that
 * share it, from any thread). Zero-initialised. */
struct net_accept_log {
    _Atomic int64_t logged_ms;      /* monotonic; 0: never */
    _Atomic uint64_t unlogged;      /* failures since that line */
};

/* Logs "accept: <strerror(err)> (<who>): <then>" at most once a second per <log>, with
 * the number of failures left unlogged since the last line; <then> may be NULL. */
void net_accept_log(struct net_accept_log *log, int err, const char *who, const char *then);

#endif
