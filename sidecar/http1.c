#include "http1.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stddef.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <llhttp.h>

void http_head_reset(struct http_head *h)
{
    char *buf = h->buf;
    size_t cap = h->cap;
    const char *chunk_start = h->chunk_start;
    uint64_t chunk_offset = h->chunk_offset;

    memset(h, 0, offsetof(struct http_head, hdr));
    h->buf = buf;
    h->cap = cap;
    h->chunk_start = chunk_start;
    h->chunk_offset = chunk_offset;
}

void http_head_take_parser_facts(struct http_head *h, const llhttp_t *p)
{
    /* The fields llhttp's getters return (they take a non-const parser). */
    h->method = p->method;
    h->status = p->status_code;
    h->major = p->http_major;
    h->minor = p->http_minor;
    h->upgrade = p->upgrade;
    h->chunked = (p->flags & F_CHUNKED) != 0;
    h->has_content_length = (p->flags & F_CONTENT_LENGTH) != 0;
    h->content_length = p->content_length;
    h->keep_alive = llhttp_should_keep_alive(p);
}

void http_head_free(struct http_head *h)
{
    free(h->buf);
    free(h->hdr);
    memset(h, 0, sizeof(*h));
}

/* Room for one more header entry: most heads have a handful, so the array
 * starts small and doubles, rather than every connection holding 128. */
static int head_grow_hdr(struct http_head *h)
{
    int cap = h->hdr_cap ? h->hdr_cap * 2 : 16;
    struct http_header *nh;

    if (cap > HTTP_MAX_HEADERS)
        cap = HTTP_MAX_HEADERS;
    nh = realloc(h->hdr, (size_t)cap * sizeof(*nh));
    if (!nh)
        return -ENOMEM;
    h->hdr = nh;
    h->hdr_cap = cap;
    return 0;
}

static int head_append(struct http_head *h, const char *at, size_t len, size_t limit)
{
    if (h->len + len > limit || h->len + len > UINT32_MAX)
        return -E2BIG;
    if (len == 0)
        return 0;   /* llhttp may call with nothing; buf may still be NULL */
    if (h->len + len > h->cap) {
        size_t cap = h->cap ? h->cap : 1024;
        char *nb;
        while (cap < h->len + len)
            cap *= 2;
        nb = realloc(h->buf, cap);
        if (!nb)
            return -ENOMEM;
        h->buf = nb;
        h->cap = cap;
    }
    memcpy(h->buf + h->len, at, len);
    h->len += len;
    return 0;
}

int http_head_add_first(struct http_head *h, const char *at, size_t len, size_t limit)
{
    if (h->first_len == 0)
        h->first_off = (uint32_t)h->len;
    h->first_len += (uint32_t)len;
    return head_append(h, at, len, limit);
}

int http_head_add_field(struct http_head *h, const char *at, size_t len, size_t limit)
{
    /* llhttp may deliver a name in pieces; a new header starts after a value. */
    if (h->n_hdr == 0 || h->in_value) {
        if (h->n_hdr == HTTP_MAX_HEADERS) {
            h->too_many = 1;
            return -E2BIG;
        }
        if (h->n_hdr == h->hdr_cap && head_grow_hdr(h) < 0)
            return -ENOMEM;
        h->hdr[h->n_hdr].name_off = (uint32_t)h->len;
        h->hdr[h->n_hdr].name_len = 0;
        h->hdr[h->n_hdr].value_off = (uint32_t)h->len;
        h->hdr[h->n_hdr].value_len = 0;
        h->n_hdr++;
        h->in_value = 0;
        h->value_done = 0;
    }
    h->hdr[h->n_hdr - 1].name_len += (uint32_t)len;
    return head_append(h, at, len, limit);
}

int http_head_add_value(struct http_head *h, const char *at, size_t len, size_t limit)
{
    struct http_header *hd;

    if (h->n_hdr == 0)
        return -EINVAL;
    hd = &h->hdr[h->n_hdr - 1];
    if (h->value_done)
        return -EPROTO;
    /* A piece that does not start where the last one ended: llhttp skipped a
     * line break inside the value, i.e. obs-fold. */
    {
        uint64_t off = h->chunk_offset + (uint64_t)(at - h->chunk_start);
        if (h->in_value && off != h->value_end)
            return -EPROTO;
        h->value_end = off + len;
    }
    if (!h->in_value) {
        hd->value_off = (uint32_t)h->len;
        hd->value_len = 0;
        h->in_value = 1;
    }
    hd->value_len += (uint32_t)len;
    return head_append(h, at, len, limit);
}

void http_head_value_complete(struct http_head *h)
{
    h->value_done = 1;
}

size_t http_head_size(const struct http_head *h)
{
    /* Each header line adds ": " and CRLF; the first line about 16 more. */
    return h->len + 4 * (size_t)h->n_hdr + 16;
}

static void trimmed(const struct http_head *h, const struct http_header *hd, const char **v, size_t *vlen)
{
    const char *p = h->buf + hd->value_off;
    size_t n = hd->value_len;

    while (n > 0 && (*p == ' ' || *p == '\t')) {
        p++;
        n--;
    }
    while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
        n--;
    *v = p;
    *vlen = n;
}

static int name_is(const struct http_head *h, const struct http_header *hd, const char *name)
{
    size_t n = strlen(name);
    return hd->name_len == n && strncasecmp(h->buf + hd->name_off, name, n) == 0;
}

const char *http_head_get(const struct http_head *h, const char *name, size_t *len)
{
    int i;

    for (i = 0; i < h->n_hdr; i++) {
        if (name_is(h, &h->hdr[i], name)) {
            const char *v;
            trimmed(h, &h->hdr[i], &v, len);
            return v;
        }
    }
    return NULL;
}

/* Calls <fn> for each comma-separated, trimmed token of <v>; stops at a non-zero return. */
static int each_token(const char *v, size_t vlen, int (*fn)(const char *tok, size_t n, const void *arg),
                      const void *arg)
{
    size_t i = 0;

    while (i < vlen) {
        size_t start, end;
        while (i < vlen && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            i++;
        start = i;
        while (i < vlen && v[i] != ',')
            i++;
        end = i;
        while (end > start && (v[end - 1] == ' ' || v[end - 1] == '\t'))
            end--;
        if (end > start) {
            int r = fn(v + start, end - start, arg);
            if (r)
                return r;
        }
    }
    return 0;
}

static int token_equals(const char *tok, size_t n, const void *arg)
{
    const char *want = arg;
    return strlen(want) == n && strncasecmp(tok, want, n) == 0;
}

int http_head_has_token(const struct http_head *h, const char *name, const char *token)
{
    int i;

    for (i = 0; i < h->n_hdr; i++) {
        const char *v;
        size_t vlen;
        if (!name_is(h, &h->hdr[i], name))
            continue;
        trimmed(h, &h->hdr[i], &v, &vlen);
        if (each_token(v, vlen, token_equals, token))
            return 1;
    }
    return 0;
}

struct span {
    const char *p;
    size_t n;
};

static int token_matches_span(const char *tok, size_t n, const void *arg)
{
    const struct span *s = arg;
    return n == s->n && strncasecmp(tok, s->p, n) == 0;
}

int http1_is_hop_by_hop(const struct http_head *h, const char *name, size_t len)
{
    static const char *const fixed[] = {
        "connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade",
        "proxy-connection", "proxy-authenticate", "proxy-authorization",
    };
    struct span s = { name, len };
    size_t i;
    int k;

    for (i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++)
        if (strlen(fixed[i]) == len && strncasecmp(fixed[i], name, len) == 0)
            return 1;
    /* Connection may not take Host away: a request without Host is not HTTP/1.1. */
    if (len == 4 && strncasecmp(name, "host", 4) == 0)
        return 0;
    for (k = 0; k < h->n_hdr; k++) {
        const char *v;
        size_t vlen;
        if (!name_is(h, &h->hdr[k], "connection"))
            continue;
        trimmed(h, &h->hdr[k], &v, &vlen);
        if (each_token(v, vlen, token_matches_span, &s))
            return 1;
    }
    return 0;
}

static int token_not_chunked(const char *tok, size_t n, const void *arg)
{
    (void)arg;
    return !(n == 7 && strncasecmp(tok, "chunked", 7) == 0);
}

int http1_only_chunked(const struct http_head *h)
{
    int i;

    for (i = 0; i < h->n_hdr; i++) {
        const char *v;
        size_t vlen;
        if (!name_is(h, &h->hdr[i], "transfer-encoding"))
            continue;
        trimmed(h, &h->hdr[i], &v, &vlen);
        if (each_token(v, vlen, token_not_chunked, NULL))
            return 0;
    }
    return 1;
}

int http_head_count(const struct http_head *h, const char *name)
{
    int i, n = 0;

    for (i = 0; i < h->n_hdr; i++)
        n += name_is(h, &h->hdr[i], name);
    return n;
}

static int is_tchar(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

int http1_check_fields(const struct http_head *h, const char **reason)
{
    int i;
    uint32_t k;

    for (i = 0; i < h->n_hdr; i++) {
        const struct http_header *hd = &h->hdr[i];
        if (hd->name_len == 0) {
            *reason = "empty header name";
            return -EINVAL;
        }
        /* A space before the colon, for one, makes a name that is not a token (RFC 9112 5.1). */
        for (k = 0; k < hd->name_len; k++)
            if (!is_tchar((unsigned char)h->buf[hd->name_off + k])) {
                *reason = "invalid character in a header name";
                return -EINVAL;
            }
        /* CR or LF left in a value means obs-fold or a bare line break; NUL is never valid. */
        for (k = 0; k < hd->value_len; k++) {
            unsigned char c = (unsigned char)h->buf[hd->value_off + k];
            if (c == '\r' || c == '\n' || c == 0) {
                *reason = "invalid character in a header value (obs-fold, bare CR/LF or NUL)";
                return -EINVAL;
            }
        }
    }
    return 0;
}

static int is_hex(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* RFC 3986 unreserved / sub-delims. */
static int is_uri_plain(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != 0 && strchr("-._~!$&'()*+,;=", c) != NULL);
}

/* RFC 3986 reg-name, which covers IPv4address; empty is refused: it names no host. */
static int reg_name_valid(const char *s, size_t n)
{
    size_t i;

    if (n == 0)
        return 0;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '%') {
            if (i + 2 >= n || !is_hex((unsigned char)s[i + 1]) || !is_hex((unsigned char)s[i + 2]))
                return 0;
            i += 2;
        } else if (!is_uri_plain(c)) {
            return 0;
        }
    }
    return 1;
}

/* What RFC 3986 allows between the brackets of an IP-literal: IPv6address or IPvFuture. */
static int ip_literal_valid(const char *s, size_t n)
{
    char buf[INET6_ADDRSTRLEN];
    struct in6_addr addr;
    size_t i;

    if (n > 1 && (s[0] == 'v' || s[0] == 'V')) {
        /* IPvFuture = "v" 1*HEXDIG "." 1*( unreserved / sub-delims / ":" ) */
        for (i = 1; i < n && is_hex((unsigned char)s[i]); i++)
            ;
        if (i == 1 || i + 1 >= n || s[i] != '.')
            return 0;
        for (i++; i < n; i++)
            if (!is_uri_plain((unsigned char)s[i]) && s[i] != ':')
                return 0;
        return 1;
    }
    if (n == 0 || n >= sizeof(buf))
        return 0;
    memcpy(buf, s, n);
    buf[n] = '\0';
    return inet_pton(AF_INET6, buf, &addr) == 1;
}

/* RFC 9110 7.2: Host = uri-host [ ":" port ], port = *DIGIT. */
static int host_valid(const char *v, size_t n)
{
    size_t host_len, i;

    if (n == 0)
        return 0;
    if (v[0] == '[') {
        const char *end = memchr(v, ']', n);
        if (!end || !ip_literal_valid(v + 1, (size_t)(end - v) - 1))
            return 0;
        host_len = (size_t)(end - v) + 1;
    } else {
        const char *colon = memchr(v, ':', n);
        host_len = colon ? (size_t)(colon - v) : n;
        if (!reg_name_valid(v, host_len))
            return 0;
    }
    if (host_len < n && v[host_len] != ':')
        return 0;
    for (i = host_len + 1; i < n; i++)
        if (v[i] < '0' || v[i] > '9')
            return 0;
    return 1;
}

int http1_is_absolute_form(const char *target, size_t len)
{
    size_t i = 0;

    /* scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ), then "://" */
    if (len == 0 || !((target[0] | 0x20) >= 'a' && (target[0] | 0x20) <= 'z'))
        return 0;
    while (i < len && (((target[i] | 0x20) >= 'a' && (target[i] | 0x20) <= 'z') || (target[i] >= '0' && target[i] <= '9') ||
                       target[i] == '+' || target[i] == '-' || target[i] == '.'))
        i++;
    return len - i >= 3 && memcmp(target + i, "://", 3) == 0;
}

int http1_check_request(const struct http_head *req, const char **reason)
{
    const char *target = req->buf + req->first_off;
    size_t tlen = req->first_len;
    const char *expect, *host;
    size_t elen, hlen;

    if (req->major != 1) {
        *reason = "only HTTP/1.0 and HTTP/1.1 are accepted";
        return 400;
    }
    if (http1_check_fields(req, reason) < 0)
        return 400;
    if (req->method == HTTP_CONNECT) {
        *reason = "CONNECT is not allowed: nextup only forwards to its configured peers";
        return 405;
    }
    if (tlen == 1 && target[0] == '*') {
        if (req->method != HTTP_OPTIONS) {
            *reason = "asterisk-form target is only valid with OPTIONS";
            return 400;
        }
    } else if (tlen == 0 || (target[0] != '/' && !http1_is_absolute_form(target, tlen))) {
        *reason = "request target must be a path or an absolute URL";
        return 400;
    }
    if (req->major == 1 && req->minor >= 1 && http_head_count(req, "host") != 1) {
        *reason = "HTTP/1.1 request needs exactly one Host header";
        return 400;
    }
    if (http_head_count(req, "host") > 1) {
        *reason = "more than one Host header";
        return 400;
    }
    /* A peer (or the service choice) would read an authority out of whatever is here. */
    host = http_head_get(req, "host", &hlen);
    if (host && !host_valid(host, hlen)) {
        *reason = hlen ? "invalid Host header (host[:port] expected)" : "empty Host header";
        return 400;
    }
    if (http_head_count(req, "transfer-encoding") > 0) {
        if (req->has_content_length) {
            *reason = "both Content-Length and Transfer-Encoding";
            return 400;
        }
        if (!req->chunked) {
            *reason = "Transfer-Encoding must end with chunked";
            return 400;
        }
        /* nextup re-chunks bodies; another coding under chunked would be lost on the way. */
        if (!http1_only_chunked(req)) {
            *reason = "only the chunked transfer coding is supported";
            return 501;
        }
    }
    if (http_head_count(req, "content-length") > 1) {
        *reason = "repeated Content-Length";
        return 400;
    }
    expect = http_head_get(req, "expect", &elen);
    if (expect && !(elen == 12 && strncasecmp(expect, "100-continue", 12) == 0)) {
        *reason = "unsupported Expect";
        return 417;
    }
    return 0;
}

/* A head is built here and handed to the output in one evbuffer_add: every add to
 * a bufferevent's output runs its callbacks, and printf per header showed in
 * profiles. The inline buffer holds ordinary heads; larger ones go to the heap. */
struct head_out {
    char *p;
    size_t len, cap;
    int oom;
    char inline_buf[2048];
};

static void ho_init(struct head_out *o)
{
    o->p = o->inline_buf;
    o->len = 0;
    o->cap = sizeof(o->inline_buf);
    o->oom = 0;
}

static void ho_add(struct head_out *o, const char *s, size_t n)
{
    if (o->oom)
        return;
    if (o->len + n > o->cap) {
        size_t cap = o->cap * 2 > o->len + n ? o->cap * 2 : o->len + n;
        char *p = o->p == o->inline_buf ? malloc(cap) : realloc(o->p, cap);
        if (!p) {
            o->oom = 1;
            return;
        }
        if (o->p == o->inline_buf)
            memcpy(p, o->inline_buf, o->len);
        o->p = p;
        o->cap = cap;
    }
    memcpy(o->p + o->len, s, n);
    o->len += n;
}

static void ho_str(struct head_out *o, const char *s)
{
    ho_add(o, s, strlen(s));
}

static void ho_u64(struct head_out *o, uint64_t v)
{
    char digits[20];
    size_t i = sizeof(digits);

    do {
        digits[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    ho_add(o, digits + i, sizeof(digits) - i);
}

/* Appends the head to <out> and frees what <o> holds; 0 or -ENOMEM. */
static int ho_finish(struct head_out *o, struct evbuffer *out)
{
    int r = o->oom || evbuffer_add(out, o->p, o->len) < 0 ? -ENOMEM : 0;

    if (o->p != o->inline_buf)
        free(o->p);
    return r;
}

static void write_header(struct head_out *o, const struct http_head *h, const struct http_header *hd)
{
    const char *v;
    size_t vlen;

    trimmed(h, hd, &v, &vlen);
    ho_add(o, h->buf + hd->name_off, hd->name_len);
    ho_add(o, ": ", 2);
    ho_add(o, v, vlen);
    ho_add(o, "\r\n", 2);
}

/* Headers nextup writes itself on the way to a peer, never copied. */
static int request_header_is_rewritten(const struct http_head *h, const struct http_header *hd)
{
    return name_is(h, hd, "content-length") || name_is(h, hd, "x-forwarded-for") ||
           name_is(h, hd, "x-forwarded-proto") || name_is(h, hd, "expect");
}

int http1_write_request_head(struct evbuffer *out, const struct http_head *req, const char *client_ip,
                             const char *host_fallback, const char *proto, const char *request_id)
{
    return http1_write_request_head_rw(out, req, client_ip, host_fallback, proto, request_id, NULL);
}

int http1_write_request_head_rw(struct evbuffer *out, const struct http_head *req, const char *client_ip,
                                const char *host_fallback, const char *proto, const char *request_id,
                                const struct http1_rewrite *rw)
{
    struct head_out o;
    int i, have_xff = 0;

    ho_init(&o);
    ho_str(&o, llhttp_method_name((llhttp_method_t)req->method));
    ho_add(&o, " ", 1);
    if (rw && rw->target) {
        if (rw->target_slash)
            ho_add(&o, "/", 1);
        ho_add(&o, rw->target, rw->target_len);
    } else {
        ho_add(&o, req->buf + req->first_off, req->first_len);
    }
    ho_add(&o, " HTTP/1.1\r\n", 11);
    if (rw && rw->host) {
        ho_add(&o, "Host: ", 6);
        ho_add(&o, rw->host, rw->host_len);
        ho_add(&o, "\r\n", 2);
    }
    for (i = 0; i < req->n_hdr; i++) {
        const struct http_header *hd = &req->hdr[i];
        if (http1_is_hop_by_hop(req, req->buf + hd->name_off, hd->name_len) || request_header_is_rewritten(req, hd) ||
            (request_id && name_is(req, hd, "x-request-id")) || (rw && rw->host && name_is(req, hd, "host")))
            continue;
        write_header(&o, req, hd);
    }
    if (request_id) {
        ho_add(&o, "X-Request-Id: ", 14);
        ho_str(&o, request_id);
        ho_add(&o, "\r\n", 2);
    }
    if (http_head_count(req, "host") == 0 && host_fallback && !(rw && rw->host)) {
        ho_add(&o, "Host: ", 6);
        ho_str(&o, host_fallback);
        ho_add(&o, "\r\n", 2);
    }
    /* Earlier hops' X-Forwarded-For values keep their order; this client goes last. */
    ho_add(&o, "X-Forwarded-For: ", 17);
    for (i = 0; i < req->n_hdr; i++) {
        const char *v;
        size_t vlen;
        if (!name_is(req, &req->hdr[i], "x-forwarded-for"))
            continue;
        trimmed(req, &req->hdr[i], &v, &vlen);
        if (vlen == 0)
            continue;
        if (have_xff)
            ho_add(&o, ", ", 2);
        ho_add(&o, v, vlen);
        have_xff = 1;
    }
    if (have_xff)
        ho_add(&o, ", ", 2);
    ho_str(&o, client_ip);
    ho_add(&o, "\r\nX-Forwarded-Proto: ", 21);
    ho_str(&o, proto ? proto : "http");
    ho_add(&o, "\r\n", 2);
    if (req->upgrade) {
        size_t ulen;
        const char *up = http_head_get(req, "upgrade", &ulen);
        if (up) {
            ho_add(&o, "Upgrade: ", 9);
            ho_add(&o, up, ulen);
            ho_add(&o, "\r\nConnection: upgrade\r\n", 23);
        }
    }
    if (req->chunked) {
        ho_add(&o, "Transfer-Encoding: chunked\r\n", 28);
    } else if (req->has_content_length) {
        ho_add(&o, "Content-Length: ", 16);
        ho_u64(&o, req->content_length);
        ho_add(&o, "\r\n", 2);
    }
    ho_add(&o, "\r\n", 2);
    return ho_finish(&o, out);
}

enum resp_framing http1_response_framing(const struct http_head *resp, int request_is_head, int client_major,
                                         int client_minor)
{
    if (request_is_head || resp->status < 200 || resp->status == 204 || resp->status == 304)
        return RESP_NO_BODY;
    if (resp->has_content_length && !resp->chunked)
        return RESP_CONTENT_LENGTH;
    if (client_major == 1 && client_minor >= 1)
        return RESP_CHUNKED;
    return RESP_CLOSE;
}

int http1_write_response_head(struct evbuffer *out, const struct http_head *resp, enum resp_framing framing,
                              int close, int client_http10)
{
    /* No reason phrase and no header: nothing was buffered, and buf is NULL. */
    const char *reason = resp->first_len ? resp->buf + resp->first_off : NULL;
    size_t reason_len = resp->first_len;
    int i, with_length = 0;
    struct head_out o;

    if (reason_len == 0) {
        reason = http1_status_text(resp->status);
        reason_len = strlen(reason);
    }
    ho_init(&o);
    ho_add(&o, "HTTP/1.1 ", 9);
    ho_u64(&o, (uint64_t)resp->status);
    ho_add(&o, " ", 1);
    ho_add(&o, reason, reason_len);
    ho_add(&o, "\r\n", 2);
    for (i = 0; i < resp->n_hdr; i++) {
        const struct http_header *hd = &resp->hdr[i];
        if (http1_is_hop_by_hop(resp, resp->buf + hd->name_off, hd->name_len) || name_is(resp, hd, "content-length"))
            continue;
        write_header(&o, resp, hd);
    }
    switch (framing) {
    case RESP_NO_BODY:
        /* HEAD and 304 may state the length the body would have had. */
        with_length = resp->has_content_length && resp->status != 204 && resp->status >= 200;
        break;
    case RESP_CONTENT_LENGTH:
        with_length = 1;
        break;
    case RESP_CHUNKED:
        ho_add(&o, "Transfer-Encoding: chunked\r\n", 28);
        break;
    case RESP_CLOSE:
        break;
    }
    if (with_length) {
        ho_add(&o, "Content-Length: ", 16);
        ho_u64(&o, resp->content_length);
        ho_add(&o, "\r\n", 2);
    }
    if (resp->status == 101) {
        size_t ulen;
        const char *up = http_head_get(resp, "upgrade", &ulen);
        if (up) {
            ho_add(&o, "Upgrade: ", 9);
            ho_add(&o, up, ulen);
            ho_add(&o, "\r\n", 2);
        }
        ho_add(&o, "Connection: upgrade\r\n", 21);
    } else if (close || framing == RESP_CLOSE) {
        ho_add(&o, "Connection: close\r\n", 19);
    } else if (client_http10) {
        ho_add(&o, "Connection: keep-alive\r\n", 24);
    }
    ho_add(&o, "\r\n", 2);
    return ho_finish(&o, out);
}

const char *http1_status_text(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 204: return "No Content";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Content Too Large";
    case 417: return "Expectation Failed";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Unknown";
    }
}

int http1_write_error(struct evbuffer *out, int status, const char *reason)
{
    /* "nextup: " + reason + "\n" */
    size_t body_len = 8 + strlen(reason) + 1;

    return evbuffer_add_printf(out,
                               "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
                               "Connection: close\r\n\r\nnextup: %s\n",
                               status, http1_status_text(status), body_len, reason) < 0
               ? -ENOMEM
               : 0;
}
