/* timeouts: see timeouts.h. */
#include "timeouts.h"

#include <event2/event.h>

#include "ctx.h"

const struct timeval *loop_timeout(struct loop_ctx *lc, int ms, struct timeval *fallback)
{
    int i;

    for (i = 0; i < lc->n_timeouts; i++)
        if (lc->timeouts[i].ms == ms)
            return lc->timeouts[i].tv;
    fallback->tv_sec = ms / 1000;
    fallback->tv_usec = (ms % 1000) * 1000;
    if (lc->n_timeouts < LOOP_TIMEOUTS) {
        const struct timeval *tv = event_base_init_common_timeout(lc->base, fallback);
        if (tv) {
            lc->timeouts[lc->n_timeouts].ms = ms;
            lc->timeouts[lc->n_timeouts].tv = tv;
            lc->n_timeouts++;
            return tv;
        }
    }
    return fallback;
}
