/* evmem: libevent's allocations through a small per-thread cache of freed blocks.
 *
 * A proxied request makes libevent allocate and free a few buffer chains (a
 * 16 KiB read reservation on each side), and glibc's tcache stops at about
 * 1 KiB: the bigger ones went through malloc's bins every time. Here a block of
 * EVMEM_KEEP_MIN bytes or more is rounded up to a power of two (a chain size
 * libevent already picks) and, when freed, kept on its thread's list for that
 * size, up to EVMEM_KEEP_BYTES per thread; the next allocation of that size on
 * that thread takes it back without entering malloc. Smaller blocks are plain
 * malloc blocks of their own size: the tcache serves them fast already, and
 * there are many (libevent's per-fd entries, events, buffers), so no header and
 * no rounding. A block's class is read back from malloc_usable_size(): a class
 * block of 2^k bytes has between 2^k and 2^(k+1) usable. Every block is a
 * malloc block, so a block freed on another thread simply joins that thread's
 * lists. evmem_trim() gives a thread's kept blocks back to malloc, as the
 * worker's sweep does before malloc_trim() after a burst of connections.
 *
 * Not installed in sanitizer builds: there every libevent allocation should stay
 * a malloc of its own, for ASan to check and LeakSanitizer to account for. */
#include "evmem.h"

#include <malloc.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

/* Sanitizer builds: nothing installed, nothing kept (see above). */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
void evmem_trim(void)
{
}

void evmem_install(void)
{
}
#else

#define EVMEM_MIN_SHIFT 11                  /* 2 KiB: the smallest class kept (EVMEM_KEEP_MIN) */
#define EVMEM_KEEP_MIN ((size_t)1 << EVMEM_MIN_SHIFT)
#define EVMEM_CLASSES 6                     /* ... up to 64 KiB */
#define EVMEM_KEEP_BYTES (256 * 1024)       /* what one thread keeps at most */
#define EVMEM_NO_CLASS 0xff

struct evmem_free {
    struct evmem_free *next;
};

static _Thread_local struct evmem_free *free_list[EVMEM_CLASSES];
static _Thread_local size_t kept_bytes;

static size_t class_size(unsigned cls)
{
    return (size_t)1 << (EVMEM_MIN_SHIFT + cls);
}

/* The class that <n> bytes are rounded up to, or EVMEM_NO_CLASS (below the
 * smallest or above the largest: a plain block). */
static unsigned class_for(size_t n)
{
    unsigned cls;

    if (n < EVMEM_KEEP_MIN)
        return EVMEM_NO_CLASS;
    for (cls = 0; cls < EVMEM_CLASSES; cls++)
        if (n <= class_size(cls))
            return cls;
    return EVMEM_NO_CLASS;
}

/* The class of a block malloc gave <usable> bytes: the largest class size it holds. */
static unsigned class_of_block(size_t usable)
{
    unsigned cls;

    if (usable < EVMEM_KEEP_MIN || usable >= 2 * class_size(EVMEM_CLASSES - 1))
        return EVMEM_NO_CLASS;
    for (cls = EVMEM_CLASSES - 1; class_size(cls) > usable; cls--)
        ;
    return cls;
}

static void *evmem_malloc(size_t n)
{
    unsigned cls = class_for(n);

    if (cls == EVMEM_NO_CLASS)
        return malloc(n);
    if (free_list[cls]) {
        struct evmem_free *f = free_list[cls];
        free_list[cls] = f->next;
        kept_bytes -= class_size(cls);
        return f;
    }
    return malloc(class_size(cls));
}

static void evmem_free_block(void *p)
{
    unsigned cls;

    if (!p)
        return;
    cls = class_of_block(malloc_usable_size(p));
    if (cls != EVMEM_NO_CLASS && kept_bytes + class_size(cls) <= EVMEM_KEEP_BYTES) {
        struct evmem_free *f = p;
        f->next = free_list[cls];
        free_list[cls] = f;
        kept_bytes += class_size(cls);
        return;
    }
    free(p);
}

static void *evmem_realloc(void *p, size_t n)
{
    size_t usable;
    void *np;

    if (!p)
        return evmem_malloc(n);
    if (class_for(n) == EVMEM_NO_CLASS)
        return realloc(p, n);
    usable = malloc_usable_size(p);
    if (n <= usable)
        return p;
    np = evmem_malloc(n);
    if (!np)
        return NULL;
    memcpy(np, p, usable);
    evmem_free_block(p);
    return np;
}

void evmem_trim(void)
{
    unsigned cls;

    for (cls = 0; cls < EVMEM_CLASSES; cls++) {
        while (free_list[cls]) {
            struct evmem_free *f = free_list[cls];
            free_list[cls] = f->next;
            free(f);
        }
    }
    kept_bytes = 0;
}

void evmem_install(void)
{
    event_set_mem_functions(evmem_malloc, evmem_realloc, evmem_free_block);
}
#endif
