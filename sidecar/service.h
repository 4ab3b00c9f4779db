/* service: the services one nextup carries, and which one a request is for.
 *
 * API:
 *   services_new() / services_free()   the table, built once at start from the configuration
 *                                      (NEXTUP_SERVICES, or the one service "default" of NEXTUP_UPSTREAMS);
 *                                      immutable afterwards: workers read it without locks
 *   services_route()                   a request's authority -> its service (one hash lookup, whatever
 *                                      the number of services), else the default service, else NULL
 *   service_parse_target()             pure: a request-target's form, scheme, authority and the
 *                                      origin-form path to send upstream (no libevent, no allocation)
 *   service_normalize_host()           pure: the form authorities are compared in
 *
 * Host matching (what an Envoy or nginx user expects):
 *   - case-insensitive; one trailing dot ignored ("Payments.Shop." is "payments.shop");
 *   - an entry without a port matches the host on any port; an entry with a port ("payments:8080")
 *     matches only that port, an authority without a port being port 80;
 *   - a short entry (no dot, not an address) also matches <name>.<ns>, <name>.<ns>.svc and
 *     <name>.<ns>.svc.<cluster domain> (NEXTUP_NAMESPACE, NEXTUP_CLUSTER_DOMAIN), as a pod's resolver
 *     expands it; with no namespace known, only the short name;
 *   - no wildcards: one authority, at most two probes (host:port, then host);
 *   - an authority no entry has, an empty one, or one that is not host[:port]: the default service
 *     (NEXTUP_DEFAULT_SERVICE; with NEXTUP_UPSTREAMS alone, its one service takes every authority), else
 *     NULL: the request path refuses it (421) and connects nowhere.
 * The same authority in two services is a configuration error (services_new() names both). */
#ifndef SIDECAR_SERVICE_H
#define SIDECAR_SERVICE_H

#include <stddef.h>
#include <stdint.h>

struct config;
struct config_service;
struct peers;
struct retry_settings;

struct service {
    int index;                                /* 0..n-1: worker->pools[index], metrics_service_*(index) */
    const char *name;                         /* "orders"; "default" for NEXTUP_UPSTREAMS (the cfg's) */
    struct peers *peers;                      /* owned; peers->service == index */
    const char *upstream_host;                /* Host sent upstream; NULL: keep the client's */
    const struct retry_settings *retry;       /* effective retry_on, methods, max_retries, per-try and
                                                 request timeouts (the cfg's; globals filled in) */
    const struct config_service *cfg;         /* everything else configured for it */
};

struct route_slot;

struct services {
    int n;                                    /* 1..CONFIG_MAX_SERVICES */
    struct service *svc;                      /* owned, n of them, svc[i].index == i */
    const struct service *default_service;    /* NULL: authorities no service claims are refused */
    /* The route table (private to service.c): open addressing on the normalized authority. */
    struct route_slot *slots;                 /* owned; NULL when every authority goes to the default */
    uint32_t mask;                            /* slots - 1 (a power of two, at most half full) */
    int n_keys;
    char *keys;                               /* owned: the keys' text */
};

/* Builds the table from <cfg> (which must outlive it): per service its peer set (with the
 * NEXTUP_EJECT_* policy) and its routes. 0 with *out set; -EINVAL with one line in <err> for a
 * configuration error (the same authority in two services: both variables named); -ENOMEM. */
int services_new(const struct config *cfg, struct services **out, char *err, size_t errlen);
void services_free(struct services *s);

/* The service the authority <authority> (<len> bytes, a Host value or an absolute-form target's
 * authority, not NUL-terminated) selects; the default service when none does; NULL when there is
 * none. Lock-free, allocation-free, any thread. */
const struct service *services_route(const struct services *s, const char *authority, size_t len);

/* services_route() without the default service: the service whose hosts name <authority>, else
 * NULL. For absolute-form targets: nextup proxies only to what a service claims. */
const struct service *services_route_exact(const struct services *s, const char *authority, size_t len);

/* services_route(), counting in <probes> the table slots looked at and in <compares> the key
 * comparisons made (tests: the cost of a lookup does not grow with the number of services). */
const struct service *services_route_counted(const struct services *s, const char *authority, size_t len,
                                             unsigned *probes, unsigned *compares);

/* Longest normalized authority: a host name (253) or [IPv6], ':' and a port. */
#define SERVICE_HOST_MAX 262

/* Normalizes the authority <a> of <len> bytes into <out> (SERVICE_HOST_MAX + 1 bytes) as "host" (lower
 * case, no trailing dot, IPv6 bracketed) and *port (1..65535; 0 when none was written). 0, or -EINVAL
 * when <a> is not host[:port] (empty, bad characters, bad port, unbracketed IPv6, too long). */
int service_normalize_host(const char *a, size_t len, char *out, unsigned *port);

enum target_form {
    TARGET_ORIGIN,        /* "/path?q" */
    TARGET_ABSOLUTE,      /* "scheme://authority/path?q": a request sent through HTTP_PROXY */
    TARGET_AUTHORITY,     /* "host:port" (CONNECT's form) */
    TARGET_ASTERISK,      /* "*" (OPTIONS) */
    TARGET_BAD,
};

/* What a request-target is. Pointers are into the parsed text (borrowed, not NUL-terminated). */
struct request_target {
    enum target_form form;
    const char *scheme;           /* absolute-form: as written, e.g. "http", "HTTPS"; else NULL */
    size_t scheme_len;
    int scheme_is_http;           /* 1: "http" in any case, the only scheme nextup proxies; "https" (and
                                     any other) is the request path's to refuse, with the scheme named */
    const char *authority;        /* absolute- and authority-form: "payments:8080"; else NULL */
    size_t authority_len;
    const char *path;             /* origin- and absolute-form: what to send as the origin-form target, */
    size_t path_len;              /* "/path?q", or "?q" or "" when <path_slash> */
    int path_slash;               /* 1: send "/" before <path> ("http://h" and "http://h?q" have none) */
    const char *why;              /* TARGET_BAD: what was wrong, constant text, e.g. "empty authority" */
};

/* Pure: parses the request-target <t> of <len> bytes into <out>. 0, or -EINVAL with out->form
 * TARGET_BAD and out->why set (an empty target, no "//" after the scheme, an empty authority, userinfo,
 * a fragment, a bad character or port in the authority). An absolute-form target of any scheme with a
 * good authority is 0: the scheme is the caller's to judge. */
int service_parse_target(const char *t, size_t len, struct request_target *out);

#endif
