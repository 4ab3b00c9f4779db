/* rng: seeds for the per-worker generators (peer choice, backoff jitter, request ids).
 * API: rng_seed(). The generator itself is peers_rand() (xorshift64*): fast, this thread only. */
#ifndef SIDECAR_RNG_H
#define SIDECAR_RNG_H

#include <stdint.h>

/* 64 bits from getrandom(2) (OpenSSL's RAND_bytes where the kernel has no getrandom);
 * never 0, which xorshift cannot leave. Two processes started in the same second as PID 1
 * (every container) get different seeds; so do two workers of one process. */
uint64_t rng_seed(void);

#endif
