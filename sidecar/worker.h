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
#include <stdint.h>

#define ACCEPT_PAUSE_MS 100

struct config;
struct peers;
struct event_base;
struct event;
struct evbuffer;
struct request_state;
struct evconnlistener;
struct upstream_pool;
struct downstream;
struct access_log;
struct services;

struct worker {
    int id;
    pthread_t thread;
    struct event_base *base;              /* owned */
    struct evconnlistener *listener;      /* owned; NULL once draining */
    struct event *drain_ev;               /* owned; activated by the main thread */
    struct event *sweep_ev;               /* owned: closes pooled connections of removed peers */
    struct event *accept_resume_ev;       /* owned: ends an accept pause */
    int accept_paused;                    /* listener disabled after EMFILE, ENFILE, ENOBUFS or ENOMEM */
    const struct config *cfg;
    const struct services *services;      /* shared, immutable: services_route() and each service's peers */
    struct upstream_pool **pools;         /* owned: one pool per service, pools[svc->index] (a pool is
                                             indexed by a peer's slot in its own service's set) */
    struct peers *peers;                  /* shared, read-mostly: service 0's (services->svc[0].peers) */
    struct upstream_pool *pool;           /* pools[0], not owned separately */
    struct access_log *alog;              /* owned */
    uint64_t rng;                         /* selection randomness, this thread only */
    struct evbuffer *resp_stage;          /* owned by proxy.c: response bytes of one parse, until committed */
    struct request_state *rq_free;        /* owned by proxy.c: request states kept for the next requests */
    int n_rq_free;
    struct downstream *conns;             /* live client connections (list head) */
    int n_conns;
    int n_conns_peak;                     /* most open since memory was last given back */
    int draining;
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

/* Called by proxy when a connection closes (its descriptor freed): keeps counts,
 * ends a drained loop, ends an accept pause. */
void worker_connection_closed(struct worker *w);

#endif
