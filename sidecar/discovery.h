/* discovery: host names in NEXTUP_UPSTREAMS (or each service's NEXTUP_SERVICE_<NAME>_UPSTREAMS) resolved again every
 * NEXTUP_DNS_REFRESH_MS with libevent's evdns (NEXTUP_RESOLV_CONF: nameservers,
 * search domains, ndots, as a pod's resolver does). Every A and AAAA record is
 * a peer: new ones are used at once, vanished ones are removed (in-flight
 * requests finish, pooled connections close), health is kept per address.
 * A failing resolver keeps the last good set; an empty answer removes the
 * name's peers only when it repeats. Main thread only.
 *
 * API: discovery_new() / discovery_free(), discovery_refresh(). */
#ifndef SIDECAR_DISCOVERY_H
#define SIDECAR_DISCOVERY_H

#include <stddef.h>

struct event_base;
struct config;
struct peers;
struct discovery;

/* Starts refreshing the host-name entries of every service's upstreams on <base>: service i's
 * (cfg->services[i]) feed <sets>[i] (not owned). NULL with <err> filled on failure; a discovery
 * that does nothing when there are no host names or NEXTUP_DNS_REFRESH_MS is 0. */
struct discovery *discovery_new(struct event_base *base, const struct config *cfg, struct peers *const *sets,
                                char *err, size_t errlen);
/* Starts one round of resolutions now (the timer calls it too). */
void discovery_refresh(struct discovery *d);
void discovery_free(struct discovery *d);

#endif
