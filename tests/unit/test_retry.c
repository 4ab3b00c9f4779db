/* Unit tests for sidecar/retry.c: NEXTUP_RETRY_ON / NEXTUP_RETRY_METHODS
 * parsing, the status rule, the whole retry_decide() table against an
 * independent oracle, budget arithmetic over the 10 s window, and backoff bounds. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include <llhttp.h>

#include "retry.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))

#define ALL_ON (RETRY_ON_CONNECT_FAILURE | RETRY_ON_REFUSED | RETRY_ON_RESET | RETRY_ON_TIMEOUT | \
                RETRY_ON_GATEWAY_ERROR | RETRY_ON_5XX)

static struct retry_policy pol;
static char bad[64];

static int setup(void **state)
{
    (void)state;
    memset(&pol, 0xa5, sizeof(pol));
    memset(bad, 'X', sizeof(bad) - 1);
    bad[sizeof(bad) - 1] = '\0';
    return 0;
}

static int status_bit(const struct retry_policy *p, int code)
{
    return (int)((p->on_status[code / 64] >> (code % 64)) & 1);
}

static int status_bits_set(const struct retry_policy *p)
{
    int n = 0;
    for (size_t i = 0; i < N(p->on_status); i++)
        n += __builtin_popcountll(p->on_status[i]);
    return n;
}

static void parse_on_ok(const char *list)
{
    int rc = retry_parse_on(&pol, list, bad, sizeof(bad));
    if (rc != 0)
        print_error("retry_parse_on(\"%s\"): %d, bad \"%s\"\n", list, rc, bad);
    assert_int_equal(rc, 0);
}

static void parse_methods_ok(const char *list)
{
    int rc = retry_parse_methods(&pol, list, bad, sizeof(bad));
    if (rc != 0)
        print_error("retry_parse_methods(\"%s\"): %d, bad \"%s\"\n", list, rc, bad);
    assert_int_equal(rc, 0);
}

/* ---- retry_parse_on ---- */

static void test_parse_on_each_word(void **state)
{
    static const struct { const char *list; unsigned want; } cases[] = {
        /* connect-failure covers refusals, as Envoy's does; refused is the narrower word */
        { "connect-failure", RETRY_ON_CONNECT_FAILURE | RETRY_ON_REFUSED },
        { "refused", RETRY_ON_REFUSED },
        { "reset", RETRY_ON_RESET },
        { "timeout", RETRY_ON_TIMEOUT },
        { "gateway-error", RETRY_ON_GATEWAY_ERROR },
        { "5xx", RETRY_ON_5XX },
        /* case-insensitive */
        { "CONNECT-FAILURE", RETRY_ON_CONNECT_FAILURE | RETRY_ON_REFUSED },
        { "ReFuSeD", RETRY_ON_REFUSED },
        { "Reset", RETRY_ON_RESET },
        { "TIMEOUT", RETRY_ON_TIMEOUT },
        { "Gateway-Error", RETRY_ON_GATEWAY_ERROR },
        { "5XX", RETRY_ON_5XX },
        /* blanks around words */
        { "  reset", RETRY_ON_RESET },
        { "timeout \t", RETRY_ON_TIMEOUT },
        { " refused , reset ,\ttimeout ", RETRY_ON_REFUSED | RETRY_ON_RESET | RETRY_ON_TIMEOUT },
        { "connect-failure,refused,reset,timeout,gateway-error,5xx", ALL_ON },
        { "reset,reset", RETRY_ON_RESET },
        /* the empty list means no condition */
        { "", 0 },
    };
    (void)state;

    for (size_t i = 0; i < N(cases); i++) {
        setup(NULL);
        parse_on_ok(cases[i].list);
        if (pol.on != cases[i].want)
            print_error("\"%s\": on %#x, want %#x\n", cases[i].list, pol.on, cases[i].want);
        assert_int_equal(pol.on, cases[i].want);
        assert_int_equal(status_bits_set(&pol), 0);
    }
}

static void test_parse_on_codes(void **state)
{
    (void)state;

    parse_on_ok("503,429");
    assert_int_equal(pol.on, 0);
    assert_int_equal(status_bits_set(&pol), 2);
    assert_int_equal(status_bit(&pol, 503), 1);
    assert_int_equal(status_bit(&pol, 429), 1);

    parse_on_ok(" 100 , 599 ,gateway-error");
    assert_int_equal(pol.on, RETRY_ON_GATEWAY_ERROR);
    assert_int_equal(status_bits_set(&pol), 2);
    assert_int_equal(status_bit(&pol, 100), 1);
    assert_int_equal(status_bit(&pol, 599), 1);
    /* a new parse forgets the old codes (503, 429) */
    assert_int_equal(status_bit(&pol, 503), 0);
    assert_int_equal(status_bit(&pol, 429), 0);

    /* codes at every 64-bit word boundary land in the right bit */
    parse_on_ok("127,128,191,192,255,256,319,320,383,384,447,448,511,512,575,576");
    assert_int_equal(status_bits_set(&pol), 16);
    assert_int_equal(status_bit(&pol, 127), 1);
    assert_int_equal(status_bit(&pol, 128), 1);
    assert_int_equal(status_bit(&pol, 576), 1);
    assert_int_equal(status_bit(&pol, 129), 0);
}

static void test_parse_on_keeps_methods(void **state)
{
    (void)state;

    pol.methods = 0x1234;
    parse_on_ok("reset");
    assert_int_equal(pol.methods, 0x1234);
}

static void test_parse_on_errors(void **state)
{
    static const struct { const char *list, *bad; } cases[] = {
        { "bogus", "bogus" },
        { "reset,bogus,timeout", "bogus" },
        { " reset ,  nope  ", "nope" },
        { "gateway_error", "gateway_error" },
        { "connect-failures", "connect-failures" },
        { "600", "600" },
        { "99", "99" },
        { "099", "099" },
        { "1000", "1000" },
        { "50x", "50x" },
        { "5x", "5x" },
        { "-50", "-50" },
        { "5 03", "5 03" },
        { "reset,,timeout", "" },
        { "reset,", "" },
        { "reset, ", "" },
        { ",reset", "" },
        { " ", "" },
        { ",", "" },
    };
    (void)state;

    for (size_t i = 0; i < N(cases); i++) {
        setup(NULL);
        int rc = retry_parse_on(&pol, cases[i].list, bad, sizeof(bad));
        if (rc != -EINVAL || strcmp(bad, cases[i].bad) != 0)
            print_error("\"%s\": rc %d bad \"%s\", want -EINVAL \"%s\"\n", cases[i].list, rc, bad, cases[i].bad);
        assert_int_equal(rc, -EINVAL);
        assert_string_equal(bad, cases[i].bad);
    }

    /* the first bad word is the one reported */
    setup(NULL);
    assert_int_equal(retry_parse_on(&pol, "a,,b", bad, sizeof(bad)), -EINVAL);
    assert_string_equal(bad, "a");

    /* <bad> is bounded by badlen */
    setup(NULL);
    assert_int_equal(retry_parse_on(&pol, "reset,abcdefgh", bad, 4), -EINVAL);
    assert_string_equal(bad, "abc");
    assert_int_equal(bad[4], 'X');
}

/* ---- retry_parse_methods ---- */

static void test_parse_methods(void **state)
{
    (void)state;

    parse_methods_ok("GET,PUT");
    assert_int_equal(pol.methods, (1ull << HTTP_GET) | (1ull << HTTP_PUT));

    parse_methods_ok("GET,HEAD,OPTIONS,TRACE,PUT,DELETE");
    assert_int_equal(pol.methods, (1ull << HTTP_GET) | (1ull << HTTP_HEAD) | (1ull << HTTP_OPTIONS) |
                                  (1ull << HTTP_TRACE) | (1ull << HTTP_PUT) | (1ull << HTTP_DELETE));

    /* a new parse replaces the set */
    parse_methods_ok(" POST ,\tPATCH ");
    assert_int_equal(pol.methods, (1ull << HTTP_POST) | (1ull << HTTP_PATCH));

    parse_methods_ok("DELETE");
    assert_int_equal(pol.methods, 1ull << HTTP_DELETE);   /* method number 0 */

    parse_methods_ok("");
    assert_int_equal(pol.methods, 0);
}

static void test_parse_methods_keeps_on(void **state)
{
    (void)state;

    pol.on = RETRY_ON_RESET;
    parse_methods_ok("GET");
    assert_int_equal(pol.on, RETRY_ON_RESET);
}

static void test_parse_methods_errors(void **state)
{
    static const struct { const char *list, *bad; } cases[] = {
        { "get", "get" },
        { "GET,get", "get" },
        { "Get", "Get" },
        { "FETCH", "FETCH" },
        { "GET, FETCH ,PUT", "FETCH" },
        { "GETX", "GETX" },
        { "GE", "GE" },
        { "GET,,PUT", "" },
        { "GET,", "" },
    };
    (void)state;

    for (size_t i = 0; i < N(cases); i++) {
        setup(NULL);
        int rc = retry_parse_methods(&pol, cases[i].list, bad, sizeof(bad));
        if (rc != -EINVAL || strcmp(bad, cases[i].bad) != 0)
            print_error("\"%s\": rc %d bad \"%s\", want -EINVAL \"%s\"\n", cases[i].list, rc, bad, cases[i].bad);
        assert_int_equal(rc, -EINVAL);
        assert_string_equal(bad, cases[i].bad);
    }
}

/* ---- retry_status_matches ---- */

/* Every status from -1 to 1000 against <want>. */
static void check_statuses(const char *what, int (*want)(int))
{
    for (int s = -1; s <= 1000; s++) {
        int got = retry_status_matches(&pol, s);
        if (got != want(s))
            print_error("%s: status %d: got %d want %d\n", what, s, got, want(s));
        assert_int_equal(got, want(s));
    }
}

static int want_gateway(int s) { return s == 502 || s == 503 || s == 504; }
static int want_5xx(int s) { return s >= 500 && s <= 599; }
static int want_429(int s) { return s == 429; }
static int want_none(int s) { (void)s; return 0; }
static int want_gateway_429(int s) { return want_gateway(s) || s == 429; }

static void test_status_matches(void **state)
{
    (void)state;

    parse_on_ok("gateway-error");
    check_statuses("gateway-error", want_gateway);
    parse_on_ok("5xx");
    check_statuses("5xx", want_5xx);
    parse_on_ok("429");
    check_statuses("429", want_429);
    parse_on_ok("gateway-error,429");
    check_statuses("gateway-error,429", want_gateway_429);
    parse_on_ok("connect-failure,refused,reset,timeout");
    check_statuses("connection conditions only", want_none);
    parse_on_ok("");
    check_statuses("nothing", want_none);
}

/* ---- retry_decide ---- */

/* The rules of retry.h, written independently of retry.c: every reason that
 * applies is listed, and the first one in the stated order is the verdict. */
struct facts {
    enum retry_cause cause;
    int in_policy;          /* the cause's condition is in NEXTUP_RETRY_ON */
    int replayable;         /* the method is in NEXTUP_RETRY_METHODS */
    int key, whole, budget_ok, retries_done, max_retries;
};

static enum retry_verdict oracle(const struct facts *f)
{
    int reached_peer = !(f->cause == CAUSE_REFUSED || f->cause == CAUSE_CONNECT_FAILURE);
    /* For CAUSE_STATUS the decision hook has already applied the status rule
     * (a plugin may retry statuses NEXTUP_RETRY_ON does not name), so there is
     * no policy condition left to check. */
    int policy_applies = f->cause != CAUSE_STATUS;
    const struct { int fails; enum retry_verdict v; } reasons[] = {
        { policy_applies && !f->in_policy, RETRY_NO_POLICY },
        { f->retries_done >= f->max_retries, RETRY_NO_EXHAUSTED },
        { reached_peer && !f->replayable && !f->key, RETRY_NO_METHOD },
        { !f->whole, RETRY_NO_BUFFER },
        { reached_peer && !f->budget_ok, RETRY_NO_BUDGET },
    };

    for (size_t i = 0; i < N(reasons); i++)
        if (reasons[i].fails)
            return reasons[i].v;
    return RETRY_GO;
}

static unsigned cause_condition(enum retry_cause c)
{
    switch (c) {
    case CAUSE_REFUSED: return RETRY_ON_REFUSED;
    case CAUSE_CONNECT_FAILURE: return RETRY_ON_CONNECT_FAILURE;
    case CAUSE_RESET: return RETRY_ON_RESET;
    case CAUSE_TIMEOUT: return RETRY_ON_TIMEOUT;
    case CAUSE_STATUS: return RETRY_ON_GATEWAY_ERROR | RETRY_ON_5XX;
    }
    fail_msg("unknown cause %d", (int)c);
    return 0;
}

static const char *cause_name(enum retry_cause c)
{
    switch (c) {
    case CAUSE_REFUSED: return "refused";
    case CAUSE_CONNECT_FAILURE: return "connect-failure";
    case CAUSE_RESET: return "reset";
    case CAUSE_TIMEOUT: return "timeout";
    case CAUSE_STATUS: return "status";
    }
    return "?";
}

/* The default NEXTUP_RETRY_METHODS, by name, so the oracle does not read pol.methods. */
static int default_replayable(int method)
{
    switch (method) {
    case HTTP_GET: case HTTP_HEAD: case HTTP_OPTIONS: case HTTP_TRACE: case HTTP_PUT: case HTTP_DELETE:
        return 1;
    default:
        return 0;
    }
}

/* Runs retry_decide() on <f> with <method>, under the default methods. */
static enum retry_verdict run_decide(const struct facts *f, int method)
{
    struct retry_policy p;
    struct attempt a;
    char b[32];

    memset(&p, 0, sizeof(p));
    assert_int_equal(retry_parse_methods(&p, "GET,HEAD,OPTIONS,TRACE,PUT,DELETE", b, sizeof(b)), 0);
    p.on = f->in_policy ? cause_condition(f->cause) : (ALL_ON & ~cause_condition(f->cause));
    p.max_retries = f->max_retries;
    p.budget_percent = 20;
    p.budget_min_per_sec = 10;
    memset(&a, 0, sizeof(a));
    a.cause = f->cause;
    a.method = method;
    a.has_idempotency_key = f->key;
    a.buffer_whole = f->whole;
    a.retries_done = f->retries_done;
    a.budget_ok = f->budget_ok;
    return retry_decide(&p, &a);
}

static void test_decide_table(void **state)
{
    static const enum retry_cause causes[] = {
        CAUSE_REFUSED, CAUSE_CONNECT_FAILURE, CAUSE_RESET, CAUSE_TIMEOUT, CAUSE_STATUS,
    };
    /* replayable by default, not replayable, and numbers outside the bit set */
    static const int methods[] = { HTTP_GET, HTTP_DELETE, HTTP_PUT, HTTP_POST, HTTP_PATCH, HTTP_CONNECT, -1, 64, 1000 };
    static const int maxes[] = { 0, 1, 2 };
    int rows = 0, counts[RETRY_NO_BUDGET + 1] = { 0 };
    (void)state;

    for (size_t c = 0; c < N(causes); c++)
    for (size_t m = 0; m < N(methods); m++)
    for (int key = 0; key <= 1; key++)
    for (int whole = 0; whole <= 1; whole++)
    for (int budget_ok = 0; budget_ok <= 1; budget_ok++)
    for (size_t mx = 0; mx < N(maxes); mx++)
    for (int done = 0; done <= maxes[mx] + 1; done++)
    for (int in_policy = 0; in_policy <= 1; in_policy++) {
        struct facts f = {
            .cause = causes[c], .in_policy = in_policy, .replayable = default_replayable(methods[m]),
            .key = key, .whole = whole, .budget_ok = budget_ok, .retries_done = done,
            .max_retries = maxes[mx],
        };
        enum retry_verdict want = oracle(&f), got = run_decide(&f, methods[m]);
        if (got != want)
            print_error("cause %s method %d key %d whole %d budget_ok %d done %d/%d in_policy %d: "
                        "got %s want %s\n", cause_name(f.cause), methods[m], key, whole, budget_ok, done,
                        f.max_retries, in_policy, retry_verdict_name(got), retry_verdict_name(want));
        assert_int_equal(got, want);
        counts[want]++;
        rows++;
    }
    /* the table reaches every verdict */
    for (int v = RETRY_GO; v <= RETRY_NO_BUDGET; v++)
        assert_true(counts[v] > 0);
    assert_int_equal(rows, 5 * 9 * 2 * 2 * 2 * (2 + 3 + 4) * 2);
}

/* Hand-written rows: each checks both the oracle and retry_decide(), so a
 * mistake in the oracle cannot hide one in retry.c. */
static void test_decide_rows(void **state)
{
    static const struct { struct facts f; int method; enum retry_verdict want; } rows[] = {
        /* connect-time causes: any method, no key, no budget */
        { { CAUSE_REFUSED, 1, 0, 0, 1, 0, 0, 2 }, HTTP_POST, RETRY_GO },
        { { CAUSE_CONNECT_FAILURE, 1, 0, 0, 1, 0, 1, 2 }, HTTP_POST, RETRY_GO },
        { { CAUSE_REFUSED, 0, 1, 1, 1, 1, 0, 2 }, HTTP_GET, RETRY_NO_POLICY },
        { { CAUSE_CONNECT_FAILURE, 1, 1, 0, 1, 1, 2, 2 }, HTTP_GET, RETRY_NO_EXHAUSTED },
        { { CAUSE_REFUSED, 1, 0, 0, 0, 0, 0, 2 }, HTTP_POST, RETRY_NO_BUFFER },
        /* reached the peer: method or key, and budget */
        { { CAUSE_RESET, 1, 1, 0, 1, 1, 0, 2 }, HTTP_GET, RETRY_GO },
        { { CAUSE_RESET, 1, 0, 0, 1, 1, 0, 2 }, HTTP_POST, RETRY_NO_METHOD },
        { { CAUSE_RESET, 1, 0, 1, 1, 1, 0, 2 }, HTTP_POST, RETRY_GO },
        { { CAUSE_TIMEOUT, 1, 1, 0, 1, 0, 0, 2 }, HTTP_GET, RETRY_NO_BUDGET },
        { { CAUSE_TIMEOUT, 0, 1, 0, 1, 1, 0, 2 }, HTTP_GET, RETRY_NO_POLICY },
        { { CAUSE_STATUS, 0, 1, 0, 1, 1, 0, 2 }, HTTP_GET, RETRY_GO },
        { { CAUSE_STATUS, 1, 0, 0, 1, 1, 0, 2 }, HTTP_POST, RETRY_NO_METHOD },
        { { CAUSE_STATUS, 1, 0, 1, 1, 0, 0, 2 }, HTTP_POST, RETRY_NO_BUDGET },
        /* order: policy before exhausted before method before buffer before budget */
        { { CAUSE_RESET, 0, 0, 0, 0, 0, 5, 2 }, HTTP_POST, RETRY_NO_POLICY },
        { { CAUSE_RESET, 1, 0, 0, 0, 0, 2, 2 }, HTTP_POST, RETRY_NO_EXHAUSTED },
        { { CAUSE_RESET, 1, 0, 0, 0, 0, 1, 2 }, HTTP_POST, RETRY_NO_METHOD },
        { { CAUSE_RESET, 1, 1, 0, 0, 0, 1, 2 }, HTTP_GET, RETRY_NO_BUFFER },
        { { CAUSE_RESET, 1, 1, 0, 1, 0, 1, 2 }, HTTP_GET, RETRY_NO_BUDGET },
        /* max_retries 0: never */
        { { CAUSE_REFUSED, 1, 1, 1, 1, 1, 0, 0 }, HTTP_GET, RETRY_NO_EXHAUSTED },
    };
    (void)state;

    for (size_t i = 0; i < N(rows); i++) {
        enum retry_verdict o = oracle(&rows[i].f), got = run_decide(&rows[i].f, rows[i].method);
        if (o != rows[i].want || got != rows[i].want)
            print_error("row %zu (%s): oracle %s, retry_decide %s, want %s\n", i, cause_name(rows[i].f.cause),
                        retry_verdict_name(o), retry_verdict_name(got), retry_verdict_name(rows[i].want));
        assert_int_equal(o, rows[i].want);
        assert_int_equal(got, rows[i].want);
    }
}

static void test_verdict_names(void **state)
{
    (void)state;

    assert_string_equal(retry_verdict_name(RETRY_GO), "retry");
    assert_string_equal(retry_verdict_name(RETRY_NO_POLICY), "policy");
    assert_string_equal(retry_verdict_name(RETRY_NO_EXHAUSTED), "exhausted");
    assert_string_equal(retry_verdict_name(RETRY_NO_METHOD), "method");
    assert_string_equal(retry_verdict_name(RETRY_NO_BUFFER), "buffer");
    assert_string_equal(retry_verdict_name(RETRY_NO_BUDGET), "budget");
    assert_string_equal(retry_verdict_name((enum retry_verdict)99), "unknown");
    /* constant strings: the same pointer every time */
    assert_ptr_equal(retry_verdict_name(RETRY_NO_BUDGET), retry_verdict_name(RETRY_NO_BUDGET));
}

static void test_cause_reached_peer(void **state)
{
    (void)state;

    assert_int_equal(retry_cause_reached_peer(CAUSE_REFUSED), 0);
    assert_int_equal(retry_cause_reached_peer(CAUSE_CONNECT_FAILURE), 0);
    assert_int_equal(retry_cause_reached_peer(CAUSE_RESET), 1);
    assert_int_equal(retry_cause_reached_peer(CAUSE_TIMEOUT), 1);
    assert_int_equal(retry_cause_reached_peer(CAUSE_STATUS), 1);
}

/* ---- budget ---- */

static struct retry_budget budget;

static void budget_policy(int percent, int min_per_sec)
{
    memset(&pol, 0, sizeof(pol));
    pol.budget_percent = percent;
    pol.budget_min_per_sec = min_per_sec;
    retry_budget_init(&budget);
}

static void note(int n, int64_t t)
{
    for (int i = 0; i < n; i++)
        retry_budget_note_request(&budget, t);
}

/* Takes retries at <t> until refused (at most <limit> + 1 tries); returns how many were granted. */
static int take_all(int64_t t, int limit)
{
    int granted = 0;
    while (granted <= limit && retry_budget_try_take(&budget, &pol, t))
        granted++;
    return granted;
}

static void test_budget_percent(void **state)
{
    (void)state;

    budget_policy(20, 0);
    assert_int_equal(retry_budget_try_take(&budget, &pol, 0), 0);   /* nothing yet */
    note(100, 0);
    for (int i = 0; i < 20; i++)
        assert_int_equal(retry_budget_try_take(&budget, &pol, 0), 1);
    assert_int_equal(retry_budget_try_take(&budget, &pol, 0), 0);
    assert_int_equal(retry_budget_try_take(&budget, &pol, 0), 0);
    /* five more requests: one more retry */
    note(5, 0);
    assert_int_equal(retry_budget_try_take(&budget, &pol, 0), 1);
    assert_int_equal(retry_budget_try_take(&budget, &pol, 0), 0);
}

static void test_budget_percent_spread(void **state)
{
    (void)state;

    /* requests and retries in different seconds of one window add up */
    budget_policy(20, 0);
    note(50, 100);
    note(50, 105);
    assert_int_equal(take_all(107, 1000), 20);
    assert_int_equal(retry_budget_try_take(&budget, &pol, 109), 0);
    /* at 110 the requests of second 100 leave the window, the retries of 107 do not */
    note(0, 110);
    assert_int_equal(retry_budget_try_take(&budget, &pol, 110), 0);
    note(50, 110);
    /* 100 requests in window -> 20, all 20 already taken in 107 */
    assert_int_equal(retry_budget_try_take(&budget, &pol, 110), 0);
    /* at 115 the requests of 105 leave: 50 requests (110) -> 10, still 20 taken in 107 */
    assert_int_equal(retry_budget_try_take(&budget, &pol, 115), 0);
    /* at 117 the retries of 107 leave too: 50 requests (110) -> 10 */
    assert_int_equal(take_all(117, 1000), 10);
}

static void test_budget_min_per_sec(void **state)
{
    (void)state;

    budget_policy(20, 10);
    assert_int_equal(take_all(0, 1000), 100);
    assert_int_equal(retry_budget_try_take(&budget, &pol, 9), 0);

    /* spread over the window: still 100 in any 10 s */
    budget_policy(0, 10);
    for (int64_t t = 1000; t < 1010; t++)
        assert_int_equal(take_all(t, 1000), t == 1000 ? 100 : 0);
    /* second 1000 leaves the window at 1010 and frees its 100 */
    assert_int_equal(take_all(1010, 1000), 100);
}

static void test_budget_requests_expire(void **state)
{
    (void)state;

    budget_policy(20, 0);
    note(100, 0);
    assert_int_equal(take_all(9, 1000), 20);   /* second 0 is still in (-1, 9] */

    budget_policy(20, 0);
    note(100, 0);
    assert_int_equal(retry_budget_try_take(&budget, &pol, 10), 0);

    /* a later second that does not reuse bucket 0 must not count second 0 either */
    for (int64_t t = 11; t <= 25; t++) {
        budget_policy(20, 0);
        note(100, 0);
        if (retry_budget_try_take(&budget, &pol, t) != 0)
            print_error("requests of second 0 still count at %lld\n", (long long)t);
        assert_int_equal(retry_budget_try_take(&budget, &pol, t), 0);
    }
}

static void test_budget_retries_expire(void **state)
{
    (void)state;

    budget_policy(0, 1);    /* 10 per window */
    assert_int_equal(take_all(0, 100), 10);
    assert_int_equal(retry_budget_try_take(&budget, &pol, 5), 0);
    assert_int_equal(retry_budget_try_take(&budget, &pol, 9), 0);
    /* at 11 (bucket 1, not bucket 0) the retries of second 0 are out of the window */
    assert_int_equal(take_all(11, 100), 10);

    budget_policy(0, 1);
    assert_int_equal(take_all(0, 100), 10);
    assert_int_equal(take_all(10, 100), 10);   /* bucket 0 reused */
}

static void test_budget_bucket_reuse(void **state)
{
    (void)state;

    budget_policy(20, 0);
    note(100, 3);
    assert_int_equal(take_all(3, 1000), 20);
    assert_int_equal((int64_t)atomic_load(&budget.bucket[3].second), 3);
    assert_int_equal(atomic_load(&budget.bucket[3].requests), 100);
    assert_int_equal(atomic_load(&budget.bucket[3].retries), 20);

    /* 13 shares bucket 3 with 3: it starts from zero */
    note(1, 13);
    assert_int_equal((int64_t)atomic_load(&budget.bucket[3].second), 13);
    assert_int_equal(atomic_load(&budget.bucket[3].requests), 1);
    assert_int_equal(atomic_load(&budget.bucket[3].retries), 0);
    /* one request at 20% is no whole retry */
    assert_int_equal(retry_budget_try_take(&budget, &pol, 13), 0);
    note(4, 13);
    assert_int_equal(take_all(13, 1000), 1);
    assert_int_equal(atomic_load(&budget.bucket[3].retries), 1);

    /* try_take alone also resets a stale bucket before counting into it */
    budget_policy(0, 1);
    assert_int_equal(take_all(4, 100), 10);
    assert_int_equal(take_all(24, 100), 10);
    assert_int_equal((int64_t)atomic_load(&budget.bucket[4].second), 24);
    assert_int_equal(atomic_load(&budget.bucket[4].retries), 10);
}

static void test_budget_init(void **state)
{
    (void)state;

    memset(&budget, 0x5a, sizeof(budget));
    budget_policy(0, 0);
    for (int i = 0; i < RETRY_BUDGET_WINDOW; i++) {
        assert_int_equal(atomic_load(&budget.bucket[i].requests), 0);
        assert_int_equal(atomic_load(&budget.bucket[i].retries), 0);
    }
    /* nothing allowed without requests or a floor */
    assert_int_equal(retry_budget_try_take(&budget, &pol, 0), 0);
    assert_int_equal(retry_budget_try_take(&budget, &pol, 123456789), 0);
}

/* ---- backoff ---- */

static uint64_t xorshift(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void backoff_policy(int base, int max)
{
    memset(&pol, 0, sizeof(pol));
    pol.backoff_base_ms = base;
    pol.backoff_max_ms = max;
}

/* min(max, base * 2^(retry-1)), computed in floating point so it cannot overflow like the code might */
static int64_t backoff_cap(int base, int max, int retry)
{
    double c = (double)base;
    for (int i = 1; i < retry; i++)
        c *= 2;
    return c > (double)max ? max : (int64_t)c;
}

static void check_backoff_bounds(int base, int max)
{
    uint64_t seed = 0x9e3779b97f4a7c15ull;

    backoff_policy(base, max);
    for (int retry = 1; retry <= 40; retry++) {
        int64_t cap = backoff_cap(base, max, retry);
        int lo = INT_MAX, hi = -1;
        for (int i = 0; i < 20000; i++) {
            int d = retry_backoff_ms(&pol, retry, xorshift(&seed));
            if (d < 0 || d > cap)
                print_error("base %d max %d retry %d: %d outside [0, %lld]\n", base, max, retry, d, (long long)cap);
            assert_true(d >= 0 && d <= cap);
            if (d < lo) lo = d;
            if (d > hi) hi = d;
        }
        /* both ends of the range are reachable */
        assert_int_equal(retry_backoff_ms(&pol, retry, 0), 0);
        assert_int_equal(retry_backoff_ms(&pol, retry, (uint64_t)cap), cap);
        assert_true(retry_backoff_ms(&pol, retry, UINT64_MAX) <= cap);
        /* small ranges are covered end to end by the random draws */
        if (cap <= 100) {
            assert_int_equal(lo, 0);
            assert_int_equal(hi, cap);
        }
    }
}

static void test_backoff_bounds(void **state)
{
    (void)state;

    check_backoff_bounds(25, 250);
    check_backoff_bounds(1, 1);
    check_backoff_bounds(100, 50);      /* base above max: max wins from the first retry */
    check_backoff_bounds(7, 1000);
    check_backoff_bounds(INT_MAX / 2 + 1, INT_MAX);
}

static void test_backoff_exact_caps(void **state)
{
    static const int caps[] = { 25, 50, 100, 200, 250, 250, 250 };
    (void)state;

    backoff_policy(25, 250);
    for (int retry = 1; retry <= (int)N(caps); retry++) {
        assert_int_equal(retry_backoff_ms(&pol, retry, (uint64_t)caps[retry - 1]), caps[retry - 1]);
        /* one above the cap wraps to 0 */
        assert_int_equal(retry_backoff_ms(&pol, retry, (uint64_t)caps[retry - 1] + 1), 0);
    }
    assert_int_equal(retry_backoff_ms(&pol, 1000, 250), 250);
    assert_int_equal(retry_backoff_ms(&pol, INT_MAX, 250), 250);
}

static void test_backoff_zero(void **state)
{
    static const uint64_t rands[] = { 0, 1, 24, 25, 250, 12345, UINT64_MAX };
    (void)state;

    for (size_t i = 0; i < N(rands); i++)
        for (int retry = 1; retry <= 5; retry++) {
            backoff_policy(0, 250);
            assert_int_equal(retry_backoff_ms(&pol, retry, rands[i]), 0);
            backoff_policy(25, 0);
            assert_int_equal(retry_backoff_ms(&pol, retry, rands[i]), 0);
            backoff_policy(0, 0);
            assert_int_equal(retry_backoff_ms(&pol, retry, rands[i]), 0);
        }
}

/* The retry buffer rule: replayable while head and body, as forwarded, fit. */
static void test_buffer_fits(void **state)
{
    (void)state;
    assert_true(retry_buffer_fits(0, 0, 0));
    assert_true(retry_buffer_fits(0, 65536, 65536));        /* exactly full still fits */
    assert_false(retry_buffer_fits(0, 65537, 65536));
    assert_true(retry_buffer_fits(65000, 536, 65536));
    assert_false(retry_buffer_fits(65000, 537, 65536));
    assert_false(retry_buffer_fits(1, 0, 0));               /* NEXTUP_RETRY_BUFFER_BYTES=0: nothing kept */
    assert_false(retry_buffer_fits(10, UINT64_MAX - 5, 100)); /* no wrap-around */
    assert_false(retry_buffer_fits(200, 0, 100));
}


/* ---- retry_classify / retry_decide_budgeted ---- */

static struct failure_facts facts(enum upstream_failure kind, int reused, int connected, int started, int unacked)
{
    struct failure_facts f = { kind, reused, connected, started, unacked, 0 };
    return f;
}

static void test_classify_connect_kinds(void **state)
{
    struct failure_facts f;
    struct failure_class c;

    (void)state;
    f = facts(UPF_REFUSED, 0, 0, 0, 1);
    c = retry_classify(&f, 1, 0);
    assert_int_equal(c.cause, CAUSE_REFUSED);
    assert_false(c.resend_same_peer || c.never_retried || c.proved_unsent);
    for (enum upstream_failure k = UPF_CONNECT_TIMEOUT; k <= UPF_TLS; k++) {
        if (k != UPF_CONNECT_TIMEOUT && k != UPF_CONNECT_ERROR && k != UPF_TLS)
            continue;
        f = facts(k, 0, 0, 0, 1);
        c = retry_classify(&f, 1, 0);
        assert_int_equal(c.cause, CAUSE_CONNECT_FAILURE);
    }
    f = facts(UPF_TRY_TIMEOUT, 0, 1, 0, 0);
    assert_int_equal(retry_classify(&f, 1, 0).cause, CAUSE_TIMEOUT);
    f = facts(UPF_BAD_RESPONSE, 0, 1, 1, 0);
    c = retry_classify(&f, 1, 0);
    assert_true(c.never_retried);
}

/* A pooled connection closed with nothing acknowledged: resent once on the
 * same peer; not when a response began, the body is gone, or already resent. */
static void test_classify_keepalive_race(void **state)
{
    struct failure_facts f = facts(UPF_CLOSED, 1, 1, 0, 1);
    struct failure_class c;

    (void)state;
    c = retry_classify(&f, 1, 0);
    assert_true(c.resend_same_peer);
    c = retry_classify(&f, 1, 1);
    assert_false(c.resend_same_peer);
    /* Second time: the kernel's proof still makes it a connect failure. */
    assert_int_equal(c.cause, CAUSE_CONNECT_FAILURE);
    assert_true(c.proved_unsent);
    c = retry_classify(&f, 0, 0);
    assert_false(c.resend_same_peer);
    f.response_started = 1;
    c = retry_classify(&f, 1, 0);
    assert_false(c.resend_same_peer);
    assert_int_equal(c.cause, CAUSE_RESET);
    f = facts(UPF_CLOSED, 0, 1, 0, 1);       /* a fresh connection: no race */
    c = retry_classify(&f, 1, 0);
    assert_false(c.resend_same_peer);
    assert_int_equal(c.cause, CAUSE_CONNECT_FAILURE);
    assert_true(c.proved_unsent);
    f = facts(UPF_CLOSED, 1, 1, 0, 0);       /* acknowledged: the peer had it */
    c = retry_classify(&f, 1, 0);
    assert_false(c.resend_same_peer || c.proved_unsent);
    assert_int_equal(c.cause, CAUSE_RESET);
}

static void test_failure_status(void **state)
{
    const char *reason = NULL;

    (void)state;
    assert_int_equal(upstream_failure_status(UPF_CONNECT_TIMEOUT, &reason), 504);
    assert_int_equal(upstream_failure_status(UPF_TRY_TIMEOUT, &reason), 504);
    for (enum upstream_failure k = UPF_REFUSED; k < UPF_COUNT; k++) {
        int st = upstream_failure_status(k, &reason);
        assert_true(st == 502 || st == 504);
        assert_non_null(reason);
        assert_string_not_equal(upstream_failure_text(k), "failed");
    }
}

/* The budget is taken only for an allowed retry that reached a peer. */
static void test_decide_budgeted(void **state)
{
    struct retry_policy bp = { 0 };
    struct retry_budget b;
    struct attempt a = { .cause = CAUSE_RESET, .method = HTTP_GET, .buffer_whole = 1 };
    int i;

    (void)state;
    bp.on = RETRY_ON_RESET | RETRY_ON_CONNECT_FAILURE | RETRY_ON_REFUSED;
    bp.methods = 1ull << HTTP_GET;
    bp.max_retries = 5;
    bp.budget_percent = 0;
    bp.budget_min_per_sec = 0;
    retry_budget_init(&b);
    retry_budget_note_request(&b, 100);
    assert_int_equal(retry_decide_budgeted(&bp, &a, &b, 100), RETRY_NO_BUDGET);
    assert_false(a.budget_ok);
    a.cause = CAUSE_REFUSED;    /* never reached the peer: no budget needed */
    assert_int_equal(retry_decide_budgeted(&bp, &a, &b, 100), RETRY_GO);
    bp.budget_min_per_sec = 1; /* 10 retries over the window */
    a.cause = CAUSE_RESET;
    for (i = 0; i < 10; i++)
        assert_int_equal(retry_decide_budgeted(&bp, &a, &b, 100), RETRY_GO);
    assert_int_equal(retry_decide_budgeted(&bp, &a, &b, 100), RETRY_NO_BUDGET);
    a.method = HTTP_POST;        /* POST: refused by method, budget untouched */
    assert_int_equal(retry_decide_budgeted(&bp, &a, &b, 100), RETRY_NO_METHOD);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buffer_fits),
        cmocka_unit_test(test_classify_connect_kinds),
        cmocka_unit_test(test_classify_keepalive_race),
        cmocka_unit_test(test_failure_status),
        cmocka_unit_test(test_decide_budgeted),
        cmocka_unit_test_setup(test_parse_on_each_word, setup),
        cmocka_unit_test_setup(test_parse_on_codes, setup),
        cmocka_unit_test_setup(test_parse_on_keeps_methods, setup),
        cmocka_unit_test_setup(test_parse_on_errors, setup),
        cmocka_unit_test_setup(test_parse_methods, setup),
        cmocka_unit_test_setup(test_parse_methods_keeps_on, setup),
        cmocka_unit_test_setup(test_parse_methods_errors, setup),
        cmocka_unit_test_setup(test_status_matches, setup),
        cmocka_unit_test_setup(test_decide_table, setup),
        cmocka_unit_test_setup(test_decide_rows, setup),
        cmocka_unit_test_setup(test_verdict_names, setup),
        cmocka_unit_test_setup(test_cause_reached_peer, setup),
        cmocka_unit_test_setup(test_budget_percent, setup),
        cmocka_unit_test_setup(test_budget_percent_spread, setup),
        cmocka_unit_test_setup(test_budget_min_per_sec, setup),
        cmocka_unit_test_setup(test_budget_requests_expire, setup),
        cmocka_unit_test_setup(test_budget_retries_expire, setup),
        cmocka_unit_test_setup(test_budget_bucket_reuse, setup),
        cmocka_unit_test_setup(test_budget_init, setup),
        cmocka_unit_test_setup(test_backoff_bounds, setup),
        cmocka_unit_test_setup(test_backoff_exact_caps, setup),
        cmocka_unit_test_setup(test_backoff_zero, setup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
