#include "rng.h"

#include <errno.h>
#include <stdatomic.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <openssl/rand.h>

/* Only if both getrandom and OpenSSL fail (neither happens on a supported kernel): the
 * clock's nanoseconds, the PID and a counter, mixed, so workers still differ. */
static uint64_t fallback(void)
{
    static _Atomic uint64_t calls;
    struct timespec ts;
    uint64_t x;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    x = ((uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec) ^ ((uint64_t)getpid() << 32) ^
        (atomic_fetch_add(&calls, 1) + 1) * 0x9E3779B97F4A7C15ULL;
    /* splitmix64's finalizer: neighbouring inputs give unrelated outputs. */
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

uint64_t rng_seed(void)
{
    uint64_t x = 0;
    ssize_t n;

    do
        n = getrandom(&x, sizeof(x), 0);
    while (n < 0 && errno == EINTR);
    if (n != (ssize_t)sizeof(x) && RAND_bytes((unsigned char *)&x, sizeof(x)) != 1)
        x = fallback();
    return x ? x : 0x9E3779B97F4A7C15ULL;
}
