/* evmem: libevent's memory functions, with a bounded per-thread cache of
 * freed blocks by power-of-two size (evmem.c says why).
 *
 * API: evmem_install()   once, before anything else calls libevent (no-op in
 *                        sanitizer builds)
 *      evmem_trim()      this thread's kept blocks back to malloc */
#ifndef SIDECAR_EVMEM_H
#define SIDECAR_EVMEM_H

void evmem_install(void);
void evmem_trim(void);

#endif
