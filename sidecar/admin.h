/* admin: the admin listener (NEXTUP_ADMIN) on the main thread's loop:
 * /healthz (alive), /readyz (nextup serves: 200 once listening, 503 while draining, whatever the
 * upstreams look like: a sidecar's readiness is its pod's), /readyz/upstreams (the gate for who
 * wants one: 200 when every service has a usable peer, else 503 naming each service without),
 * /metrics, /debug/peers (JSON, by service: each peer's verdict, reason, L7 and kernel counters), /logging (GET: the
 * log level; POST /logging?level=debug|info|warn|error changes it while running).
 * GET and HEAD only (POST for /logging alone), no body, heads up to 8 KiB, a whole request
 * within 10 s, at most 64 connections; /debug/... and /logging only to loopback clients unless
 * NEXTUP_ADMIN_DEBUG_FROM=any.
 * Out of descriptors or memory, the listener stops accepting for 100 ms at a time and says
 * so at most once a second. */
#ifndef SIDECAR_ADMIN_H
#define SIDECAR_ADMIN_H

#include <stddef.h>

struct event_base;
struct config;
struct services;
struct health;

/* Binds NEXTUP_ADMIN; <svcs> (borrowed) gives /readyz/upstreams and the per-service metrics, <h>
 * /debug/peers and the per-peer health metrics. 0, or a negative errno with <err> naming the variable. */
int admin_start(struct event_base *base, const struct config *cfg, const struct services *svcs, struct health *h,
                char *err, size_t errlen);
/* /readyz answers 503 from now on. */
void admin_set_draining(void);
void admin_stop(void);

#endif
