/* evmem: libevent's allocations through a small per-thread cache of freed blocks.
 *
 * A proxied request makes libevent allocate and free a few buffer chains (a
 * 16 KiB read reservation on each side, a small chain per head written), and
 * glibc's tcache stops at about 1 KiB: the bigger ones went through malloc's
 * bins every time. Here a block is rounded up to a power of two (a chain size
 * libevent already picks) and, when freed, kept on its thread's list for that
 * size, up to EVMEM_KEEP_BYTES per thread; the next allocation of that size on
 * that thread takes it back without entering malloc. A block freed on another
 * thread joins that thread's lists; a block is always a malloc block, so any
 * thread may also hand it back to malloc. Sizes above the largest class go
 * straight to malloc, with the same header.
 *
 * Not installed in sanitizer builds: there every libevent allocation should stay
 * a malloc of its own, for ASan to check and LeakSanitizer to account for. */
#include "evmem.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#define EVMEM_MIN_SHIFT 8                   /* 256 B: the smallest class */
#define EVMEM_CLASSES 9                     /* ... up to 64 KiB */
#define EVMEM_KEEP_BYTES (512 * 1024)       /* what one thread keeps at most */
#define EVMEM_NO_CLASS 0xff

/* Before each block: its class (or EVMEM_NO_CLASS) and its size, 16 bytes so
 * that what follows keeps malloc's alignment. */
struct evmem_hdr {
    uint32_t cls;
    uint32_t pad;
    size_t size;                            /* bytes usable after the header */
};

struct evmem_free {
    struct evmem_free *next;
};

static _Thread_local struct evmem_free *free_list[EVMEM_CLASSES];
static _Thread_local size_t kept_bytes;

/* The class of <n> bytes, or EVMEM_NO_CLASS above the largest. */
static unsigned class_of(size_t n)
{
    unsigned cls = 0;
    size_t cap = (size_t)1 << EVMEM_MIN_SHIFT;

    while (cap < n) {
        cap <<= 1;
        if (++cls == EVMEM_CLASSES)
            return EVMEM_NO_CLASS;
    }
    return cls;
}

static size_t class_size(unsigned cls)
{
    return (size_t)1 << (EVMEM_MIN_SHIFT + cls);
}

static struct evmem_hdr *hdr_of(void *p)
{
    return (struct evmem_hdr *)p - 1;
}

static void *evmem_malloc(size_t n)
{
    unsigned cls = class_of(n);
    size_t size = cls == EVMEM_NO_CLASS ? n : class_size(cls);
    struct evmem_hdr *h;

    if (cls != EVMEM_NO_CLASS && free_list[cls]) {
        struct evmem_free *f = free_list[cls];
        free_list[cls] = f->next;
        kept_bytes -= size;
        return f;
    }
    if (size > SIZE_MAX - sizeof(*h))
        return NULL;
    h = malloc(sizeof(*h) + size);
    if (!h)
        return NULL;
    h->cls = cls;
    h->pad = 0;
    h->size = size;
    return h + 1;
}

static void evmem_free_block(void *p)
{
    struct evmem_hdr *h;

    if (!p)
        return;
    h = hdr_of(p);
    if (h->cls != EVMEM_NO_CLASS && kept_bytes + h->size <= EVMEM_KEEP_BYTES) {
        struct evmem_free *f = p;
        f->next = free_list[h->cls];
        free_list[h->cls] = f;
        kept_bytes += h->size;
        return;
    }
    free(h);
}

static void *evmem_realloc(void *p, size_t n)
{
    void *np;

    if (!p)
        return evmem_malloc(n);
    if (n <= hdr_of(p)->size)
        return p;
    np = evmem_malloc(n);
    if (!np)
        return NULL;
    memcpy(np, p, hdr_of(p)->size);
    evmem_free_block(p);
    return np;
}

void evmem_install(void)
{
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
    event_set_mem_functions(evmem_malloc, evmem_realloc, evmem_free_block);
#endif
}
