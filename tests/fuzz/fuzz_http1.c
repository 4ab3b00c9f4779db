/* libFuzzer target for sidecar/http1.c: what nextup forwards must be one
 * well-formed message that says what the received one said.
 *
 * Input: byte 0 picks the direction and options, byte 1 where the message is
 * cut in two reads, the rest is the message. A request that llhttp and
 * http1_check_request() accept is written with http1_write_request_head(); a
 * response that llhttp and the checks sidecar/proxy.c makes accept is written
 * with http1_write_response_head(). The written head is parsed again by a fresh
 * llhttp and must:
 *   - parse, as exactly one head with nothing left over;
 *   - keep the method and target (requests) or the status (responses);
 *   - keep the body's framing: the same Content-Length, or chunked alone;
 *   - carry no hop-by-hop field but those nextup writes itself (Transfer-Encoding:
 *     chunked, Connection: close/keep-alive/upgrade, Upgrade on an upgrade);
 *   - have exactly one Host (requests), and this client last in X-Forwarded-For.
 * And the field index of the received head must answer as a search by name does.
 * A broken property aborts, which libFuzzer reports with the input. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <llhttp.h>

#include "http1.h"

#define CLIENT_IP "192.0.2.7"
#define HOST_FALLBACK "fallback.test"
#define HEAD_LIMIT (64 * 1024)

struct msg {
    llhttp_t parser;
    struct http_head head;
    int feed_err;
    int headers_done;
};

static llhttp_settings_t settings;

static void fail(const char *what, const struct msg *m)
{
    fprintf(stderr, "fuzz_http1: property broken: %s (status %d, method %d, %d headers)\n", what, m->head.status,
            m->head.method, m->head.n_hdr);
    abort();
}

static int fed(struct msg *m, int r)
{
    if (r && !m->feed_err)
        m->feed_err = r;
    return r ? -1 : 0;
}

static int on_first(llhttp_t *p, const char *at, size_t len)
{
    struct msg *m = p->data;
    return fed(m, http_head_add_first(&m->head, at, len, HEAD_LIMIT));
}

static int on_field(llhttp_t *p, const char *at, size_t len)
{
    struct msg *m = p->data;
    return fed(m, http_head_add_field(&m->head, at, len, HEAD_LIMIT));
}

static int on_value(llhttp_t *p, const char *at, size_t len)
{
    struct msg *m = p->data;
    return fed(m, http_head_add_value(&m->head, at, len, HEAD_LIMIT));
}

static int on_value_complete(llhttp_t *p)
{
    http_head_value_complete(&((struct msg *)p->data)->head);
    return 0;
}

/* The head ends here, as in sidecar/proxy.c. */
static int on_headers_complete(llhttp_t *p)
{
    struct msg *m = p->data;

    http_head_take_parser_facts(&m->head, p);
    m->headers_done = 1;
    return HPE_PAUSED;
}

static void msg_init(struct msg *m, enum llhttp_type type)
{
    memset(m, 0, sizeof(*m));
    http_head_reset(&m->head);
    llhttp_init(&m->parser, type, &settings);
    m->parser.data = m;
}

/* Feeds [off, off+n) of <data> as one read, in its own allocation, as
 * proxy.c's parse_evbuffer() does: 1 while the head is still open, 0 once it
 * is complete, -1 on a parse error. */
static int feed(struct msg *m, const uint8_t *data, size_t off, size_t n)
{
    char *piece = malloc(n ? n : 1);
    llhttp_errno_t e;

    if (!piece)
        abort();
    memcpy(piece, data + off, n);
    http_head_chunk(&m->head, piece, off);
    e = llhttp_execute(&m->parser, piece, n);
    free(piece);
    if (e == HPE_PAUSED && m->headers_done && !m->feed_err)
        return 0;
    return e == HPE_OK && !m->feed_err ? 1 : -1;
}

static size_t count(const struct http_head *h, const char *name)
{
    size_t n = 0, len = strlen(name);
    int i;

    for (i = 0; i < h->n_hdr; i++)
        if (h->hdr[i].name_len == len && strncasecmp(h->buf + h->hdr[i].name_off, name, len) == 0)
            n++;
    return n;
}

static int value_is(const struct http_head *h, const char *name, const char *want)
{
    size_t len;
    const char *v = http_head_get(h, name, &len);

    return v && len == strlen(want) && strncasecmp(v, want, len) == 0;
}

/* The index http_head_take_parser_facts() built answers as a search by name. */
static void check_index(const struct msg *in)
{
    static const char *const names[] = { "host", "connection", "keep-alive", "te", "trailer", "transfer-encoding",
                                         "upgrade", "proxy-connection", "content-length", "x-forwarded-for",
                                         "x-forwarded-proto", "expect", "x-request-id", "traceparent",
                                         "idempotency-key", "proxy-authorization", "proxy-authenticate" };
    size_t i;
    int k;

    for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        size_t len = 0, n = strlen(names[i]);
        const char *v = http_head_get(&in->head, names[i], &len);
        const char *first = NULL;

        if ((size_t)http_head_count(&in->head, names[i]) != count(&in->head, names[i]))
            fail("the index counts a field differently", in);
        for (k = 0; k < in->head.n_hdr && !first; k++) {
            const struct http_header *hd = &in->head.hdr[k];
            uint32_t skip = 0;
            if (hd->name_len != n || strncasecmp(in->head.buf + hd->name_off, names[i], n) != 0)
                continue;
            /* http_head_get() trims the value's leading blanks. */
            while (skip < hd->value_len && (in->head.buf[hd->value_off + skip] == ' ' ||
                                            in->head.buf[hd->value_off + skip] == '\t'))
                skip++;
            first = in->head.buf + hd->value_off + skip;
        }
        if (v != first)
            fail("the index finds another field", in);
    }
}

/* Parses what nextup wrote: one head, nothing after it (no second message smuggled in). */
static void reparse(struct msg *out, enum llhttp_type type, struct evbuffer *buf, const struct msg *orig)
{
    size_t n = evbuffer_get_length(buf);
    const uint8_t *bytes = evbuffer_pullup(buf, -1);
    llhttp_errno_t e;

    msg_init(out, type);
    http_head_chunk(&out->head, (const char *)bytes, 0);
    e = llhttp_execute(&out->parser, (const char *)bytes, n);
    if (e != HPE_PAUSED || !out->headers_done || out->feed_err)
        fail("the written head does not parse", orig);
    if (llhttp_get_error_pos(&out->parser) != (const char *)bytes + n)
        fail("bytes after the written head", orig);
}

static void check_no_hop_by_hop(const struct msg *out, const struct msg *orig, int upgrade)
{
    static const char *const hop[] = { "keep-alive", "proxy-connection", "te", "trailer", "proxy-authorization",
                                       "proxy-authenticate" };
    size_t i;

    for (i = 0; i < sizeof(hop) / sizeof(hop[0]); i++)
        if (count(&out->head, hop[i]))
            fail("a hop-by-hop field was forwarded", orig);
    if (count(&out->head, "upgrade") > (size_t)(upgrade ? 1 : 0))
        fail("Upgrade forwarded outside an upgrade", orig);
    if (count(&out->head, "connection") > 1)
        fail("more than one Connection field", orig);
    if (count(&out->head, "transfer-encoding") > 1 ||
        (count(&out->head, "transfer-encoding") && !value_is(&out->head, "transfer-encoding", "chunked")))
        fail("Transfer-Encoding other than one 'chunked'", orig);
    if (out->head.chunked && out->head.has_content_length)
        fail("both chunked and Content-Length", orig);
}

static void check_request(const struct msg *in)
{
    const char *reason = NULL;
    struct evbuffer *buf;
    struct msg out;
    size_t xff_len;
    const char *xff;

    if (http1_check_request(&in->head, &reason) != 0)
        return;
    buf = evbuffer_new();
    if (!buf || http1_write_request_head(buf, &in->head, CLIENT_IP, HOST_FALLBACK, "http", NULL) != 0)
        abort();
    reparse(&out, HTTP_REQUEST, buf, in);
    if (out.head.method != in->head.method)
        fail("the method changed", in);
    if (out.head.first_len != in->head.first_len ||
        memcmp(out.head.buf + out.head.first_off, in->head.buf + in->head.first_off, in->head.first_len) != 0)
        fail("the target changed", in);
    if (in->head.chunked != out.head.chunked)
        fail("chunked framing not kept", in);
    if (!in->head.chunked && (in->head.has_content_length != out.head.has_content_length ||
                              (in->head.has_content_length && in->head.content_length != out.head.content_length)))
        fail("Content-Length not kept", in);
    if (count(&out.head, "host") != 1)
        fail("not exactly one Host", in);
    check_no_hop_by_hop(&out, in, in->head.upgrade);
    xff = http_head_get(&out.head, "x-forwarded-for", &xff_len);
    if (count(&out.head, "x-forwarded-for") != 1 || xff_len < strlen(CLIENT_IP) ||
        memcmp(xff + xff_len - strlen(CLIENT_IP), CLIENT_IP, strlen(CLIENT_IP)) != 0)
        fail("X-Forwarded-For does not end with the client", in);
    http_head_free(&out.head);
    evbuffer_free(buf);
}

static void check_response(const struct msg *in, uint8_t opts)
{
    int is_head = (opts >> 1) & 1, client10 = (opts >> 2) & 1, close = (opts >> 3) & 1;
    const char *reason = NULL;
    enum resp_framing framing;
    struct evbuffer *buf;
    struct msg out;

    /* What sidecar/proxy.c lets through to the client. */
    if (http1_check_fields(&in->head, &reason) < 0 || !http1_only_chunked(&in->head))
        return;
    framing = http1_response_framing(&in->head, is_head, 1, client10 ? 0 : 1);
    buf = evbuffer_new();
    if (!buf || http1_write_response_head(buf, &in->head, framing, close, client10) != 0)
        abort();
    reparse(&out, HTTP_RESPONSE, buf, in);
    if (out.head.status != in->head.status)
        fail("the status changed", in);
    if ((framing == RESP_CHUNKED) != (out.head.chunked != 0))
        fail("chunked framing differs from the decision", in);
    if (framing == RESP_CONTENT_LENGTH &&
        (!out.head.has_content_length || out.head.content_length != in->head.content_length))
        fail("Content-Length not kept", in);
    if (framing == RESP_CLOSE && (out.head.has_content_length || out.head.chunked))
        fail("a close-delimited body announced a length", in);
    check_no_hop_by_hop(&out, in, in->head.status == 101);
    http_head_free(&out.head);
    evbuffer_free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct msg in;
    uint8_t opts;
    size_t len, cut;
    int r;

    if (size < 2)
        return 0;
    if (!settings.on_header_field) {
        llhttp_settings_init(&settings);
        settings.on_url = on_first;
        settings.on_status = on_first;
        settings.on_header_field = on_field;
        settings.on_header_value = on_value;
        settings.on_header_value_complete = on_value_complete;
        settings.on_headers_complete = on_headers_complete;
    }
    opts = data[0];
    len = size - 2;
    cut = len ? data[1] % (len + 1) : 0;
    data += 2;
    msg_init(&in, (opts & 1) ? HTTP_RESPONSE : HTTP_REQUEST);
    r = feed(&in, data, 0, cut);
    if (r == 1)
        r = feed(&in, data, cut, len - cut);
    /* nextup adds up to 4 fields; the re-parse has the same HTTP_MAX_HEADERS table. */
    if (r == 0)
        check_index(&in);
    if (r == 0 && http_head_size(&in.head) <= HEAD_LIMIT && in.head.n_hdr <= HTTP_MAX_HEADERS - 4) {
        if (opts & 1)
            check_response(&in, opts);
        else
            check_request(&in);
    }
    http_head_free(&in.head);
    return 0;
}
