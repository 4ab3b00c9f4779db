/* timeouts: one loop's timer durations as libevent common timeouts.
 *
 * Most timers of the request path have one of a few durations, fixed by the
 * configuration (header, idle, request and per-try timeouts, the lingering
 * close): libevent keeps the timers of one common timeout in a queue, where
 * adding and removing is a list operation instead of one on the heap that
 * every other timer of the loop shares.
 *
 * API: loop_timeout()   the timeval to give evtimer_add() for <ms> on this loop */
#ifndef SIDECAR_TIMEOUTS_H
#define SIDECAR_TIMEOUTS_H

#include <sys/time.h>

struct loop_ctx;

/* <lc>'s common timeout for <ms> (made at the first use; a loop has at most
 * LOOP_TIMEOUTS), or, beyond that or if libevent refuses, <ms> written into
 * <fallback>, which is then what is returned. */
const struct timeval *loop_timeout(struct loop_ctx *lc, int ms, struct timeval *fallback);

#endif
