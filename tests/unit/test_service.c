/* service.c: the services' configuration, host normalization, every host form a pod uses, ports,
 * the default service, unknown authorities, request-target parsing, and a 200-service table whose
 * lookups cost what a 2-service table's do (slots looked at and keys compared, not time). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "peers.h"
#include "service.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))

extern char **environ;

/* ~1 MB: off the stack. */
static struct config cfg;
static char err[512];

/* unsetenv edits environ, so one name per pass and rescan. */
static void clear_env(void)
{
    for (;;) {
        char name[256];
        int found = 0;
        for (char **e = environ; e && *e; e++)
            if (strncmp(*e, "NEXTUP_", 7) == 0) {
                size_t n = strcspn(*e, "=");
                snprintf(name, sizeof(name), "%.*s", (int)n, *e);
                found = 1;
                break;
            }
        if (!found)
            return;
        unsetenv(name);
    }
}

static int setup(void **state)
{
    (void)state;
    clear_env();
    config_namespace_file = "/nonexistent/namespace";
    setenv("NEXTUP_DNS_REFRESH_MS", "0", 1);
    return 0;
}

static void three_services(void)
{
    setenv("NEXTUP_SERVICES", "orders,payments,inventory", 1);
    setenv("NEXTUP_NAMESPACE", "shop", 1);
    setenv("NEXTUP_SERVICE_ORDERS_UPSTREAMS", "10.0.0.1:8080,10.0.0.2:8080", 1);
    setenv("NEXTUP_SERVICE_ORDERS_HOSTS", "orders, Orders.Example.com:8443", 1);
    setenv("NEXTUP_SERVICE_PAYMENTS_UPSTREAMS", "10.0.1.1:8080", 1);
    setenv("NEXTUP_SERVICE_INVENTORY_UPSTREAMS", "10.0.2.1:9000", 1);
    setenv("NEXTUP_SERVICE_INVENTORY_HOSTS", "stock:9000", 1);
}

static struct services *build(void)
{
    struct services *s = NULL;
    int rc = config_from_env(&cfg, err, sizeof(err));

    if (rc < 0)
        print_error("config: %s\n", err);
    assert_int_equal(rc, 0);
    rc = services_new(&cfg, &s, err, sizeof(err));
    if (rc < 0)
        print_error("services: %s\n", err);
    assert_int_equal(rc, 0);
    return s;
}

static const char *routed(const struct services *s, const char *authority)
{
    const struct service *svc = services_route(s, authority, strlen(authority));
    return svc ? svc->name : "(none)";
}

static void test_normalize(void **state)
{
    static const struct { const char *in, *host; unsigned port; } good[] = {
        { "payments", "payments", 0 },
        { "Payments.Shop.", "payments.shop", 0 },
        { "PAYMENTS.shop.svc.cluster.local.:8080", "payments.shop.svc.cluster.local", 8080 },
        { "10.0.0.1:80", "10.0.0.1", 80 },
        { "[::1]:8080", "[::1]", 8080 },
        { "[FE80::1]", "[fe80::1]", 0 },
        { "host:", "host", 0 },
        { "my_host-1", "my_host-1", 0 },
    };
    static const char *const bad[] = { "", ".", "a b", "::1", "host:99999", "host:0", "host:8o", "[::1",
                                       "[zz::1]", "[::1]x", "host:123456", "a@b", "h/x", ":80" };
    char out[SERVICE_HOST_MAX + 1];
    unsigned port;

    (void)state;
    for (size_t i = 0; i < N(good); i++) {
        assert_int_equal(service_normalize_host(good[i].in, strlen(good[i].in), out, &port), 0);
        assert_string_equal(out, good[i].host);
        assert_int_equal(port, good[i].port);
    }
    for (size_t i = 0; i < N(bad); i++) {
        if (service_normalize_host(bad[i], strlen(bad[i]), out, &port) != -EINVAL)
            print_error("\"%s\" was taken\n", bad[i]);
        assert_int_equal(service_normalize_host(bad[i], strlen(bad[i]), out, &port), -EINVAL);
    }
}

static void test_host_forms(void **state)
{
    static const struct { const char *authority, *service; } cases[] = {
        /* the short name and the forms a pod's resolver expands it to, any case, any port */
        { "payments", "payments" }, { "PAYMENTS:8080", "payments" }, { "payments.shop", "payments" },
        { "payments.shop.svc", "payments" }, { "payments.shop.svc.cluster.local", "payments" },
        { "payments.shop.svc.cluster.local.:8080", "payments" }, { "Payments.Shop.Svc.Cluster.Local", "payments" },
        /* another namespace's payments is another service */
        { "payments.other", "(none)" }, { "payments.other.svc.cluster.local", "(none)" },
        { "payments.shop.svc.cluster", "(none)" },
        /* a HOSTS entry with a port matches that port only; no port is port 80 */
        { "orders.example.com:8443", "orders" }, { "ORDERS.EXAMPLE.COM.:8443", "orders" },
        { "orders.example.com", "(none)" }, { "orders.example.com:80", "(none)" },
        { "orders", "orders" }, { "orders.shop:1234", "orders" },
        { "stock:9000", "inventory" }, { "stock.shop.svc:9000", "inventory" }, { "stock", "(none)" },
        { "stock:9001", "(none)" },
        /* HOSTS replaces the default (the name) */
        { "inventory", "(none)" },
        /* unknown, empty, not host[:port] */
        { "evil.example", "(none)" }, { "", "(none)" }, { "a b", "(none)" }, { "10.0.0.1:8080", "(none)" },
    };
    struct services *s;

    (void)state;
    three_services();
    s = build();
    assert_int_equal(s->n, 3);
    assert_null(s->default_service);
    for (size_t i = 0; i < N(cases); i++) {
        if (strcmp(routed(s, cases[i].authority), cases[i].service) != 0)
            print_error("\"%s\" went to %s\n", cases[i].authority, routed(s, cases[i].authority));
        assert_string_equal(routed(s, cases[i].authority), cases[i].service);
    }
    /* the length given is what counts, not a NUL */
    assert_string_equal(services_route(s, "paymentsXXX", 8)->name, "payments");
    services_free(s);
}

static void test_default_service(void **state)
{
    struct services *s;

    (void)state;
    three_services();
    setenv("NEXTUP_DEFAULT_SERVICE", "orders", 1);
    s = build();
    assert_non_null(s->default_service);
    assert_string_equal(routed(s, "evil.example"), "orders");
    assert_string_equal(routed(s, ""), "orders");
    assert_string_equal(routed(s, "stock"), "orders");
    assert_string_equal(routed(s, "payments"), "payments");
    services_free(s);
}

static void test_no_namespace_short_names_only(void **state)
{
    struct services *s;

    (void)state;
    three_services();
    unsetenv("NEXTUP_NAMESPACE");
    s = build();
    assert_string_equal(cfg.namespace_, "");
    assert_string_equal(routed(s, "payments"), "payments");
    assert_string_equal(routed(s, "payments.shop"), "(none)");
    services_free(s);
}

static void test_namespace_file(void **state)
{
    char path[] = "/tmp/nextup-test-ns-XXXXXX";
    int fd = mkstemp(path);
    struct services *s;

    (void)state;
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "billing\n", 8), 8);
    close(fd);
    config_namespace_file = path;
    three_services();
    unsetenv("NEXTUP_NAMESPACE");
    setenv("NEXTUP_CLUSTER_DOMAIN", "Corp.Internal.", 1);
    s = build();
    assert_string_equal(cfg.namespace_, "billing");
    assert_string_equal(routed(s, "payments.billing.svc.corp.internal"), "payments");
    assert_string_equal(routed(s, "payments.billing.svc.cluster.local"), "(none)");
    services_free(s);
    unlink(path);
}

static void test_single_upstreams_service(void **state)
{
    struct services *s;

    (void)state;
    setenv("NEXTUP_UPSTREAMS", "10.0.0.1:8080,10.0.0.2:8080", 1);
    s = build();
    assert_int_equal(s->n, 1);
    assert_string_equal(s->svc[0].name, "default");
    assert_ptr_equal(s->default_service, &s->svc[0]);
    assert_null(s->slots);
    assert_int_equal(s->svc[0].peers->n, 2);
    assert_int_equal(s->svc[0].peers->service, 0);
    /* every authority, even one that is no host at all */
    assert_string_equal(routed(s, "anything"), "default");
    assert_string_equal(routed(s, "127.0.0.1:15001"), "default");
    assert_string_equal(routed(s, "a b"), "default");
    assert_null(s->svc[0].upstream_host);
    assert_int_equal(s->svc[0].retry->policy.max_retries, 2);
    services_free(s);
}

static void test_per_service_settings(void **state)
{
    struct services *s;
    const struct service *pay, *ord;

    (void)state;
    three_services();
    setenv("NEXTUP_MAX_RETRIES", "3", 1);
    setenv("NEXTUP_REQUEST_TIMEOUT_MS", "5000", 1);
    setenv("NEXTUP_SERVICE_PAYMENTS_MAX_RETRIES", "0", 1);
    setenv("NEXTUP_SERVICE_PAYMENTS_RETRY_ON", "connect-failure", 1);
    setenv("NEXTUP_SERVICE_PAYMENTS_RETRY_METHODS", "GET", 1);
    setenv("NEXTUP_SERVICE_PAYMENTS_PER_TRY_TIMEOUT_MS", "200", 1);
    setenv("NEXTUP_SERVICE_PAYMENTS_UPSTREAM_HOST", "payments.internal:8080", 1);
    s = build();
    pay = services_route(s, "payments", 8);
    ord = services_route(s, "orders", 6);
    assert_int_equal(pay->retry->policy.max_retries, 0);
    assert_int_equal(pay->retry->policy.on, RETRY_ON_CONNECT_FAILURE | RETRY_ON_REFUSED);
    assert_int_equal(pay->retry->per_try_timeout_ms, 200);
    assert_int_equal(pay->retry->request_timeout_ms, 5000);
    assert_string_equal(pay->upstream_host, "payments.internal:8080");
    /* unset: the global values, budget and backoff included */
    assert_int_equal(ord->retry->policy.max_retries, 3);
    assert_int_equal(ord->retry->policy.on, cfg.retry.on);
    assert_int_equal(ord->retry->policy.methods, cfg.retry.methods);
    assert_true(pay->retry->policy.methods != cfg.retry.methods);
    assert_int_equal(pay->retry->policy.budget_percent, cfg.retry.budget_percent);
    assert_int_equal(ord->retry->per_try_timeout_ms, 0);
    assert_null(ord->upstream_host);
    /* each service its own peers, numbered in its own set */
    assert_int_equal(ord->peers->n, 2);
    assert_int_equal(pay->peers->n, 1);
    assert_int_equal(pay->peers->peer[0]->index, 0);
    assert_int_equal(pay->peers->peer[0]->service, pay->index);
    assert_int_equal(cfg.services[pay->index].n_upstreams, 1);
    services_free(s);
}

/* A config error: one line naming <a> (and <b>). */
static void expect_config_error(const char *a, const char *b)
{
    int rc = config_from_env(&cfg, err, sizeof(err));
    if (rc == 0) {
        struct services *s = NULL;
        rc = services_new(&cfg, &s, err, sizeof(err));
        services_free(s);
    }
    if (rc != -EINVAL || (a && !strstr(err, a)) || (b && !strstr(err, b)))
        print_error("rc %d, err \"%s\", wanted %s and %s\n", rc, err, a, b ? b : "");
    assert_int_equal(rc, -EINVAL);
    assert_null(strchr(err, '\n'));
    if (a)
        assert_non_null(strstr(err, a));
    if (b)
        assert_non_null(strstr(err, b));
}

static void test_config_errors(void **state)
{
    (void)state;
    setenv("NEXTUP_UPSTREAMS", "10.0.0.1:80", 1);
    setenv("NEXTUP_SERVICES", "a", 1);
    expect_config_error("NEXTUP_UPSTREAMS=\"10.0.0.1:80\"", "NEXTUP_SERVICES=\"a\"");

    setup(NULL);
    setenv("NEXTUP_SERVICES", "orders,Payments", 1);
    expect_config_error("NEXTUP_SERVICES=\"orders,Payments\"", "'P'");
    setenv("NEXTUP_SERVICES", "orders,,x", 1);
    expect_config_error("NEXTUP_SERVICES", "name 2 is empty");
    setenv("NEXTUP_SERVICES", "orders,orders", 1);
    expect_config_error("NEXTUP_SERVICES", "listed twice");
    setenv("NEXTUP_SERVICES", "a234567890123456789012345678901234567890123456789012345678901234", 1);
    expect_config_error("NEXTUP_SERVICES", "longer than 63");

    setenv("NEXTUP_SERVICES", "orders,payments", 1);
    setenv("NEXTUP_SERVICE_ORDERS_UPSTREAMS", "10.0.0.1:80", 1);
    expect_config_error("NEXTUP_SERVICE_PAYMENTS_UPSTREAMS is required", NULL);
    setenv("NEXTUP_SERVICE_PAYMENTS_UPSTREAMS", "10.0.0.2", 1);
    expect_config_error("NEXTUP_SERVICE_PAYMENTS_UPSTREAMS=\"10.0.0.2\": missing port", NULL);
    setenv("NEXTUP_SERVICE_PAYMENTS_UPSTREAMS", "10.0.0.2:80", 1);

    /* overrides: the global variable's checks, with the service's variable named */
    setenv("NEXTUP_SERVICE_PAYMENTS_MAX_RETRIES", "17", 1);
    expect_config_error("NEXTUP_SERVICE_PAYMENTS_MAX_RETRIES=\"17\": expected an integer from 0 to 16", NULL);
    unsetenv("NEXTUP_SERVICE_PAYMENTS_MAX_RETRIES");
    setenv("NEXTUP_SERVICE_PAYMENTS_RETRY_ON", "gateway-eror", 1);
    expect_config_error("NEXTUP_SERVICE_PAYMENTS_RETRY_ON=\"gateway-eror\": unknown condition", NULL);
    unsetenv("NEXTUP_SERVICE_PAYMENTS_RETRY_ON");
    setenv("NEXTUP_SERVICE_PAYMENTS_PER_TRY_TIMEOUT_MS", "40000", 1);
    expect_config_error("NEXTUP_SERVICE_PAYMENTS_PER_TRY_TIMEOUT_MS=\"40000\" is above NEXTUP_REQUEST_TIMEOUT_MS",
                        "service payments");
    unsetenv("NEXTUP_SERVICE_PAYMENTS_PER_TRY_TIMEOUT_MS");
    setenv("NEXTUP_SERVICE_PAYMENTS_HOSTS", "pay ments", 1);
    expect_config_error("NEXTUP_SERVICE_PAYMENTS_HOSTS=\"pay ments\"", NULL);
    setenv("NEXTUP_SERVICE_PAYMENTS_HOSTS", "payments:0", 1);
    expect_config_error("NEXTUP_SERVICE_PAYMENTS_HOSTS=\"payments:0\"", "port");
    setenv("NEXTUP_SERVICE_PAYMENTS_HOSTS", "orders", 1);
    expect_config_error("NEXTUP_SERVICE_ORDERS_HOSTS (default: orders)",
                        "NEXTUP_SERVICE_PAYMENTS_HOSTS=\"orders\" both select \"orders\"");
    /* the same host through a namespace form */
    setenv("NEXTUP_NAMESPACE", "shop", 1);
    setenv("NEXTUP_SERVICE_PAYMENTS_HOSTS", "payments,orders.shop.svc", 1);
    expect_config_error("NEXTUP_SERVICE_ORDERS_HOSTS", "orders.shop.svc");
    unsetenv("NEXTUP_SERVICE_PAYMENTS_HOSTS");
    setenv("NEXTUP_NAMESPACE", "Shop", 1);
    expect_config_error("NEXTUP_NAMESPACE=\"Shop\"", NULL);
    unsetenv("NEXTUP_NAMESPACE");

    setenv("NEXTUP_DEFAULT_SERVICE", "billing", 1);
    expect_config_error("NEXTUP_DEFAULT_SERVICE=\"billing\": not one of NEXTUP_SERVICES", NULL);
    unsetenv("NEXTUP_DEFAULT_SERVICE");

    /* a typo in a service's variable names the nearest; a service not listed is no service */
    setenv("NEXTUP_SERVICE_PAYMENTS_MAX_RETRY", "1", 1);
    expect_config_error("unknown variable", "NEXTUP_SERVICE_PAYMENTS_MAX_RETRIES");
    unsetenv("NEXTUP_SERVICE_PAYMENTS_MAX_RETRY");
    setenv("NEXTUP_SERVICE_PAYMENT_UPSTREAMS", "10.0.0.3:80", 1);
    expect_config_error("NEXTUP_SERVICE_PAYMENT_UPSTREAMS=\"10.0.0.3:80\": unknown variable",
                        "NEXTUP_SERVICE_PAYMENTS_UPSTREAMS");
    unsetenv("NEXTUP_SERVICE_PAYMENT_UPSTREAMS");
    /* Kubernetes' service links of a Service named nextup still pass */
    setenv("NEXTUP_SERVICE_HOST", "10.96.0.1", 1);
    setenv("NEXTUP_SERVICE_PORT", "15001", 1);
    assert_int_equal(config_from_env(&cfg, err, sizeof(err)), 0);

    setup(NULL);
    setenv("NEXTUP_UPSTREAMS", "10.0.0.1:80", 1);
    setenv("NEXTUP_SERVICE_ORDERS_UPSTREAMS", "10.0.0.1:80", 1);
    expect_config_error("NEXTUP_SERVICE_ORDERS_UPSTREAMS", "NEXTUP_SERVICES lists, and it is not set");
    setup(NULL);
    setenv("NEXTUP_UPSTREAMS", "10.0.0.1:80", 1);
    setenv("NEXTUP_DEFAULT_SERVICE", "orders", 1);
    expect_config_error("NEXTUP_DEFAULT_SERVICE=\"orders\"", "without NEXTUP_SERVICES");
    setenv("NEXTUP_DEFAULT_SERVICE", "default", 1);
    assert_int_equal(config_from_env(&cfg, err, sizeof(err)), 0);
}

static void test_service_name_to_variables(void **state)
{
    struct services *s;

    (void)state;
    setenv("NEXTUP_SERVICES", " shop-api , 2fa ", 1);
    setenv("NEXTUP_SERVICE_SHOP_API_UPSTREAMS", "10.0.0.1:80", 1);
    setenv("NEXTUP_SERVICE_2FA_UPSTREAMS", "10.0.0.2:80", 1);
    setenv("NEXTUP_SERVICE_SHOP_API_MAX_RETRIES", "5", 1);
    s = build();
    assert_string_equal(s->svc[0].name, "shop-api");
    assert_string_equal(s->svc[1].name, "2fa");
    assert_string_equal(cfg.services[0].var_prefix, "NEXTUP_SERVICE_SHOP_API_");
    assert_int_equal(s->svc[0].retry->policy.max_retries, 5);
    assert_string_equal(routed(s, "shop-api"), "shop-api");
    assert_string_equal(routed(s, "2fa:8080"), "2fa");
    services_free(s);
}

static void test_parse_target(void **state)
{
    static const struct {
        const char *t;
        enum target_form form;
        const char *scheme, *authority, *path;
        int http, slash;
    } cases[] = {
        { "/p?q=1", TARGET_ORIGIN, NULL, NULL, "/p?q=1", 0, 0 },
        { "http://payments:8080/path?q", TARGET_ABSOLUTE, "http", "payments:8080", "/path?q", 1, 0 },
        { "HTTP://Payments.Shop/", TARGET_ABSOLUTE, "HTTP", "Payments.Shop", "/", 1, 0 },
        { "http://payments", TARGET_ABSOLUTE, "http", "payments", "", 1, 1 },
        { "http://payments?x=1", TARGET_ABSOLUTE, "http", "payments", "?x=1", 1, 1 },
        { "http://[::1]:8080/x", TARGET_ABSOLUTE, "http", "[::1]:8080", "/x", 1, 0 },
        { "https://payments/x", TARGET_ABSOLUTE, "https", "payments", "/x", 0, 0 },
        { "ftp://files/x", TARGET_ABSOLUTE, "ftp", "files", "/x", 0, 0 },
        { "payments:443", TARGET_AUTHORITY, NULL, "payments:443", NULL, 0, 0 },
        { "*", TARGET_ASTERISK, NULL, NULL, NULL, 0, 0 },
    };
    static const struct { const char *t, *why; } bad[] = {
        { "", "empty request-target" },
        { "http://", "empty authority" },
        { "http:///x", "empty authority" },
        { "http:/x", "no // after the scheme" },
        { "http://user:pw@payments/x", "userinfo" },
        { "http://payments/x#frag", "fragment" },
        { "http://pay ments/", "bad host or port" },
        { "http://payments:99999/", "bad host or port" },
        { "http://::1/", "bad host or port" },
        { "payments", "not a request-target" },
        { "1http://x/", "not a request-target" },
    };
    struct request_target rt;

    (void)state;
    for (size_t i = 0; i < N(cases); i++) {
        assert_int_equal(service_parse_target(cases[i].t, strlen(cases[i].t), &rt), 0);
        assert_int_equal(rt.form, cases[i].form);
        if (cases[i].scheme)
            assert_true(rt.scheme_len == strlen(cases[i].scheme) && memcmp(rt.scheme, cases[i].scheme, rt.scheme_len) == 0);
        else
            assert_null(rt.scheme);
        if (cases[i].authority)
            assert_true(rt.authority_len == strlen(cases[i].authority) &&
                        memcmp(rt.authority, cases[i].authority, rt.authority_len) == 0);
        else
            assert_null(rt.authority);
        if (cases[i].path)
            assert_true(rt.path_len == strlen(cases[i].path) && memcmp(rt.path, cases[i].path, rt.path_len) == 0);
        assert_int_equal(rt.scheme_is_http, cases[i].http);
        assert_int_equal(rt.path_slash, cases[i].slash);
    }
    for (size_t i = 0; i < N(bad); i++) {
        assert_int_equal(service_parse_target(bad[i].t, strlen(bad[i].t), &rt), -EINVAL);
        assert_int_equal(rt.form, TARGET_BAD);
        if (!strstr(rt.why, bad[i].why))
            print_error("\"%s\": %s\n", bad[i].t, rt.why);
        assert_non_null(strstr(rt.why, bad[i].why));
    }
}

/* The absolute-form authority routes like a Host. */
static void test_absolute_form_routes(void **state)
{
    static const char t[] = "http://payments.shop.svc.cluster.local:8080/pay?x=1";
    struct request_target rt;
    struct services *s;

    (void)state;
    three_services();
    s = build();
    assert_int_equal(service_parse_target(t, strlen(t), &rt), 0);
    assert_string_equal(services_route(s, rt.authority, rt.authority_len)->name, "payments");
    services_free(s);
}

/* Every lookup's probes and key comparisons, over every form of every service of an <n>-service table. */
static void lookup_cost(int n, double *avg_probes, unsigned *max_probes, unsigned *max_compares)
{
    static char list[CONFIG_MAX_SERVICES * 8];
    struct services *s;
    unsigned total = 0, lookups = 0;
    size_t off = 0;

    setup(NULL);
    for (int i = 0; i < n; i++) {
        char var[64], val[32];
        off += (size_t)snprintf(list + off, sizeof(list) - off, "%ss%d", i ? "," : "", i);
        snprintf(var, sizeof(var), "NEXTUP_SERVICE_S%d_UPSTREAMS", i);
        snprintf(val, sizeof(val), "10.1.%d.%d:8080", i / 250, i % 250 + 1);
        setenv(var, val, 1);
    }
    setenv("NEXTUP_SERVICES", list, 1);
    setenv("NEXTUP_NAMESPACE", "shop", 1);
    s = build();
    assert_int_equal(s->n, n);
    *max_probes = *max_compares = 0;
    for (int i = 0; i < n; i++) {
        static const char *const forms[] = { "s%d", "s%d.shop:8080", "s%d.shop.svc", "s%d.shop.svc.cluster.local",
                                             "s%d.unknown" };
        for (size_t f = 0; f < N(forms); f++) {
            char a[80], want[16];
            unsigned probes = 0, compares = 0;
            const struct service *svc;
            /* format from a table: every form is a literal above */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
            snprintf(a, sizeof(a), forms[f], i);
#pragma GCC diagnostic pop
            snprintf(want, sizeof(want), "s%d", i);
            svc = services_route_counted(s, a, strlen(a), &probes, &compares);
            if (f < 4) {
                assert_non_null(svc);
                assert_string_equal(svc->name, want);
            } else {
                assert_null(svc);
            }
            total += probes;
            lookups++;
            if (probes > *max_probes)
                *max_probes = probes;
            if (compares > *max_compares)
                *max_compares = compares;
        }
    }
    *avg_probes = (double)total / lookups;
    services_free(s);
}

static void test_lookup_cost_independent_of_n(void **state)
{
    double avg2, avg200;
    unsigned max2, max200, cmp2, cmp200;

    (void)state;
    lookup_cost(2, &avg2, &max2, &cmp2);
    lookup_cost(200, &avg200, &max200, &cmp200);
    print_message("2 services: %.2f slots a lookup (most %u), 200 services: %.2f (most %u); keys compared at most "
                  "%u and %u\n", avg2, max2, avg200, max200, cmp2, cmp200);
    /* Two probe sequences a lookup (host:port, then host), each a short chain: a list would walk
     * 800 keys. A key comparison only where the 64-bit hashes agree: one per hit. */
    assert_true(avg200 <= 5.0);
    assert_true(avg200 <= avg2 + 2.0);
    assert_true(max200 <= 24);
    assert_true(cmp200 <= 1);
    assert_true(cmp2 <= 1);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup(f, setup)
    const struct CMUnitTest tests[] = {
        T(test_normalize),
        T(test_host_forms),
        T(test_default_service),
        T(test_no_namespace_short_names_only),
        T(test_namespace_file),
        T(test_single_upstreams_service),
        T(test_per_service_settings),
        T(test_config_errors),
        T(test_service_name_to_variables),
        T(test_parse_target),
        T(test_absolute_form_routes),
        T(test_lookup_cost_independent_of_n),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
