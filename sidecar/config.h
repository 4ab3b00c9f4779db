/* config: NEXTUP_* environment variables -> struct config, read once at start.
 *
 * API:
 *   config_from_env()     fill a config from the environment (defaults for unset)
 *   config_print_help()   the --help text: every variable with its default
 *   config_parse_addr()   "host:port" / "[v6]:port" -> sockaddr (no DNS)
 * The struct is immutable after startup; workers read it without locks.
 * Implemented by config.c, with config_services.c and config_values.c (internal headers). */
#ifndef SIDECAR_CONFIG_H
#define SIDECAR_CONFIG_H

#include <stddef.h>
#include <stdio.h>
#include <sys/socket.h>

#include "retry.h"

#define CONFIG_MAX_UPSTREAMS 256          /* addresses of one service (PEERS_MAX) */
#define CONFIG_MAX_UPSTREAMS_TOTAL 2048   /* addresses of all services together */
#define CONFIG_MAX_SERVICES 256
#define CONFIG_MAX_WARNINGS 4

enum { CONFIG_BPF_AUTO, CONFIG_BPF_ON, CONFIG_BPF_OFF };

enum log_level { LOG_LEVEL_ERROR, LOG_LEVEL_WARN, LOG_LEVEL_INFO, LOG_LEVEL_DEBUG };

enum log_format { LOG_FORMAT_TEXT, LOG_FORMAT_JSON };

struct config_addr {
    struct sockaddr_storage sa;
    socklen_t salen;
    char text[128];          /* as written by the user, e.g. "10.0.0.1:8080" */
};

struct config_upstream {
    struct sockaddr_storage sa;
    socklen_t salen;
    char name[128];          /* the NEXTUP_UPSTREAMS entry this address came from */
    char addr_text[64];      /* resolved numeric form, "1.2.3.4:80" or "[::1]:80" */
};

/* What one request of a service may do: the global NEXTUP_* values with the service's own
 * NEXTUP_SERVICE_<NAME>_* overrides applied, so that the request path reads one place. */
struct retry_settings {
    struct retry_policy policy;           /* on, on_status, methods, max_retries (budget, backoff: global) */
    int per_try_timeout_ms;               /* 0 = off */
    int request_timeout_ms;
};

/* One service: NEXTUP_SERVICES names it, NEXTUP_SERVICE_<NAME>_* describe it (<NAME>: the name
 * upper-cased, '-' as '_'). Without NEXTUP_SERVICES, NEXTUP_UPSTREAMS is service "default". */
struct config_service {
    char name[64];                        /* [a-z0-9-], 1..63 characters */
    char var_prefix[96];                  /* "NEXTUP_SERVICE_<NAME>_", or "NEXTUP_" for "default" */
    char upstreams_var[112];              /* the variable its upstreams came from, for messages */
    int first_upstream, n_upstreams;      /* its addresses: cfg->upstreams[first .. first + n) */
    int first_name, n_names;              /* its host-name entries: cfg->upstream_names[first .. first + n) */
    int n_unresolved;                     /* of them, names that did not resolve at start */
    char hosts[1024];                     /* _HOSTS as given; "" = the service name (or, for the
                                             NEXTUP_UPSTREAMS service, no host: it is the default) */
    char upstream_host[256];              /* _UPSTREAM_HOST: Host sent upstream; "" = the client's */
    struct retry_settings retry;          /* effective values (globals where not overridden) */
};

struct config {
    struct config_addr listen;            /* NEXTUP_LISTEN, default 127.0.0.1:15001 */
    struct config_addr admin;             /* NEXTUP_ADMIN, default 127.0.0.1:15000 */
    int admin_debug_any;                  /* NEXTUP_ADMIN_DEBUG_FROM loopback (0) | any (1), default loopback */
    /* Every service's addresses, service after service (config_service.first_upstream): with
     * NEXTUP_UPSTREAMS alone, exactly its addresses as before. */
    struct config_upstream upstreams[CONFIG_MAX_UPSTREAMS_TOTAL];
    int n_upstreams;
    /* The upstream entries that are host names (re-resolved by discovery), service after service. */
    char upstream_names[CONFIG_MAX_UPSTREAMS_TOTAL][128];
    int n_upstream_names;
    int n_unresolved;                     /* names that did not resolve at start (allowed when
                                             NEXTUP_DNS_REFRESH_MS > 0: discovery keeps trying) */
    int scan_first;                       /* internal: first address of the service being resolved */
    /* Services: NEXTUP_SERVICES, or the one "default" service of NEXTUP_UPSTREAMS. */
    struct config_service services[CONFIG_MAX_SERVICES];
    int n_services;                       /* 1..CONFIG_MAX_SERVICES */
    int services_listed;                  /* 1: from NEXTUP_SERVICES; 0: NEXTUP_UPSTREAMS alone */
    int default_service;                  /* index for authorities no service claims; -1: refuse them */
    char services_list[4096];             /* NEXTUP_SERVICES as given */
    char default_service_name[64];        /* NEXTUP_DEFAULT_SERVICE as given */
    char namespace_[64];                  /* NEXTUP_NAMESPACE, else the service account's file; "" unknown */
    char cluster_domain[256];             /* NEXTUP_CLUSTER_DOMAIN, default cluster.local */
    int workers;                          /* NEXTUP_WORKERS, default: online CPUs, 1..64 */
    int connect_timeout_ms;               /* NEXTUP_CONNECT_TIMEOUT_MS, default 1000 */
    int request_timeout_ms;               /* NEXTUP_REQUEST_TIMEOUT_MS, default 30000 */
    int idle_timeout_ms;                  /* NEXTUP_IDLE_TIMEOUT_MS, default 60000 */
    int header_timeout_ms;                /* NEXTUP_HEADER_TIMEOUT_MS, default 10000 */
    int max_header_bytes;                 /* NEXTUP_MAX_HEADER_BYTES, default 65536, 1024..1048576 */
    int max_connections;                  /* NEXTUP_MAX_CONNECTIONS, default 10000 */
    int max_retries;                      /* NEXTUP_MAX_RETRIES, default 2, 0..16 */
    int drain_timeout_ms;                 /* NEXTUP_DRAIN_TIMEOUT_MS, default 10000 */
    int pool_max_idle;                    /* NEXTUP_POOL_MAX_IDLE per peer per worker, default 64, 0..10000 */
    int retry_buffer_bytes;               /* NEXTUP_RETRY_BUFFER_BYTES, default 65536, 0..67108864 */
    enum log_level log_level;             /* NEXTUP_LOG_LEVEL error|warn|info|debug, default info */
    enum log_format log_format;           /* NEXTUP_LOG_FORMAT text|json, default text */
    int per_try_timeout_ms;               /* NEXTUP_PER_TRY_TIMEOUT_MS, default 0 = off */
    int retry_backoff_base_ms;            /* NEXTUP_RETRY_BACKOFF_BASE_MS, default 25 */
    int retry_backoff_max_ms;             /* NEXTUP_RETRY_BACKOFF_MAX_MS, default 250 */
    int retry_budget_percent;             /* NEXTUP_RETRY_BUDGET_PERCENT, default 20 */
    int retry_budget_min_per_sec;         /* NEXTUP_RETRY_BUDGET_MIN_PER_SEC, default 10 */
    char decision_plugin[512];            /* NEXTUP_DECISION_PLUGIN, default none */
    int bpf_mode;                         /* NEXTUP_BPF auto|on|off (CONFIG_BPF_*), default auto */
    char bpf_pin_dir[256];                /* NEXTUP_BPF_PIN_DIR, default /sys/fs/bpf/nextup */
    char bpf_node_dir[256];               /* NEXTUP_BPF_NODE_DIR, default /sys/fs/bpf/nextup-node */
    char probe_path[256];                 /* NEXTUP_PROBE_PATH: trials by an HTTP GET of it; empty = by a request */
    int bpf_max_peers;                    /* NEXTUP_BPF_MAX_PEERS, default 4096, 16..1048576 */
    int access_log;                       /* NEXTUP_ACCESS_LOG on|off, default on */
    /* TLS: upstream (nextup -> replicas) and downstream (the listener). */
    int upstream_tls;                     /* NEXTUP_UPSTREAM_TLS on|off, default off */
    int upstream_tls_verify;              /* NEXTUP_UPSTREAM_TLS_VERIFY on|off, default on */
    char upstream_ca_file[256];           /* NEXTUP_UPSTREAM_CA_FILE, default: the system store */
    char upstream_sni[256];               /* NEXTUP_UPSTREAM_SNI, default: the entry's host name */
    char upstream_cert_file[256];         /* NEXTUP_UPSTREAM_CERT_FILE (mTLS) */
    char upstream_key_file[256];          /* NEXTUP_UPSTREAM_KEY_FILE (mTLS) */
    char tls_cert_file[256];              /* NEXTUP_TLS_CERT_FILE: TLS on the listener */
    char tls_key_file[256];               /* NEXTUP_TLS_KEY_FILE */
    char tls_client_ca_file[256];         /* NEXTUP_TLS_CLIENT_CA_FILE: require client certificates */
    int tls_reload_ms;                    /* NEXTUP_TLS_RELOAD_MS, default 2000 */
    int dns_refresh_ms;                   /* NEXTUP_DNS_REFRESH_MS, default 5000, 0 = never */
    char resolv_conf[256];                /* NEXTUP_RESOLV_CONF, default /etc/resolv.conf */
    int health_interval_ms;               /* NEXTUP_HEALTH_INTERVAL_MS, default 250 */
    int eject_connect_failures;           /* NEXTUP_EJECT_CONNECT_FAILURES, default 1 */
    int eject_gateway_errors;             /* NEXTUP_EJECT_GATEWAY_ERRORS, default 2 */
    int eject_kernel_failures;            /* NEXTUP_EJECT_KERNEL_FAILURES, default 1 */
    int eject_base_ms;                    /* NEXTUP_EJECT_BASE_MS, default 1000 */
    int eject_max_ms;                     /* NEXTUP_EJECT_MAX_MS, default 8000 */
    int max_ejection_percent;             /* NEXTUP_MAX_EJECTION_PERCENT, default 50 */
    /* NEXTUP_RETRY_ON and NEXTUP_RETRY_METHODS, with the numbers above copied in. */
    struct retry_policy retry;
    /* Values taken with a change (NEXTUP_WORKERS above the most allowed): one line each, for the
     * caller to log once logging is set up. */
    char warnings[CONFIG_MAX_WARNINGS][256];
    int n_warnings;
};

/* Fills <cfg> from the NEXTUP_* environment; unset variables take their defaults.
 * Host names in NEXTUP_UPSTREAMS are resolved with getaddrinfo (every address
 * becomes one upstream). Returns 0, or -EINVAL with one line in <err> naming the
 * variable, the value and what was expected, e.g.
 *   NEXTUP_MAX_RETRIES="abc": expected an integer from 0 to 16
 * Also -EINVAL: a NEXTUP_* variable that is none of nextup's (the line names the nearest
 * known one), and two values that contradict each other (the line names both). */
int config_from_env(struct config *cfg, char *err, size_t errlen);

/* Tests: the file NEXTUP_NAMESPACE defaults to (normally the service account's namespace file). */
extern const char *config_namespace_file;

/* Writes the --help text to <out>: every variable, its default and meaning. */
void config_print_help(FILE *out);

/* The known variable nearest to <name> by edit distance (insertions, deletions,
 * substitutions, transpositions of neighbours); never NULL. */
const char *config_nearest_name(const char *name);

/* Parses "a.b.c.d:port", "[v6]:port" (numeric only) into <sa>/<salen>.
 * 0, or -EINVAL when <text> is not of that form or port is not 1..65535. */
int config_parse_addr(const char *text, struct sockaddr_storage *sa, socklen_t *salen);

#endif
