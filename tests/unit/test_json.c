/* Unit tests for sidecar/json.c, sidecar/accesslog.c's line and sidecar/request_id.c: every
 * line valid UTF-8 JSON whatever the bytes, fields capped with a marker, ids well formed. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "accesslog.h"
#include "json.h"
#include "peers.h"
#include "request_id.h"

/* The lines <n> entries give, as access_log writes them to stdout (a temporary file here). */
static char *log_lines(const struct access_entry *e, int n, size_t *lenp)
{
    struct event_base *base = event_base_new();
    struct access_log *l;
    FILE *tmp = tmpfile();
    int saved = dup(STDOUT_FILENO);
    long len;
    char *out;

    assert_non_null(base);
    assert_non_null(tmp);
    assert_true(saved >= 0);
    assert_true(dup2(fileno(tmp), STDOUT_FILENO) >= 0);
    l = access_log_new(base, 1);
    assert_non_null(l);
    for (int i = 0; i < n; i++)
        access_log_write(l, &e[i]);
    access_log_free(l);   /* flushes */
    assert_true(dup2(saved, STDOUT_FILENO) >= 0);
    close(saved);
    event_base_free(base);
    len = lseek(fileno(tmp), 0, SEEK_END);
    assert_true(len > 0);
    out = malloc((size_t)len + 1);
    assert_non_null(out);
    assert_int_equal(pread(fileno(tmp), out, (size_t)len, 0), len);
    out[len] = '\0';
    fclose(tmp);
    *lenp = (size_t)len;
    return out;
}

static char *add_str(const char *s, size_t n, size_t cap)
{
    struct evbuffer *b = evbuffer_new();
    size_t len;
    char *out;

    assert_non_null(b);
    json_add_str(b, s, n, cap);
    len = evbuffer_get_length(b);
    out = malloc(len + 1);
    assert_non_null(out);
    evbuffer_remove(b, out, len);
    out[len] = '\0';
    evbuffer_free(b);
    return out;
}

/* A strict UTF-8 check (the same rules the escaper follows, written independently). */
static int valid_utf8(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i], need, cp, min;
        if (c < 0x80) { i++; continue; }
        if ((c & 0xe0) == 0xc0) { need = 1; cp = c & 0x1f; min = 0x80; }
        else if ((c & 0xf0) == 0xe0) { need = 2; cp = c & 0x0f; min = 0x800; }
        else if ((c & 0xf8) == 0xf0) { need = 3; cp = c & 0x07; min = 0x10000; }
        else return 0;
        for (unsigned k = 1; k <= need; k++) {
            if (i + k >= n || (s[i + k] & 0xc0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += need + 1;
    }
    return 1;
}

static void test_escapes(void **state)
{
    static const struct { const char *in; size_t n; const char *want; } cases[] = {
        { "plain", 5, "\"plain\"" },
        { "a\"b\\c", 5, "\"a\\\"b\\\\c\"" },
        { "\x01\n\x7f", 3, "\"\\u0001\\u000a\\u007f\"" },
        { "\0x", 2, "\"\\u0000x\"" },
        { "caf\xc3\xa9", 5, "\"caf\xc3\xa9\"" },                        /* valid 2-byte */
        { "\xe2\x82\xac\xf0\x9f\x98\x80", 7, "\"\xe2\x82\xac\xf0\x9f\x98\x80\"" }, /* 3- and 4-byte */
        { "\xff", 1, "\"" JSON_REPLACEMENT "\"" },
        { "\x80x", 2, "\"" JSON_REPLACEMENT "x\"" },                     /* stray continuation */
        { "\xc0\xaf", 2, "\"" JSON_REPLACEMENT JSON_REPLACEMENT "\"" },  /* overlong '/' */
        { "\xed\xa0\x80", 3, "\"" JSON_REPLACEMENT JSON_REPLACEMENT JSON_REPLACEMENT "\"" }, /* surrogate */
        { "\xf4\x90\x80\x80", 4, "\"" JSON_REPLACEMENT JSON_REPLACEMENT JSON_REPLACEMENT JSON_REPLACEMENT "\"" },
        { "\xe2\x82", 2, "\"" JSON_REPLACEMENT JSON_REPLACEMENT "\"" },  /* cut at the end */
    };
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *got = add_str(cases[i].in, cases[i].n, 256);
        if (strcmp(got, cases[i].want) != 0)
            print_error("case %zu: got %s want %s\n", i, got, cases[i].want);
        assert_string_equal(got, cases[i].want);
        free(got);
    }
}

static void test_cap_and_marker(void **state)
{
    size_t n = 1 << 20;
    char *big = malloc(n), *got;
    (void)state;

    assert_non_null(big);
    memset(big, 'a', n);
    got = add_str(big, n, 2048);
    assert_true(strlen(got) <= 2048 + 2);
    assert_non_null(strstr(got, "...[+"));
    /* the marker tells how many input bytes were left out */
    {
        size_t kept = (size_t)(strstr(got, "...[+") - got) - 1, left;
        assert_int_equal(sscanf(strstr(got, "...[+") + 5, "%zu", &left), 1);
        assert_int_equal(kept + left, n);
    }
    free(got);
    /* exactly at the cap: no marker */
    got = add_str(big, 100, 100);
    assert_int_equal(strlen(got), 102);
    assert_null(strstr(got, "..."));
    free(got);
    /* escapes are never split by the cap: control bytes are 6 each */
    memset(big, 1, 4096);
    got = add_str(big, 4096, 300);
    assert_true(strlen(got) <= 302);
    {
        char *m = strstr(got, "...[+");
        assert_non_null(m);
        assert_int_equal((size_t)(m - got - 1) % 6, 0);
    }
    free(got);
    free(big);
}

/* Random bytes, many times: always valid UTF-8, no raw control byte, within the cap. */
static void test_random_bytes(void **state)
{
    uint64_t rng = 0x1234567;
    unsigned char in[600];
    (void)state;

    for (int round = 0; round < 2000; round++) {
        size_t n = peers_rand(&rng) % sizeof(in);
        size_t cap = 64 + peers_rand(&rng) % 512;
        char *got;
        for (size_t i = 0; i < n; i++)
            in[i] = (unsigned char)peers_rand(&rng);
        got = add_str((const char *)in, n, cap);
        assert_true(strlen(got) <= cap + 2);
        assert_true(valid_utf8((const unsigned char *)got, strlen(got)));
        for (size_t i = 0; i < strlen(got); i++)
            assert_true((unsigned char)got[i] >= 0x20 && got[i] != 0x7f);
        free(got);
    }
}

static void test_access_line(void **state)
{
    struct access_entry e[2] = { ACCESS_ENTRY_INIT, ACCESS_ENTRY_INIT };
    static char path[70000];
    const char *retries[] = { "status_503", "refused" };
    size_t len;
    char *line, *second;
    (void)state;

    memset(path, '\xff', sizeof(path));
    e[0].start_unix_ms = 1700000000123;
    e[0].client = "10.0.0.1";
    e[0].method = "GET";
    e[0].path = path;
    e[0].path_len = sizeof(path);
    e[0].status = 431;
    e[0].upstream = "";
    e[0].retries = retries;
    e[0].n_retries = 2;
    e[0].host = "a\"\x01\xfe";
    e[0].host_len = 4;
    e[0].request_id = "abc";
    e[0].request_id_len = 3;
    e[0].protocol = "HTTP/1.1";
    e[0].request_bytes = 0;
    e[0].upstream_ms = 12;
    e[0].status_source = ACCESS_SOURCE_BAD_REQUEST;
    /* An entry that sets none of the new facts gives the line of before. */
    e[1].start_unix_ms = 1700000000123;
    e[1].client = "c";
    e[1].method = "GET";
    e[1].path = "/";
    e[1].path_len = 1;
    e[1].status = 200;
    e[1].upstream = "u";
    line = log_lines(e, 2, &len);
    second = strchr(line, '\n');
    assert_non_null(second);
    *second++ = '\0';
    assert_true(strlen(line) + 1 < ACCESS_LOG_MAX_LINE);
    assert_true(valid_utf8((unsigned char *)line, strlen(line)));
    assert_non_null(strstr(line, "\"host\":\"a\\\"\\u0001" JSON_REPLACEMENT "\""));
    assert_non_null(strstr(line, "\"request_id\":\"abc\""));
    assert_non_null(strstr(line, "\"protocol\":\"HTTP/1.1\""));
    assert_non_null(strstr(line, "\"request_bytes\":0,"));
    assert_non_null(strstr(line, "\"upstream_ms\":12,"));
    assert_non_null(strstr(line, "\"status_source\":\"nextup:bad_request\""));
    assert_null(strstr(line, "traceparent"));
    assert_non_null(strstr(line, " bytes]\""));
    assert_string_equal(second, "{\"time\":\"2023-11-14T22:13:20.123Z\",\"client\":\"c\",\"method\":\"GET\",\"path\":\"/\","
                                "\"status\":200,\"bytes\":0,\"duration_ms\":0,\"upstream\":\"u\",\"attempts\":0,"
                                "\"retries\":[]}\n");
    free(line);
}

static void test_status_source_names(void **state)
{
    (void)state;
    assert_null(access_status_source_name(ACCESS_SOURCE_UNSET));
    assert_null(access_status_source_name(ACCESS_SOURCE_COUNT));
    for (int i = ACCESS_SOURCE_UNSET + 1; i < ACCESS_SOURCE_COUNT; i++)
        assert_non_null(access_status_source_name((enum access_status_source)i));
    assert_string_equal(access_status_source_name(ACCESS_SOURCE_UPSTREAM), "upstream");
    assert_string_equal(access_status_source_name(ACCESS_SOURCE_TIMEOUT), "nextup:timeout");
}

static void test_request_id(void **state)
{
    uint64_t a = 1, b = 2;
    char x[REQUEST_ID_LEN + 1], y[REQUEST_ID_LEN + 1];
    (void)state;

    request_id_make(&a, x);
    request_id_make(&b, y);
    assert_int_equal(strlen(x), REQUEST_ID_LEN);
    assert_string_not_equal(x, y);
    assert_int_equal(x[8], '-');
    assert_int_equal(x[13], '-');
    assert_int_equal(x[14], '4');
    assert_non_null(strchr("89ab", x[19]));
    request_id_make(&a, y);
    assert_string_not_equal(x, y);   /* the generator moves on */

    assert_int_equal(request_id_decide(NULL, 0, 0), REQUEST_ID_MAKE);
    assert_int_equal(request_id_decide("abc-123", 7, 1), REQUEST_ID_KEEP);
    assert_int_equal(request_id_decide("abc", 3, 2), REQUEST_ID_REPLACE);
    assert_int_equal(request_id_decide("", 0, 1), REQUEST_ID_REPLACE);
    assert_int_equal(request_id_decide("a b", 3, 1), REQUEST_ID_REPLACE);
    assert_int_equal(request_id_decide("a\xff", 2, 1), REQUEST_ID_REPLACE);
    {
        char long_id[REQUEST_ID_MAX + 1];
        memset(long_id, 'a', sizeof(long_id));
        assert_int_equal(request_id_decide(long_id, REQUEST_ID_MAX, 1), REQUEST_ID_KEEP);
        assert_int_equal(request_id_decide(long_id, REQUEST_ID_MAX + 1, 1), REQUEST_ID_REPLACE);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_escapes),
        cmocka_unit_test(test_cap_and_marker),
        cmocka_unit_test(test_random_bytes),
        cmocka_unit_test(test_access_line),
        cmocka_unit_test(test_status_source_names),
        cmocka_unit_test(test_request_id),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
