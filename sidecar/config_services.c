/* config_services: NEXTUP_SERVICES and each service's NEXTUP_SERVICE_<NAME>_* -> cfg->services[].
 *
 * Called by config_from_env() in this order: config_services_list() (the names, before the
 * unknown-variable check needs them), config_services_read() (each service's variables, once the
 * globals they default to are known), config_services_resolve() (every service's upstreams, last,
 * so that a typo is reported without first waiting on DNS). */
#include "config_services.h"

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "config_values.h"

/* NEXTUP_SERVICE_<NAME>_<suffix>. An override is parsed as its global variable is (same entry
 * of vars[], same checks, same messages with the service's variable named); unset, the
 * service takes the global value. */
struct svc_var {
    const char *suffix;
    const char *global;  /* the vars[] entry it overrides; NULL: the service's own */
    size_t off;          /* field in struct config_service */
    const char *def;     /* for --help */
    const char *help;
};

static const struct svc_var svc_vars[] = {
    { "UPSTREAMS", NULL, 0, "(required)",
      "the service's host:port peers, as NEXTUP_UPSTREAMS (names re-resolved every NEXTUP_DNS_REFRESH_MS)" },
    { "HOSTS", NULL, offsetof(struct config_service, hosts), "the service name",
      "authorities (Host, or an absolute-form target) that select it, comma-separated; case and a trailing dot "
      "ignored; a port only when written; a short name also matches <name>.<namespace>, <name>.<namespace>.svc "
      "and <name>.<namespace>.svc.<cluster domain>" },
    { "UPSTREAM_HOST", NULL, offsetof(struct config_service, upstream_host), "(none)",
      "Host sent to its replicas; empty = the client's" },
    { "RETRY_ON", "NEXTUP_RETRY_ON", offsetof(struct config_service, retry.policy), "NEXTUP_RETRY_ON",
      "the service's NEXTUP_RETRY_ON" },
    { "RETRY_METHODS", "NEXTUP_RETRY_METHODS", offsetof(struct config_service, retry.policy),
      "NEXTUP_RETRY_METHODS", "the service's NEXTUP_RETRY_METHODS" },
    { "MAX_RETRIES", "NEXTUP_MAX_RETRIES", offsetof(struct config_service, retry.policy.max_retries),
      "NEXTUP_MAX_RETRIES", "the service's NEXTUP_MAX_RETRIES" },
    { "PER_TRY_TIMEOUT_MS", "NEXTUP_PER_TRY_TIMEOUT_MS", offsetof(struct config_service, retry.per_try_timeout_ms),
      "NEXTUP_PER_TRY_TIMEOUT_MS", "the service's NEXTUP_PER_TRY_TIMEOUT_MS" },
    { "REQUEST_TIMEOUT_MS", "NEXTUP_REQUEST_TIMEOUT_MS", offsetof(struct config_service, retry.request_timeout_ms),
      "NEXTUP_REQUEST_TIMEOUT_MS", "the service's NEXTUP_REQUEST_TIMEOUT_MS" },
};

/* The service whose NEXTUP_SERVICE_<NAME>_<suffix> <name> (of <len> bytes) is, and the svc_vars[]
 * entry; -1 when it is none of a listed service's. */
int config_services_find_var(const struct config *cfg, const char *name, size_t len, const struct svc_var **sv)
{
    if (!cfg->services_listed)
        return -1;
    for (int i = 0; i < cfg->n_services; i++) {
        const struct config_service *s = &cfg->services[i];
        size_t pl = strlen(s->var_prefix);
        if (len <= pl || strncmp(name, s->var_prefix, pl) != 0)
            continue;
        for (size_t k = 0; k < sizeof(svc_vars) / sizeof(svc_vars[0]); k++)
            if (strlen(svc_vars[k].suffix) == len - pl && strncmp(name + pl, svc_vars[k].suffix, len - pl) == 0) {
                if (sv)
                    *sv = &svc_vars[k];
                return i;
            }
    }
    return -1;
}

const char *config_services_nearest(const struct config *cfg, const char *name, const char *best,
                                    char *buf, size_t buflen)
{
    int best_d = config_edit_distance(name, best);

    for (int i = 0; cfg->services_listed && i < cfg->n_services; i++)
        for (size_t k = 0; k < sizeof(svc_vars) / sizeof(svc_vars[0]); k++) {
            char cand[NAME_CMP_MAX * 2];
            int d;
            snprintf(cand, sizeof(cand), "%s%s", cfg->services[i].var_prefix, svc_vars[k].suffix);
            d = config_edit_distance(name, cand);
            if (d < best_d) {
                best_d = d;
                snprintf(buf, buflen, "%s", cand);
                best = buf;
            }
        }
    return best;
}

/* NEXTUP_SERVICES: names of [a-z0-9-], 1..63 characters, unique, at most CONFIG_MAX_SERVICES; each
 * gets its variables' prefix. Syntax only, before check_unknown() needs the names. */
static int parse_services_list(struct config *cfg, const char *list, char *err, size_t errlen)
{
    const char *p = list;

    for (int index = 1;; index++) {
        const char *comma = strchr(p, ',');
        const char *end = comma ? comma : p + strlen(p);
        struct config_service *svc;
        size_t len;

        while (p < end && (*p == ' ' || *p == '\t'))
            p++;
        while (end > p && (end[-1] == ' ' || end[-1] == '\t'))
            end--;
        len = (size_t)(end - p);
        if (len == 0 || len > 63) {
            config_set_err(err, errlen, "NEXTUP_SERVICES=\"%s\": name %d is %s: expected comma-separated service names "
                           "of 1 to 63 characters a-z, 0-9 and -, e.g. orders,payments", list, index,
                           len ? "longer than 63 characters" : "empty");
            return -EINVAL;
        }
        for (size_t i = 0; i < len; i++)
            if (!((p[i] >= 'a' && p[i] <= 'z') || (p[i] >= '0' && p[i] <= '9') || p[i] == '-')) {
                config_set_err(err, errlen, "NEXTUP_SERVICES=\"%s\": \"%.*s\" has '%c': expected service names of "
                               "a-z, 0-9 and - (lower case, as Kubernetes Service names)", list, (int)len, p, p[i]);
                return -EINVAL;
            }
        for (int i = 0; i < cfg->n_services; i++)
            if (strlen(cfg->services[i].name) == len && strncmp(cfg->services[i].name, p, len) == 0) {
                config_set_err(err, errlen, "NEXTUP_SERVICES=\"%s\": \"%.*s\" is listed twice", list, (int)len, p);
                return -EINVAL;
            }
        if (cfg->n_services >= CONFIG_MAX_SERVICES) {
            config_set_err(err, errlen, "NEXTUP_SERVICES=\"%.64s...\": more than %d services", list, CONFIG_MAX_SERVICES);
            return -EINVAL;
        }
        svc = &cfg->services[cfg->n_services++];
        memcpy(svc->name, p, len);
        svc->name[len] = '\0';
        memcpy(svc->var_prefix, SERVICE_VAR_PREFIX, strlen(SERVICE_VAR_PREFIX));
        for (size_t i = 0; i < len; i++)
            svc->var_prefix[strlen(SERVICE_VAR_PREFIX) + i] = p[i] == '-' ? '_' : (char)(p[i] - (p[i] >= 'a' ? 32 : 0));
        svc->var_prefix[strlen(SERVICE_VAR_PREFIX) + len] = '_';
        svc->var_prefix[strlen(SERVICE_VAR_PREFIX) + len + 1] = '\0';
        if (!comma)
            return 0;
        p = comma + 1;
    }
}

/* NEXTUP_SERVICE_<NAME>_HOSTS: comma-separated hosts, each checked by config_check_host(). */
static int check_hosts(const char *var, const char *list, char *err, size_t errlen)
{
    const char *p = list;

    for (;;) {
        const char *comma = strchr(p, ',');
        const char *end = comma ? comma : p + strlen(p);
        const char *why;

        while (p < end && (*p == ' ' || *p == '\t'))
            p++;
        while (end > p && (end[-1] == ' ' || end[-1] == '\t'))
            end--;
        if (config_check_host(p, (size_t)(end - p), &why) < 0) {
            config_set_err(err, errlen, "%s=\"%s\": \"%.*s\": %s: expected comma-separated host or host:port, "
                           "e.g. payments,payments.example.com:8080", var, list, (int)(end - p), p, why);
            return -EINVAL;
        }
        if (!comma)
            return 0;
        p = comma + 1;
    }
}

/* "NAME=\"value\"" when <svc> sets its override <suffix>, else describe() of the global <name>. */
static const char *describe_svc(const struct var *globals, size_t n_globals, const struct config_service *svc,
                                const char *suffix, const char *global, char *buf, size_t len)
{
    char var[160];
    const char *value;

    snprintf(var, sizeof(var), "%s%s", svc->var_prefix, suffix);
    value = getenv(var);
    if (value && *value && strcmp(svc->var_prefix, "NEXTUP_") != 0) {
        if (snprintf(buf, len, "%s=\"%.64s\"", var, value) >= (int)len)
            buf[len - 1] = '\0';   /* cut: the message stays one line */
        return buf;
    }
    return config_describe(globals, n_globals, global, buf, len);
}

/* A listed service's NEXTUP_SERVICE_<NAME>_* (its upstreams' syntax only: resolution comes last). */
static int read_service(struct config *cfg, struct config_service *svc, const struct var *globals,
                        size_t n_globals, char *err, size_t errlen)
{
    for (size_t k = 0; k < sizeof(svc_vars) / sizeof(svc_vars[0]); k++) {
        const struct svc_var *sv = &svc_vars[k];
        char name[160];
        const char *value;
        int rc;

        snprintf(name, sizeof(name), "%s%s", svc->var_prefix, sv->suffix);
        value = getenv(name);
        if (!value || !*value) {
            if (k == 0) {
                config_set_err(err, errlen, "%s is required: NEXTUP_SERVICES=\"%.64s\" lists %s: %s", name,
                               cfg->services_list, svc->name, UPSTREAMS_EXPECTED);
                return -EINVAL;
            }
            continue;
        }
        if (sv->global) {
            struct var v = *config_find_var(globals, n_globals, sv->global, strlen(sv->global));
            v.name = name;
            v.off = sv->off;
            rc = config_parse_var(cfg, svc, &v, value, err, errlen);
        } else if (k == 0) {
            config_copy_text(svc->upstreams_var, sizeof(svc->upstreams_var), name);
            rc = config_scan_upstreams(cfg, name, value, true, err, errlen);
        } else if (sv->off == offsetof(struct config_service, hosts)) {
            if (strlen(value) >= sizeof(svc->hosts)) {
                config_set_err(err, errlen, "%s=\"%.64s...\": expected a list shorter than %zu bytes", name, value,
                               sizeof(svc->hosts));
                return -EINVAL;
            }
            rc = check_hosts(name, value, err, errlen);
            snprintf(svc->hosts, sizeof(svc->hosts), "%s", value);
        } else {
            const char *why;
            if (strlen(value) >= sizeof(svc->upstream_host) || config_check_host(value, strlen(value), &why) < 0) {
                config_set_err(err, errlen, "%s=\"%s\": expected one host or host:port for the Host header, "
                               "e.g. payments.internal:8080", name, value);
                return -EINVAL;
            }
            rc = 0;
            snprintf(svc->upstream_host, sizeof(svc->upstream_host), "%s", value);
        }
        if (rc < 0)
            return rc;
    }
    if (svc->retry.per_try_timeout_ms > svc->retry.request_timeout_ms) {
        char a[192], b[192];
        config_set_err(err, errlen, "%s is above %s for service %s: one attempt may not take longer than the whole "
                       "request: the per-try timeout would never fire",
                       describe_svc(globals, n_globals, svc, "PER_TRY_TIMEOUT_MS", "NEXTUP_PER_TRY_TIMEOUT_MS", a, sizeof(a)),
                       describe_svc(globals, n_globals, svc, "REQUEST_TIMEOUT_MS", "NEXTUP_REQUEST_TIMEOUT_MS", b, sizeof(b)), svc->name);
        return -EINVAL;
    }
    return 0;
}

int config_services_list(struct config *cfg, char *err, size_t errlen)
{
    const char *services = getenv("NEXTUP_SERVICES");

    if (services && *services) {
        const char *up = getenv("NEXTUP_UPSTREAMS");
        if (up && *up) {
            config_set_err(err, errlen, "NEXTUP_UPSTREAMS=\"%.64s\" and NEXTUP_SERVICES=\"%.64s\" are both set: "
                           "NEXTUP_UPSTREAMS is the single service of a nextup without NEXTUP_SERVICES; "
                           "give each service its NEXTUP_SERVICE_<NAME>_UPSTREAMS instead", up, services);
            return -EINVAL;
        }
        if (strlen(services) >= sizeof(cfg->services_list)) {
            config_set_err(err, errlen, "NEXTUP_SERVICES=\"%.64s...\": expected a list shorter than %zu bytes", services,
                           sizeof(cfg->services_list));
            return -EINVAL;
        }
        if (parse_services_list(cfg, services, err, errlen) < 0)
            return -EINVAL;
        cfg->services_listed = 1;
    }
    return 0;
}

int config_services_read(struct config *cfg, const char *upstreams_name, const struct var *globals,
                         size_t n_globals, char *err, size_t errlen)
{
    if (!cfg->services_listed) {
        struct config_service *svc = &cfg->services[0];
        cfg->n_services = 1;
        snprintf(svc->name, sizeof(svc->name), "default");
        snprintf(svc->var_prefix, sizeof(svc->var_prefix), "NEXTUP_");
        snprintf(svc->upstreams_var, sizeof(svc->upstreams_var), "%s", upstreams_name);
        cfg->default_service = 0;
    }
    for (int i = 0; i < cfg->n_services; i++) {
        struct config_service *svc = &cfg->services[i];
        svc->retry.policy = cfg->retry;
        svc->retry.per_try_timeout_ms = cfg->per_try_timeout_ms;
        svc->retry.request_timeout_ms = cfg->request_timeout_ms;
        if (cfg->services_listed && read_service(cfg, svc, globals, n_globals, err, errlen) < 0)
            return -EINVAL;
    }
    if (cfg->default_service_name[0]) {
        for (int i = 0; i < cfg->n_services && cfg->default_service < 0; i++)
            if (strcmp(cfg->services[i].name, cfg->default_service_name) == 0)
                cfg->default_service = i;
        if (!cfg->services_listed && strcmp(cfg->default_service_name, "default") != 0) {
            config_set_err(err, errlen, "NEXTUP_DEFAULT_SERVICE=\"%s\": without NEXTUP_SERVICES the one service is "
                           "\"default\" and takes every request", cfg->default_service_name);
            return -EINVAL;
        }
        if (cfg->default_service < 0) {
            config_set_err(err, errlen, "NEXTUP_DEFAULT_SERVICE=\"%s\": not one of NEXTUP_SERVICES=\"%.200s\"",
                           cfg->default_service_name, cfg->services_list);
            return -EINVAL;
        }
    }
    return 0;
}

int config_services_resolve(struct config *cfg, const char *upstreams, const char *upstreams_name,
                            char *err, size_t errlen)
{
    cfg->n_upstreams = 0;
    cfg->n_upstream_names = 0;
    cfg->n_unresolved = 0;
    for (int i = 0; i < cfg->n_services; i++) {
        struct config_service *svc = &cfg->services[i];
        char var[160];
        const char *value;
        int unresolved = cfg->n_unresolved, rc;

        if (cfg->services_listed) {
            snprintf(var, sizeof(var), "%sUPSTREAMS", svc->var_prefix);
            value = getenv(var);
        } else {
            snprintf(var, sizeof(var), "%s", upstreams_name);
            value = upstreams;
        }
        cfg->scan_first = cfg->n_upstreams;
        svc->first_upstream = cfg->n_upstreams;
        svc->first_name = cfg->n_upstream_names;
        rc = config_scan_upstreams(cfg, var, value, false, err, errlen);
        if (rc < 0)
            return rc;
        svc->n_upstreams = cfg->n_upstreams - svc->first_upstream;
        svc->n_names = cfg->n_upstream_names - svc->first_name;
        svc->n_unresolved = cfg->n_unresolved - unresolved;
    }
    cfg->scan_first = 0;
    return 0;
}

void config_services_print_help(FILE *out)
{
    fprintf(out, "\nPer service of NEXTUP_SERVICES (<NAME>: its name upper-cased, - as _; an unset override takes the "
                 "global value):\n\n");
    for (size_t k = 0; k < sizeof(svc_vars) / sizeof(svc_vars[0]); k++)
        fprintf(out, "  %s<NAME>_%s  default: %s\n      %s\n", SERVICE_VAR_PREFIX, svc_vars[k].suffix, svc_vars[k].def,
                svc_vars[k].help);
}
