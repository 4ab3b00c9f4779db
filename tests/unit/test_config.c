/* Unit tests for sidecar/config.c: defaults, strict validation of every
 * NEXTUP_* variable, the error line format, upstream parsing and --help. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"

extern char **environ;

struct int_var {
    const char *name;
    long min, max;
};

/* The ranges promised in the brief; the parser must enforce exactly these. */
static const struct int_var int_vars[] = {
    { "NEXTUP_WORKERS", 1, 64 },
    { "NEXTUP_CONNECT_TIMEOUT_MS", 1, 86400000 },
    { "NEXTUP_REQUEST_TIMEOUT_MS", 1, 86400000 },
    { "NEXTUP_IDLE_TIMEOUT_MS", 1, 86400000 },
    { "NEXTUP_HEADER_TIMEOUT_MS", 1, 86400000 },
    { "NEXTUP_MAX_HEADER_BYTES", 1024, 1048576 },
    { "NEXTUP_MAX_CONNECTIONS", 1, 1000000 },
    { "NEXTUP_MAX_RETRIES", 0, 16 },
    { "NEXTUP_DRAIN_TIMEOUT_MS", 1, 86400000 },
    { "NEXTUP_POOL_MAX_IDLE", 0, 10000 },
    { "NEXTUP_RETRY_BUFFER_BYTES", 0, 67108864 },
};

static const char *const all_names[] = {
    "NEXTUP_LISTEN", "NEXTUP_ADMIN", "NEXTUP_UPSTREAMS", "NEXTUP_WORKERS",
    "NEXTUP_CONNECT_TIMEOUT_MS", "NEXTUP_REQUEST_TIMEOUT_MS", "NEXTUP_IDLE_TIMEOUT_MS",
    "NEXTUP_HEADER_TIMEOUT_MS", "NEXTUP_MAX_HEADER_BYTES", "NEXTUP_MAX_CONNECTIONS",
    "NEXTUP_MAX_RETRIES", "NEXTUP_DRAIN_TIMEOUT_MS", "NEXTUP_POOL_MAX_IDLE",
    "NEXTUP_RETRY_BUFFER_BYTES", "NEXTUP_LOG_LEVEL", "NEXTUP_RETRY_ON", "NEXTUP_RETRY_METHODS",
    "NEXTUP_PER_TRY_TIMEOUT_MS", "NEXTUP_RETRY_BACKOFF_BASE_MS", "NEXTUP_RETRY_BACKOFF_MAX_MS",
    "NEXTUP_RETRY_BUDGET_PERCENT", "NEXTUP_RETRY_BUDGET_MIN_PER_SEC", "NEXTUP_DECISION_PLUGIN",
    "NEXTUP_BPF", "NEXTUP_BPF_PIN_DIR", "NEXTUP_BPF_MAX_PEERS",
};

#define N(a) (sizeof(a) / sizeof((a)[0]))

/* struct config is ~100 KB: keep it off the test stack. */
static struct config cfg;
static char err[512];

/* unsetenv edits environ, so collect one name per pass and rescan. */
static void clear_nextup_env(void)
{
    for (;;) {
        char name[256] = "";
        for (char **e = environ; *e; e++) {
            if (strncmp(*e, "NEXTUP_", 7) == 0) {
                const char *eq = strchr(*e, '=');
                size_t len = eq ? (size_t)(eq - *e) : strlen(*e);
                assert_true(len < sizeof(name));
                memcpy(name, *e, len);
                name[len] = '\0';
                break;
            }
        }
        if (!name[0])
            return;
        assert_int_equal(unsetenv(name), 0);
    }
}

static int setup(void **state)
{
    (void)state;
    clear_nextup_env();
    memset(&cfg, 0xa5, sizeof(cfg));
    memset(err, 'X', sizeof(err) - 1);
    err[sizeof(err) - 1] = '\0';
    return 0;
}

static void set(const char *name, const char *value)
{
    assert_int_equal(setenv(name, value, 1), 0);
}

static int load(void)
{
    return config_from_env(&cfg, err, sizeof(err));
}

static void assert_one_line(void)
{
    assert_true(err[0] != '\0');
    assert_null(strchr(err, '\n'));
}

/* Expects -EINVAL and an error line containing every given substring. */
static void expect_fail(const char *substr1, const char *substr2)
{
    int rc = load();
    if (rc != -EINVAL)
        print_error("expected -EINVAL, got %d (err \"%s\")\n", rc, err);
    assert_int_equal(rc, -EINVAL);
    assert_one_line();
    if (substr1) {
        if (!strstr(err, substr1))
            print_error("err \"%s\" lacks \"%s\"\n", err, substr1);
        assert_non_null(strstr(err, substr1));
    }
    if (substr2) {
        if (!strstr(err, substr2))
            print_error("err \"%s\" lacks \"%s\"\n", err, substr2);
        assert_non_null(strstr(err, substr2));
    }
}

static void expect_ok(void)
{
    int rc = load();
    if (rc != 0)
        print_error("config_from_env: %d: %s\n", rc, err);
    assert_int_equal(rc, 0);
}

static void assert_v4(const struct sockaddr_storage *sa, socklen_t salen,
                      const char *ip, unsigned port)
{
    const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
    struct in_addr want;

    assert_int_equal(sa->ss_family, AF_INET);
    assert_int_equal(salen, sizeof(struct sockaddr_in));
    assert_int_equal(inet_pton(AF_INET, ip, &want), 1);
    assert_int_equal(s4->sin_addr.s_addr, want.s_addr);
    assert_int_equal(ntohs(s4->sin_port), port);
}

static void assert_v6(const struct sockaddr_storage *sa, socklen_t salen,
                      const char *ip, unsigned port)
{
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
    struct in6_addr want;

    assert_int_equal(sa->ss_family, AF_INET6);
    assert_int_equal(salen, sizeof(struct sockaddr_in6));
    assert_int_equal(inet_pton(AF_INET6, ip, &want), 1);
    assert_memory_equal(&s6->sin6_addr, &want, sizeof(want));
    assert_int_equal(ntohs(s6->sin6_port), port);
}

static void test_defaults(void **state)
{
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    (void)state;

    set("NEXTUP_UPSTREAMS", "10.0.0.1:8080");
    expect_ok();

    assert_string_equal(cfg.listen.text, "127.0.0.1:15001");
    assert_v4(&cfg.listen.sa, cfg.listen.salen, "127.0.0.1", 15001);
    assert_string_equal(cfg.admin.text, "127.0.0.1:15000");
    assert_v4(&cfg.admin.sa, cfg.admin.salen, "127.0.0.1", 15000);

    assert_int_equal(cfg.n_upstreams, 1);
    assert_string_equal(cfg.upstreams[0].name, "10.0.0.1:8080");
    assert_string_equal(cfg.upstreams[0].addr_text, "10.0.0.1:8080");
    assert_v4(&cfg.upstreams[0].sa, cfg.upstreams[0].salen, "10.0.0.1", 8080);

    if (cpus < 1)
        cpus = 1;
    if (cpus > 64)
        cpus = 64;
    assert_int_equal(cfg.workers, cpus);
    assert_int_equal(cfg.connect_timeout_ms, 1000);
    assert_int_equal(cfg.request_timeout_ms, 30000);
    assert_int_equal(cfg.idle_timeout_ms, 60000);
    assert_int_equal(cfg.header_timeout_ms, 10000);
    assert_int_equal(cfg.max_header_bytes, 65536);
    assert_int_equal(cfg.max_connections, 10000);
    assert_int_equal(cfg.max_retries, 2);
    assert_int_equal(cfg.drain_timeout_ms, 10000);
    assert_int_equal(cfg.pool_max_idle, 64);
    assert_int_equal(cfg.retry_buffer_bytes, 65536);
    assert_int_equal(cfg.log_level, LOG_LEVEL_INFO);
}

/* Empty means unset: the default applies. */
static void test_empty_is_default(void **state)
{
    (void)state;
    set("NEXTUP_UPSTREAMS", "10.0.0.1:8080");
    set("NEXTUP_MAX_RETRIES", "");
    set("NEXTUP_LISTEN", "");
    set("NEXTUP_LOG_LEVEL", "");
    expect_ok();
    assert_int_equal(cfg.max_retries, 2);
    assert_string_equal(cfg.listen.text, "127.0.0.1:15001");
    assert_int_equal(cfg.log_level, LOG_LEVEL_INFO);
}

static void test_int_values_accepted(void **state)
{
    (void)state;
    for (size_t i = 0; i < N(int_vars); i++) {
        const struct int_var *v = &int_vars[i];
        char buf[32];
        long vals[2] = { v->min, v->max };

        for (int k = 0; k < 2; k++) {
            setup(NULL);
            set("NEXTUP_UPSTREAMS", "10.0.0.1:8080");
            /* Room for either end of the timeouts the request timeout bounds (a connect
             * timeout above the request timeout is a contradiction of its own). */
            set("NEXTUP_REQUEST_TIMEOUT_MS", "86400000");
            set("NEXTUP_CONNECT_TIMEOUT_MS", "1");
            snprintf(buf, sizeof(buf), "%ld", vals[k]);
            set(v->name, buf);
            expect_ok();
        }
    }
    setup(NULL);
    set("NEXTUP_UPSTREAMS", "10.0.0.1:8080");
    set("NEXTUP_WORKERS", "3");
    set("NEXTUP_CONNECT_TIMEOUT_MS", "250");
    set("NEXTUP_REQUEST_TIMEOUT_MS", "86400000");
    set("NEXTUP_IDLE_TIMEOUT_MS", "5");
    set("NEXTUP_HEADER_TIMEOUT_MS", "6");
    set("NEXTUP_MAX_HEADER_BYTES", "1024");
    set("NEXTUP_MAX_CONNECTIONS", "1000000");
    set("NEXTUP_MAX_RETRIES", "0");
    set("NEXTUP_DRAIN_TIMEOUT_MS", "7");
    set("NEXTUP_POOL_MAX_IDLE", "0");
    set("NEXTUP_RETRY_BUFFER_BYTES", "67108864");
    expect_ok();
    assert_int_equal(cfg.workers, 3);
    assert_int_equal(cfg.connect_timeout_ms, 250);
    assert_int_equal(cfg.request_timeout_ms, 86400000);
    assert_int_equal(cfg.idle_timeout_ms, 5);
    assert_int_equal(cfg.header_timeout_ms, 6);
    assert_int_equal(cfg.max_header_bytes, 1024);
    assert_int_equal(cfg.max_connections, 1000000);
    assert_int_equal(cfg.max_retries, 0);
    assert_int_equal(cfg.drain_timeout_ms, 7);
    assert_int_equal(cfg.pool_max_idle, 0);
    assert_int_equal(cfg.retry_buffer_bytes, 67108864);
}

static void test_int_values_rejected(void **state)
{
    (void)state;
    for (size_t i = 0; i < N(int_vars); i++) {
        const struct int_var *v = &int_vars[i];
        char below[32], above[32], range[64];
        const char *bad[] = { "abc", "10ms", " 5", "5 ", "+5", "0x10", "1e3", "1.5",
                              "99999999999999999999999", below, above };

        snprintf(below, sizeof(below), "%ld", v->min - 1);
        snprintf(above, sizeof(above), "%ld", v->max + 1);
        snprintf(range, sizeof(range), ": expected an integer from %ld to %ld", v->min, v->max);

        for (size_t k = 0; k < N(bad); k++) {
            char prefix[128];

            /* NEXTUP_WORKERS above the most is clamped (test_workers_clamped). */
            if (bad[k] == above && strcmp(v->name, "NEXTUP_WORKERS") == 0)
                continue;

            setup(NULL);
            set("NEXTUP_UPSTREAMS", "10.0.0.1:8080");
            set(v->name, bad[k]);
            snprintf(prefix, sizeof(prefix), "%s=\"%s\"", v->name, bad[k]);
            expect_fail(prefix, range);
            /* exactly the documented form, nothing before or after */
            assert_true(strncmp(err, prefix, strlen(prefix)) == 0);
            assert_int_equal(strlen(err), strlen(prefix) + strlen(range));
        }
    }
}

static void test_error_line_exact(void **state)
{
    (void)state;
    set("NEXTUP_UPSTREAMS", "10.0.0.1:8080");
    set("NEXTUP_MAX_RETRIES", "abc");
    expect_fail(NULL, NULL);
    assert_string_equal(err, "NEXTUP_MAX_RETRIES=\"abc\": expected an integer from 0 to 16");
}

/* A newline in the value must not split the error into two lines. */
static void test_error_stays_one_line(void **state)
{
    (void)state;
    set("NEXTUP_UPSTREAMS", "10.0.0.1:8080");
    set("NEXTUP_WORKERS", "4\nNEXTUP_FAKE=1");
    expect_fail("NEXTUP_WORKERS=\"4", "expected an integer from 1 to 64");
}

static void test_small_err_buffer(void **state)
{
    char tiny[8];
    (void)state;
    set("NEXTUP_UPSTREAMS", "10.0.0.1:8080");
    set("NEXTUP_MAX_RETRIES", "abc");
    assert_int_equal(config_from_env(&cfg, tiny, sizeof(tiny)), -EINVAL);
    assert_string_equal(tiny, "NEXTUP_");
    assert_int_equal(config_from_env(&cfg, NULL, 0), -EINVAL);
}

static void test_upstreams_missing(void **state)
{
    static const char want[] = "NEXTUP_UPSTREAMS is required: expected comma-separated "
                               "host:port peers, e.g. 10.0.0.1:8080,[::1]:8080,orders:8080";
    (void)state;
    expect_fail(NULL, NULL);
    assert_string_equal(err, want);

    set("NEXTUP_UPSTREAMS", "");
    expect_fail(NULL, NULL);
    assert_string_equal(err, want);
}

static void test_upstreams_ipv4_and_ipv6(void **state)
{
    (void)state;
    set("NEXTUP_UPSTREAMS", " 10.0.0.1:8080 ,[::1]:8080,\t192.168.1.20:80");
    expect_ok();
    assert_int_equal(cfg.n_upstreams, 3);
    assert_string_equal(cfg.upstreams[0].name, "10.0.0.1:8080");
    assert_string_equal(cfg.upstreams[0].addr_text, "10.0.0.1:8080");
    assert_v4(&cfg.upstreams[0].sa, cfg.upstreams[0].salen, "10.0.0.1", 8080);
    assert_string_equal(cfg.upstreams[1].name, "[::1]:8080");
    assert_string_equal(cfg.upstreams[1].addr_text, "[::1]:8080");
    assert_v6(&cfg.upstreams[1].sa, cfg.upstreams[1].salen, "::1", 8080);
    assert_string_equal(cfg.upstreams[2].name, "192.168.1.20:80");
    assert_string_equal(cfg.upstreams[2].addr_text, "192.168.1.20:80");
}

static void test_upstreams_ipv6_canonical_text(void **state)
{
    (void)state;
    set("NEXTUP_UPSTREAMS", "[2001:DB8:0:0::1]:443");
    expect_ok();
    assert_int_equal(cfg.n_upstreams, 1);
    assert_string_equal(cfg.upstreams[0].name, "[2001:DB8:0:0::1]:443");
    assert_string_equal(cfg.upstreams[0].addr_text, "[2001:db8::1]:443");
}

static void test_upstreams_hostname(void **state)
{
    (void)state;
    set("NEXTUP_UPSTREAMS", "localhost:8080");
    expect_ok();
    assert_true(cfg.n_upstreams >= 1);
    for (int i = 0; i < cfg.n_upstreams; i++) {
        const struct config_upstream *u = &cfg.upstreams[i];
        assert_string_equal(u->name, "localhost:8080");
        assert_true(u->sa.ss_family == AF_INET || u->sa.ss_family == AF_INET6);
        if (u->sa.ss_family == AF_INET)
            assert_int_equal(ntohs(((const struct sockaddr_in *)&u->sa)->sin_port), 8080);
        else
            assert_int_equal(ntohs(((const struct sockaddr_in6 *)&u->sa)->sin6_port), 8080);
        /* numeric form, not the name */
        assert_null(strstr(u->addr_text, "localhost"));
        assert_true(strlen(u->addr_text) > 5);
        assert_string_equal(u->addr_text + strlen(u->addr_text) - 5, ":8080");
        for (int j = 0; j < i; j++)
            assert_string_not_equal(u->addr_text, cfg.upstreams[j].addr_text);
    }
}

static void test_upstreams_dedup(void **state)
{
    (void)state;
    set("NEXTUP_UPSTREAMS", "127.0.0.1:9000,127.0.0.1:9000,127.0.0.1:9001,[::1]:9000,[0::1]:9000");
    expect_ok();
    assert_int_equal(cfg.n_upstreams, 3);
    assert_string_equal(cfg.upstreams[0].addr_text, "127.0.0.1:9000");
    assert_string_equal(cfg.upstreams[1].addr_text, "127.0.0.1:9001");
    assert_string_equal(cfg.upstreams[2].addr_text, "[::1]:9000");

    /* a name resolving to an address already listed adds nothing for it */
    setup(NULL);
    set("NEXTUP_UPSTREAMS", "127.0.0.1:9000,localhost:9000");
    expect_ok();
    for (int i = 0; i < cfg.n_upstreams; i++)
        for (int j = 0; j < i; j++)
            assert_string_not_equal(cfg.upstreams[i].addr_text, cfg.upstreams[j].addr_text);
    assert_string_equal(cfg.upstreams[0].name, "127.0.0.1:9000");
}

static void test_upstreams_bad(void **state)
{
    static const struct { const char *value, *want1, *want2; } cases[] = {
        { "10.0.0.1:0", "NEXTUP_UPSTREAMS=\"10.0.0.1:0\"", "port from 1 to 65535" },
        { "10.0.0.1:65536", "NEXTUP_UPSTREAMS=\"10.0.0.1:65536\"", "port from 1 to 65535" },
        { "10.0.0.1:x", "NEXTUP_UPSTREAMS=\"10.0.0.1:x\"", "port from 1 to 65535" },
        { "10.0.0.1:", "NEXTUP_UPSTREAMS=\"10.0.0.1:\"", "port from 1 to 65535" },
        { "orders:-1", "NEXTUP_UPSTREAMS=\"orders:-1\"", "port from 1 to 65535" },
        { "10.0.0.1", "NEXTUP_UPSTREAMS=\"10.0.0.1\"", "missing port" },
        { "orders", "NEXTUP_UPSTREAMS=\"orders\"", "missing port" },
        { ":8080", "NEXTUP_UPSTREAMS=\":8080\"", "missing host" },
        { "[::1]:0", "NEXTUP_UPSTREAMS=\"[::1]:0\"", "[IPv6]:port" },
        { "[::1]", "NEXTUP_UPSTREAMS=\"[::1]\"", "[IPv6]:port" },
        { "[::1]:70000", "NEXTUP_UPSTREAMS=\"[::1]:70000\"", "[IPv6]:port" },
        { "[nope]:80", "NEXTUP_UPSTREAMS=\"[nope]:80\"", "[IPv6]:port" },
        { "::1:8080", "NEXTUP_UPSTREAMS=\"::1:8080\"", "need brackets" },
        { "1.2.3:80", "NEXTUP_UPSTREAMS=\"1.2.3:80\"", "\"1.2.3\" is not a valid IPv4 address" },
        { "300.1.1.1:80", "NEXTUP_UPSTREAMS=\"300.1.1.1:80\"", "not a valid IPv4 address" },
        { "a:1,,b:2", "NEXTUP_UPSTREAMS=\"a:1,,b:2\"", "entry 2 is empty" },
        { "10.0.0.1:80,", "NEXTUP_UPSTREAMS=\"10.0.0.1:80,\"", "entry 2 is empty" },
        { ",10.0.0.1:80", "NEXTUP_UPSTREAMS=\",10.0.0.1:80\"", "entry 1 is empty" },
        { " , ", "NEXTUP_UPSTREAMS=\" , \"", "entry 1 is empty" },
        { "10.0.0.1:80,10.0.0.2:0", "NEXTUP_UPSTREAMS=\"10.0.0.2:0\"", "port from 1 to 65535" },
        /* syntax is checked for the whole list before any name is resolved */
        { "badhost.invalid:80,10.0.0.2:0", "NEXTUP_UPSTREAMS=\"10.0.0.2:0\"", "port from 1 to 65535" },
    };
    (void)state;
    for (size_t i = 0; i < N(cases); i++) {
        setup(NULL);
        set("NEXTUP_UPSTREAMS", cases[i].value);
        expect_fail(cases[i].want1, cases[i].want2);
    }
    /* the empty-entry message also shows what is expected */
    setup(NULL);
    set("NEXTUP_UPSTREAMS", "a:1,,b:2");
    expect_fail("expected comma-separated host:port peers", NULL);
}

/* Every other variable is checked before any name is resolved. */
static void test_other_errors_before_dns(void **state)
{
    (void)state;
    set("NEXTUP_UPSTREAMS", "badhost.invalid:80");
    set("NEXTUP_LOG_LEVEL", "loud");
    expect_fail("NEXTUP_LOG_LEVEL=\"loud\"", NULL);
}

static void test_upstreams_unresolvable(void **state)
{
    (void)state;
    /* .invalid is reserved (RFC 6761): it never resolves. With re-resolution off
     * an unresolvable name is fatal; with it on, discovery keeps asking. */
    set("NEXTUP_UPSTREAMS", "10.0.0.1:80,badhost.invalid:80");
    expect_ok();
    assert_int_equal(cfg.n_unresolved, 1);
    assert_int_equal(cfg.n_upstreams, 1);
    assert_int_equal(cfg.n_upstream_names, 1);
    assert_string_equal(cfg.upstream_names[0], "badhost.invalid:80");
    set("NEXTUP_DNS_REFRESH_MS", "0");
    set("NEXTUP_UPSTREAMS", "badhost.invalid:80");
    expect_fail("NEXTUP_UPSTREAMS=\"badhost.invalid:80\": cannot resolve \"badhost.invalid\": ",
                NULL);
    /* gai_strerror text follows */
    assert_true(strlen(err) > strlen("NEXTUP_UPSTREAMS=\"badhost.invalid:80\": cannot resolve "
                                     "\"badhost.invalid\": "));
}

static void test_upstreams_too_many(void **state)
{
    char *value = malloc((CONFIG_MAX_UPSTREAMS + 1) * 24);
    size_t off = 0;
    (void)state;

    assert_non_null(value);
    for (int i = 0; i < CONFIG_MAX_UPSTREAMS; i++)
        off += (size_t)sprintf(value + off, "%s10.1.%d.%d:80", i ? "," : "", i / 250, i % 250 + 1);
    set("NEXTUP_UPSTREAMS", value);
    expect_ok();
    assert_int_equal(cfg.n_upstreams, CONFIG_MAX_UPSTREAMS);
    assert_string_equal(cfg.upstreams[CONFIG_MAX_UPSTREAMS - 1].addr_text, "10.1.1.6:80");

    sprintf(value + off, ",10.2.0.1:80");
    setup(NULL);
    set("NEXTUP_UPSTREAMS", value);
    expect_fail("NEXTUP_UPSTREAMS", "more than 256 upstream addresses");
    free(value);
}

static void test_upstreams_entry_too_long(void **state)
{
    char value[300];
    (void)state;

    memset(value, 'a', 200);
    strcpy(value + 200, ".example:80");
    set("NEXTUP_UPSTREAMS", value);
    expect_fail("NEXTUP_UPSTREAMS=\"aaaa", "entry longer than 127 characters");
}

static void test_listen_admin(void **state)
{
    (void)state;
    set("NEXTUP_UPSTREAMS", "10.0.0.1:8080");
    set("NEXTUP_LISTEN", "0.0.0.0:8000");
    set("NEXTUP_ADMIN", "[::1]:9901");
    expect_ok();
    assert_string_equal(cfg.listen.text, "0.0.0.0:8000");
    assert_v4(&cfg.listen.sa, cfg.listen.salen, "0.0.0.0", 8000);
    assert_string_equal(cfg.admin.text, "[::1]:9901");
    assert_v6(&cfg.admin.sa, cfg.admin.salen, "::1", 9901);

    static const char *const bad[] = {
        "nope", "localhost:8000", "1.2.3.4", "1.2.3.4:", "1.2.3.4:0", "1.2.3.4:65536",
        "1.2.3.4:x", "1.2.3:80", "::1:80", "[::1]", "[::1]80", ":80", " 1.2.3.4:80",
        "1.2.3.4:80 ", "1.2.3.4:000080",
    };
    const char *vars[] = { "NEXTUP_LISTEN", "NEXTUP_ADMIN" };
    for (size_t v = 0; v < N(vars); v++) {
        for (size_t i = 0; i < N(bad); i++) {
            char want[128];
            setup(NULL);
            set("NEXTUP_UPSTREAMS", "10.0.0.1:8080");
            set(vars[v], bad[i]);
            snprintf(want, sizeof(want), "%s=\"%s\": expected host:port with a numeric "
                     "IPv4 address or [IPv6]:port", vars[v], bad[i]);
            expect_fail(NULL, NULL);
            assert_string_equal(err, want);
        }
    }
}

static void test_log_level(void **state)
{
    static const struct { const char *text; enum log_level level; } ok[] = {
        { "error", LOG_LEVEL_ERROR }, { "warn", LOG_LEVEL_WARN },
        { "info", LOG_LEVEL_INFO }, { "debug", LOG_LEVEL_DEBUG },
    };
    static const char *const bad[] = { "loud", "INFO", "warning", "info ", "0" };
    (void)state;

    for (size_t i = 0; i < N(ok); i++) {
        setup(NULL);
        set("NEXTUP_UPSTREAMS", "10.0.0.1:8080");
        set("NEXTUP_LOG_LEVEL", ok[i].text);
        expect_ok();
        assert_int_equal(cfg.log_level, ok[i].level);
    }
    for (size_t i = 0; i < N(bad); i++) {
        char want[128];
        setup(NULL);
        set("NEXTUP_UPSTREAMS", "10.0.0.1:8080");
        set("NEXTUP_LOG_LEVEL", bad[i]);
        snprintf(want, sizeof(want),
                 "NEXTUP_LOG_LEVEL=\"%s\": expected one of error, warn, info, debug", bad[i]);
        expect_fail(NULL, NULL);
        assert_string_equal(err, want);
    }
}

static void test_parse_addr(void **state)
{
    struct sockaddr_storage sa;
    socklen_t salen = 0;
    (void)state;

    assert_int_equal(config_parse_addr("10.1.2.3:65535", &sa, &salen), 0);
    assert_v4(&sa, salen, "10.1.2.3", 65535);
    assert_int_equal(config_parse_addr("[fe80::1]:1", &sa, &salen), 0);
    assert_v6(&sa, salen, "fe80::1", 1);
    assert_int_equal(config_parse_addr("[::ffff:1.2.3.4]:80", &sa, &salen), 0);
    assert_v6(&sa, salen, "::ffff:1.2.3.4", 80);

    assert_int_equal(config_parse_addr("localhost:80", &sa, &salen), -EINVAL);
    assert_int_equal(config_parse_addr("", &sa, &salen), -EINVAL);
    assert_int_equal(config_parse_addr("[", &sa, &salen), -EINVAL);
    assert_int_equal(config_parse_addr("[]:80", &sa, &salen), -EINVAL);
    assert_int_equal(config_parse_addr("[1.2.3.4]:80", &sa, &salen), -EINVAL);
    assert_int_equal(config_parse_addr("1.2.3.4:80:80", &sa, &salen), -EINVAL);
    assert_int_equal(config_parse_addr("1.2.3.4:-80", &sa, &salen), -EINVAL);
    assert_int_equal(config_parse_addr("1.2.3.4:+80", &sa, &salen), -EINVAL);
}

static char *help_text(void)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);

    assert_non_null(f);
    config_print_help(f);
    assert_int_equal(fclose(f), 0);
    assert_non_null(buf);
    return buf;
}

/* The line in <help> that documents <name>, copied into <line>. */
/* The help entry of <name>: "  NAME  default: X\n      meaning (range)", both lines. */
static void help_line(const char *help, const char *name, char *line, size_t linelen)
{
    char key[64];
    const char *p, *end;

    snprintf(key, sizeof(key), "\n  %s  default: ", name);
    p = strstr(help, key);
    if (!p)
        print_error("help lacks %s:\n%s", name, help);
    assert_non_null(p);
    p++;
    end = strchr(p, '\n');
    assert_non_null(end);
    end = strchr(end + 1, '\n');
    assert_non_null(end);
    assert_true((size_t)(end - p) < linelen);
    memcpy(line, p, (size_t)(end - p));
    line[end - p] = '\0';
}

static void test_help(void **state)
{
    static const struct { const char *name, *def; } defaults[] = {
        { "NEXTUP_LISTEN", "default: 127.0.0.1:15001\n" },
        { "NEXTUP_ADMIN", "default: 127.0.0.1:15000\n" },
        { "NEXTUP_UPSTREAMS", "default: (required)\n" },
        { "NEXTUP_CONNECT_TIMEOUT_MS", "default: 1000\n" },
        { "NEXTUP_REQUEST_TIMEOUT_MS", "default: 30000\n" },
        { "NEXTUP_IDLE_TIMEOUT_MS", "default: 60000\n" },
        { "NEXTUP_HEADER_TIMEOUT_MS", "default: 10000\n" },
        { "NEXTUP_MAX_HEADER_BYTES", "default: 65536\n" },
        { "NEXTUP_MAX_CONNECTIONS", "default: 10000\n" },
        { "NEXTUP_MAX_RETRIES", "default: 2\n" },
        { "NEXTUP_DRAIN_TIMEOUT_MS", "default: 10000\n" },
        { "NEXTUP_POOL_MAX_IDLE", "default: 64\n" },
        { "NEXTUP_RETRY_BUFFER_BYTES", "default: 65536\n" },
        { "NEXTUP_LOG_LEVEL", "default: info\n" },
        { "NEXTUP_WORKERS", "default: online CPUs (" },
        { "NEXTUP_RETRY_ON", "default: connect-failure,reset,gateway-error\n" },
        { "NEXTUP_RETRY_METHODS", "default: GET,HEAD,OPTIONS,TRACE,PUT,DELETE\n" },
        { "NEXTUP_PER_TRY_TIMEOUT_MS", "default: 0\n" },
        { "NEXTUP_RETRY_BACKOFF_BASE_MS", "default: 25\n" },
        { "NEXTUP_RETRY_BACKOFF_MAX_MS", "default: 250\n" },
        { "NEXTUP_RETRY_BUDGET_PERCENT", "default: 20\n" },
        { "NEXTUP_RETRY_BUDGET_MIN_PER_SEC", "default: 10\n" },
        { "NEXTUP_DECISION_PLUGIN", "default: (none)\n" },
        { "NEXTUP_BPF", "default: auto\n" },
        { "NEXTUP_BPF_PIN_DIR", "default: /sys/fs/bpf/nextup\n" },
        { "NEXTUP_BPF_MAX_PEERS", "default: 4096\n" },
    };
    char *help = help_text();
    char line[512];
    (void)state;

    assert_true(strncmp(help, "usage: nextup [--help | --version]\n", strlen("usage: nextup [--help | --version]\n")) == 0);
    assert_non_null(strstr(help, "environment variables only"));
    for (size_t i = 0; i < N(all_names); i++)
        help_line(help, all_names[i], line, sizeof(line));
    assert_int_equal(N(defaults), N(all_names));
    for (size_t i = 0; i < N(defaults); i++) {
        help_line(help, defaults[i].name, line, sizeof(line));
        if (!strstr(line, defaults[i].def))
            print_error("help line \"%s\" lacks default \"%s\"\n", line, defaults[i].def);
        assert_non_null(strstr(line, defaults[i].def));
    }
    help_line(help, "NEXTUP_MAX_RETRIES", line, sizeof(line));
    assert_non_null(strstr(line, "0..16"));
    free(help);
}

/* What --help calls the default is what the parser applies. */
static void test_help_matches_parser(void **state)
{
    char *help = help_text();
    char line[512], want[160];
    (void)state;

    set("NEXTUP_UPSTREAMS", "10.0.0.1:8080");
    expect_ok();
    help_line(help, "NEXTUP_WORKERS", line, sizeof(line));
    snprintf(want, sizeof(want), "(%d)", cfg.workers);
    assert_non_null(strstr(line, want));
    help_line(help, "NEXTUP_MAX_RETRIES", line, sizeof(line));
    snprintf(want, sizeof(want), "default: %d\n", cfg.max_retries);
    assert_non_null(strstr(line, want));
    help_line(help, "NEXTUP_LISTEN", line, sizeof(line));
    snprintf(want, sizeof(want), "default: %s\n", cfg.listen.text);
    assert_non_null(strstr(line, want));
    free(help);
}

static void test_workers_clamped(void **state)
{
    (void)state;
    set("NEXTUP_UPSTREAMS", "10.0.0.1:8080");
    set("NEXTUP_WORKERS", "65");
    expect_ok();
    assert_int_equal(cfg.workers, 64);
    assert_int_equal(cfg.n_warnings, 1);
    assert_string_equal(cfg.warnings[0], "NEXTUP_WORKERS=\"65\": above the most allowed (64); using 64");
    setup(NULL);
    set("NEXTUP_UPSTREAMS", "10.0.0.1:8080");
    set("NEXTUP_WORKERS", "64");
    expect_ok();
    assert_int_equal(cfg.workers, 64);
    assert_int_equal(cfg.n_warnings, 0);
}

static void test_unknown_variable(void **state)
{
    static const struct { const char *typo, *nearest; } cases[] = {
        { "NEXTUP_WORKER", "NEXTUP_WORKERS" }, { "NEXTUP_MAX_RETRY", "NEXTUP_MAX_RETRIES" },
        { "NEXTUP_RETRYON", "NEXTUP_RETRY_ON" }, { "NEXTUP_WROKERS", "NEXTUP_WORKERS" },
        { "NEXTUP_UPSTREAM", "NEXTUP_UPSTREAMS" }, { "NEXTUP_BPF_PINDIR", "NEXTUP_BPF_PIN_DIR" },
    };
    (void)state;
    for (size_t i = 0; i < N(cases); i++) {
        char want[128];
        setup(NULL);
        set("NEXTUP_UPSTREAMS", "10.0.0.1:8080");
        set(cases[i].typo, "4");
        snprintf(want, sizeof(want), "%s=\"4\": unknown variable; the nearest known one is %s ", cases[i].typo,
                 cases[i].nearest);
        expect_fail(want, NULL);
        assert_string_equal(config_nearest_name(cases[i].typo), cases[i].nearest);
    }
    /* A known name is its own nearest. */
    for (size_t i = 0; i < N(all_names); i++)
        assert_string_equal(config_nearest_name(all_names[i]), all_names[i]);
}

static void test_service_links_allowed(void **state)
{
    static const char *const links[] = { "NEXTUP_SERVICE_HOST", "NEXTUP_SERVICE_PORT", "NEXTUP_SERVICE_PORT_HTTP",
                                         "NEXTUP_PORT", "NEXTUP_PORT_15001_TCP", "NEXTUP_PORT_15001_TCP_ADDR" };
    static const char *const not_links[] = { "NEXTUP_PORTS", "NEXTUP_PORT_X", "NEXTUP_SERVICE_HOSTS",
                                             "NEXTUP_PORT_15001" };
    (void)state;
    for (size_t i = 0; i < N(links); i++) {
        setup(NULL);
        set("NEXTUP_UPSTREAMS", "10.0.0.1:8080");
        set(links[i], "tcp://10.96.0.1:15001");
        expect_ok();
    }
    for (size_t i = 0; i < N(not_links); i++) {
        setup(NULL);
        set("NEXTUP_UPSTREAMS", "10.0.0.1:8080");
        set(not_links[i], "1");
        expect_fail(not_links[i], "unknown variable");
    }
}

static void test_contradictions(void **state)
{
    static const struct { const char *a, *va, *b, *vb, *want; } cases[] = {
        { "NEXTUP_EJECT_BASE_MS", "5000", "NEXTUP_EJECT_MAX_MS", "4000",
          "NEXTUP_EJECT_BASE_MS=\"5000\" is above NEXTUP_EJECT_MAX_MS=\"4000\": " },
        { "NEXTUP_EJECT_BASE_MS", "9000", NULL, NULL,
          "NEXTUP_EJECT_BASE_MS=\"9000\" is above NEXTUP_EJECT_MAX_MS (default 8000): " },
        { "NEXTUP_RETRY_BACKOFF_BASE_MS", "300", NULL, NULL,
          "NEXTUP_RETRY_BACKOFF_BASE_MS=\"300\" is above NEXTUP_RETRY_BACKOFF_MAX_MS (default 250): " },
        { "NEXTUP_PER_TRY_TIMEOUT_MS", "31000", NULL, NULL,
          "NEXTUP_PER_TRY_TIMEOUT_MS=\"31000\" is above NEXTUP_REQUEST_TIMEOUT_MS (default 30000): " },
        { "NEXTUP_LISTEN", "127.0.0.1:15000", NULL, NULL,
          "NEXTUP_LISTEN=\"127.0.0.1:15000\" and NEXTUP_ADMIN (default 127.0.0.1:15000) are the same address" },
        { "NEXTUP_UPSTREAM_SNI", "orders", NULL, NULL,
          "NEXTUP_UPSTREAM_SNI=\"orders\" is set but NEXTUP_UPSTREAM_TLS (default off)" },
    };
    (void)state;
    for (size_t i = 0; i < N(cases); i++) {
        setup(NULL);
        set("NEXTUP_UPSTREAMS", "10.0.0.1:8080");
        set(cases[i].a, cases[i].va);
        if (cases[i].b)
            set(cases[i].b, cases[i].vb);
        expect_fail(cases[i].want, NULL);
        assert_true(strncmp(err, cases[i].want, strlen(cases[i].want)) == 0);
    }
    /* Equal is no contradiction; a per-try timeout of 0 is off. */
    setup(NULL);
    set("NEXTUP_UPSTREAMS", "10.0.0.1:8080");
    set("NEXTUP_EJECT_BASE_MS", "8000");
    set("NEXTUP_RETRY_BACKOFF_BASE_MS", "250");
    set("NEXTUP_PER_TRY_TIMEOUT_MS", "30000");
    expect_ok();
    assert_int_equal(cfg.n_warnings, 0);
    /* A connect timeout above the request timeout is a warning, not an error. */
    setup(NULL);
    set("NEXTUP_UPSTREAMS", "10.0.0.1:8080");
    set("NEXTUP_REQUEST_TIMEOUT_MS", "500");
    expect_ok();
    assert_int_equal(cfg.n_warnings, 1);
    assert_string_equal(cfg.warnings[0], "NEXTUP_CONNECT_TIMEOUT_MS (default 1000) is above "
                        "NEXTUP_REQUEST_TIMEOUT_MS=\"500\": a slow connect ends the request (504) instead of being retried");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_defaults, setup),
        cmocka_unit_test_setup(test_empty_is_default, setup),
        cmocka_unit_test_setup(test_int_values_accepted, setup),
        cmocka_unit_test_setup(test_int_values_rejected, setup),
        cmocka_unit_test_setup(test_error_line_exact, setup),
        cmocka_unit_test_setup(test_error_stays_one_line, setup),
        cmocka_unit_test_setup(test_small_err_buffer, setup),
        cmocka_unit_test_setup(test_upstreams_missing, setup),
        cmocka_unit_test_setup(test_upstreams_ipv4_and_ipv6, setup),
        cmocka_unit_test_setup(test_upstreams_ipv6_canonical_text, setup),
        cmocka_unit_test_setup(test_upstreams_hostname, setup),
        cmocka_unit_test_setup(test_upstreams_dedup, setup),
        cmocka_unit_test_setup(test_upstreams_bad, setup),
        cmocka_unit_test_setup(test_upstreams_unresolvable, setup),
        cmocka_unit_test_setup(test_other_errors_before_dns, setup),
        cmocka_unit_test_setup(test_upstreams_too_many, setup),
        cmocka_unit_test_setup(test_upstreams_entry_too_long, setup),
        cmocka_unit_test_setup(test_listen_admin, setup),
        cmocka_unit_test_setup(test_log_level, setup),
        cmocka_unit_test_setup(test_parse_addr, setup),
        cmocka_unit_test_setup(test_help, setup),
        cmocka_unit_test_setup(test_help_matches_parser, setup),
        cmocka_unit_test_setup(test_workers_clamped, setup),
        cmocka_unit_test_setup(test_unknown_variable, setup),
        cmocka_unit_test_setup(test_service_links_allowed, setup),
        cmocka_unit_test_setup(test_contradictions, setup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
