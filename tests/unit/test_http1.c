/* Unit tests for sidecar/http1.c: heads collected from real llhttp callbacks
 * (whole and split across many llhttp_execute calls), lookups, limits,
 * hop-by-hop rules, request checks, the request and response heads nextup
 * writes, response framing and nextup's own error responses. Also pins down
 * which smuggling inputs llhttp itself rejects, since http1.c relies on it. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <llhttp.h>

#include "http1.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))
#define NO_LIMIT ((size_t)1 << 20)
#define CLIENT_IP "10.0.0.9"

/* One message through llhttp into a struct http_head, as sidecar/proxy.c does it. */
struct msg {
    llhttp_t parser;
    struct http_head head;
    size_t limit;        /* passed to the feeders */
    int feed_err;        /* first non-zero feeder result */
    int headers_done;
    int complete;
    char body[1024];
    size_t body_len;
};

static llhttp_settings_t settings;
static struct msg req, resp;
static struct evbuffer *out;

static struct msg *msg_of(llhttp_t *p)
{
    return p->data;
}

static int feed_result(struct msg *m, int r)
{
    if (r != 0 && m->feed_err == 0)
        m->feed_err = r;
    return r ? -1 : 0;
}

static int on_first(llhttp_t *p, const char *at, size_t len)
{
    struct msg *m = msg_of(p);
    return feed_result(m, http_head_add_first(&m->head, at, len, m->limit));
}

static int on_field(llhttp_t *p, const char *at, size_t len)
{
    struct msg *m = msg_of(p);
    return feed_result(m, http_head_add_field(&m->head, at, len, m->limit));
}

static int on_value(llhttp_t *p, const char *at, size_t len)
{
    struct msg *m = msg_of(p);
    return feed_result(m, http_head_add_value(&m->head, at, len, m->limit));
}

static int on_value_complete(llhttp_t *p)
{
    http_head_value_complete(&msg_of(p)->head);
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    struct msg *m = msg_of(p);

    http_head_take_parser_facts(&m->head, p);
    m->headers_done = 1;
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    struct msg *m = msg_of(p);
    if (m->body_len + len > sizeof(m->body))
        return -1;
    memcpy(m->body + m->body_len, at, len);
    m->body_len += len;
    return 0;
}

static int on_complete(llhttp_t *p)
{
    msg_of(p)->complete = 1;
    return 0;
}

static void msg_start(struct msg *m, enum llhttp_type type, size_t limit)
{
    http_head_reset(&m->head);
    m->limit = limit;
    m->feed_err = 0;
    m->headers_done = 0;
    m->complete = 0;
    m->body_len = 0;
    llhttp_init(&m->parser, type, &settings);
    m->parser.data = m;
}

/* Hands llhttp the bytes [<off>, <off>+<n>) of <text> in an allocation of their
 * own, as one socket read would deliver them, announced with http_head_chunk()
 * as sidecar/proxy.c's parse_evbuffer() does. */
static llhttp_errno_t feed_piece(struct msg *m, const char *text, size_t off, size_t n)
{
    char *piece = malloc(n ? n : 1);
    llhttp_errno_t e;

    assert_non_null(piece);
    memcpy(piece, text + off, n);
    http_head_chunk(&m->head, piece, off);
    e = llhttp_execute(&m->parser, piece, n);
    free(piece);
    return e;
}

/* Feeds <len> bytes, <step> at a time (0: all at once); returns llhttp's errno. */
static llhttp_errno_t msg_feed(struct msg *m, const char *text, size_t len, size_t step)
{
    size_t off = 0;

    if (step == 0)
        step = len;
    while (off < len) {
        size_t n = len - off < step ? len - off : step;
        llhttp_errno_t e = feed_piece(m, text, off, n);
        if (e != HPE_OK)
            return e;
        off += n;
    }
    return HPE_OK;
}

/* Feeds <text> cut into pieces ending at the ascending offsets <cuts>, then the rest. */
static llhttp_errno_t msg_feed_cut(struct msg *m, const char *text, const size_t *cuts, size_t ncuts)
{
    size_t off = 0, len = strlen(text), i;

    for (i = 0; i <= ncuts; i++) {
        size_t end = i < ncuts ? cuts[i] : len;
        llhttp_errno_t e;
        assert_true(end >= off && end <= len);
        e = feed_piece(m, text, off, end - off);
        if (e != HPE_OK)
            return e;
        off = end;
    }
    return HPE_OK;
}

static void parse_ok(struct msg *m, enum llhttp_type type, const char *text, size_t step)
{
    llhttp_errno_t e;

    msg_start(m, type, NO_LIMIT);
    e = msg_feed(m, text, strlen(text), step);
    /* CONNECT and Upgrade pause the parser after the head: that is success here. */
    if (e != HPE_OK && e != HPE_PAUSED_UPGRADE)
        print_error("llhttp: %s (%s) for:\n%s\n", llhttp_errno_name(e), llhttp_get_error_reason(&m->parser), text);
    assert_true(e == HPE_OK || e == HPE_PAUSED_UPGRADE);
    assert_int_equal(m->feed_err, 0);
    assert_true(m->headers_done);
}

static struct http_head *request(const char *text)
{
    parse_ok(&req, HTTP_REQUEST, text, 0);
    return &req.head;
}

static struct http_head *response(const char *text)
{
    parse_ok(&resp, HTTP_RESPONSE, text, 0);
    return &resp.head;
}

static int setup(void **state)
{
    (void)state;
    llhttp_settings_init(&settings);
    settings.on_url = on_first;
    settings.on_status = on_first;
    settings.on_header_field = on_field;
    settings.on_header_value = on_value;
    settings.on_header_value_complete = on_value_complete;
    settings.on_headers_complete = on_headers_complete;
    settings.on_body = on_body;
    settings.on_message_complete = on_complete;
    memset(&req, 0, sizeof(req));
    memset(&resp, 0, sizeof(resp));
    out = evbuffer_new();
    assert_non_null(out);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    http_head_free(&req.head);
    http_head_free(&resp.head);
    evbuffer_free(out);
    out = NULL;
    return 0;
}

/* The written bytes as a C string; call once, after the last write. */
static const char *out_text(void)
{
    const char *s;

    assert_int_equal(evbuffer_add(out, "", 1), 0);
    s = (const char *)evbuffer_pullup(out, -1);
    assert_non_null(s);
    return s;
}

/* Number of header lines named <name> (case-insensitive) in the head <text>;
 * the first one's value (after ": ") is copied to <value> if given. */
static int header_count(const char *text, const char *name, char *value, size_t valsz)
{
    size_t nlen = strlen(name);
    const char *line = strstr(text, "\r\n");
    int count = 0;

    if (value && valsz)
        value[0] = '\0';
    assert_non_null(line);
    line += 2;
    while (strncmp(line, "\r\n", 2) != 0) {
        const char *eol = strstr(line, "\r\n");
        assert_non_null(eol);
        if ((size_t)(eol - line) > nlen && strncasecmp(line, name, nlen) == 0 && line[nlen] == ':') {
            if (count == 0 && value) {
                const char *v = line + nlen + 1;
                size_t vlen;
                while (*v == ' ')
                    v++;
                vlen = (size_t)(eol - v);
                assert_true(vlen < valsz);
                memcpy(value, v, vlen);
                value[vlen] = '\0';
            }
            count++;
        }
        line = eol + 2;
    }
    return count;
}

static void assert_header(const char *text, const char *name, const char *want)
{
    char value[512];
    int n = header_count(text, name, value, sizeof(value));

    if (n != 1 || strcmp(value, want) != 0)
        print_error("want exactly one \"%s: %s\", found %d (first \"%s\") in:\n%s\n", name, want, n, value, text);
    assert_int_equal(n, 1);
    assert_string_equal(value, want);
}

static void assert_no_header(const char *text, const char *name)
{
    int n = header_count(text, name, NULL, 0);

    if (n != 0)
        print_error("\"%s\" should be absent from:\n%s\n", name, text);
    assert_int_equal(n, 0);
}

/* A head ends at its first blank line, and that is the end of what was written. */
static void assert_one_complete_head(const char *text)
{
    const char *end = strstr(text, "\r\n\r\n");

    assert_non_null(end);
    assert_int_equal(strlen(end), 4);
}

static int check(const struct http_head *h)
{
    const char *reason = NULL;
    int status = http1_check_request(h, &reason);

    if (status)
        assert_non_null(reason);
    return status;
}

/* For heads built without llhttp: each value its own chunk, far from the last,
 * so a first value piece is never taken for a continuation. */
static uint64_t direct_off;

static int add_value_direct(struct http_head *h, const char *v, size_t len, size_t limit)
{
    http_head_chunk(h, v, direct_off);
    direct_off += len + 1000;
    return http_head_add_value(h, v, len, limit);
}

/* ---- heads: lookups, pieces, limits ---- */

static void test_head_get(void **state)
{
    const struct http_head *h;
    const char *v;
    size_t len = 99;
    (void)state;

    h = request("GET /x HTTP/1.1\r\nHost: example.com\r\nX-Padded:   spaced value  \r\nx-lower: a\r\n"
                "X-Dup: one\r\nX-Dup: two\r\nX-Empty:\r\nX-After-Empty: z\r\n\r\n");
    assert_int_equal(h->n_hdr, 7);

    v = http_head_get(h, "HOST", &len);
    assert_non_null(v);
    assert_int_equal(len, 11);
    assert_memory_equal(v, "example.com", 11);

    v = http_head_get(h, "x-padded", &len);
    assert_non_null(v);
    assert_int_equal(len, strlen("spaced value"));
    assert_memory_equal(v, "spaced value", len);

    v = http_head_get(h, "X-LOWER", &len);
    assert_non_null(v);
    assert_int_equal(len, 1);
    assert_memory_equal(v, "a", 1);

    v = http_head_get(h, "x-dup", &len);
    assert_non_null(v);
    assert_int_equal(len, 3);
    assert_memory_equal(v, "one", 3);

    /* An empty value is present, and does not swallow the next header's name. */
    v = http_head_get(h, "X-Empty", &len);
    assert_non_null(v);
    assert_int_equal(len, 0);
    v = http_head_get(h, "X-After-Empty", &len);
    assert_non_null(v);
    assert_int_equal(len, 1);
    assert_memory_equal(v, "z", 1);

    assert_null(http_head_get(h, "X-Absent", &len));
    assert_null(http_head_get(h, "Hos", &len));
    assert_null(http_head_get(h, "Hostx", &len));
}

static void test_head_has_token(void **state)
{
    const struct http_head *h;
    (void)state;

    h = request("GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nX-List: a,,b ,\tc\r\n"
                "X-Two: first\r\nX-Two: second, third\r\n\r\n");
    assert_int_equal(http_head_has_token(h, "Connection", "keep-alive"), 1);
    assert_int_equal(http_head_has_token(h, "connection", "upgrade"), 1);
    assert_int_equal(http_head_has_token(h, "CONNECTION", "UPGRADE"), 1);
    assert_int_equal(http_head_has_token(h, "Connection", "close"), 0);
    assert_int_equal(http_head_has_token(h, "Connection", "keep"), 0);
    assert_int_equal(http_head_has_token(h, "Connection", "keep-alive, Upgrade"), 0);
    assert_int_equal(http_head_has_token(h, "Upgrade", "keep-alive"), 0);
    assert_int_equal(http_head_has_token(h, "X-List", "a"), 1);
    assert_int_equal(http_head_has_token(h, "X-List", "b"), 1);
    assert_int_equal(http_head_has_token(h, "X-List", "c"), 1);
    assert_int_equal(http_head_has_token(h, "X-List", ""), 0);
    /* Every header of that name counts, not only the first. */
    assert_int_equal(http_head_has_token(h, "X-Two", "first"), 1);
    assert_int_equal(http_head_has_token(h, "X-Two", "third"), 1);
}

/* The same head, fed whole and in pieces, gives the same names, values and first line. */
static void assert_same_head(const struct http_head *a, const struct http_head *b)
{
    int i;

    assert_int_equal(a->first_len, b->first_len);
    assert_memory_equal(a->buf + a->first_off, b->buf + b->first_off, a->first_len);
    assert_int_equal(a->n_hdr, b->n_hdr);
    for (i = 0; i < a->n_hdr; i++) {
        assert_int_equal(a->hdr[i].name_len, b->hdr[i].name_len);
        assert_memory_equal(a->buf + a->hdr[i].name_off, b->buf + b->hdr[i].name_off, a->hdr[i].name_len);
        assert_int_equal(a->hdr[i].value_len, b->hdr[i].value_len);
        assert_memory_equal(a->buf + a->hdr[i].value_off, b->buf + b->hdr[i].value_off, a->hdr[i].value_len);
    }
    assert_int_equal(a->method, b->method);
    assert_int_equal(a->status, b->status);
    assert_int_equal(a->chunked, b->chunked);
    assert_int_equal(a->has_content_length, b->has_content_length);
}

static void test_pieces_joined(void **state)
{
    static const char req_text[] =
        "POST /some/longer/path?query=string&x=1 HTTP/1.1\r\n"
        "Host: pieces.example.com:8080\r\n"
        "X-Empty:\r\n"
        "X-Long-Header-Name-For-Splitting: a value that spans many llhttp calls\r\n"
        "Content-Length: 3\r\n"
        "Connection: keep-alive, X-Drop\r\n\r\nabc";
    static const char resp_text[] =
        "HTTP/1.1 503 Service Temporarily Unavailable Today\r\n"
        "Server: pieces/1.0\r\nContent-Length: 0\r\nX-Trace:  id-42 \r\n\r\n";
    static const size_t steps[] = { 1, 2, 3, 7, 13 };
    struct msg *whole = &req, *split = &resp;
    const char *v;
    size_t len, i;
    (void)state;

    for (i = 0; i < N(steps); i++) {
        parse_ok(whole, HTTP_REQUEST, req_text, 0);
        parse_ok(split, HTTP_REQUEST, req_text, steps[i]);
        assert_same_head(&whole->head, &split->head);
        assert_true(split->complete);
        v = http_head_get(&split->head, "x-long-header-name-for-splitting", &len);
        assert_non_null(v);
        assert_int_equal(len, strlen("a value that spans many llhttp calls"));
        assert_memory_equal(v, "a value that spans many llhttp calls", len);
        assert_int_equal(split->head.first_len, strlen("/some/longer/path?query=string&x=1"));
        assert_memory_equal(split->head.buf + split->head.first_off, "/some/longer/path?query=string&x=1",
                            split->head.first_len);
        assert_int_equal(http_head_has_token(&split->head, "Connection", "x-drop"), 1);
        assert_null(http_head_get(&split->head, "X-EmptyX-Long-Header-Name-For-Splitting", &len));
        v = http_head_get(&split->head, "X-Empty", &len);
        assert_non_null(v);
        assert_int_equal(len, 0);

        parse_ok(whole, HTTP_RESPONSE, resp_text, 0);
        parse_ok(split, HTTP_RESPONSE, resp_text, steps[i]);
        assert_same_head(&whole->head, &split->head);
        assert_int_equal(split->head.first_len, strlen("Service Temporarily Unavailable Today"));
        assert_memory_equal(split->head.buf + split->head.first_off, "Service Temporarily Unavailable Today",
                            split->head.first_len);
        v = http_head_get(&split->head, "X-Trace", &len);
        assert_non_null(v);
        assert_int_equal(len, 5);
        assert_memory_equal(v, "id-42", 5);
    }
}

/* Each header counts at least as much as its line "Name: value\r\n" would. */
static void add_header_grows(struct http_head *h, const char *name, const char *value)
{
    size_t before = http_head_size(h);

    assert_int_equal(http_head_add_field(h, name, strlen(name), NO_LIMIT), 0);
    assert_int_equal(add_value_direct(h, value, strlen(value), NO_LIMIT), 0);
    assert_true(http_head_size(h) >= before + strlen(name) + 2 + strlen(value) + 2);
}

static void test_head_size_grows(void **state)
{
    struct http_head *h = &req.head;
    size_t prev;
    (void)state;

    http_head_reset(h);
    prev = http_head_size(h);
    assert_int_equal(http_head_add_first(h, "/index.html", 11, NO_LIMIT), 0);
    assert_true(http_head_size(h) >= prev + 11);
    add_header_grows(h, "Host", "example.com");
    /* An empty header still costs its line. */
    add_header_grows(h, "X", "");
    add_header_grows(h, "Accept", "*/*");
    /* At least the request line's target and every header line. */
    assert_true(http_head_size(h) >= 11 + (4 + 2 + 11 + 2) + (1 + 2 + 2) + (6 + 2 + 3 + 2));

    /* Through the parser: more headers, larger size. */
    request("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    prev = http_head_size(&req.head);
    request("GET / HTTP/1.1\r\nHost: a\r\nX-More: b\r\n\r\n");
    assert_true(http_head_size(&req.head) >= prev + strlen("X-More: b\r\n"));
}

static void test_too_many_headers(void **state)
{
    char *text = malloc(64 * 1024);
    size_t off;
    int i, n;
    llhttp_errno_t e;
    (void)state;

    assert_non_null(text);
    for (n = HTTP_MAX_HEADERS; n <= HTTP_MAX_HEADERS + 1; n++) {
        off = (size_t)sprintf(text, "GET / HTTP/1.1\r\nHost: a\r\n");
        for (i = 1; i < n; i++)
            off += (size_t)sprintf(text + off, "X-H%d: %d\r\n", i, i);
        strcpy(text + off, "\r\n");

        msg_start(&req, HTTP_REQUEST, NO_LIMIT);
        e = msg_feed(&req, text, strlen(text), 0);
        if (n == HTTP_MAX_HEADERS) {
            assert_int_equal(e, HPE_OK);
            assert_int_equal(req.feed_err, 0);
            assert_int_equal(req.head.too_many, 0);
            assert_int_equal(req.head.n_hdr, HTTP_MAX_HEADERS);
        } else {
            assert_int_not_equal(e, HPE_OK);
            assert_int_equal(req.feed_err, -E2BIG);
            assert_int_equal(req.head.too_many, 1);
            assert_int_equal(req.head.n_hdr, HTTP_MAX_HEADERS);
            assert_false(req.headers_done);
        }
    }
    free(text);

    /* And directly, without llhttp. */
    http_head_reset(&req.head);
    for (i = 0; i < HTTP_MAX_HEADERS; i++) {
        assert_int_equal(http_head_add_field(&req.head, "A", 1, NO_LIMIT), 0);
        assert_int_equal(add_value_direct(&req.head, "b", 1, NO_LIMIT), 0);
    }
    assert_int_equal(req.head.too_many, 0);
    assert_int_equal(http_head_add_field(&req.head, "A", 1, NO_LIMIT), -E2BIG);
    assert_int_equal(req.head.too_many, 1);
    assert_int_equal(req.head.n_hdr, HTTP_MAX_HEADERS);
}

static void test_byte_limit(void **state)
{
    static const char text[] = "GET /limit HTTP/1.1\r\nHost: example.com\r\nX-Big: 0123456789012345678901234567890123456789\r\n\r\n";
    struct http_head *h = &req.head;
    llhttp_errno_t e;
    (void)state;

    /* Directly: exactly <limit> bytes fit, one more does not. */
    http_head_reset(h);
    assert_int_equal(http_head_add_first(h, "/abc", 4, 8), 0);
    assert_int_equal(http_head_add_field(h, "Host", 4, 8), 0);
    assert_int_equal(h->len, 8);
    assert_int_equal(add_value_direct(h, "x", 1, 8), -E2BIG);
    assert_true(h->len <= 8);
    http_head_reset(h);
    assert_int_equal(http_head_add_first(h, "/", 1, 8), 0);
    assert_int_equal(http_head_add_first(h, "01234567", 8, 8), -E2BIG);
    http_head_reset(h);
    assert_int_equal(http_head_add_field(h, "123456789", 9, 8), -E2BIG);

    /* Through llhttp, whole and byte by byte: the value that crosses the limit fails. */
    for (size_t step = 0; step <= 1; step++) {
        msg_start(&req, HTTP_REQUEST, 32);
        e = msg_feed(&req, text, strlen(text), step);
        assert_int_not_equal(e, HPE_OK);
        assert_int_equal(req.feed_err, -E2BIG);
        assert_false(req.headers_done);
        assert_true(req.head.len <= 32);
        assert_int_equal(req.head.too_many, 0);
    }

    /* The same head under a limit it fits in. */
    msg_start(&req, HTTP_REQUEST, strlen(text));
    assert_int_equal(msg_feed(&req, text, strlen(text), 0), HPE_OK);
    assert_int_equal(req.feed_err, 0);
    assert_true(req.headers_done);
}

/* ---- hop-by-hop ---- */

static void test_hop_by_hop_fixed(void **state)
{
    static const char *const hop[] = {
        "Connection", "Keep-Alive", "TE", "Trailer", "Transfer-Encoding", "Upgrade",
        "Proxy-Connection", "Proxy-Authenticate", "Proxy-Authorization",
        "connection", "KEEP-ALIVE", "te", "trailer", "transfer-encoding", "uPgRaDe",
        "proxy-connection", "PROXY-AUTHENTICATE", "proxy-authorization",
    };
    static const char *const e2e[] = {
        "Host", "Content-Length", "Content-Type", "X-Forwarded-For", "Accept", "Cookie", "Authorization",
        "Connections", "Connectio", "T", "TE2", "Trailers", "Upgrade-Insecure-Requests", "Proxy", "Expect",
        "X-Drop",
    };
    const struct http_head *h;
    size_t i;
    (void)state;

    h = request("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    for (i = 0; i < N(hop); i++) {
        if (!http1_is_hop_by_hop(h, hop[i], strlen(hop[i])))
            print_error("%s should be hop-by-hop\n", hop[i]);
        assert_int_equal(http1_is_hop_by_hop(h, hop[i], strlen(hop[i])), 1);
    }
    for (i = 0; i < N(e2e); i++) {
        if (http1_is_hop_by_hop(h, e2e[i], strlen(e2e[i])))
            print_error("%s should not be hop-by-hop\n", e2e[i]);
        assert_int_equal(http1_is_hop_by_hop(h, e2e[i], strlen(e2e[i])), 0);
    }
    /* <len> bounds the name: a prefix of a longer string is judged alone. */
    assert_int_equal(http1_is_hop_by_hop(h, "TEXT", 2), 1);
    assert_int_equal(http1_is_hop_by_hop(h, "Upgraded", 7), 1);
    assert_int_equal(http1_is_hop_by_hop(h, "Upgraded", 8), 0);
}

static void test_hop_by_hop_named_in_connection(void **state)
{
    const struct http_head *h;
    (void)state;

    h = request("GET / HTTP/1.1\r\nHost: a\r\nConnection: close, X-Drop\r\nConnection: x-also\r\n\r\n");
    assert_int_equal(http1_is_hop_by_hop(h, "X-Drop", 6), 1);
    assert_int_equal(http1_is_hop_by_hop(h, "x-drop", 6), 1);
    assert_int_equal(http1_is_hop_by_hop(h, "X-ALSO", 6), 1);
    assert_int_equal(http1_is_hop_by_hop(h, "X-Dro", 5), 0);
    assert_int_equal(http1_is_hop_by_hop(h, "X-Drop2", 7), 0);
    assert_int_equal(http1_is_hop_by_hop(h, "X-Keep", 6), 0);
    assert_int_equal(http1_is_hop_by_hop(h, "Host", 4), 0);

    /* Without a Connection header only the fixed list applies. */
    h = request("GET / HTTP/1.1\r\nHost: a\r\nX-Drop: 1\r\n\r\n");
    assert_int_equal(http1_is_hop_by_hop(h, "X-Drop", 6), 0);
}

/* The field index (built at headers-complete) answers every lookup as the
 * search by name does (a head fed by hand has no index). */
static void test_index_answers_like_names(void **state)
{
    static const char *const names[] = {
        "host", "HOST", "Connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade",
        "proxy-connection", "proxy-authenticate", "proxy-authorization", "content-length", "x-forwarded-for",
        "X-Forwarded-Proto", "expect", "x-request-id", "traceparent", "idempotency-key", "x-other", "absent",
        "hos", "hostx", "x-forwarded-fo",
    };
    struct http_head *h;
    size_t i;
    (void)state;

    h = request("POST /p HTTP/1.1\r\nHOST: a\r\nX-Forwarded-For: 1.1.1.1\r\nx-request-ID: one\r\n"
                "X-Request-Id: two\r\nConnection: keep-alive, Upgrade\r\nUpgrade: ws\r\nTE: trailers\r\n"
                "Content-Length: 0\r\nx-forwarded-for: 2.2.2.2\r\nTraceparent: 00-ab\r\n"
                "Idempotency-Key: k\r\nX-Other: o\r\nExpect: 100-continue\r\n\r\n");
    assert_int_equal(h->indexed, 1);
    for (i = 0; i < N(names); i++) {
        int count, token;
        const char *v, *v_plain;
        size_t len = 0, len_plain = 0;

        h->indexed = 1;
        count = http_head_count(h, names[i]);
        v = http_head_get(h, names[i], &len);
        token = http_head_has_token(h, names[i], "upgrade");
        h->indexed = 0;
        v_plain = http_head_get(h, names[i], &len_plain);
        if (count != http_head_count(h, names[i]) || v != v_plain || len != len_plain)
            print_error("the index and the names disagree on %s\n", names[i]);
        assert_int_equal(count, http_head_count(h, names[i]));
        assert_ptr_equal(v, v_plain);
        assert_int_equal(len, len_plain);
        assert_int_equal(token, http_head_has_token(h, names[i], "upgrade"));
    }
    h->indexed = 1;
    assert_int_equal(http_head_count(h, "x-request-id"), 2);
    assert_int_equal(http_head_count(h, "X-FORWARDED-FOR"), 2);
    assert_int_equal(http_head_has_token(h, "connection", "UPGRADE"), 1);
}

/* Connection may name any field, one nextup knows included, and "close" names
 * a field called Close: each is dropped from what is forwarded, indexed or not. */
static void test_fields_named_in_connection_not_forwarded(void **state)
{
    const char *text;
    struct http_head *h;
    int indexed;
    (void)state;

    h = response("HTTP/1.1 200 OK\r\nConnection: close\r\nClose: x\r\nX-Keep: 1\r\nContent-Length: 0\r\n\r\n");
    assert_int_equal(http1_write_response_head(out, h, RESP_CONTENT_LENGTH, 1, 0), 0);
    text = out_text();
    assert_no_header(text, "Close");
    assert_header(text, "X-Keep", "1");
    evbuffer_drain(out, evbuffer_get_length(out));

    /* Only fixed hop-by-hop names listed: every other field goes on. */
    h = response("HTTP/1.1 200 OK\r\nConnection: keep-alive, TE\r\nX-Drop: 1\r\nContent-Length: 0\r\n\r\n");
    assert_int_equal(h->connection_names_other, 0);
    assert_int_equal(http1_write_response_head(out, h, RESP_CONTENT_LENGTH, 0, 0), 0);
    text = out_text();
    assert_header(text, "X-Drop", "1");
    assert_no_header(text, "Keep-Alive");
    evbuffer_drain(out, evbuffer_get_length(out));

    h = request("GET / HTTP/1.1\r\nHost: a\r\nConnection: Traceparent, Idempotency-Key, Host\r\n"
                "Traceparent: 00-ab\r\nIdempotency-Key: k\r\nX-Keep: 1\r\n\r\n");
    assert_int_equal(h->connection_names_other, 1);
    for (indexed = 1; indexed >= 0; indexed--) {
        /* The same head without its index is written the same way. */
        h->indexed = indexed;
        assert_int_equal(http1_write_request_head(out, h, "10.0.0.1", NULL, "http", NULL), 0);
        text = out_text();
        assert_no_header(text, "Traceparent");
        assert_no_header(text, "Idempotency-Key");
        assert_header(text, "Host", "a");
        assert_header(text, "X-Keep", "1");
        evbuffer_drain(out, evbuffer_get_length(out));
    }
}

/* ---- request checks ---- */

static void test_check_normal_get(void **state)
{
    (void)state;
    assert_int_equal(check(request("GET /index.html?a=b HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n")), 0);
    assert_int_equal(check(request("POST /submit HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nok")), 0);
    assert_int_equal(check(request("POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")), 0);
    /* HTTP/1.0 does not require Host. */
    assert_int_equal(check(request("GET / HTTP/1.0\r\n\r\n")), 0);
}

static void test_check_connect(void **state)
{
    (void)state;
    assert_int_equal(check(request("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")), 405);
}

static void test_check_target_forms(void **state)
{
    (void)state;
    /* Absolute-form passes: whether its authority is a service's is the request path's to judge. */
    assert_int_equal(check(request("GET http://evil.example/ HTTP/1.1\r\nHost: evil.example\r\n\r\n")), 0);
    assert_int_equal(check(request("GET HTTP://evil.example/x HTTP/1.1\r\nHost: evil.example\r\n\r\n")), 0);

    assert_int_equal(check(request("GET * HTTP/1.1\r\nHost: a\r\n\r\n")), 400);
    assert_int_equal(check(request("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")), 0);
    assert_int_equal(check(request("OPTIONS /x HTTP/1.1\r\nHost: a\r\n\r\n")), 0);
}

static void test_is_absolute_form(void **state)
{
    (void)state;
    assert_true(http1_is_absolute_form("http://a/", 9));
    assert_true(http1_is_absolute_form("svn+ssh://a", 11));
    assert_false(http1_is_absolute_form("/http://a", 9));
    assert_false(http1_is_absolute_form("http:", 5));
    assert_false(http1_is_absolute_form("", 0));
    assert_false(http1_is_absolute_form("h@p://a", 7));
}

/* The target and Host the request path rewrites: origin-form path, one Host. */
static void test_write_request_head_rewrite(void **state)
{
    struct http1_rewrite rw = { "x?q=1", 5, 1, "inventory.internal", 18 };
    const struct http_head *h =
        request("GET http://inventory/x?q=1 HTTP/1.1\r\nHost: inventory\r\nHost-X: y\r\n\r\n");
    const char *text;

    (void)state;
    assert_int_equal(http1_write_request_head_rw(out, h, "10.0.0.9", NULL, "http", NULL, &rw), 0);
    text = out_text();
    assert_true(strncmp(text, "GET /x?q=1 HTTP/1.1\r\n", strlen("GET /x?q=1 HTTP/1.1\r\n")) == 0);
    assert_int_equal(header_count(text, "host", NULL, 0), 1);
    assert_header(text, "host", "inventory.internal");
    assert_header(text, "host-x", "y");
}

static void test_check_host(void **state)
{
    (void)state;
    assert_int_equal(check(request("GET / HTTP/1.1\r\nAccept: */*\r\n\r\n")), 400);
    assert_int_equal(check(request("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")), 400);
    assert_int_equal(check(request("GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n")), 400);
    assert_int_equal(check(request("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n")), 400);
    assert_int_equal(check(request("GET / HTTP/1.0\r\nHost: a\r\n\r\n")), 0);
}

/* A request head for "/" whose only header is Host with the <len> bytes of <v>,
 * built without llhttp so that any byte reaches the check. */
static void head_with_host(struct http_head *h, const char *v, size_t len, int minor)
{
    http_head_reset(h);
    assert_int_equal(http_head_add_first(h, "/", 1, NO_LIMIT), 0);
    assert_int_equal(http_head_add_field(h, "Host", 4, NO_LIMIT), 0);
    assert_int_equal(add_value_direct(h, v, len, NO_LIMIT), 0);
    h->method = HTTP_GET;
    h->major = 1;
    h->minor = minor;
}

#define S(lit) { lit, sizeof(lit) - 1 }

/* RFC 9110 7.2: Host = uri-host [ ":" port ], uri-host an RFC 3986 IP-literal,
 * IPv4address or reg-name; anything else is answered 400, as nginx does. */
static void test_check_host_value(void **state)
{
    static const struct {
        const char *v;
        size_t len;
    } good[] = {
        S("example.com"), S("example.com:8080"), S("127.0.0.1:15001"), S("[::1]:80"), S("a-b.c_d"), S("[::1]"),
        S("[2001:db8::7]:443"), S("[::ffff:10.0.0.1]"), S("Example.COM."), S("xn--bcher-kva.example"),
        S("%41b.example"), S("a!$&'()*+,;=~"), S("[v1.fe:x]"), S("example.com:"), S("a:65535"),
    }, bad[] = {
        S("a b"), S("a\tb"), S("exa mple:80"), S("host:port"), S("[::1"), S("a/b"), S("a@b"), S(""),
        S("a\x01" "b"), S("a\x7f"), S("caf\xc3\xa9.example"), S("a:80:80"), S("::1"), S("[::1]x"),
        S("[::1]:8x"), S("[nothex]"), S("[::1]]"), S("[]"), S("[v1]"), S("a%4"), S("a%zz"), S("a\\b"), S("a?b"),
        S("a#b"), S(":80"), S("a[b]"), S("a\"b"), S("a<b>"), S("a:-1"), S("a: 80"),
    };
    char text[256];
    size_t i;
    int minor;
    (void)state;

    for (minor = 0; minor <= 1; minor++) {
        for (i = 0; i < N(good); i++) {
            head_with_host(&req.head, good[i].v, good[i].len, minor);
            if (check(&req.head) != 0)
                print_error("HTTP/1.%d Host \"%s\" refused\n", minor, good[i].v);
            assert_int_equal(check(&req.head), 0);
        }
        for (i = 0; i < N(bad); i++) {
            head_with_host(&req.head, bad[i].v, bad[i].len, minor);
            if (check(&req.head) != 400)
                print_error("HTTP/1.%d Host \"%s\" accepted\n", minor, bad[i].v);
            assert_int_equal(check(&req.head), 400);
        }
    }
    /* The same through llhttp: the valid ones parse and pass; an invalid one is
     * refused by llhttp itself or by the check. */
    for (i = 0; i < N(good); i++) {
        snprintf(text, sizeof(text), "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", good[i].v);
        assert_int_equal(check(request(text)), 0);
    }
    for (i = 0; i < N(bad); i++) {
        snprintf(text, sizeof(text), "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", bad[i].v);
        msg_start(&req, HTTP_REQUEST, NO_LIMIT);
        if (msg_feed(&req, text, strlen(text), 0) != HPE_OK)
            continue;
        assert_true(req.headers_done);
        if (check(&req.head) != 400)
            print_error("through llhttp, Host \"%s\" accepted\n", bad[i].v);
        assert_int_equal(check(&req.head), 400);
    }
    /* Optional whitespace around the value is not part of it. */
    assert_int_equal(check(request("GET / HTTP/1.1\r\nHost: \t example.com:80 \t\r\n\r\n")), 0);
    assert_int_equal(check(request("GET / HTTP/1.1\r\nHost:\r\n\r\n")), 400);
    assert_int_equal(check(request("GET / HTTP/1.1\r\nHost:   \r\n\r\n")), 400);
    assert_int_equal(check(request("GET / HTTP/1.0\r\nHost: a b\r\n\r\n")), 400);
}

#undef S

static void test_check_expect(void **state)
{
    (void)state;
    assert_int_equal(check(request("POST / HTTP/1.1\r\nHost: a\r\nExpect: something-else\r\nContent-Length: 1\r\n\r\n")),
                     417);
    assert_int_equal(check(request("POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n")),
                     0);
    assert_int_equal(check(request("POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue \r\nContent-Length: 1\r\n\r\n")),
                     0);
    assert_int_equal(check(request("POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continuex\r\nContent-Length: 1\r\n\r\n")),
                     417);
}

/* http1.c trusts llhttp's strict mode for these; each must be an llhttp error. */
static void test_llhttp_rejects_smuggling(void **state)
{
    static const struct {
        const char *what;
        const char *text;
        size_t len;
    } bad[] = {
#define BAD(what, s) { what, s, sizeof(s) - 1 }
        BAD("Content-Length with Transfer-Encoding: chunked",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        BAD("Transfer-Encoding: chunked then Content-Length",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"),
        BAD("two different Content-Length",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
        BAD("Transfer-Encoding: gzip on a request",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nhello"),
        BAD("Transfer-Encoding: chunked, gzip on a request",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\nhello"),
        BAD("first header line starting with a space",
            "GET / HTTP/1.1\r\n Host: a\r\n\r\n"),
        BAD("bare LF inside headers",
            "GET / HTTP/1.1\r\nHost: a\nX-B: c\r\n\r\n"),
        BAD("bare CR inside headers",
            "GET / HTTP/1.1\r\nHost: a\rX-B: c\r\n\r\n"),
        BAD("NUL in a header value",
            "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\0b\r\n\r\n"),
        BAD("invalid chunk size zz",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"),
#undef BAD
    };
    size_t i, step;
    (void)state;

    for (i = 0; i < N(bad); i++) {
        for (step = 0; step <= 1; step++) {
            llhttp_errno_t e;
            msg_start(&req, HTTP_REQUEST, NO_LIMIT);
            e = msg_feed(&req, bad[i].text, bad[i].len, step);
            if (e == HPE_OK || e == HPE_PAUSED_UPGRADE)
                print_error("llhttp accepted (step %zu): %s\n", step, bad[i].what);
            assert_true(e != HPE_OK && e != HPE_PAUSED_UPGRADE);
            assert_int_equal(req.feed_err, 0);
        }
    }
}

/* llhttp 8.1 accepts obs-fold inside a value and hands the continuation over as
 * a second piece of the same value, without the CRLF. RFC 9112 5.2 lets a proxy
 * reject it or replace it with SP; http1.h promises rejection: the feeder
 * returns -EPROTO. However the bytes are cut into reads, the fold is refused. */
/* Documented limit (http1.h): a fold after an empty first line is not seen as
 * one; llhttp hands "second" over as the whole value, which then travels on
 * one line (RFC 9112 5.2 lets a proxy replace obs-fold with a space). */
static void test_obs_fold_after_empty_value_merged(void **state)
{
    static const char *const texts[] = {
        "GET / HTTP/1.1\r\nHost: a\r\nX-Folded:\r\n second\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX-Folded: \r\n second\r\n\r\n",
    };
    size_t i, len;
    const char *v;
    (void)state;

    for (i = 0; i < N(texts); i++) {
        msg_start(&req, HTTP_REQUEST, NO_LIMIT);
        assert_int_equal(msg_feed(&req, texts[i], strlen(texts[i]), 0), HPE_OK);
        v = http_head_get(&req.head, "x-folded", &len);
        assert_non_null(v);
        assert_int_equal(len, 6);
        assert_memory_equal(v, "second", 6);
    }
}

static void test_obs_fold_rejected(void **state)
{
    static const char *const texts[] = {
        "GET / HTTP/1.1\r\nHost: a\r\nX-Folded: first\r\n second\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX-Folded: first\r\n\tsecond\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX-Folded: first\r\n \r\nX-Next: 1\r\n\r\n",
        "GET / HTTP/1.1\r\nX-Folded: first\r\n  second\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n , X-Forwarded-For\r\n\r\n",
    };
    static const size_t steps[] = { 0, 1, 2, 3, 5, 8 };
    size_t i, j;
    int accepted = 0;
    (void)state;

    for (i = 0; i < N(texts); i++) {
        const char *fold = strstr(texts[i], "\r\n \r\n") ? strstr(texts[i], "\r\n \r\n") : NULL;
        size_t at;
        if (!fold) {
            fold = strstr(texts[i], "\r\n ");
            if (!fold)
                fold = strstr(texts[i], "\r\n\t");
        }
        assert_non_null(fold);
        at = (size_t)(fold - texts[i]);
        for (j = 0; j < N(steps) + 4; j++) {
            llhttp_errno_t e;
            msg_start(&req, HTTP_REQUEST, NO_LIMIT);
            if (j < N(steps)) {
                e = msg_feed(&req, texts[i], strlen(texts[i]), steps[j]);
            } else {
                /* Reads that end around the skipped CRLF. */
                size_t cut = at + (j - N(steps));
                e = msg_feed_cut(&req, texts[i], &cut, 1);
            }
            if (e != HPE_OK) {
                /* Refused by llhttp, or by the feeder (HPE_USER with -EPROTO). */
                if (e == HPE_USER)
                    assert_int_equal(req.feed_err, -EPROTO);
                continue;
            }
            if (accepted++ == 0 || j == 0)
                print_error("obs-fold accepted (case %zu, feed %zu), value \"%.*s\":\n%s", i, j,
                            (int)req.head.hdr[req.head.n_hdr - 1].value_len,
                            req.head.buf + req.head.hdr[req.head.n_hdr - 1].value_off, texts[i]);
        }
    }
    assert_int_equal(accepted, 0);
}

/* The feeders' side of obs-fold detection, without llhttp. */
static void test_value_continuity(void **state)
{
    static const char stream[] = "X-A: onetwo\r\nX-B: three\r\n";
    struct http_head *h = &req.head;
    (void)state;

    /* "one" and "two" adjacent in the stream, in two reads: one value. */
    http_head_reset(h);
    assert_int_equal(http_head_add_first(h, "/", 1, NO_LIMIT), 0);
    http_head_chunk(h, stream, 0);
    assert_int_equal(http_head_add_field(h, stream, 3, NO_LIMIT), 0);
    assert_int_equal(http_head_add_value(h, stream + 5, 3, NO_LIMIT), 0);
    http_head_chunk(h, stream + 8, 8);
    assert_int_equal(http_head_add_value(h, stream + 8, 3, NO_LIMIT), 0);
    http_head_value_complete(h);
    assert_int_equal(h->hdr[0].value_len, 6);
    assert_memory_equal(h->buf + h->hdr[0].value_off, "onetwo", 6);
    /* A new field starts a new value. */
    assert_int_equal(http_head_add_field(h, stream + 13, 3, NO_LIMIT), 0);
    assert_int_equal(http_head_add_value(h, stream + 18, 5, NO_LIMIT), 0);
    assert_int_equal(h->n_hdr, 2);

    /* A gap between two pieces of one value: a skipped line break. */
    http_head_reset(h);
    http_head_chunk(h, stream, 0);
    assert_int_equal(http_head_add_field(h, stream, 3, NO_LIMIT), 0);
    assert_int_equal(http_head_add_value(h, stream + 5, 3, NO_LIMIT), 0);
    assert_int_equal(http_head_add_value(h, stream + 9, 2, NO_LIMIT), -EPROTO);

    /* More value after llhttp said the value was complete. */
    http_head_reset(h);
    http_head_chunk(h, stream, 0);
    assert_int_equal(http_head_add_field(h, stream, 3, NO_LIMIT), 0);
    assert_int_equal(http_head_add_value(h, stream + 5, 3, NO_LIMIT), 0);
    http_head_value_complete(h);
    assert_int_equal(http_head_add_value(h, stream + 8, 3, NO_LIMIT), -EPROTO);
}

/* RFC 9112 5.1: a server MUST reject (400) whitespace between a field name and
 * the colon. llhttp 8.1 accepts it for names it does not know ("X-Forwarded-For :",
 * "Proxy-Authorization :") and even a space inside a name ("X Foo:"); the name then
 * carries the space, so nextup's exact-name rules (hop-by-hop, X-Forwarded-*,
 * Expect, Host) do not see the field and it is forwarded as written. */
static void test_field_name_whitespace_rejected(void **state)
{
    static const char *const texts[] = {
        "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For : 6.6.6.6\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nProxy-Authorization : Basic c2VjcmV0\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nKeep-Alive : timeout=5\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nExpect : something-else\r\nContent-Length: 1\r\n\r\n",
        "GET / HTTP/1.0\r\nHost : evil.example\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX Foo: a\r\n\r\n",
    };
    size_t i;
    int accepted = 0;
    (void)state;

    for (i = 0; i < N(texts); i++) {
        struct evbuffer *fwd;
        llhttp_errno_t e;
        int status;
        msg_start(&req, HTTP_REQUEST, NO_LIMIT);
        e = msg_feed(&req, texts[i], strlen(texts[i]), 0);
        if (e != HPE_OK)
            continue; /* the parser rejected it: fine */
        assert_true(req.headers_done);
        status = check(&req.head);
        if (status == 400)
            continue;
        accepted++;
        fwd = evbuffer_new();
        assert_non_null(fwd);
        assert_int_equal(http1_write_request_head(fwd, &req.head, CLIENT_IP, "fallback.example", "http", NULL), 0);
        assert_int_equal(evbuffer_add(fwd, "", 1), 0);
        print_error("accepted (check %d) and forwarded as:\n%s", status, (const char *)evbuffer_pullup(fwd, -1));
        evbuffer_free(fwd);
    }
    assert_int_equal(accepted, 0);
}

/* ---- the head sent to a peer ---- */

static const char *request_head(const char *text, const char *host_fallback)
{
    request(text);
    assert_int_equal(check(&req.head), 0);
    assert_int_equal(http1_write_request_head(out, &req.head, CLIENT_IP, host_fallback, "http", NULL), 0);
    return out_text();
}

static void test_req_head_request_line(void **state)
{
    const char *s;
    (void)state;

    s = request_head("GET /path HTTP/1.1\r\nHost: a\r\n\r\n", "fb");
    assert_int_equal(strncmp(s, "GET /path HTTP/1.1\r\n", 20), 0);
    assert_one_complete_head(s);
}

static void test_req_head_request_line_10_and_query(void **state)
{
    const char *s;
    (void)state;

    s = request_head("DELETE /a/b?c=d&e HTTP/1.0\r\nHost: a\r\n\r\n", "fb");
    assert_int_equal(strncmp(s, "DELETE /a/b?c=d&e HTTP/1.1\r\n", 28), 0);
    assert_one_complete_head(s);
}

static void test_req_head_hop_by_hop_removed(void **state)
{
    const char *s;
    (void)state;

    s = request_head("GET /path HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Drop, x-drop-too\r\n"
                     "Keep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: X-Sum\r\nUpgrade: h2c\r\n"
                     "Proxy-Connection: keep-alive\r\nProxy-Authorization: Basic c2VjcmV0\r\n"
                     "Proxy-Authenticate: Basic\r\nX-Drop: 1\r\nX-Drop-Too: 2\r\nX-Keep: 3\r\n\r\n",
                     "fb");
    assert_no_header(s, "Connection");
    assert_no_header(s, "Keep-Alive");
    assert_no_header(s, "TE");
    assert_no_header(s, "Trailer");
    assert_no_header(s, "Upgrade");
    assert_no_header(s, "Proxy-Connection");
    assert_no_header(s, "Proxy-Authorization");
    assert_no_header(s, "Proxy-Authenticate");
    assert_no_header(s, "X-Drop");
    assert_no_header(s, "X-Drop-Too");
    assert_no_header(s, "Transfer-Encoding");
    assert_header(s, "X-Keep", "3");
    assert_header(s, "Host", "a");
    assert_one_complete_head(s);
}

static void test_req_head_host_kept(void **state)
{
    const char *s;
    (void)state;

    s = request_head("GET / HTTP/1.1\r\nHost: Example.COM:8080\r\n\r\n", "fallback.example");
    assert_header(s, "Host", "Example.COM:8080");
}

static void test_req_head_xff_appended(void **state)
{
    const char *s;
    (void)state;

    s = request_head("GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n", NULL);
    assert_header(s, "X-Forwarded-For", "1.2.3.4, " CLIENT_IP);
}

static void test_req_head_xff_new(void **state)
{
    const char *s;
    (void)state;

    s = request_head("GET / HTTP/1.1\r\nHost: a\r\n\r\n", NULL);
    assert_header(s, "X-Forwarded-For", CLIENT_IP);
    /* An empty earlier value adds nothing, not an empty list element. */
    evbuffer_drain(out, evbuffer_get_length(out));
    s = request_head("GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For:  \r\n\r\n", NULL);
    assert_header(s, "X-Forwarded-For", CLIENT_IP);
}

static void test_req_head_xff_merged(void **state)
{
    const char *s;
    (void)state;

    s = request_head("GET / HTTP/1.1\r\nX-Forwarded-For: 1.2.3.4\r\nHost: a\r\nx-forwarded-for:  5.6.7.8, 9.9.9.9 \r\n\r\n",
                     NULL);
    assert_header(s, "X-Forwarded-For", "1.2.3.4, 5.6.7.8, 9.9.9.9, " CLIENT_IP);
}

static void test_req_head_xfp(void **state)
{
    const char *s;
    (void)state;

    s = request_head("GET / HTTP/1.1\r\nHost: a\r\n\r\n", NULL);
    assert_header(s, "X-Forwarded-Proto", "http");
    evbuffer_drain(out, evbuffer_get_length(out));
    s = request_head("GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: https\r\n\r\n", NULL);
    assert_header(s, "X-Forwarded-Proto", "http");
}

static void test_req_head_expect_dropped(void **state)
{
    const char *s;
    (void)state;

    s = request_head("POST /up HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n", NULL);
    assert_no_header(s, "Expect");
    assert_header(s, "Content-Length", "5");
}

static void test_req_head_content_length(void **state)
{
    const char *s;
    (void)state;

    s = request_head("POST /up HTTP/1.1\r\nHost: a\r\nContent-Length:  12345 \r\n\r\n", NULL);
    assert_header(s, "Content-Length", "12345");
    assert_no_header(s, "Transfer-Encoding");
    assert_one_complete_head(s);
}

static void test_req_head_chunked(void **state)
{
    const char *s;
    (void)state;

    s = request_head("POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", NULL);
    assert_header(s, "Transfer-Encoding", "chunked");
    assert_no_header(s, "Content-Length");
    assert_one_complete_head(s);
}

/* A request body is forwarded as received apart from the chunked framing, so a
 * transfer coding under chunked ("gzip, chunked", which llhttp accepts) must
 * either be refused (RFC 9112 6.1: 501) or stay declared to the peer; dropping
 * it hands the peer gzip bytes as if they were the content. */
static void test_req_head_other_transfer_coding_not_lost(void **state)
{
    (void)state;

    /* nextup's choice: refuse (501) rather than forward a coding it would re-frame. */
    request("POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
    assert_true(req.head.chunked);
    assert_int_equal(check(&req.head), 501);
    request("POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_int_equal(check(&req.head), 0);
}

static void test_req_head_host_fallback(void **state)
{
    const char *s;
    (void)state;

    s = request_head("GET / HTTP/1.0\r\n\r\n", "backend.local:8080");
    assert_int_equal(strncmp(s, "GET / HTTP/1.1\r\n", 16), 0);
    assert_header(s, "Host", "backend.local:8080");
    evbuffer_drain(out, evbuffer_get_length(out));
    s = request_head("GET / HTTP/1.0\r\nHost: own.example\r\n\r\n", "backend.local:8080");
    assert_header(s, "Host", "own.example");
}

static void test_req_head_upgrade(void **state)
{
    const char *s;
    (void)state;

    s = request_head("GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                     NULL);
    assert_true(req.head.upgrade);
    assert_header(s, "Upgrade", "websocket");
    assert_header(s, "Connection", "upgrade");
    assert_header(s, "Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==");
    assert_one_complete_head(s);
}

/* ---- response framing and the head sent to the client ---- */

static void test_response_framing(void **state)
{
    static const struct {
        const char *text;
        int is_head, major, minor;
        enum resp_framing want;
    } cases[] = {
        { "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", 1, 1, 1, RESP_NO_BODY },
        { "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", 1, 1, 0, RESP_NO_BODY },
        { "HTTP/1.1 100 Continue\r\n\r\n", 0, 1, 1, RESP_NO_BODY },
        { "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n", 0, 1, 1, RESP_NO_BODY },
        { "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n", 0, 1, 1,
          RESP_NO_BODY },
        { "HTTP/1.1 204 No Content\r\n\r\n", 0, 1, 1, RESP_NO_BODY },
        { "HTTP/1.1 204 No Content\r\n\r\n", 0, 1, 0, RESP_NO_BODY },
        { "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", 0, 1, 1, RESP_NO_BODY },
        { "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", 0, 1, 1, RESP_CONTENT_LENGTH },
        { "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", 0, 1, 0, RESP_CONTENT_LENGTH },
        { "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", 0, 1, 1, RESP_CONTENT_LENGTH },
        { "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", 0, 1, 1, RESP_CHUNKED },
        { "HTTP/1.1 200 OK\r\nServer: x\r\n\r\n", 0, 1, 1, RESP_CHUNKED },
        { "HTTP/1.0 200 OK\r\n\r\n", 0, 1, 1, RESP_CHUNKED },
        { "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", 0, 1, 0, RESP_CLOSE },
        { "HTTP/1.1 200 OK\r\nServer: x\r\n\r\n", 0, 1, 0, RESP_CLOSE },
    };
    size_t i;
    (void)state;

    for (i = 0; i < N(cases); i++) {
        const struct http_head *h = response(cases[i].text);
        enum resp_framing got = http1_response_framing(h, cases[i].is_head, cases[i].major, cases[i].minor);
        if (got != cases[i].want)
            print_error("case %zu: framing %d, want %d\n", i, (int)got, (int)cases[i].want);
        assert_int_equal(got, cases[i].want);
    }
}

static const char *response_head(const char *text, int is_head, int client_minor, int close)
{
    const struct http_head *h = response(text);
    enum resp_framing f = http1_response_framing(h, is_head, 1, client_minor);

    assert_int_equal(http1_write_response_head(out, h, f, close, client_minor == 0), 0);
    return out_text();
}

static void test_resp_head_hop_by_hop_removed(void **state)
{
    const char *s;
    (void)state;

    s = response_head("HTTP/1.1 200 OK\r\nServer: up\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\n"
                      "Proxy-Authenticate: Basic\r\nProxy-Connection: keep-alive\r\nTrailer: X-Sum\r\nUpgrade: h2c\r\n"
                      "X-Hop: 1\r\nX-Keep: 2\r\nContent-Length: 4\r\n\r\n",
                      0, 1, 0);
    assert_int_equal(strncmp(s, "HTTP/1.1 200 OK\r\n", 17), 0);
    assert_no_header(s, "Connection");
    assert_no_header(s, "Keep-Alive");
    assert_no_header(s, "Proxy-Authenticate");
    assert_no_header(s, "Proxy-Connection");
    assert_no_header(s, "Trailer");
    assert_no_header(s, "Upgrade");
    assert_no_header(s, "X-Hop");
    assert_no_header(s, "Transfer-Encoding");
    assert_header(s, "X-Keep", "2");
    assert_header(s, "Server", "up");
    assert_header(s, "Content-Length", "4");
    assert_one_complete_head(s);
}

/* Whatever the upstream sent and whatever framing is asked for, the client never
 * sees both Content-Length and Transfer-Encoding, and sees the one the framing says. */
static void test_resp_head_framing_headers(void **state)
{
    static const char *const upstream[] = {
        "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        "HTTP/1.1 200 OK\r\nX-No-Length: 1\r\n\r\n",
    };
    static const enum resp_framing framings[] = { RESP_NO_BODY, RESP_CONTENT_LENGTH, RESP_CHUNKED, RESP_CLOSE };
    size_t i, j;
    (void)state;

    for (i = 0; i < N(upstream); i++) {
        for (j = 0; j < N(framings); j++) {
            const struct http_head *h = response(upstream[i]);
            const char *s;
            int cl, te;
            if (framings[j] == RESP_CONTENT_LENGTH && !h->has_content_length)
                continue; /* http1_response_framing never asks for that */
            evbuffer_drain(out, evbuffer_get_length(out));
            assert_int_equal(http1_write_response_head(out, h, framings[j], 0, 0), 0);
            s = out_text();
            cl = header_count(s, "Content-Length", NULL, 0);
            te = header_count(s, "Transfer-Encoding", NULL, 0);
            assert_false(cl && te);
            switch (framings[j]) {
            case RESP_CONTENT_LENGTH:
                assert_header(s, "Content-Length", "7");
                break;
            case RESP_CHUNKED:
                assert_header(s, "Transfer-Encoding", "chunked");
                break;
            case RESP_CLOSE:
                assert_int_equal(cl + te, 0);
                assert_header(s, "Connection", "close");
                break;
            case RESP_NO_BODY:
                assert_int_equal(te, 0);
                break;
            }
            assert_one_complete_head(s);
        }
    }
}

static void test_resp_head_connection(void **state)
{
    static const char ok[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n";
    const char *s;
    (void)state;

    s = response_head(ok, 0, 1, 1);
    assert_header(s, "Connection", "close");
    evbuffer_drain(out, evbuffer_get_length(out));
    s = response_head(ok, 0, 0, 1);
    assert_header(s, "Connection", "close");
    evbuffer_drain(out, evbuffer_get_length(out));
    /* An HTTP/1.0 client kept alive must be told so. */
    s = response_head(ok, 0, 0, 0);
    assert_header(s, "Connection", "keep-alive");
    evbuffer_drain(out, evbuffer_get_length(out));
    /* HTTP/1.1 persistence is the default: nothing to say. */
    s = response_head(ok, 0, 1, 0);
    assert_no_header(s, "Connection");
    evbuffer_drain(out, evbuffer_get_length(out));
    /* Read-until-close framing closes even when the caller would keep the connection. */
    s = response_head("HTTP/1.1 200 OK\r\n\r\n", 0, 0, 0);
    assert_header(s, "Connection", "close");
    assert_no_header(s, "Transfer-Encoding");
    assert_no_header(s, "Content-Length");
}

static void test_resp_head_101(void **state)
{
    const char *s;
    (void)state;

    /* sidecar/proxy.c passes close=1 for a 101: the connection is handed over, not kept. */
    s = response_head("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                      "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
                      0, 1, 1);
    assert_int_equal(strncmp(s, "HTTP/1.1 101 Switching Protocols\r\n", 34), 0);
    assert_header(s, "Upgrade", "websocket");
    assert_header(s, "Connection", "upgrade");
    assert_header(s, "Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    assert_no_header(s, "Content-Length");
    assert_no_header(s, "Transfer-Encoding");
    assert_one_complete_head(s);
}

static void test_resp_head_reason(void **state)
{
    const char *s;
    (void)state;

    s = response_head("HTTP/1.1 404 Nicht Gefunden\r\nContent-Length: 0\r\n\r\n", 0, 1, 0);
    assert_int_equal(strncmp(s, "HTTP/1.1 404 Nicht Gefunden\r\n", 29), 0);
    evbuffer_drain(out, evbuffer_get_length(out));
    /* An upstream HTTP/1.0 response is sent as HTTP/1.1, reason kept. */
    s = response_head("HTTP/1.0 299 Custom Thing\r\nContent-Length: 0\r\n\r\n", 0, 1, 0);
    assert_int_equal(strncmp(s, "HTTP/1.1 299 Custom Thing\r\n", 27), 0);
    evbuffer_drain(out, evbuffer_get_length(out));
    /* No reason phrase: the standard one. */
    s = response_head("HTTP/1.1 503 \r\nContent-Length: 0\r\n\r\n", 0, 1, 0);
    assert_int_equal(strncmp(s, "HTTP/1.1 503 Service Unavailable\r\n", 34), 0);
}

static void test_resp_head_head_request_keeps_length(void **state)
{
    const char *s;
    (void)state;

    s = response_head("HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nContent-Type: text/html\r\n\r\n", 1, 1, 0);
    assert_header(s, "Content-Length", "1234");
    assert_no_header(s, "Transfer-Encoding");
    evbuffer_drain(out, evbuffer_get_length(out));
    s = response_head("HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\nETag: \"x\"\r\n\r\n", 0, 1, 0);
    assert_header(s, "Content-Length", "99");
    assert_no_header(s, "Transfer-Encoding");
}

static void test_resp_head_204_no_length(void **state)
{
    const char *s;
    (void)state;

    s = response_head("HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n", 0, 1, 0);
    assert_no_header(s, "Content-Length");
    assert_no_header(s, "Transfer-Encoding");
    evbuffer_drain(out, evbuffer_get_length(out));
    s = response_head("HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n", 1, 0, 0);
    assert_no_header(s, "Content-Length");
    evbuffer_drain(out, evbuffer_get_length(out));
    s = response_head("HTTP/1.1 204 No Content\r\n\r\n", 0, 1, 0);
    assert_no_header(s, "Content-Length");
    assert_no_header(s, "Transfer-Encoding");
    assert_one_complete_head(s);
}

/* RFC 9112 5.1: a proxy MUST remove whitespace between a field name and the colon
 * from a response before forwarding it. llhttp 8.1 accepts "Keep-Alive : ..." from
 * an upstream; sidecar/proxy.c refuses a response head that fails
 * http1_check_fields(), so such a head must fail it, or at least not reach the
 * client with the space (nor at all: hop-by-hop). */
static void test_resp_head_field_name_whitespace_not_forwarded(void **state)
{
    static const char text[] = "HTTP/1.1 200 OK\r\nKeep-Alive : timeout=5\r\nContent-Length: 0\r\n\r\n";
    const char *s, *line, *reason = NULL;
    llhttp_errno_t e;
    (void)state;

    msg_start(&resp, HTTP_RESPONSE, NO_LIMIT);
    e = msg_feed(&resp, text, strlen(text), 0);
    if (e != HPE_OK)
        return; /* the parser rejected it: fine */
    if (http1_check_fields(&resp.head, &reason) < 0) {
        assert_non_null(reason);
        return; /* refused before any head is written */
    }
    assert_int_equal(http1_write_response_head(out, &resp.head, RESP_CONTENT_LENGTH, 0, 0), 0);
    s = out_text();
    for (line = strstr(s, "\r\n") + 2; strncmp(line, "\r\n", 2) != 0; line = strstr(line, "\r\n") + 2) {
        size_t name_len = strcspn(line, ":\r");
        if (memchr(line, ' ', name_len) || memchr(line, '\t', name_len))
            print_error("field name with whitespace forwarded to the client:\n%s\n", s);
        assert_null(memchr(line, ' ', name_len));
        assert_null(memchr(line, '\t', name_len));
    }
}

/* Built with the feeders directly: bytes llhttp would not hand over today. */
static void head_with(struct http_head *h, const char *name, size_t nlen, const char *value, size_t vlen)
{
    http_head_reset(h);
    assert_int_equal(http_head_add_first(h, "/", 1, NO_LIMIT), 0);
    assert_int_equal(http_head_add_field(h, "Host", 4, NO_LIMIT), 0);
    assert_int_equal(add_value_direct(h, "a", 1, NO_LIMIT), 0);
    assert_int_equal(http_head_add_field(h, name, nlen, NO_LIMIT), 0);
    assert_int_equal(add_value_direct(h, value, vlen, NO_LIMIT), 0);
    h->method = HTTP_GET;
    h->major = 1;
    h->minor = 1;
}

/* Every byte, one at a time in a name and in a value: a name takes exactly
 * RFC 9110's tchar, a value everything but CR, LF and NUL. */
static void test_check_fields_every_byte(void **state)
{
    static const char tchar_other[] = "!#$%&'*+-.^_`|~";
    struct http_head *h = &req.head;
    const char *reason;
    int c;
    (void)state;

    for (c = 0; c < 256; c++) {
        char name[3] = { 'X', (char)c, 'Y' }, value[3] = { 'a', (char)c, 'b' };
        int tchar = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    (c != 0 && strchr(tchar_other, c) != NULL);
        int value_ok = c != '\r' && c != '\n' && c != 0;

        head_with(h, name, 3, "v", 1);
        if ((http1_check_fields(h, &reason) == 0) != tchar)
            print_error("byte 0x%02x in a name: %s\n", c, tchar ? "refused" : "accepted");
        assert_int_equal(http1_check_fields(h, &reason) == 0, tchar);
        head_with(h, "X-V", 3, value, 3);
        if ((http1_check_fields(h, &reason) == 0) != value_ok)
            print_error("byte 0x%02x in a value: %s\n", c, value_ok ? "refused" : "accepted");
        assert_int_equal(http1_check_fields(h, &reason) == 0, value_ok);
    }
    /* Longer values are checked eight bytes a step: every position, and bytes
     * next to the stop bytes (high bit set, or one off) that must pass. */
    for (c = 0; c < 256; c++) {
        int value_ok = c != '\r' && c != '\n' && c != 0;
        size_t pos;
        for (pos = 0; pos < 17; pos++) {
            char value[17];
            memset(value, c == 'x' ? 'y' : 'x', sizeof(value));
            value[pos] = (char)c;
            if (c == 0xff)
                value[(pos + 1) % 17] = (char)0x81;
            head_with(h, "X-V", 3, value, sizeof(value));
            if ((http1_check_fields(h, &reason) == 0) != value_ok)
                print_error("byte 0x%02x at %zu of a long value: %s\n", c, pos, value_ok ? "refused" : "accepted");
            assert_int_equal(http1_check_fields(h, &reason) == 0, value_ok);
        }
    }
}

/* Every byte inside a Host name: it is valid exactly when RFC 3986 allows it
 * unescaped in a reg-name (unreserved or sub-delims). */
static void test_check_host_every_byte(void **state)
{
    static const char plain_other[] = "-._~!$&'()*+,;=";
    struct http_head *h = &req.head;
    int c;
    (void)state;

    for (c = 0; c < 256; c++) {
        char host[3] = { 'a', (char)c, 'b' };
        int plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    (c != 0 && strchr(plain_other, c) != NULL);
        const char *reason = NULL;

        http_head_reset(h);
        assert_int_equal(http_head_add_first(h, "/", 1, NO_LIMIT), 0);
        assert_int_equal(http_head_add_field(h, "Host", 4, NO_LIMIT), 0);
        assert_int_equal(add_value_direct(h, host, 3, NO_LIMIT), 0);
        h->method = HTTP_GET;
        h->major = 1;
        h->minor = 1;
        if ((http1_check_request(h, &reason) == 0) != plain)
            print_error("Host byte 0x%02x: %s\n", c, plain ? "refused" : "accepted");
        assert_int_equal(http1_check_request(h, &reason) == 0, plain);
    }
}

static void test_check_fields(void **state)
{
    static const char *const bad_names[] = { "X Foo", "X-Foo ", " X-Foo", "X-Foo\t", "X:Foo", "X\"Foo", "X(Foo)",
                                             "X/Foo", "X@Foo", "X\x80" "Foo" };
    static const char *const good_names[] = { "X-Foo", "x_foo", "A", "!#$%&'*+-.^_`|~09azAZ" };
    static const struct {
        const char *v;
        size_t len;
    } bad_values[] = { { "a\rb", 3 }, { "a\nb", 3 }, { "a\r\n b", 5 }, { "a\0b", 3 }, { "\n", 1 } },
      good_values[] = { { "", 0 }, { "a b\tc", 5 }, { "caf\xc3\xa9", 5 }, { "\"q\";x=(y)", 9 } };
    struct http_head *h = &req.head;
    const char *reason;
    size_t i;
    (void)state;

    for (i = 0; i < N(bad_names); i++) {
        head_with(h, bad_names[i], strlen(bad_names[i]), "v", 1);
        reason = NULL;
        if (http1_check_fields(h, &reason) != -EINVAL)
            print_error("name \"%s\" accepted\n", bad_names[i]);
        assert_int_equal(http1_check_fields(h, &reason), -EINVAL);
        assert_non_null(reason);
        assert_int_equal(check(h), 400);
    }
    /* An empty name (a bare ":value" line) is not a field. */
    head_with(h, "", 0, "v", 1);
    assert_int_equal(http1_check_fields(h, &reason), -EINVAL);
    for (i = 0; i < N(good_names); i++) {
        head_with(h, good_names[i], strlen(good_names[i]), "v", 1);
        if (http1_check_fields(h, &reason) != 0)
            print_error("name \"%s\" refused\n", good_names[i]);
        assert_int_equal(http1_check_fields(h, &reason), 0);
        assert_int_equal(check(h), 0);
    }
    for (i = 0; i < N(bad_values); i++) {
        head_with(h, "X-V", 3, bad_values[i].v, bad_values[i].len);
        reason = NULL;
        assert_int_equal(http1_check_fields(h, &reason), -EINVAL);
        assert_non_null(reason);
        assert_int_equal(check(h), 400);
    }
    for (i = 0; i < N(good_values); i++) {
        head_with(h, "X-V", 3, good_values[i].v, good_values[i].len);
        assert_int_equal(http1_check_fields(h, &reason), 0);
        assert_int_equal(check(h), 0);
    }
    /* Through llhttp: an ordinary response head passes. */
    assert_int_equal(http1_check_fields(response("HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 0\r\n\r\n"),
                                        &reason),
                     0);
}

/* llhttp 8.1 parses HTTP/0.9 and HTTP/2.0 request lines; nextup speaks 1.x only. */
static void test_check_version(void **state)
{
    static const char *const texts[] = {
        "GET / HTTP/2.0\r\nHost: a\r\n\r\n",
        "GET / HTTP/0.9\r\nHost: a\r\n\r\n",
    };
    size_t i;
    (void)state;

    for (i = 0; i < N(texts); i++) {
        msg_start(&req, HTTP_REQUEST, NO_LIMIT);
        if (msg_feed(&req, texts[i], strlen(texts[i]), 0) != HPE_OK)
            continue; /* the parser rejected it: fine */
        assert_true(req.headers_done);
        assert_int_equal(check(&req.head), 400);
    }
    assert_int_equal(check(request("GET / HTTP/1.0\r\n\r\n")), 0);
    assert_int_equal(check(request("GET / HTTP/1.1\r\nHost: a\r\n\r\n")), 0);
}

/* ---- nextup's own responses ---- */

static void test_write_error(void **state)
{
    static const struct {
        int status;
        const char *text, *reason;
    } cases[] = {
        { 400, "Bad Request", "request target must be a path" },
        { 405, "Method Not Allowed", "CONNECT is not allowed" },
        { 417, "Expectation Failed", "unsupported Expect" },
        { 431, "Request Header Fields Too Large", "request head larger than NEXTUP_MAX_HEADER_BYTES" },
        { 502, "Bad Gateway", "no peer answered" },
        { 503, "Service Unavailable", "" },
        { 504, "Gateway Timeout", "upstream timeout" },
    };
    size_t i;
    (void)state;

    for (i = 0; i < N(cases); i++) {
        char line[128], body[256], cl[32];
        const char *s;
        size_t len;

        evbuffer_drain(out, evbuffer_get_length(out));
        assert_int_equal(http1_write_error(out, cases[i].status, cases[i].reason), 0);
        len = evbuffer_get_length(out);
        s = out_text();
        assert_int_equal(strlen(s), len);

        snprintf(line, sizeof(line), "HTTP/1.1 %d %s\r\n", cases[i].status, cases[i].text);
        assert_int_equal(strncmp(s, line, strlen(line)), 0);
        assert_header(s, "Content-Type", "text/plain");
        assert_header(s, "Connection", "close");
        snprintf(body, sizeof(body), "nextup: %s\n", cases[i].reason);
        snprintf(cl, sizeof(cl), "%zu", strlen(body));
        assert_header(s, "Content-Length", cl);
        assert_string_equal(strstr(s, "\r\n\r\n") + 4, body);

        /* A client's parser reads exactly that message. */
        msg_start(&resp, HTTP_RESPONSE, NO_LIMIT);
        assert_int_equal(msg_feed(&resp, s, len, 0), HPE_OK);
        assert_true(resp.complete);
        assert_int_equal(resp.head.status, cases[i].status);
        assert_int_equal(resp.head.keep_alive, 0);
        assert_int_equal(resp.body_len, strlen(body));
        assert_memory_equal(resp.body, body, resp.body_len);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
        T(test_head_get),
        T(test_head_has_token),
        T(test_pieces_joined),
        T(test_head_size_grows),
        T(test_too_many_headers),
        T(test_byte_limit),
        T(test_hop_by_hop_fixed),
        T(test_hop_by_hop_named_in_connection),
        T(test_index_answers_like_names),
        T(test_fields_named_in_connection_not_forwarded),
        T(test_check_normal_get),
        T(test_check_connect),
        T(test_check_target_forms),
        T(test_is_absolute_form),
        T(test_write_request_head_rewrite),
        T(test_check_host),
        T(test_check_host_value),
        T(test_check_expect),
        T(test_llhttp_rejects_smuggling),
        T(test_obs_fold_rejected),
        T(test_obs_fold_after_empty_value_merged),
        T(test_value_continuity),
        T(test_field_name_whitespace_rejected),
        T(test_req_head_request_line),
        T(test_req_head_request_line_10_and_query),
        T(test_req_head_hop_by_hop_removed),
        T(test_req_head_host_kept),
        T(test_req_head_xff_appended),
        T(test_req_head_xff_new),
        T(test_req_head_xff_merged),
        T(test_req_head_xfp),
        T(test_req_head_expect_dropped),
        T(test_req_head_content_length),
        T(test_req_head_chunked),
        T(test_req_head_other_transfer_coding_not_lost),
        T(test_req_head_host_fallback),
        T(test_req_head_upgrade),
        T(test_response_framing),
        T(test_resp_head_hop_by_hop_removed),
        T(test_resp_head_framing_headers),
        T(test_resp_head_connection),
        T(test_resp_head_101),
        T(test_resp_head_reason),
        T(test_resp_head_head_request_keeps_length),
        T(test_resp_head_204_no_length),
        T(test_resp_head_field_name_whitespace_not_forwarded),
        T(test_check_fields),
        T(test_check_fields_every_byte),
        T(test_check_host_every_byte),
        T(test_check_version),
        T(test_write_error),
#undef T
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
