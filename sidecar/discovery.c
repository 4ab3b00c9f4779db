#include "discovery.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>

#include "clock.h"
#include "config.h"
#include "log.h"
#include "metrics.h"
#include "peers.h"

/* An empty answer this many times in a row means the name really has no replicas. */
#define EMPTY_ANSWERS_TO_TRUST 2

struct dns_entry {
    struct discovery *d;
    struct peers *set;              /* the service's peers this name feeds */
    char name[128];                 /* the NEXTUP_UPSTREAMS entry, "host:port": the peers' name */
    char host[128];
    char port[8];
    int in_flight;
    struct evdns_getaddrinfo_request *req;  /* while in flight, to cancel at shutdown */
    int empty_streak;
    int failing;                    /* the last round failed: logged once until it answers again */
};

struct discovery {
    struct event_base *base;
    const struct config *cfg;
    struct evdns_base *dns;         /* owned */
    struct event *timer;            /* owned */
    struct dns_entry *entries;      /* owned */
    int n_entries;
};

/* evdns talks about nameservers failing and coming back: into nextup's log. */
static void evdns_log(int is_warn, const char *msg)
{
    if (is_warn)
        LOG_WARN("discovery: resolver: %s", msg);
    else
        LOG_DEBUG("discovery: resolver: %s", msg);
}

static int addrinfo_has(const struct evutil_addrinfo *res, const struct sockaddr_storage *sa)
{
    char a[64], b[64];

    peers_format_addr((const struct sockaddr *)sa, a, sizeof(a));
    for (; res; res = res->ai_next) {
        peers_format_addr(res->ai_addr, b, sizeof(b));
        if (strcmp(a, b) == 0)
            return 1;
    }
    return 0;
}

/* Makes the peers named <e> exactly the addresses of <res> (NULL: none). New
 * addresses are added before old ones are removed: workers pick peers while this
 * runs, and a set swapped in one answer (r1 -> r2) must never look empty to them. */
static void apply(struct dns_entry *e, const struct evutil_addrinfo *res)
{
    struct peers *set = e->set;
    int64_t now = clock_mono_ms();
    const struct evutil_addrinfo *ai;
    int i;

    for (ai = res; ai; ai = ai->ai_next) {
        char text[64];
        struct peer *p;
        int was_active = 0;

        if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
            continue;
        peers_format_addr(ai->ai_addr, text, sizeof(text));
        for (i = 0; i < set->n; i++)
            if (strcmp(set->peer[i]->addr_text, text) == 0 && peer_is_active(set->peer[i]))
                was_active = 1;
        if (was_active)
            continue;
        p = peers_add(set, ai->ai_addr, (socklen_t)ai->ai_addrlen, e->name, now);
        if (p)
            LOG_INFO("discovery: %s: %s is new; it takes requests now", e->name, p->addr_text);
        else
            LOG_ERROR("discovery: %s: no room for %s (%d peer slots in use)", e->name, text, PEERS_MAX);
    }
    for (i = 0; i < set->n; i++) {
        struct peer *p = set->peer[i];
        if (strcmp(p->name, e->name) != 0 || !peer_is_active(p) || addrinfo_has(res, &p->sa))
            continue;
        peers_remove(p, now);
        LOG_INFO("discovery: %s: %s is gone; it takes no new requests", e->name, p->addr_text);
    }
}

static void resolved_cb(int result, struct evutil_addrinfo *res, void *arg)
{
    struct dns_entry *e = arg;

    e->in_flight = 0;
    e->req = NULL;
    if (result == EVUTIL_EAI_CANCEL)
        return;
    if (result == 0 && res) {
        metrics_inc(M_DNS_REFRESHES);
        if (e->failing || e->empty_streak)
            LOG_INFO("discovery: %s resolves again", e->name);
        e->failing = 0;
        e->empty_streak = 0;
        apply(e, res);
        evutil_freeaddrinfo(res);
        return;
    }
    if (res)
        evutil_freeaddrinfo(res);
    if (result == EVUTIL_EAI_NONAME || result == EVUTIL_EAI_NODATA || result == 0) {
        /* "No such name" may be a resolver's passing glitch: trusted only when it repeats. */
        metrics_inc(M_DNS_EMPTY);
        if (++e->empty_streak == EMPTY_ANSWERS_TO_TRUST) {
            LOG_WARN("discovery: %s: empty answer %d times in a row: its peers are removed", e->name,
                     e->empty_streak);
            apply(e, NULL);
        } else if (e->empty_streak < EMPTY_ANSWERS_TO_TRUST) {
            LOG_WARN("discovery: %s: empty answer; keeping the last good set until it repeats", e->name);
        }
        return;
    }
    metrics_inc(M_DNS_FAILURES);
    if (!e->failing)
        LOG_WARN("discovery: %s: resolution failed (%s); keeping the last good set", e->name,
                 evutil_gai_strerror(result));
    e->failing = 1;
}

void discovery_refresh(struct discovery *d)
{
    struct evutil_addrinfo hints;
    int i;

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    for (i = 0; i < d->n_entries; i++) {
        struct dns_entry *e = &d->entries[i];
        if (e->in_flight)
            continue;
        e->in_flight = 1;
        /* The callback may run before this returns (hosts file, cached answer): then NULL comes back. */
        struct evdns_getaddrinfo_request *req = evdns_getaddrinfo(d->dns, e->host, e->port, &hints, resolved_cb, e);
        if (e->in_flight)
            e->req = req;
    }
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    discovery_refresh(arg);
}

/* "host:port" where host is a name, not an address literal. */
static int split_name(const char *entry, char *host, size_t hostlen, char *port, size_t portlen)
{
    const char *colon = strrchr(entry, ':');
    struct in_addr a4;

    if (!colon || entry[0] == '[' || (size_t)(colon - entry) >= hostlen || strlen(colon + 1) >= portlen)
        return 0;
    memcpy(host, entry, (size_t)(colon - entry));
    host[colon - entry] = '\0';
    snprintf(port, portlen, "%s", colon + 1);
    return inet_pton(AF_INET, host, &a4) != 1;
}

struct discovery *discovery_new(struct event_base *base, const struct config *cfg, struct peers *const *sets,
                                char *err, size_t errlen)
{
    struct discovery *d = calloc(1, sizeof(*d));
    struct timeval tv = { cfg->dns_refresh_ms / 1000, (cfg->dns_refresh_ms % 1000) * 1000 };
    int i, j, r;

    if (!d || !(d->entries = calloc((size_t)cfg->n_upstream_names + 1, sizeof(*d->entries)))) {
        free(d);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    d->base = base;
    d->cfg = cfg;
    /* Per service: a name two services both use is resolved for each (each has its own peers). */
    for (int k = 0; k < cfg->n_services; k++) {
        const struct config_service *cs = &cfg->services[k];
        int first_entry = d->n_entries;
        for (i = cs->first_name; i < cs->first_name + cs->n_names; i++) {
            struct dns_entry *e = &d->entries[d->n_entries];
            int seen = 0;
            if (!split_name(cfg->upstream_names[i], e->host, sizeof(e->host), e->port, sizeof(e->port)))
                continue;
            for (j = first_entry; j < d->n_entries; j++)
                seen |= strcmp(d->entries[j].name, cfg->upstream_names[i]) == 0;
            if (seen)
                continue;
            snprintf(e->name, sizeof(e->name), "%s", cfg->upstream_names[i]);
            e->d = d;
            e->set = sets[k];
            d->n_entries++;
        }
    }
    if (d->n_entries == 0 || cfg->dns_refresh_ms == 0)
        return d;
    /* Nameservers, search domains and ndots come from the resolver file, as a pod's resolver does. */
    evdns_set_log_fn(evdns_log);
    d->dns = evdns_base_new(base, 0);
    if (!d->dns) {
        snprintf(err, errlen, "cannot create a DNS resolver");
        discovery_free(d);
        return NULL;
    }
    r = evdns_base_resolv_conf_parse(d->dns, DNS_OPTIONS_ALL, cfg->resolv_conf);
    if (r != 0 && r != 6 /* "no nameservers listed": evdns then uses 127.0.0.1 */) {
        snprintf(err, errlen, "NEXTUP_RESOLV_CONF=\"%s\": cannot read it (evdns error %d)", cfg->resolv_conf, r);
        discovery_free(d);
        return NULL;
    }
    d->timer = event_new(base, -1, EV_PERSIST, timer_cb, d);
    if (!d->timer || event_add(d->timer, &tv) < 0) {
        snprintf(err, errlen, "out of memory");
        discovery_free(d);
        return NULL;
    }
    LOG_INFO("discovery: %d host name(s) re-resolved every %d ms (%s)", d->n_entries, cfg->dns_refresh_ms,
             cfg->resolv_conf);
    if (cfg->n_unresolved)
        LOG_WARN("discovery: %d host name(s) in %s did not resolve at start; asking again now",
                 cfg->n_unresolved, cfg->services_listed ? "the services' upstreams" : "NEXTUP_UPSTREAMS");
    /* The resolver of NEXTUP_RESOLV_CONF has the last word from the start. */
    discovery_refresh(d);
    return d;
}

void discovery_free(struct discovery *d)
{
    if (!d)
        return;
    int i;

    if (d->timer)
        event_free(d->timer);
    /* Cancelled first: evdns_base_free alone leaks a getaddrinfo still waiting for its answers. */
    for (i = 0; i < d->n_entries; i++)
        if (d->entries[i].req)
            evdns_getaddrinfo_cancel(d->entries[i].req);
    if (d->dns) {
        evdns_base_free(d->dns, 1);
        /* The failed requests' last callbacks are deferred: one turn of the loop lets them free their state. */
        event_base_loop(d->base, EVLOOP_NONBLOCK);
    }
    free(d->entries);
    free(d);
}
