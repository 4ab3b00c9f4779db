/* service: the service table and the route from an authority to a service (service.h says how
 * hosts match). The routes are one open-addressing hash table on the normalized authority, built
 * at start and never written again: a lookup is at most two probes sequences (host:port, host),
 * each a few slots long at a load of at most one half, whatever the number of services. */
#include "service.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "peers.h"

struct route_slot {
    uint64_t hash;
    uint32_t key_off;               /* into services.keys */
    uint16_t key_len;               /* 0: empty slot */
    int16_t service;
};

/* FNV-1a, 64 bits: short keys, no adversary choosing them (they come from the configuration; the
 * request's authority only picks which chain is walked, and every chain is short). */
static uint64_t hash_key(const char *k, size_t len)
{
    uint64_t h = 0xcbf29ce484222325ull;

    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)k[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static int is_host_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
           c == '_';
}

static char lower(char c)
{
    return c >= 'A' && c <= 'Z' ? (char)(c + 32) : c;
}

int service_normalize_host(const char *a, size_t len, char *out, unsigned *port)
{
    size_t hend, o = 0;
    const char *colon = NULL;

    *port = 0;
    if (len == 0)
        return -EINVAL;
    if (a[0] == '[') {
        const char *close = memchr(a, ']', len);
        if (!close || close == a + 1)
            return -EINVAL;
        hend = (size_t)(close - a) + 1;
        if (hend > 48)
            return -EINVAL;
        for (size_t i = 1; i < hend - 1; i++) {
            char c = lower(a[i]);
            if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || c == ':' || c == '.'))
                return -EINVAL;
        }
        if (hend < len) {
            if (a[hend] != ':')
                return -EINVAL;
            colon = a + hend;
        }
        for (size_t i = 0; i < hend; i++)
            out[o++] = lower(a[i]);
    } else {
        colon = memchr(a, ':', len);
        hend = colon ? (size_t)(colon - a) : len;
        if (colon && memchr(colon + 1, ':', len - hend - 1))
            return -EINVAL;     /* an IPv6 address without brackets: its port is ambiguous */
        if (hend > 0 && a[hend - 1] == '.')
            hend--;             /* the root's dot: "payments.shop." is "payments.shop" */
        if (hend == 0 || hend > 253)
            return -EINVAL;
        for (size_t i = 0; i < hend; i++) {
            if (!is_host_char(a[i]))
                return -EINVAL;
            out[o++] = lower(a[i]);
        }
    }
    out[o] = '\0';
    if (colon) {
        size_t plen = len - (size_t)(colon + 1 - a);
        unsigned v = 0;
        /* "host:" has an empty port (RFC 3986): the default one. */
        if (plen > 5)
            return -EINVAL;
        for (size_t i = 0; i < plen; i++) {
            char c = colon[1 + i];
            if (c < '0' || c > '9')
                return -EINVAL;
            v = v * 10 + (unsigned)(c - '0');
        }
        if (plen && (v < 1 || v > 65535))
            return -EINVAL;
        *port = v;
    }
    return 0;
}

/* "host" or "host:port" of a normalized host into <key> (SERVICE_HOST_MAX + 1 bytes); its length. */
static size_t make_key(char *key, const char *host, unsigned port)
{
    size_t n = strlen(host);
    char digits[8];
    int d = 0;

    memcpy(key, host, n);
    if (port) {
        key[n++] = ':';
        while (port) {
            digits[d++] = (char)('0' + port % 10);
            port /= 10;
        }
        while (d)
            key[n++] = digits[--d];
    }
    key[n] = '\0';
    return n;
}

/* The slot holding <key>, or NULL; <probes> (may be NULL) counts the slots looked at and
 * <compares> the key comparisons made (tests: the cost does not grow with the table). */
static const struct route_slot *route_find(const struct services *s, const char *key, size_t len, unsigned *probes,
                                           unsigned *compares)
{
    uint64_t h = hash_key(key, len);

    for (uint32_t i = (uint32_t)h & s->mask;; i = (i + 1) & s->mask) {
        const struct route_slot *sl = &s->slots[i];
        if (probes)
            (*probes)++;
        if (sl->key_len == 0)
            return NULL;
        if (sl->hash == h && sl->key_len == len) {
            if (compares)
                (*compares)++;
            if (memcmp(s->keys + sl->key_off, key, len) == 0)
                return sl;
        }
    }
}

static const struct service *route(const struct services *s, const char *authority, size_t len, unsigned *probes,
                                   unsigned *compares)
{
    char host[SERVICE_HOST_MAX + 1], key[SERVICE_HOST_MAX + 8];
    const struct route_slot *sl;
    unsigned port;
    size_t klen;

    if (!s->slots || service_normalize_host(authority, len, host, &port) < 0)
        return s->default_service;
    /* An entry with a port wants that port; an authority without one is on port 80. */
    klen = make_key(key, host, port ? port : 80);
    sl = route_find(s, key, klen, probes, compares);
    if (!sl) {
        klen = make_key(key, host, 0);
        sl = route_find(s, key, klen, probes, compares);
    }
    return sl ? &s->svc[sl->service] : s->default_service;
}

const struct service *services_route(const struct services *s, const char *authority, size_t len)
{
    return route(s, authority, len, NULL, NULL);
}

const struct service *services_route_exact(const struct services *s, const char *authority, size_t len)
{
    const struct service *svc;

    if (!s->slots)
        return NULL;
    svc = route(s, authority, len, NULL, NULL);
    /* route() falls back to the default: tell a match from the fallback by asking again with none. */
    if (svc && svc == s->default_service) {
        struct services bare = *s;
        bare.default_service = NULL;
        svc = route(&bare, authority, len, NULL, NULL);
    }
    return svc;
}

const struct service *services_route_counted(const struct services *s, const char *authority, size_t len,
                                             unsigned *probes, unsigned *compares)
{
    return route(s, authority, len, probes, compares);
}

/* ---- building the table ---------------------------------------------------------------- */

struct key_list {
    char *text;                     /* owned: keys one after another */
    size_t text_len, text_cap;
    struct { uint32_t off; uint16_t len; int16_t service; } *k;  /* owned */
    int n, cap;
};

/* Adds <key> for <service>. 0; -EEXIST with *other set when another service has it; -ENOMEM. */
static int keys_add(struct key_list *kl, const char *key, size_t len, int service, int *other)
{
    for (int i = 0; i < kl->n; i++)
        if (kl->k[i].len == len && memcmp(kl->text + kl->k[i].off, key, len) == 0) {
            if (kl->k[i].service == service)
                return 0;
            *other = kl->k[i].service;
            return -EEXIST;
        }
    if (kl->n == kl->cap) {
        int cap = kl->cap ? kl->cap * 2 : 64;
        void *k = realloc(kl->k, (size_t)cap * sizeof(*kl->k));
        if (!k)
            return -ENOMEM;
        kl->k = k;
        kl->cap = cap;
    }
    if (kl->text_len + len > kl->text_cap) {
        size_t cap = kl->text_cap ? kl->text_cap * 2 : 4096;
        char *t;
        while (cap < kl->text_len + len)
            cap *= 2;
        t = realloc(kl->text, cap);
        if (!t)
            return -ENOMEM;
        kl->text = t;
        kl->text_cap = cap;
    }
    memcpy(kl->text + kl->text_len, key, len);
    kl->k[kl->n].off = (uint32_t)kl->text_len;
    kl->k[kl->n].len = (uint16_t)len;
    kl->k[kl->n].service = (int16_t)service;
    kl->n++;
    kl->text_len += len;
    return 0;
}

/* "NEXTUP_SERVICE_X_HOSTS=\"...\"" or "NEXTUP_SERVICE_X_HOSTS (default: x)". */
static void describe_hosts(const struct config_service *cs, char *buf, size_t len)
{
    if (cs->hosts[0])
        snprintf(buf, len, "%sHOSTS=\"%.80s\"", cs->var_prefix, cs->hosts);
    else
        snprintf(buf, len, "%sHOSTS (default: %s)", cs->var_prefix, cs->name);
}

/* Every key of one HOSTS entry: the host as written and, for a short name, the forms a pod's
 * resolver would expand it to. Keys that two services share: -EINVAL with both named. */
static int add_entry(struct key_list *kl, const struct config *cfg, int service, const char *entry, size_t len,
                     char *err, size_t errlen)
{
    char host[SERVICE_HOST_MAX + 1], form[SERVICE_HOST_MAX + 1], key[SERVICE_HOST_MAX + 8];
    unsigned port;
    int n_forms = 1;

    if (service_normalize_host(entry, len, host, &port) < 0) {
        /* config.c checked the syntax; what it let through and this refuses is too long a name */
        snprintf(err, errlen, "%sHOSTS=\"%.80s\": \"%.*s\" is not host or host:port",
                 cfg->services[service].var_prefix, cfg->services[service].hosts, (int)len, entry);
        return -EINVAL;
    }
    if (!strchr(host, '.') && host[0] != '[' && cfg->namespace_[0])
        n_forms = 4;
    for (int f = 0; f < n_forms; f++) {
        int other = -1, rc;
        size_t klen;
        int w = f == 0 ? snprintf(form, sizeof(form), "%s", host)
              : f == 1 ? snprintf(form, sizeof(form), "%s.%s", host, cfg->namespace_)
              : f == 2 ? snprintf(form, sizeof(form), "%s.%s.svc", host, cfg->namespace_)
                       : snprintf(form, sizeof(form), "%s.%s.svc.%s", host, cfg->namespace_, cfg->cluster_domain);
        if (w < 0 || (size_t)w >= sizeof(form) - 1)
            continue;   /* a name longer than DNS allows is never asked for */
        klen = make_key(key, form, port);
        rc = keys_add(kl, key, klen, service, &other);
        if (rc == -EEXIST) {
            char a[192], b[192];
            describe_hosts(&cfg->services[other], a, sizeof(a));
            describe_hosts(&cfg->services[service], b, sizeof(b));
            snprintf(err, errlen, "%s and %s both select \"%s\": an authority picks one service", a, b, key);
            return -EINVAL;
        }
        if (rc < 0) {
            snprintf(err, errlen, "out of memory");
            return rc;
        }
    }
    return 0;
}

static int build_routes(struct services *s, const struct config *cfg, char *err, size_t errlen)
{
    struct key_list kl = { 0 };
    uint32_t size = 8;
    int rc = 0;

    for (int i = 0; i < cfg->n_services && rc == 0; i++) {
        const struct config_service *cs = &cfg->services[i];
        const char *p = cs->hosts[0] ? cs->hosts : cs->name;
        for (;;) {
            const char *comma = strchr(p, ',');
            const char *end = comma ? comma : p + strlen(p);
            while (p < end && (*p == ' ' || *p == '\t'))
                p++;
            while (end > p && (end[-1] == ' ' || end[-1] == '\t'))
                end--;
            rc = add_entry(&kl, cfg, i, p, (size_t)(end - p), err, errlen);
            if (rc < 0 || !comma)
                break;
            p = comma + 1;
        }
    }
    if (rc < 0)
        goto out;
    while (size < (uint32_t)kl.n * 2)
        size *= 2;
    s->slots = calloc(size, sizeof(*s->slots));
    if (!s->slots) {
        snprintf(err, errlen, "out of memory");
        rc = -ENOMEM;
        goto out;
    }
    s->mask = size - 1;
    s->n_keys = kl.n;
    s->keys = kl.text;
    kl.text = NULL;
    for (int i = 0; i < kl.n; i++) {
        uint64_t h = hash_key(s->keys + kl.k[i].off, kl.k[i].len);
        uint32_t j = (uint32_t)h & s->mask;
        while (s->slots[j].key_len)
            j = (j + 1) & s->mask;
        s->slots[j].hash = h;
        s->slots[j].key_off = kl.k[i].off;
        s->slots[j].key_len = kl.k[i].len;
        s->slots[j].service = kl.k[i].service;
    }
out:
    free(kl.text);
    free(kl.k);
    return rc;
}

int services_new(const struct config *cfg, struct services **out, char *err, size_t errlen)
{
    struct services *s = calloc(1, sizeof(*s));
    int rc;

    *out = NULL;
    if (!s || !(s->svc = calloc((size_t)cfg->n_services, sizeof(*s->svc)))) {
        free(s);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    s->n = cfg->n_services;
    for (int i = 0; i < s->n; i++) {
        const struct config_service *cs = &cfg->services[i];
        struct service *svc = &s->svc[i];

        svc->index = i;
        svc->name = cs->name;
        svc->cfg = cs;
        svc->retry = &cs->retry;
        svc->upstream_host = cs->upstream_host[0] ? cs->upstream_host : NULL;
        svc->peers = peers_new_service(i, cfg->upstreams + cs->first_upstream, cs->n_upstreams);
        if (!svc->peers) {
            services_free(s);
            snprintf(err, errlen, "out of memory");
            return -ENOMEM;
        }
        svc->peers->policy.connect_failures_to_eject = cfg->eject_connect_failures;
        svc->peers->policy.gateway_errors_to_eject = cfg->eject_gateway_errors;
        svc->peers->policy.eject_base_ms = cfg->eject_base_ms;
        svc->peers->policy.eject_max_ms = cfg->eject_max_ms;
        svc->peers->policy.max_eject_percent = cfg->max_ejection_percent;
    }
    s->default_service = cfg->default_service >= 0 ? &s->svc[cfg->default_service] : NULL;
    /* NEXTUP_UPSTREAMS alone: its service takes every authority, with no table to look in. */
    if (cfg->services_listed && (rc = build_routes(s, cfg, err, errlen)) < 0) {
        services_free(s);
        return rc;
    }
    *out = s;
    return 0;
}

void services_free(struct services *s)
{
    if (!s)
        return;
    for (int i = 0; i < s->n; i++)
        peers_free(s->svc[i].peers);
    free(s->svc);
    free(s->slots);
    free(s->keys);
    free(s);
}

/* ---- request-targets ------------------------------------------------------------------ */

static int bad(struct request_target *out, const char *why)
{
    out->form = TARGET_BAD;
    out->why = why;
    return -EINVAL;
}

int service_parse_target(const char *t, size_t len, struct request_target *out)
{
    char host[SERVICE_HOST_MAX + 1];
    unsigned port;
    size_t i = 0, a, e;

    memset(out, 0, sizeof(*out));
    if (len == 0)
        return bad(out, "empty request-target");
    if (t[0] == '/') {
        out->form = TARGET_ORIGIN;
        out->path = t;
        out->path_len = len;
        return 0;
    }
    if (len == 1 && t[0] == '*') {
        out->form = TARGET_ASTERISK;
        return 0;
    }
    /* scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) (RFC 3986, 3.1) */
    if ((t[0] >= 'a' && t[0] <= 'z') || (t[0] >= 'A' && t[0] <= 'Z'))
        for (i = 1; i < len && (is_host_char(t[i]) || t[i] == '+') && t[i] != '_'; i++)
            ;
    if (i == 0 || i >= len || t[i] != ':')
        return bad(out, "not a request-target: expected /path, http://host/path, host:port or *");
    if (len - i < 3 || t[i + 1] != '/' || t[i + 2] != '/') {
        /* "payments:8080": CONNECT's authority-form (a scheme followed by digits is none) */
        if (service_normalize_host(t, len, host, &port) == 0 && port) {
            out->form = TARGET_AUTHORITY;
            out->authority = t;
            out->authority_len = len;
            return 0;
        }
        return bad(out, "no // after the scheme: expected http://host/path");
    }
    out->scheme = t;
    out->scheme_len = i;
    out->scheme_is_http = i == 4 && lower(t[0]) == 'h' && lower(t[1]) == 't' && lower(t[2]) == 't' &&
                          lower(t[3]) == 'p';
    a = i + 3;
    for (e = a; e < len && t[e] != '/' && t[e] != '?' && t[e] != '#'; e++)
        if (t[e] == '@')
            return bad(out, "userinfo (user@) in the authority");
    if (memchr(t, '#', len))
        return bad(out, "a fragment (#) in the request-target");
    if (e == a)
        return bad(out, "empty authority");
    if (service_normalize_host(t + a, e - a, host, &port) < 0)
        return bad(out, "bad host or port in the authority");
    out->form = TARGET_ABSOLUTE;
    out->authority = t + a;
    out->authority_len = e - a;
    out->path = t + e;
    out->path_len = len - e;
    out->path_slash = out->path_len == 0 || out->path[0] == '?';
    return 0;
}
