/* config: NEXTUP_* environment variables -> struct config.
 *
 * Every variable lives in one table (vars[] below) holding its name, default,
 * range and help text; config_from_env() and config_print_help() both walk it,
 * so the defaults printed by --help are the ones the parser applies. Defaults
 * are kept as text and go through the same parser as user values, so a bad
 * default cannot hide either. */
#include "config.h"

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
#include <unistd.h>

#define MS_MAX 86400000L   /* one day: longer timeouts are typos, not intent */
#define WORKERS_MAX 64

#define UPSTREAMS_EXPECTED \
    "expected comma-separated host:port peers, e.g. 10.0.0.1:8080,[::1]:8080,orders:8080"
#define ADDR_EXPECTED "expected host:port with a numeric IPv4 address or [IPv6]:port"

/* VAR_INT_CLAMPED: a VAR_INT whose values above <max> are taken as <max>, with a warning. */
enum var_kind { VAR_ADDR, VAR_UPSTREAMS, VAR_STRING, VAR_INT, VAR_INT_CLAMPED, VAR_LOG_LEVEL, VAR_RETRY_ON, VAR_METHODS, VAR_PATH, VAR_BPF_MODE, VAR_ONOFF,
                VAR_DEBUG_FROM, VAR_LOG_FORMAT };

struct var {
    const char *name;
    enum var_kind kind;
    const char *def;     /* default as text; NULL = required (upstreams) or computed (workers) */
    long min, max;       /* VAR_INT only */
    size_t off;          /* field in struct config */
    const char *help;
};

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

#define SERVICE_VAR_PREFIX "NEXTUP_SERVICE_"
#define NAMESPACE_FILE "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
const char *config_namespace_file = NAMESPACE_FILE;

static const char *const level_names[] = {
    [LOG_LEVEL_ERROR] = "error", [LOG_LEVEL_WARN] = "warn",
    [LOG_LEVEL_INFO] = "info", [LOG_LEVEL_DEBUG] = "debug",
};

__attribute__((format(printf, 3, 4)))
static void set_err(char *err, size_t errlen, const char *fmt, ...)
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
#define NAME_CMP_MAX 64
static int edit_distance(const char *a, const char *b)
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

const char *config_nearest_name(const char *name)
{
    const char *best = vars[0].name;
    int best_d = edit_distance(name, best);

    for (size_t i = 1; i < sizeof(vars) / sizeof(vars[0]); i++) {
        int d = edit_distance(name, vars[i].name);
        if (d < best_d) {
            best_d = d;
            best = vars[i].name;
        }
    }
    return best;
}

static const struct var *find_var(const char *name, size_t len)
{
    for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++)
        if (strlen(vars[i].name) == len && strncmp(vars[i].name, name, len) == 0)
            return &vars[i];
    return NULL;
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

/* The service whose NEXTUP_SERVICE_<NAME>_<suffix> <name> (of <len> bytes) is, and the svc_vars[]
 * entry; -1 when it is none of a listed service's. */
static int find_service_var(const struct config *cfg, const char *name, size_t len, const struct svc_var **sv)
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

/* config_nearest_name(), the listed services' variables included. */
static const char *nearest_known(const struct config *cfg, const char *name, char *buf, size_t buflen)
{
    const char *best = config_nearest_name(name);
    int best_d = edit_distance(name, best);

    for (int i = 0; cfg->services_listed && i < cfg->n_services; i++)
        for (size_t k = 0; k < sizeof(svc_vars) / sizeof(svc_vars[0]); k++) {
            char cand[NAME_CMP_MAX * 2];
            int d;
            snprintf(cand, sizeof(cand), "%s%s", cfg->services[i].var_prefix, svc_vars[k].suffix);
            d = edit_distance(name, cand);
            if (d < best_d) {
                best_d = d;
                snprintf(buf, buflen, "%s", cand);
                best = buf;
            }
        }
    return best;
}

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
        if (find_var(*e, len) || find_service_var(cfg, *e, len, NULL) >= 0 || is_service_link(*e, len))
            continue;
        snprintf(name, sizeof(name), "%.*s", (int)(len < NAME_CMP_MAX ? len : NAME_CMP_MAX), *e);
        if (!cfg->services_listed && len > strlen(SERVICE_VAR_PREFIX) &&
            strncmp(*e, SERVICE_VAR_PREFIX, strlen(SERVICE_VAR_PREFIX)) == 0) {
            set_err(err, errlen, "%.*s=\"%.64s\": unknown variable: NEXTUP_SERVICE_<NAME>_* describe the services "
                    "NEXTUP_SERVICES lists, and it is not set (nextup --help)", (int)len, *e, eq ? eq + 1 : "");
            return -EINVAL;
        }
        set_err(err, errlen, "%.*s=\"%.64s\": unknown variable; the nearest known one is %s "
                "(nextup --help lists them all)", (int)len, *e, eq ? eq + 1 : "",
                nearest_known(cfg, name, nearest, sizeof(nearest)));
        return -EINVAL;
    }
    return 0;
}

/* "NEXTUP_X=\"v\"" when set, "NEXTUP_X (default v)" when not: a contradiction may be with a default. */
static const char *describe(const char *name, char *buf, size_t len)
{
    const char *value = getenv(name);

    if (value && *value) {
        snprintf(buf, len, "%s=\"%.64s\"", name, value);
    } else {
        const struct var *v = find_var(name, strlen(name));
        snprintf(buf, len, "%s (default %s)", name, v && v->def ? v->def : "?");
    }
    return buf;
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
            set_err(err, errlen, "%s is above %s: %s", describe(pairs[i].low, a, sizeof(a)),
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
        set_err(err, errlen, "%s and %s are the same address: the admin listener needs its own port",
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
                set_err(err, errlen, "%s is set but %s: it applies only to TLS to the replicas "
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
            set_err(err, errlen, "%s=\"%s\": expected [IPv6]:port with port 1..65535",
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
        set_err(err, errlen, "%s=\"%s\": missing port: %s", name, entry, UPSTREAMS_EXPECTED);
        return -EINVAL;
    }
    hlen = (size_t)(colon - entry);
    if (memchr(entry, ':', hlen)) {
        set_err(err, errlen, "%s=\"%s\": IPv6 addresses need brackets, e.g. [::1]:8080",
                name, entry);
        return -EINVAL;
    }
    if (hlen == 0) {
        set_err(err, errlen, "%s=\"%s\": missing host: %s", name, entry, UPSTREAMS_EXPECTED);
        return -EINVAL;
    }
    if (parse_port(colon + 1, strlen(colon + 1), &port) < 0) {
        set_err(err, errlen, "%s=\"%s\": expected a port from 1 to 65535 after the last ':'",
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
            set_err(err, errlen, "%s=\"%s\": \"%s\" is not a valid IPv4 address",
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
            set_err(err, errlen, "%s=\"%s\": cannot resolve \"%s\": %s: %s",
                    name, entry, host, gai_strerror(rc), strerror(errno));
        else
            set_err(err, errlen, "%s=\"%s\": cannot resolve \"%s\": %s",
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
        set_err(err, errlen, "%s=\"%s\": more than %d upstream addresses of all services together",
                name, entry, CONFIG_MAX_UPSTREAMS_TOTAL);
    else
        set_err(err, errlen, "%s=\"%s\": more than %d upstream addresses in total",
                name, entry, CONFIG_MAX_UPSTREAMS);
    return -EINVAL;
}

static int scan_upstreams(struct config *cfg, const char *name, const char *value,
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
            set_err(err, errlen, "%s=\"%s\": entry %d is empty: %s",
                    name, value, index, UPSTREAMS_EXPECTED);
            return -EINVAL;
        }
        /* name[] keeps the entry text; cutting it would misname the peer */
        if (len >= sizeof(entry)) {
            set_err(err, errlen, "%s=\"%.*s\": entry longer than %zu characters",
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
static int parse_var_in(struct config *cfg, void *base, const struct var *v, const char *value,
                        char *err, size_t errlen)
{
    void *field = (char *)base + v->off;

    switch (v->kind) {
    case VAR_ADDR: {
        struct config_addr *a = field;
        if (strlen(value) >= sizeof(a->text) ||
            config_parse_addr(value, &a->sa, &a->salen) < 0) {
            set_err(err, errlen, "%s=\"%s\": %s", v->name, value, ADDR_EXPECTED);
            return -EINVAL;
        }
        snprintf(a->text, sizeof(a->text), "%s", value);
        return 0;
    }
    case VAR_UPSTREAMS:
        /* syntax only: names are resolved once every variable is known good */
        return scan_upstreams(cfg, v->name, value, true, err, errlen);
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
            set_err(err, errlen, "%s=\"%s\": expected an integer from %ld to %ld",
                    v->name, value, v->min, v->max);
            return -EINVAL;
        }
        *(int *)field = (int)n;
        return 0;
    }
    case VAR_RETRY_ON: {
        char bad[64];
        if (retry_parse_on(field, value, bad, sizeof(bad)) < 0) {
            set_err(err, errlen, "%s=\"%s\": unknown condition \"%s\": expected a comma list of "
                    "connect-failure, refused, reset, timeout, gateway-error, 5xx or status codes 100-599",
                    v->name, value, bad);
            return -EINVAL;
        }
        return 0;
    }
    case VAR_METHODS: {
        char bad[64];
        if (retry_parse_methods(field, value, bad, sizeof(bad)) < 0) {
            set_err(err, errlen, "%s=\"%s\": unknown method \"%s\": expected a comma list of "
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
            set_err(err, errlen, "%s=\"%s\": expected a %s shorter than %ld bytes", v->name, value,
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
        set_err(err, errlen, "%s=\"%s\": expected on or off", v->name, value);
        return -EINVAL;
    case VAR_BPF_MODE: {
        static const char *const modes[] = { [CONFIG_BPF_AUTO] = "auto", [CONFIG_BPF_ON] = "on",
                                             [CONFIG_BPF_OFF] = "off" };
        for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++)
            if (strcmp(value, modes[i]) == 0) {
                *(int *)field = (int)i;
                return 0;
            }
        set_err(err, errlen, "%s=\"%s\": expected one of auto, on, off", v->name, value);
        return -EINVAL;
    }
    case VAR_DEBUG_FROM:
        if (strcmp(value, "loopback") == 0 || strcmp(value, "any") == 0) {
            *(int *)field = strcmp(value, "any") == 0;
            return 0;
        }
        set_err(err, errlen, "%s=\"%s\": expected loopback or any", v->name, value);
        return -EINVAL;
    case VAR_LOG_FORMAT:
        if (strcmp(value, "text") == 0 || strcmp(value, "json") == 0) {
            *(enum log_format *)field = strcmp(value, "json") == 0 ? LOG_FORMAT_JSON : LOG_FORMAT_TEXT;
            return 0;
        }
        set_err(err, errlen, "%s=\"%s\": expected text or json", v->name, value);
        return -EINVAL;
    case VAR_LOG_LEVEL:
        for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++) {
            if (strcmp(value, level_names[i]) == 0) {
                *(enum log_level *)field = (enum log_level)i;
                return 0;
            }
        }
        set_err(err, errlen, "%s=\"%s\": expected one of error, warn, info, debug",
                v->name, value);
        return -EINVAL;
    }
    return -EINVAL;
}

static int parse_var(struct config *cfg, const struct var *v, const char *value, char *err, size_t errlen)
{
    return parse_var_in(cfg, cfg, v, value, err, errlen);
}

/* <src> into <dst> of <size> bytes, cut if longer. */
static void copy_text(char *dst, size_t size, const char *src)
{
    size_t n = strnlen(src, size - 1);

    memcpy(dst, src, n);
    dst[n] = '\0';
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
            set_err(err, errlen, "NEXTUP_SERVICES=\"%s\": name %d is %s: expected comma-separated service names "
                    "of 1 to 63 characters a-z, 0-9 and -, e.g. orders,payments", list, index,
                    len ? "longer than 63 characters" : "empty");
            return -EINVAL;
        }
        for (size_t i = 0; i < len; i++)
            if (!((p[i] >= 'a' && p[i] <= 'z') || (p[i] >= '0' && p[i] <= '9') || p[i] == '-')) {
                set_err(err, errlen, "NEXTUP_SERVICES=\"%s\": \"%.*s\" has '%c': expected service names of "
                        "a-z, 0-9 and - (lower case, as Kubernetes Service names)", list, (int)len, p, p[i]);
                return -EINVAL;
            }
        for (int i = 0; i < cfg->n_services; i++)
            if (strlen(cfg->services[i].name) == len && strncmp(cfg->services[i].name, p, len) == 0) {
                set_err(err, errlen, "NEXTUP_SERVICES=\"%s\": \"%.*s\" is listed twice", list, (int)len, p);
                return -EINVAL;
            }
        if (cfg->n_services >= CONFIG_MAX_SERVICES) {
            set_err(err, errlen, "NEXTUP_SERVICES=\"%.64s...\": more than %d services", list, CONFIG_MAX_SERVICES);
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

/* A host or host:port of _HOSTS (or _UPSTREAM_HOST, <port_ok> either way): letters, digits, '-', '.',
 * '_', an [IPv6] literal; a port of 1..65535. The forms it selects are service.c's business. */
static int check_host(const char *h, size_t len, const char **why)
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

/* NEXTUP_SERVICE_<NAME>_HOSTS: comma-separated hosts, each checked by check_host(). */
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
        if (check_host(p, (size_t)(end - p), &why) < 0) {
            set_err(err, errlen, "%s=\"%s\": \"%.*s\": %s: expected comma-separated host or host:port, "
                    "e.g. payments,payments.example.com:8080", var, list, (int)(end - p), p, why);
            return -EINVAL;
        }
        if (!comma)
            return 0;
        p = comma + 1;
    }
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
        copy_text(cfg->namespace_, sizeof(cfg->namespace_), buf);
}

/* "NAME=\"value\"" when <svc> sets its override <suffix>, else describe() of the global <name>. */
static const char *describe_svc(const struct config_service *svc, const char *suffix, const char *global,
                                char *buf, size_t len)
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
    return describe(global, buf, len);
}

/* A listed service's NEXTUP_SERVICE_<NAME>_* (its upstreams' syntax only: resolution comes last). */
static int read_service(struct config *cfg, struct config_service *svc, char *err, size_t errlen)
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
                set_err(err, errlen, "%s is required: NEXTUP_SERVICES=\"%.64s\" lists %s: %s", name,
                        cfg->services_list, svc->name, UPSTREAMS_EXPECTED);
                return -EINVAL;
            }
            continue;
        }
        if (sv->global) {
            struct var v = *find_var(sv->global, strlen(sv->global));
            v.name = name;
            v.off = sv->off;
            rc = parse_var_in(cfg, svc, &v, value, err, errlen);
        } else if (k == 0) {
            copy_text(svc->upstreams_var, sizeof(svc->upstreams_var), name);
            rc = scan_upstreams(cfg, name, value, true, err, errlen);
        } else if (sv->off == offsetof(struct config_service, hosts)) {
            if (strlen(value) >= sizeof(svc->hosts)) {
                set_err(err, errlen, "%s=\"%.64s...\": expected a list shorter than %zu bytes", name, value,
                        sizeof(svc->hosts));
                return -EINVAL;
            }
            rc = check_hosts(name, value, err, errlen);
            snprintf(svc->hosts, sizeof(svc->hosts), "%s", value);
        } else {
            const char *why;
            if (strlen(value) >= sizeof(svc->upstream_host) || check_host(value, strlen(value), &why) < 0) {
                set_err(err, errlen, "%s=\"%s\": expected one host or host:port for the Host header, "
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
        set_err(err, errlen, "%s is above %s for service %s: one attempt may not take longer than the whole "
                "request: the per-try timeout would never fire",
                describe_svc(svc, "PER_TRY_TIMEOUT_MS", "NEXTUP_PER_TRY_TIMEOUT_MS", a, sizeof(a)),
                describe_svc(svc, "REQUEST_TIMEOUT_MS", "NEXTUP_REQUEST_TIMEOUT_MS", b, sizeof(b)), svc->name);
        return -EINVAL;
    }
    return 0;
}

/* Resolution comes last so a typo anywhere, even late in NEXTUP_UPSTREAMS,
 * is reported without first waiting on DNS. */
int config_from_env(struct config *cfg, char *err, size_t errlen)
{
    const char *upstreams = NULL, *upstreams_name = NULL;
    const char *services = getenv("NEXTUP_SERVICES");

    if (err && errlen)
        err[0] = '\0';
    memset(cfg, 0, sizeof(*cfg));
    cfg->default_service = -1;
    if (services && *services) {
        const char *up = getenv("NEXTUP_UPSTREAMS");
        if (up && *up) {
            set_err(err, errlen, "NEXTUP_UPSTREAMS=\"%.64s\" and NEXTUP_SERVICES=\"%.64s\" are both set: "
                    "NEXTUP_UPSTREAMS is the single service of a nextup without NEXTUP_SERVICES; "
                    "give each service its NEXTUP_SERVICE_<NAME>_UPSTREAMS instead", up, services);
            return -EINVAL;
        }
        if (strlen(services) >= sizeof(cfg->services_list)) {
            set_err(err, errlen, "NEXTUP_SERVICES=\"%.64s...\": expected a list shorter than %zu bytes", services,
                    sizeof(cfg->services_list));
            return -EINVAL;
        }
        if (parse_services_list(cfg, services, err, errlen) < 0)
            return -EINVAL;
        cfg->services_listed = 1;
    }
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
                set_err(err, errlen, "%s is required: %s", v->name, UPSTREAMS_EXPECTED);
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
            set_err(err, errlen, "NEXTUP_PROBE_PATH=\"%s\": expected a request path starting with / "
                    "(no spaces, no control characters)", cfg->probe_path);
            return -EINVAL;
        }
        if (cfg->upstream_tls) {
            set_err(err, errlen, "NEXTUP_PROBE_PATH=\"%s\": HTTP probes are plain HTTP; with "
                    "NEXTUP_UPSTREAM_TLS=on leave it empty (trials are then requests)", cfg->probe_path);
            return -EINVAL;
        }
    }
    if (check_contradictions(cfg, err, errlen) < 0)
        return -EINVAL;
    if (cfg->namespace_[0] && !is_label(cfg->namespace_)) {
        set_err(err, errlen, "NEXTUP_NAMESPACE=\"%s\": expected a namespace name (1 to 63 characters a-z, 0-9 "
                "and -, as the downward API's metadata.namespace gives)", cfg->namespace_);
        return -EINVAL;
    }
    if (!cfg->namespace_[0] && !getenv("NEXTUP_NAMESPACE"))
        default_namespace(cfg);
    {
        const char *why;
        const char *d = cfg->cluster_domain;
        if (check_host(d, strlen(d), &why) < 0 || strchr(d, ':') || d[0] == '.') {
            set_err(err, errlen, "NEXTUP_CLUSTER_DOMAIN=\"%s\": expected a DNS domain, e.g. cluster.local", d);
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
        if (cfg->services_listed && read_service(cfg, svc, err, errlen) < 0)
            return -EINVAL;
    }
    if (cfg->default_service_name[0]) {
        for (int i = 0; i < cfg->n_services && cfg->default_service < 0; i++)
            if (strcmp(cfg->services[i].name, cfg->default_service_name) == 0)
                cfg->default_service = i;
        if (!cfg->services_listed && strcmp(cfg->default_service_name, "default") != 0) {
            set_err(err, errlen, "NEXTUP_DEFAULT_SERVICE=\"%s\": without NEXTUP_SERVICES the one service is "
                    "\"default\" and takes every request", cfg->default_service_name);
            return -EINVAL;
        }
        if (cfg->default_service < 0) {
            set_err(err, errlen, "NEXTUP_DEFAULT_SERVICE=\"%s\": not one of NEXTUP_SERVICES=\"%.200s\"",
                    cfg->default_service_name, cfg->services_list);
            return -EINVAL;
        }
    }

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
        rc = scan_upstreams(cfg, var, value, false, err, errlen);
        if (rc < 0)
            return rc;
        svc->n_upstreams = cfg->n_upstreams - svc->first_upstream;
        svc->n_names = cfg->n_upstream_names - svc->first_name;
        svc->n_unresolved = cfg->n_unresolved - unresolved;
    }
    cfg->scan_first = 0;
    return 0;
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
    }    fprintf(out, "\nPer service of NEXTUP_SERVICES (<NAME>: its name upper-cased, - as _; an unset override takes the "
                 "global value):\n\n");
    for (size_t k = 0; k < sizeof(svc_vars) / sizeof(svc_vars[0]); k++)
        fprintf(out, "  %s<NAME>_%s  default: %s\n      %s\n", SERVICE_VAR_PREFIX, svc_vars[k].suffix, svc_vars[k].def,
                svc_vars[k].help);
}
