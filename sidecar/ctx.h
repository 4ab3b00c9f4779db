/* ctx: what one worker loop shares with the connections it serves. Types only:
 * the worker fills it in; downstream, proxy and exchange read it. Nothing here
 * calls back into the worker except through <on_conn_closed>, so the request
 * path never includes worker.h. */
#ifndef SIDECAR_CTX_H
#define SIDECAR_CTX_H

#include <stdint.h>

struct access_log;
struct config;
struct downstream;
struct event_base;
struct peers;
struct request;
struct services;
struct timeval;
struct upstream_pool;

/* Distinct timer durations a loop keeps as libevent common timeouts (timeouts.c). */
#define LOOP_TIMEOUTS 16

struct loop_ctx {
    struct event_base *base;
    const struct config *cfg;
    const struct services *services;      /* shared, immutable: services_route() and each service's peers */
    struct upstream_pool **pools;         /* this loop's keep-alive pools, one per service (pools[svc->index]) */
    struct peers *peers;                  /* service 0's (services->svc[0].peers) */
    struct upstream_pool *pool;           /* pools[0] */
    struct access_log *alog;
    uint64_t rng;                         /* selection randomness, this loop only */
    int draining;                         /* finish what is in flight, take nothing new */
    struct downstream *conns;             /* owned by downstream.c: live client connections */
    struct request *requests_free;        /* owned by proxy.c: request states kept for reuse */
    int n_requests_free;
    struct {                              /* owned by timeouts.c */
        int ms;
        const struct timeval *tv;
    } timeouts[LOOP_TIMEOUTS];
    int n_timeouts;
    /* A client connection was freed (its descriptor closed). */
    void (*on_conn_closed)(void *arg);
    void *on_conn_closed_arg;
};

#endif
