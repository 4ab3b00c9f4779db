/* worker: one thread, one libevent loop, one SO_REUSEPORT listener, one
 * upstream pool; the client connections accepted there live and die there.
 *
 * API:
 *   workers_start()   create the listeners (so bind errors are startup errors) and threads
 *   workers_drain()   from the main thread: stop accepting, finish in-flight, exit loops
 *   workers_stop()    from the main thread: end the loops now and join
 *   workers_live_connections()  client connections open, all workers
 *
 * Out of descriptors or memory, accept() fails while the connection waits in
 * the backlog; a worker then stops accepting for ACCEPT_PAUSE_MS, or until one
 * of its connections closes, and says so at most once a second. */
#ifndef SIDECAR_WORKER_H
#define SIDECAR_WORKER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#define ACCEPT_PAUSE_MS 100

#define WAKE_DRAIN 1
#define WAKE_STOP 2

#include "ctx.h"

struct config;
struct peers;
struct event;
struct evconnlistener;

struct worker {
    int id;
    pthread_t thread;
    struct loop_ctx ctx;                  /* what the loop's connections share; base, pool, alog owned */
    struct evconnlistener *listener;      /* owned; NULL once draining */
    struct event *drain_ev;               /* owned: reads <wake_fd> */
    int wake_fd;                          /* owned: an eventfd other threads write to (the loop has no lock) */
    _Atomic int wake_want;                /* WAKE_* bits, set before the write */
    struct event *sweep_ev;               /* owned: closes pooled connections of removed peers */
    struct event *accept_resume_ev;       /* owned: ends an accept pause */
    int accept_paused;                    /* listener disabled after EMFILE, ENFILE, ENOBUFS or ENOMEM */
    int n_conns;
    int n_conns_peak;                     /* most open since memory was last given back */
};

/* Starts cfg->workers threads serving the services of <services> (borrowed, immutable; it must
 * outlive the workers). 0, or a negative errno with <err> filled
 * ("NEXTUP_LISTEN=...: bind: Address already in use"). */
int workers_start(const struct config *cfg, const struct services *services, char *err, size_t errlen);
/* Asks every worker to drain; returns at once. */
void workers_drain(void);
/* 1 when every worker loop has ended. */
int workers_all_done(void);
/* Ends every loop (drain deadline), joins the threads and frees the workers. */
void workers_stop(void);
int workers_live_connections(void);

#endif
