/* clock: the monotonic and wall clocks in milliseconds (and the monotonic one in
 * microseconds), as every module reads them.
 *
 * One socket callback of the request path reads the monotonic clock several
 * times for one request (its start, an attempt, a pooled connection taken and
 * given back, the response head), each a vDSO call. Between clock_batch_begin()
 * and clock_batch_end() -- conn.c's event callbacks -- the first read is kept
 * and returned to the others: within one callback the time has not moved by
 * more than that callback's own work. Outside a batch (timers, the admin
 * server, health) every call reads the clock. Per thread. */
#ifndef SIDECAR_CLOCK_H
#define SIDECAR_CLOCK_H

#include <stdint.h>
#include <time.h>

extern _Thread_local int clock_batch_depth;
extern _Thread_local int64_t clock_batch_us;    /* 0: not read in this batch yet */

static inline int64_t clock_mono_read_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static inline int64_t clock_mono_us(void)
{
    if (!clock_batch_depth)
        return clock_mono_read_us();
    if (!clock_batch_us)
        clock_batch_us = clock_mono_read_us();
    return clock_batch_us;
}

static inline int64_t clock_mono_ms(void)
{
    return clock_mono_us() / 1000;
}

static inline int64_t clock_unix_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline void clock_batch_begin(void)
{
    clock_batch_depth++;
}

static inline void clock_batch_end(void)
{
    if (--clock_batch_depth == 0)
        clock_batch_us = 0;
}

#endif
