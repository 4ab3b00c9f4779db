/* clock: the per-thread batch state that clock.h's inline readers share. */
#include "clock.h"

_Thread_local int clock_batch_depth;
_Thread_local int64_t clock_batch_us;
