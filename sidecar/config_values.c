/* config_values: one NEXTUP_* value -> its field, for config.c and config_services.c.
 *
 * A global variable and a service's override of it go through the same config_parse_var(), so
 * that both are checked alike and named alike in the error line. Upstream lists (host:port
 * entries, resolved with getaddrinfo) are one kind of value among the others. */
#include "config_values.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "retry.h"

#define ADDR_EXPECTED "expected host:port with a numeric IPv4 address or [IPv6]:port"

static const char *const level_names[] = {
    [LOG_LEVEL_ERROR] = "error", [LOG_LEVEL_WARN] = "warn",
    [LOG_LEVEL_INFO] = "info", [LOG_LEVEL_DEBUG] = "debug",
};

void config_set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (!err || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    /* The message must stay one line even when the value holds a newline. */
    for (char *p = err; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
}

/* Optimal string alignment distance of <a> and <b>, each cut at NAME_CMP_MAX bytes:
 * a typo is a letter missed, added, changed or two swapped. */
int config_edit_distance(const char *a, const char *b)
{
    int d[NAME_CMP_MAX + 1][NAME_CMP_MAX + 1];
    size_t la = strnlen(a, NAME_CMP_MAX), lb = strnlen(b, NAME_CMP_MAX);

    for (size_t i = 0; i <= la; i++)
        d[i][0] = (int)i;
    for (size_t j = 0; j <= lb; j++)
        d[0][j] = (int)j;
    for (size_t i = 1; i <= la; i++) {
        for (size_t j = 1; j <= lb; j++) {
            int cost = a[i - 1] != b[j - 1];
            int best = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < best)
                best = d[i][j - 1] + 1;
            if (d[i - 1][j - 1] + cost < best)
                best = d[i - 1][j - 1] + cost;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] && d[i - 2][j - 2] + 1 < best)
                best = d[i - 2][j - 2] + 1;
            d[i][j] = best;
        }
    }
    return d[la][lb];
}

const struct var *config_find_var(const struct var *table, size_t n, const char *name, size_t len)
{
    for (size_t i = 0; i < n; i++)
        if (strlen(table[i].name) == len && strncmp(table[i].name, name, len) == 0)
            return &table[i];
    return NULL;
}

const char *config_describe(const struct var *table, size_t n, const char *name, char *buf, size_t len)
{
    const char *value = getenv(name);

    if (value && *value) {
        snprintf(buf, len, "%s=\"%.64s\"", name, value);
    } else {
        const struct var *v = config_find_var(table, n, name, strlen(name));
        snprintf(buf, len, "%s (default %s)", name, v && v->def ? v->def : "?");
    }
    return buf;
}

/* Decimal only: strtol alone would take leading spaces, "+", and "0x" with base 0. */
static int parse_long(const char *s, long min, long max, long *out)
{
    char *end;
    long v;

    if (!(s[0] >= '0' && s[0] <= '9') && !(s[0] == '-' && s[1] >= '0' && s[1] <= '9'))
        return -EINVAL;
    errno = 0;
    v = strtol(s, &end, 10);
    if (errno || *end != '\0' || v < min || v > max)
        return -EINVAL;
    *out = v;
    return 0;
}

/* 1..65535, at most 5 digits so "000000080" is not a port. */
static int parse_port(const char *s, size_t len, in_port_t *port)
{
    unsigned v = 0;

    if (len == 0 || len > 5)
        return -EINVAL;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -EINVAL;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    if (v < 1 || v > 65535)
        return -EINVAL;
    *port = htons((in_port_t)v);
    return 0;
}

int config_parse_addr(const char *text, struct sockaddr_storage *sa, socklen_t *salen)
{
    char host[INET6_ADDRSTRLEN];
    const char *h, *colon;
    size_t hlen;
    in_port_t port;
    bool v6 = text[0] == '[';

    if (v6) {
        const char *close = strchr(text, ']');
        if (!close || close[1] != ':')
            return -EINVAL;
        h = text + 1;
        hlen = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strchr(text, ':');
        /* an unbracketed IPv6 address would have its port ambiguous */
        if (!colon || strchr(colon + 1, ':'))
            return -EINVAL;
        h = text;
        hlen = (size_t)(colon - text);
    }
    if (hlen == 0 || hlen >= sizeof(host))
        return -EINVAL;
    if (parse_port(colon + 1, strlen(colon + 1), &port) < 0)
        return -EINVAL;
    memcpy(host, h, hlen);
    host[hlen] = '\0';

    memset(sa, 0, sizeof(*sa));
    if (v6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)sa;
        if (inet_pton(AF_INET6, host, &s6->sin6_addr) != 1)
            return -EINVAL;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = port;
        *salen = sizeof(*s6);
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)sa;
        if (inet_pton(AF_INET, host, &s4->sin_addr) != 1)
            return -EINVAL;
        s4->sin_family = AF_INET;
        s4->sin_port = port;
        *salen = sizeof(*s4);
    }
    return 0;
}

static bool same_addr(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return false;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const struct sockaddr_in *)a;
        const struct sockaddr_in *y = (const struct sockaddr_in *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)a;
        const struct sockaddr_in6 *y = (const struct sockaddr_in6 *)b;
        return x->sin6_port == y->sin6_port && x->sin6_scope_id == y->sin6_scope_id &&
               memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
    }
    return false;
}

/* "1.2.3.4:80" or "[::1]:80"; <out> of 64 bytes always suffices. */
static void format_addr(const struct sockaddr_storage *sa, char *out, size_t outlen)
{
    char host[INET6_ADDRSTRLEN] = "?";

    if (sa->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof(host));
        snprintf(out, outlen, "[%s]:%u", host, (unsigned)ntohs(s6->sin6_port));
    } else {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &s4->sin_addr, host, sizeof(host));
        snprintf(out, outlen, "%s:%u", host, (unsigned)ntohs(s4->sin_port));
    }
}

/* Appends <sa> unless already present. 0, or -EINVAL when the table is full. */
static int add_upstream(struct config *cfg, const char *entry,
                        const struct sockaddr *sa, socklen_t salen)
{
    struct sockaddr_storage ss;
    struct config_upstream *u;

    if (salen > sizeof(ss))
        return 0;
    memset(&ss, 0, sizeof(ss));
    memcpy(&ss, sa, salen);
    /* Within the service: two services may well share a replica (each has its own peer). */
    for (int i = cfg->scan_first; i < cfg->n_upstreams; i++)
        if (same_addr(&cfg->upstreams[i].sa, &ss))
            return 0;
    if (cfg->n_upstreams - cfg->scan_first >= CONFIG_MAX_UPSTREAMS || cfg->n_upstreams >= CONFIG_MAX_UPSTREAMS_TOTAL)
        return -EINVAL;
    u = &cfg->upstreams[cfg->n_upstreams++];
    memset(u, 0, sizeof(*u));
    u->sa = ss;
    u->salen = salen;
    snprintf(u->name, sizeof(u->name), "%s", entry);
    format_addr(&ss, u->addr_text, sizeof(u->addr_text));
    return 0;
}

static bool all_digits_and_dots(const char *s)
{
    for (; *s; s++)
        if (*s != '.' && (*s < '0' || *s > '9'))
            return false;
    return true;
}

/* One trimmed, non-empty entry of NEXTUP_UPSTREAMS, shorter than name[].
 * With <check_only>, validates the syntax and adds nothing (no DNS). */
static int parse_upstream_entry(struct config *cfg, const char *name, const char *entry,
                                bool check_only, char *err, size_t errlen)
{
    char host[256];
    const char *colon;
    size_t hlen;
    in_port_t port;
    struct addrinfo hints, *res, *ai;
    int rc;

    if (entry[0] == '[') {
        struct sockaddr_storage ss;
        socklen_t salen;
        if (config_parse_addr(entry, &ss, &salen) < 0) {
            config_set_err(err, errlen, "%s=\"%s\": expected [IPv6]:port with port 1..65535",
                           name, entry);
            return -EINVAL;
        }
        if (check_only)
            return 0;
        if (add_upstream(cfg, entry, (struct sockaddr *)&ss, salen) < 0)
            goto too_many;
        return 0;
    }

    colon = strrchr(entry, ':');
    if (!colon) {
        config_set_err(err, errlen, "%s=\"%s\": missing port: %s", name, entry, UPSTREAMS_EXPECTED);
        return -EINVAL;
    }
    hlen = (size_t)(colon - entry);
    if (memchr(entry, ':', hlen)) {
        config_set_err(err, errlen, "%s=\"%s\": IPv6 addresses need brackets, e.g. [::1]:8080",
                       name, entry);
        return -EINVAL;
    }
    if (hlen == 0) {
        config_set_err(err, errlen, "%s=\"%s\": missing host: %s", name, entry, UPSTREAMS_EXPECTED);
        return -EINVAL;
    }
    if (parse_port(colon + 1, strlen(colon + 1), &port) < 0) {
        config_set_err(err, errlen, "%s=\"%s\": expected a port from 1 to 65535 after the last ':'",
                       name, entry);
        return -EINVAL;
    }
    memcpy(host, entry, hlen);
    host[hlen] = '\0';

    /* getaddrinfo would take "10.1" or "1.2.3" (inet_aton forms) as addresses;
     * no host name is all digits and dots, so such text is a typo. */
    if (all_digits_and_dots(host)) {
        struct sockaddr_storage ss;
        socklen_t salen;
        if (config_parse_addr(entry, &ss, &salen) < 0) {
            config_set_err(err, errlen, "%s=\"%s\": \"%s\" is not a valid IPv4 address",
                           name, entry, host);
            return -EINVAL;
        }
        if (check_only)
            return 0;
        if (add_upstream(cfg, entry, (struct sockaddr *)&ss, salen) < 0)
            goto too_many;
        return 0;
    }
    if (check_only)
        return 0;

    /* No AI_ADDRCONFIG: a peer on ::1 must be reachable even when the host has
     * no global IPv6 address, which is common in containers. */
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    if (cfg->n_upstream_names < CONFIG_MAX_UPSTREAMS_TOTAL) {
        snprintf(cfg->upstream_names[cfg->n_upstream_names], sizeof(cfg->upstream_names[0]), "%s", entry);
        cfg->n_upstream_names++;
    }
    rc = getaddrinfo(host, colon + 1, &hints, &res);
    /* A name with no answer yet (a headless Service with no ready replica) is not
     * fatal when discovery will ask again; only with re-resolution off is it an error. */
    if (rc != 0 && cfg->dns_refresh_ms > 0) {
        cfg->n_unresolved++;
        return 0;
    }
    if (rc != 0) {
        if (rc == EAI_SYSTEM)
            config_set_err(err, errlen, "%s=\"%s\": cannot resolve \"%s\": %s: %s",
                           name, entry, host, gai_strerror(rc), strerror(errno));
        else
            config_set_err(err, errlen, "%s=\"%s\": cannot resolve \"%s\": %s",
                           name, entry, host, gai_strerror(rc));
        return -EINVAL;
    }
    rc = 0;
    for (ai = res; ai; ai = ai->ai_next) {
        if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
            continue;
        if (add_upstream(cfg, entry, ai->ai_addr, ai->ai_addrlen) < 0) {
            rc = -EINVAL;
            break;
        }
    }
    freeaddrinfo(res);
    if (rc < 0)
        goto too_many;
    return 0;

too_many:
    if (cfg->n_upstreams >= CONFIG_MAX_UPSTREAMS_TOTAL)
        config_set_err(err, errlen, "%s=\"%s\": more than %d upstream addresses of all services together",
                       name, entry, CONFIG_MAX_UPSTREAMS_TOTAL);
    else
        config_set_err(err, errlen, "%s=\"%s\": more than %d upstream addresses in total",
                       name, entry, CONFIG_MAX_UPSTREAMS);
    return -EINVAL;
}

int config_scan_upstreams(struct config *cfg, const char *name, const char *value,
                          bool check_only, char *err, size_t errlen)
{
    char entry[sizeof(cfg->upstreams[0].name)];
    const char *p = value;

    for (int index = 1;; index++) {
        const char *comma = strchr(p, ',');
        const char *end = comma ? comma : p + strlen(p);
        size_t len;
        int rc;

        while (p < end && (*p == ' ' || *p == '\t'))
            p++;
        while (end > p && (end[-1] == ' ' || end[-1] == '\t'))
            end--;
        len = (size_t)(end - p);
        if (len == 0) {
            config_set_err(err, errlen, "%s=\"%s\": entry %d is empty: %s",
                           name, value, index, UPSTREAMS_EXPECTED);
            return -EINVAL;
        }
        /* name[] keeps the entry text; cutting it would misname the peer */
        if (len >= sizeof(entry)) {
            config_set_err(err, errlen, "%s=\"%.*s\": entry longer than %zu characters",
                           name, (int)len, p, sizeof(entry) - 1);
            return -EINVAL;
        }
        memcpy(entry, p, len);
        entry[len] = '\0';
        rc = parse_upstream_entry(cfg, name, entry, check_only, err, errlen);
        if (rc < 0)
            return rc;
        if (!comma)
            return 0;
        p = comma + 1;
    }
}

/* Parses <value> of <v> into <base> + v->off: <base> is <cfg> for the global variables, a
 * struct config_service for a service's override of one (the entry copied, its name changed). */
int config_parse_var(struct config *cfg, void *base, const struct var *v, const char *value,
                     char *err, size_t errlen)
{
    void *field = (char *)base + v->off;

    switch (v->kind) {
    case VAR_ADDR: {
        struct config_addr *a = field;
        if (strlen(value) >= sizeof(a->text) ||
            config_parse_addr(value, &a->sa, &a->salen) < 0) {
            config_set_err(err, errlen, "%s=\"%s\": %s", v->name, value, ADDR_EXPECTED);
            return -EINVAL;
        }
        snprintf(a->text, sizeof(a->text), "%s", value);
        return 0;
    }
    case VAR_UPSTREAMS:
        /* syntax only: names are resolved once every variable is known good */
        return config_scan_upstreams(cfg, v->name, value, true, err, errlen);
    case VAR_INT:
    case VAR_INT_CLAMPED: {
        long n;
        /* A pod template written for a bigger node must still start: more threads than
         * allowed is a wish for "as many as possible", not a typo. */
        if (v->kind == VAR_INT_CLAMPED && parse_long(value, v->max + 1, LONG_MAX, &n) == 0) {
            if (cfg->n_warnings < CONFIG_MAX_WARNINGS)
                snprintf(cfg->warnings[cfg->n_warnings++], sizeof(cfg->warnings[0]),
                         "%s=\"%s\": above the most allowed (%ld); using %ld", v->name, value, v->max, v->max);
            *(int *)field = (int)v->max;
            return 0;
        }
        if (parse_long(value, v->min, v->max, &n) < 0) {
            config_set_err(err, errlen, "%s=\"%s\": expected an integer from %ld to %ld",
                           v->name, value, v->min, v->max);
            return -EINVAL;
        }
        *(int *)field = (int)n;
        return 0;
    }
    case VAR_RETRY_ON: {
        char bad[64];
        if (retry_parse_on(field, value, bad, sizeof(bad)) < 0) {
            config_set_err(err, errlen, "%s=\"%s\": unknown condition \"%s\": expected a comma list of "
                           "connect-failure, refused, reset, timeout, gateway-error, 5xx or status codes 100-599",
                           v->name, value, bad);
            return -EINVAL;
        }
        return 0;
    }
    case VAR_METHODS: {
        char bad[64];
        if (retry_parse_methods(field, value, bad, sizeof(bad)) < 0) {
            config_set_err(err, errlen, "%s=\"%s\": unknown method \"%s\": expected a comma list of "
                           "HTTP methods in upper case, e.g. GET,HEAD,PUT", v->name, value, bad);
            return -EINVAL;
        }
        return 0;
    }
    case VAR_STRING:
    case VAR_PATH: {
        /* For paths and strings, <min> holds the size of the field. */
        char *dst = field;
        if (strlen(value) >= (size_t)v->min) {
            config_set_err(err, errlen, "%s=\"%s\": expected a %s shorter than %ld bytes", v->name, value,
                           v->kind == VAR_PATH ? "path" : "value", v->min);
            return -EINVAL;
        }
        snprintf(dst, (size_t)v->min, "%s", value);
        return 0;
    }
    case VAR_ONOFF:
        if (strcmp(value, "on") == 0 || strcmp(value, "off") == 0) {
            *(int *)field = strcmp(value, "on") == 0;
            return 0;
        }
        config_set_err(err, errlen, "%s=\"%s\": expected on or off", v->name, value);
        return -EINVAL;
    case VAR_BPF_MODE: {
        static const char *const modes[] = { [CONFIG_BPF_AUTO] = "auto", [CONFIG_BPF_ON] = "on",
                                             [CONFIG_BPF_OFF] = "off" };
        for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++)
            if (strcmp(value, modes[i]) == 0) {
                *(int *)field = (int)i;
                return 0;
            }
        config_set_err(err, errlen, "%s=\"%s\": expected one of auto, on, off", v->name, value);
        return -EINVAL;
    }
    case VAR_DEBUG_FROM:
        if (strcmp(value, "loopback") == 0 || strcmp(value, "any") == 0) {
            *(int *)field = strcmp(value, "any") == 0;
            return 0;
        }
        config_set_err(err, errlen, "%s=\"%s\": expected loopback or any", v->name, value);
        return -EINVAL;
    case VAR_LOG_FORMAT:
        if (strcmp(value, "text") == 0 || strcmp(value, "json") == 0) {
            *(enum log_format *)field = strcmp(value, "json") == 0 ? LOG_FORMAT_JSON : LOG_FORMAT_TEXT;
            return 0;
        }
        config_set_err(err, errlen, "%s=\"%s\": expected text or json", v->name, value);
        return -EINVAL;
    case VAR_LOG_LEVEL:
        for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++) {
            if (strcmp(value, level_names[i]) == 0) {
                *(enum log_level *)field = (enum log_level)i;
                return 0;
            }
        }
        config_set_err(err, errlen, "%s=\"%s\": expected one of error, warn, info, debug",
                       v->name, value);
        return -EINVAL;
    }
    return -EINVAL;
}

/* <src> into <dst> of <size> bytes, cut if longer. */
void config_copy_text(char *dst, size_t size, const char *src)
{
    size_t n = strnlen(src, size - 1);

    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* A host or host:port of _HOSTS (or _UPSTREAM_HOST, <port_ok> either way): letters, digits, '-', '.',
 * '_', an [IPv6] literal; a port of 1..65535. The forms it selects are service.c's business. */
int config_check_host(const char *h, size_t len, const char **why)
{
    size_t i = 0, hend;
    const char *colon;

    if (len == 0) {
        *why = "empty";
        return -EINVAL;
    }
    if (h[0] == '[') {
        const char *close = memchr(h, ']', len);
        if (!close) {
            *why = "an IPv6 literal needs its ]";
            return -EINVAL;
        }
        hend = (size_t)(close - h) + 1;
        for (i = 1; i < hend - 1; i++)
            if (!((h[i] >= '0' && h[i] <= '9') || (h[i] >= 'a' && h[i] <= 'f') || (h[i] >= 'A' && h[i] <= 'F') ||
                  h[i] == ':' || h[i] == '.')) {
                *why = "not an IPv6 address inside [ ]";
                return -EINVAL;
            }
        colon = hend < len ? h + hend : NULL;
        if (colon && *colon != ':') {
            *why = "expected :port after ]";
            return -EINVAL;
        }
    } else {
        colon = memchr(h, ':', len);
        hend = colon ? (size_t)(colon - h) : len;
        for (i = 0; i < hend; i++)
            if (!((h[i] >= 'a' && h[i] <= 'z') || (h[i] >= 'A' && h[i] <= 'Z') || (h[i] >= '0' && h[i] <= '9') ||
                  h[i] == '-' || h[i] == '.' || h[i] == '_')) {
                *why = "a host name has only letters, digits, '-', '.' and '_'";
                return -EINVAL;
            }
        if (hend == 0 || (hend == 1 && h[0] == '.')) {
            *why = "no host before the port";
            return -EINVAL;
        }
    }
    if (colon) {
        in_port_t port;
        if (parse_port(colon + 1, len - (size_t)(colon + 1 - h), &port) < 0) {
            *why = "expected a port from 1 to 65535 after ':'";
            return -EINVAL;
        }
    }
    return 0;
}
