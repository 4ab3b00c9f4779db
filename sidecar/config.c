/* config: NEXTUP_* environment variables -> struct config.
 *
 * Every variable lives in one table (vars[] below) holding its name, default,
 * range and help text; config_from_env() and config_print_help() both walk it,
 * so the defaults printed by --help are the ones the parser applies. Defaults
 * are kept as text and go through the same parser as user values, so a bad
 * default cannot hide either.
 *
 * This file holds the table, the order of the checks and --help; how one value is parsed
 * is config_values.c's, the services (NEXTUP_SERVICES, NEXTUP_SERVICE_<NAME>_*) are
 * config_services.c's. Calls go config.c -> config_services.c -> config_values.c, never back:
 * what the services need of vars[] they are handed. */
#include "config.h"

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config_services.h"
#include "config_values.h"

#define MS_MAX 86400000L   /* one day: longer timeouts are typos, not intent */
#define WORKERS_MAX 64

static const struct var vars[] = {
    { "NEXTUP_LISTEN", VAR_ADDR, "127.0.0.1:15001", 0, 0, offsetof(struct config, listen),
      "address for proxied traffic (numeric IPv4:port or [IPv6]:port)" },
    { "NEXTUP_ADMIN", VAR_ADDR, "127.0.0.1:15000", 0, 0, offsetof(struct config, admin),
      "address for /healthz /readyz /metrics /debug/peers" },
    { "NEXTUP_ADMIN_DEBUG_FROM", VAR_DEBUG_FROM, "loopback", 0, 0, offsetof(struct config, admin_debug_any),
      "who may read /debug/* and use /logging on the admin listener: loopback (others get 403) or any" },
    { "NEXTUP_UPSTREAMS", VAR_UPSTREAMS, NULL, 0, 0, offsetof(struct config, upstreams),
      "comma-separated host:port peers; names resolve to every address (the one service \"default\"; "
      "or use NEXTUP_SERVICES)" },
    { "NEXTUP_SERVICES", VAR_STRING, "", sizeof(((struct config *)0)->services_list), 0,
      offsetof(struct config, services_list),
      "comma-separated service names ([a-z0-9-], 1..63 characters, at most 256), each described by "
      "NEXTUP_SERVICE_<NAME>_* (name upper-cased, - as _); instead of NEXTUP_UPSTREAMS" },
    { "NEXTUP_DEFAULT_SERVICE", VAR_STRING, "", sizeof(((struct config *)0)->default_service_name), 0,
      offsetof(struct config, default_service_name),
      "service for requests whose authority no service claims; empty = such requests are refused (421)" },
    { "NEXTUP_NAMESPACE", VAR_STRING, "", sizeof(((struct config *)0)->namespace_), 0,
      offsetof(struct config, namespace_),
      "the pod's namespace, for <name>.<namespace>[.svc[.<cluster domain>]] host forms; "
      "empty = the service account's namespace file, if any" },
    { "NEXTUP_CLUSTER_DOMAIN", VAR_STRING, "cluster.local", sizeof(((struct config *)0)->cluster_domain), 0,
      offsetof(struct config, cluster_domain), "the cluster's DNS domain, for <name>.<namespace>.svc.<domain>" },
    { "NEXTUP_WORKERS", VAR_INT_CLAMPED, NULL, 1, WORKERS_MAX, offsetof(struct config, workers),
      "worker threads; above the most, the most (with a warning)" },
    { "NEXTUP_CONNECT_TIMEOUT_MS", VAR_INT, "1000", 1, MS_MAX,
      offsetof(struct config, connect_timeout_ms), "upstream connect timeout, ms" },
    { "NEXTUP_REQUEST_TIMEOUT_MS", VAR_INT, "30000", 1, MS_MAX,
      offsetof(struct config, request_timeout_ms),
      "time from the request head to the upstream response head, all attempts included, ms; then 504" },
    { "NEXTUP_IDLE_TIMEOUT_MS", VAR_INT, "60000", 1, MS_MAX,
      offsetof(struct config, idle_timeout_ms), "idle time allowed on a connection (keep-alive, stalled body), ms" },
    { "NEXTUP_HEADER_TIMEOUT_MS", VAR_INT, "10000", 1, MS_MAX,
      offsetof(struct config, header_timeout_ms), "time allowed to receive a request head, ms; then 408" },
    { "NEXTUP_MAX_HEADER_BYTES", VAR_INT, "65536", 1024, 1048576,
      offsetof(struct config, max_header_bytes), "largest accepted header block, bytes" },
    { "NEXTUP_MAX_CONNECTIONS", VAR_INT, "10000", 1, 1000000,
      offsetof(struct config, max_connections), "downstream connections accepted at once" },
    { "NEXTUP_MAX_RETRIES", VAR_INT, "2", 0, 16,
      offsetof(struct config, max_retries), "retries per request after the first attempt" },
    { "NEXTUP_DRAIN_TIMEOUT_MS", VAR_INT, "10000", 1, MS_MAX,
      offsetof(struct config, drain_timeout_ms), "grace period for in-flight requests on shutdown, ms" },
    { "NEXTUP_POOL_MAX_IDLE", VAR_INT, "64", 0, 10000,
      offsetof(struct config, pool_max_idle), "idle upstream connections kept per peer per worker" },
    { "NEXTUP_RETRY_BUFFER_BYTES", VAR_INT, "65536", 0, 67108864,
      offsetof(struct config, retry_buffer_bytes), "request body bytes kept so the request can be retried" },
    { "NEXTUP_LOG_LEVEL", VAR_LOG_LEVEL, "info", 0, 0, offsetof(struct config, log_level),
      "one of error, warn, info, debug (POST /logging?level= on the admin listener changes it while running)" },
    { "NEXTUP_LOG_FORMAT", VAR_LOG_FORMAT, "text", 0, 0, offsetof(struct config, log_format),
      "diagnostics on stderr as text lines or json (one object a line: time, level, msg)" },
    { "NEXTUP_UPSTREAM_TLS", VAR_ONOFF, "off", 0, 0, offsetof(struct config, upstream_tls),
      "on: every upstream connection is TLS (verified, ALPN http/1.1, pooled, sessions resumed)" },
    { "NEXTUP_UPSTREAM_TLS_VERIFY", VAR_ONOFF, "on", 0, 0, offsetof(struct config, upstream_tls_verify),
      "off: accept any upstream certificate (a warning at start)" },
    { "NEXTUP_UPSTREAM_CA_FILE", VAR_PATH, "", sizeof(((struct config *)0)->upstream_ca_file), 0, offsetof(struct config, upstream_ca_file),
      "CA bundle that upstream certificates must chain to; empty = the system store" },
    { "NEXTUP_UPSTREAM_SNI", VAR_PATH, "", sizeof(((struct config *)0)->upstream_sni), 0, offsetof(struct config, upstream_sni),
      "name sent as SNI and checked in upstream certificates; empty = the entry's host name (an IP entry is checked as an IP)" },
    { "NEXTUP_UPSTREAM_CERT_FILE", VAR_PATH, "", sizeof(((struct config *)0)->upstream_cert_file), 0, offsetof(struct config, upstream_cert_file),
      "client certificate (PEM chain) presented to replicas (mTLS)" },
    { "NEXTUP_UPSTREAM_KEY_FILE", VAR_PATH, "", sizeof(((struct config *)0)->upstream_key_file), 0, offsetof(struct config, upstream_key_file),
      "key of NEXTUP_UPSTREAM_CERT_FILE" },
    { "NEXTUP_TLS_CERT_FILE", VAR_PATH, "", sizeof(((struct config *)0)->tls_cert_file), 0, offsetof(struct config, tls_cert_file),
      "certificate (PEM chain) of the listener: TLS on NEXTUP_LISTEN" },
    { "NEXTUP_TLS_KEY_FILE", VAR_PATH, "", sizeof(((struct config *)0)->tls_key_file), 0, offsetof(struct config, tls_key_file),
      "key of NEXTUP_TLS_CERT_FILE" },
    { "NEXTUP_TLS_CLIENT_CA_FILE", VAR_PATH, "", sizeof(((struct config *)0)->tls_client_ca_file), 0, offsetof(struct config, tls_client_ca_file),
      "CA bundle: clients must present a certificate chaining to it" },
    { "NEXTUP_TLS_RELOAD_MS", VAR_INT, "2000", 100, MS_MAX, offsetof(struct config, tls_reload_ms),
      "how often certificate and key files are checked for a change (rotation without restart), ms" },
    { "NEXTUP_DNS_REFRESH_MS", VAR_INT, "5000", 0, MS_MAX, offsetof(struct config, dns_refresh_ms),
      "how often host names in NEXTUP_UPSTREAMS are resolved again (every A and AAAA record a peer), ms; 0 = never" },
    { "NEXTUP_PROBE_PATH", VAR_PATH, "", sizeof(((struct config *)0)->probe_path), 0, offsetof(struct config, probe_path),
      "path a peer whose time out is up is probed with (GET on a fresh connection; 2xx/3xx reinstates it); "
      "empty = one replayable request is its trial" },
    { "NEXTUP_RESOLV_CONF", VAR_PATH, "/etc/resolv.conf", sizeof(((struct config *)0)->resolv_conf), 0,
      offsetof(struct config, resolv_conf), "resolver configuration for re-resolution (nameservers, search, ndots)" },
    { "NEXTUP_ACCESS_LOG", VAR_ONOFF, "on", 0, 0, offsetof(struct config, access_log),
      "on: one JSON line per request on stdout (diagnostics go to stderr); off" },
    { "NEXTUP_RETRY_ON", VAR_RETRY_ON, "connect-failure,reset,gateway-error", 0, 0,
      offsetof(struct config, retry),
      "conditions retried: connect-failure, refused, reset, timeout, gateway-error, 5xx, or status codes" },
    { "NEXTUP_RETRY_METHODS", VAR_METHODS, "GET,HEAD,OPTIONS,TRACE,PUT,DELETE", 0, 0,
      offsetof(struct config, retry),
      "methods replayed after the request reached a peer (Idempotency-Key makes any method replayable)" },
    { "NEXTUP_PER_TRY_TIMEOUT_MS", VAR_INT, "0", 0, MS_MAX,
      offsetof(struct config, per_try_timeout_ms), "time to the response head for one attempt, ms; 0 = off" },
    { "NEXTUP_RETRY_BACKOFF_BASE_MS", VAR_INT, "25", 0, 60000,
      offsetof(struct config, retry_backoff_base_ms), "backoff base before retrying a peer already tried, ms" },
    { "NEXTUP_RETRY_BACKOFF_MAX_MS", VAR_INT, "250", 0, 60000,
      offsetof(struct config, retry_backoff_max_ms), "backoff cap, ms" },
    { "NEXTUP_RETRY_BUDGET_PERCENT", VAR_INT, "20", 0, 1000,
      offsetof(struct config, retry_budget_percent), "retries may add this % of the last 10 s of requests" },
    { "NEXTUP_RETRY_BUDGET_MIN_PER_SEC", VAR_INT, "10", 0, 1000000,
      offsetof(struct config, retry_budget_min_per_sec), "retries always allowed per second on top" },
    { "NEXTUP_DECISION_PLUGIN", VAR_PATH, "", sizeof(((struct config *)0)->decision_plugin), 0,
      offsetof(struct config, decision_plugin),
      "shared object exporting nextup_plugin_hooks (the upstream_response_decision hook); empty = built-in" },
    { "NEXTUP_BPF", VAR_BPF_MODE, "auto", 0, 0, offsetof(struct config, bpf_mode),
      "auto: load the BPF programs if possible, else user-space signals; on: failure to load is fatal; off" },
    { "NEXTUP_BPF_PIN_DIR", VAR_PATH, "/sys/fs/bpf/nextup", sizeof(((struct config *)0)->bpf_pin_dir), 0,
      offsetof(struct config, bpf_pin_dir), "where this pod's BPF map is pinned (on a bpffs mount)" },
    { "NEXTUP_BPF_NODE_DIR", VAR_PATH, "/sys/fs/bpf/nextup-node", sizeof(((struct config *)0)->bpf_node_dir), 0,
      offsetof(struct config, bpf_node_dir), "where the node's shared BPF programs are pinned (bpffs)" },
    { "NEXTUP_HEALTH_INTERVAL_MS", VAR_INT, "250", 10, 60000, offsetof(struct config, health_interval_ms),
      "how often the kernel counters are read into the health view, ms" },
    { "NEXTUP_EJECT_CONNECT_FAILURES", VAR_INT, "1", 0, 1000, offsetof(struct config, eject_connect_failures),
      "consecutive connect failures (refused, timeout) seen by nextup that eject a peer; 0 = never" },
    { "NEXTUP_EJECT_GATEWAY_ERRORS", VAR_INT, "2", 0, 1000, offsetof(struct config, eject_gateway_errors),
      "consecutive 502/503/504, resets and per-try timeouts that eject a peer; 0 = never" },
    { "NEXTUP_EJECT_KERNEL_FAILURES", VAR_INT, "1", 0, 1000, offsetof(struct config, eject_kernel_failures),
      "failures the kernel saw in one interval (refused, timed out, reset, SYN retransmits) that eject; 0 = never" },
    { "NEXTUP_EJECT_BASE_MS", VAR_INT, "1000", 1, 3600000, offsetof(struct config, eject_base_ms),
      "first ejection time, ms; doubled for each ejection in a row" },
    { "NEXTUP_EJECT_MAX_MS", VAR_INT, "8000", 1, 3600000, offsetof(struct config, eject_max_ms),
      "longest ejection, ms" },
    { "NEXTUP_MAX_EJECTION_PERCENT", VAR_INT, "50", 0, 100, offsetof(struct config, max_ejection_percent),
      "never more than this share of the peers ejected at once" },
    { "NEXTUP_BPF_MAX_PEERS", VAR_INT, "4096", 16, 1048576, offsetof(struct config, bpf_max_peers),
      "entries of the LRU map of per-peer kernel counters" },
};

#define N_VARS (sizeof(vars) / sizeof(vars[0]))

#define NAMESPACE_FILE "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
const char *config_namespace_file = NAMESPACE_FILE;

const char *config_nearest_name(const char *name)
{
    const char *best = vars[0].name;
    int best_d = config_edit_distance(name, best);

    for (size_t i = 1; i < sizeof(vars) / sizeof(vars[0]); i++) {
        int d = config_edit_distance(name, vars[i].name);
        if (d < best_d) {
            best_d = d;
            best = vars[i].name;
        }
    }
    return best;
}

static const struct var *find_var(const char *name, size_t len)
{
    return config_find_var(vars, N_VARS, name, len);
}

/* Kubernetes gives every container of a namespace with a Service named "nextup" the service
 * links NEXTUP_SERVICE_HOST, NEXTUP_SERVICE_PORT[_<name>], NEXTUP_PORT and
 * NEXTUP_PORT_<port>_<proto>[_PROTO|_PORT|_ADDR] (enableServiceLinks is on by default): they are
 * the cluster's, not typos, and must not stop the pod. */
static bool is_service_link(const char *name, size_t len)
{
    const char *n = name + 7;   /* after "NEXTUP_" */
    size_t l = len - 7;

    if ((l == 12 && strncmp(n, "SERVICE_HOST", 12) == 0) ||
        (l >= 12 && strncmp(n, "SERVICE_PORT", 12) == 0 && (l == 12 || n[12] == '_')) ||
        (l == 4 && strncmp(n, "PORT", 4) == 0))
        return true;
    if (l > 5 && strncmp(n, "PORT_", 5) == 0) {
        size_t i = 5;
        while (i < l && n[i] >= '0' && n[i] <= '9')
            i++;
        return i > 5 && i < l && n[i] == '_';
    }
    return false;
}

extern char **environ;

/* The first NEXTUP_* variable of the environment that nextup does not read. A misspelled
 * name would otherwise start with the default and report ready. NEXTUP_SERVICE_<NAME>_*
 * are known for the services NEXTUP_SERVICES lists (parsed before this). */
static int check_unknown(const struct config *cfg, char *err, size_t errlen)
{
    for (char **e = environ; e && *e; e++) {
        const char *eq;
        char name[NAME_CMP_MAX + 1], nearest[NAME_CMP_MAX * 2];
        size_t len;

        if (strncmp(*e, "NEXTUP_", 7) != 0)
            continue;
        eq = strchr(*e, '=');
        len = eq ? (size_t)(eq - *e) : strlen(*e);
        if (find_var(*e, len) || config_services_find_var(cfg, *e, len, NULL) >= 0 || is_service_link(*e, len))
            continue;
        snprintf(name, sizeof(name), "%.*s", (int)(len < NAME_CMP_MAX ? len : NAME_CMP_MAX), *e);
        if (!cfg->services_listed && len > strlen(SERVICE_VAR_PREFIX) &&
            strncmp(*e, SERVICE_VAR_PREFIX, strlen(SERVICE_VAR_PREFIX)) == 0) {
            config_set_err(err, errlen, "%.*s=\"%.64s\": unknown variable: NEXTUP_SERVICE_<NAME>_* describe the services "
                           "NEXTUP_SERVICES lists, and it is not set (nextup --help)", (int)len, *e, eq ? eq + 1 : "");
            return -EINVAL;
        }
        config_set_err(err, errlen, "%.*s=\"%.64s\": unknown variable; the nearest known one is %s "
                       "(nextup --help lists them all)", (int)len, *e, eq ? eq + 1 : "",
                       config_services_nearest(cfg, name, config_nearest_name(name), nearest, sizeof(nearest)));
        return -EINVAL;
    }
    return 0;
}

/* "NEXTUP_X=\"v\"" when set, "NEXTUP_X (default v)" when not: a contradiction may be with a default. */
static const char *describe(const char *name, char *buf, size_t len)
{
    return config_describe(vars, N_VARS, name, buf, len);
}

/* Two values that cannot both be meant: one of them would never take effect. */
static int check_contradictions(struct config *cfg, char *err, size_t errlen)
{
    static const struct {
        const char *low, *high;
        size_t low_off, high_off;
        int low_zero_off;          /* 0 in <low> turns it off: no contradiction then */
        const char *why;
    } pairs[] = {
        { "NEXTUP_EJECT_BASE_MS", "NEXTUP_EJECT_MAX_MS", offsetof(struct config, eject_base_ms),
          offsetof(struct config, eject_max_ms), 0, "the first ejection would be longer than the longest" },
        { "NEXTUP_RETRY_BACKOFF_BASE_MS", "NEXTUP_RETRY_BACKOFF_MAX_MS", offsetof(struct config, retry_backoff_base_ms),
          offsetof(struct config, retry_backoff_max_ms), 0, "the backoff base would be above its cap" },
        { "NEXTUP_PER_TRY_TIMEOUT_MS", "NEXTUP_REQUEST_TIMEOUT_MS", offsetof(struct config, per_try_timeout_ms),
          offsetof(struct config, request_timeout_ms), 1,
          "one attempt may not take longer than the whole request: the per-try timeout would never fire" },
    };
    char a[128], b[128];

    for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
        int low = *(const int *)((const char *)cfg + pairs[i].low_off);
        int high = *(const int *)((const char *)cfg + pairs[i].high_off);
        if (pairs[i].low_zero_off && low == 0)
            continue;
        if (low > high) {
            config_set_err(err, errlen, "%s is above %s: %s", describe(pairs[i].low, a, sizeof(a)),
                           describe(pairs[i].high, b, sizeof(b)), pairs[i].why);
            return -EINVAL;
        }
    }
    /* Not an error: lowering the request timeout alone is common and still works (the connect is
     * cut by the request timeout), but a slow connect is then never retried. */
    if (cfg->connect_timeout_ms > cfg->request_timeout_ms && cfg->n_warnings < CONFIG_MAX_WARNINGS)
        snprintf(cfg->warnings[cfg->n_warnings++], sizeof(cfg->warnings[0]),
                 "%s is above %s: a slow connect ends the request (504) instead of being retried",
                 describe("NEXTUP_CONNECT_TIMEOUT_MS", a, sizeof(a)), describe("NEXTUP_REQUEST_TIMEOUT_MS", b, sizeof(b)));
    if (cfg->listen.salen == cfg->admin.salen && memcmp(&cfg->listen.sa, &cfg->admin.sa, cfg->listen.salen) == 0) {
        config_set_err(err, errlen, "%s and %s are the same address: the admin listener needs its own port",
                       describe("NEXTUP_LISTEN", a, sizeof(a)), describe("NEXTUP_ADMIN", b, sizeof(b)));
        return -EINVAL;
    }
    if (!cfg->upstream_tls) {
        static const struct { const char *name; size_t off; } tls_only[] = {
            { "NEXTUP_UPSTREAM_CA_FILE", offsetof(struct config, upstream_ca_file) },
            { "NEXTUP_UPSTREAM_SNI", offsetof(struct config, upstream_sni) },
            { "NEXTUP_UPSTREAM_CERT_FILE", offsetof(struct config, upstream_cert_file) },
            { "NEXTUP_UPSTREAM_KEY_FILE", offsetof(struct config, upstream_key_file) },
        };
        for (size_t i = 0; i < sizeof(tls_only) / sizeof(tls_only[0]); i++)
            if (((const char *)cfg + tls_only[i].off)[0]) {
                config_set_err(err, errlen, "%s is set but %s: it applies only to TLS to the replicas "
                               "(NEXTUP_UPSTREAM_TLS=on)", describe(tls_only[i].name, a, sizeof(a)),
                               describe("NEXTUP_UPSTREAM_TLS", b, sizeof(b)));
                return -EINVAL;
            }
    }
    /* A CA file with NEXTUP_UPSTREAM_TLS_VERIFY=off is left alone: turning verification off for a
     * while, the CA kept, is how one debugs a certificate (tls.c warns at start). */
    return 0;
}

static int default_workers(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);

    if (n < 1)
        return 1;
    return n > WORKERS_MAX ? WORKERS_MAX : (int)n;
}

static int parse_var(struct config *cfg, const struct var *v, const char *value, char *err, size_t errlen)
{
    return config_parse_var(cfg, cfg, v, value, err, errlen);
}

/* A DNS label: the namespace (RFC 1123, as Kubernetes requires of namespace names). */
static int is_label(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > 63 || s[0] == '-' || s[n - 1] == '-')
        return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '-'))
            return 0;
    return 1;
}

/* NEXTUP_NAMESPACE unset: the namespace file the kubelet mounts with the service account, if it is
 * there and holds a namespace name; otherwise none (only the short names match). */
static void default_namespace(struct config *cfg)
{
    char buf[80];
    FILE *f = fopen(config_namespace_file, "re");
    size_t n;

    if (!f)
        return;
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' ' || buf[n - 1] == '\r'))
        buf[--n] = '\0';
    if (is_label(buf))
        config_copy_text(cfg->namespace_, sizeof(cfg->namespace_), buf);
}

/* Resolution comes last so a typo anywhere, even late in NEXTUP_UPSTREAMS,
 * is reported without first waiting on DNS. */
int config_from_env(struct config *cfg, char *err, size_t errlen)
{
    const char *upstreams = NULL, *upstreams_name = NULL;

    if (err && errlen)
        err[0] = '\0';
    memset(cfg, 0, sizeof(*cfg));
    cfg->default_service = -1;
    if (config_services_list(cfg, err, errlen) < 0)
        return -EINVAL;
    if (check_unknown(cfg, err, errlen) < 0)
        return -EINVAL;

    for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++) {
        const struct var *v = &vars[i];
        const char *value = getenv(v->name);
        int rc;

        if (!value || !*value) {
            if (v->kind == VAR_UPSTREAMS) {
                if (cfg->services_listed)
                    continue;
                config_set_err(err, errlen, "%s is required: %s", v->name, UPSTREAMS_EXPECTED);
                return -EINVAL;
            }
            if (!v->def) {
                /* computed default (workers): already within range by construction */
                *(int *)((char *)cfg + v->off) = default_workers();
                continue;
            }
            value = v->def;
            if ((v->kind == VAR_PATH || v->kind == VAR_STRING) && !*value)
                continue;
        }
        rc = parse_var(cfg, v, value, err, errlen);
        if (rc < 0)
            return rc;
        if (v->kind == VAR_UPSTREAMS) {
            upstreams = value;
            upstreams_name = v->name;
        }
    }
    if (cfg->probe_path[0]) {
        const char *c = cfg->probe_path;
        int bad = *c != '/';
        for (; *c && !bad; c++)
            bad = (unsigned char)*c <= 0x20 || (unsigned char)*c >= 0x7f;
        if (bad) {
            config_set_err(err, errlen, "NEXTUP_PROBE_PATH=\"%s\": expected a request path starting with / "
                           "(no spaces, no control characters)", cfg->probe_path);
            return -EINVAL;
        }
        if (cfg->upstream_tls) {
            config_set_err(err, errlen, "NEXTUP_PROBE_PATH=\"%s\": HTTP probes are plain HTTP; with "
                           "NEXTUP_UPSTREAM_TLS=on leave it empty (trials are then requests)", cfg->probe_path);
            return -EINVAL;
        }
    }
    if (check_contradictions(cfg, err, errlen) < 0)
        return -EINVAL;
    if (cfg->namespace_[0] && !is_label(cfg->namespace_)) {
        config_set_err(err, errlen, "NEXTUP_NAMESPACE=\"%s\": expected a namespace name (1 to 63 characters a-z, 0-9 "
                       "and -, as the downward API's metadata.namespace gives)", cfg->namespace_);
        return -EINVAL;
    }
    if (!cfg->namespace_[0] && !getenv("NEXTUP_NAMESPACE"))
        default_namespace(cfg);
    {
        const char *why;
        const char *d = cfg->cluster_domain;
        if (config_check_host(d, strlen(d), &why) < 0 || strchr(d, ':') || d[0] == '.') {
            config_set_err(err, errlen, "NEXTUP_CLUSTER_DOMAIN=\"%s\": expected a DNS domain, e.g. cluster.local", d);
            return -EINVAL;
        }
        /* compared as service.c normalizes authorities: lower case, no root dot */
        for (char *c = cfg->cluster_domain; *c; c++)
            if (*c >= 'A' && *c <= 'Z')
                *c = (char)(*c + 32);
        if (cfg->cluster_domain[strlen(cfg->cluster_domain) - 1] == '.')
            cfg->cluster_domain[strlen(cfg->cluster_domain) - 1] = '\0';
    }
    cfg->retry.max_retries = cfg->max_retries;
    cfg->retry.budget_percent = cfg->retry_budget_percent;
    cfg->retry.budget_min_per_sec = cfg->retry_budget_min_per_sec;
    cfg->retry.backoff_base_ms = cfg->retry_backoff_base_ms;
    cfg->retry.backoff_max_ms = cfg->retry_backoff_max_ms;

    if (config_services_read(cfg, upstreams_name, vars, N_VARS, err, errlen) < 0)
        return -EINVAL;
    return config_services_resolve(cfg, upstreams, upstreams_name, err, errlen);
}

void config_print_help(FILE *out)
{
    fprintf(out, "usage: nextup [--help | --version]\n\n"
                 "nextup is configured by environment variables only; each is read once at start.\n\n");
    for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++) {
        const struct var *v = &vars[i];
        char def[64];

        if (v->def && !*v->def)
            snprintf(def, sizeof(def), "(none)");
        else if (v->def)
            snprintf(def, sizeof(def), "%s", v->def);
        else if (v->kind == VAR_UPSTREAMS)
            snprintf(def, sizeof(def), "(required)");
        else
            snprintf(def, sizeof(def), "online CPUs (%d)", default_workers());

        fprintf(out, "  %s  default: %s\n      %s", v->name, def, v->help);
        if (v->kind == VAR_INT || v->kind == VAR_INT_CLAMPED)
            fprintf(out, " (%ld..%ld)", v->min, v->max);
        fputc('\n', out);
    }
    config_services_print_help(out);
}
