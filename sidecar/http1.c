/* http1: heads collected from llhttp's callbacks, their index of the fields
 * nextup looks at, lookups, and the heads written on each side (http1.h).
 * The request checks are http1_check.c. */
#include "http1.h"

#include <errno.h>
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

/* The first blocks of a head (HEAD_FIRST_BUF bytes, HEAD_FIRST_HDR entries),
 * kept per thread when a head is freed, for the next head to start with: a
 * keep-alive connection frees its request head between requests (an idle one
 * holds none) and takes these back at the next, without malloc. At most
 * HEAD_SPARE_MAX of each per thread. Not kept in sanitizer builds, where every
 * head should be an allocation of its own. */
#define HEAD_FIRST_BUF 1024
#define HEAD_FIRST_HDR 16
#define HEAD_SPARE_MAX 64
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
#define HEAD_SPARES 1
#else
#define HEAD_SPARES 0
#endif

struct head_spares {
    void *block[HEAD_SPARE_MAX];
    int n;
};
static _Thread_local struct head_spares spare_bufs, spare_hdrs;

static void *spare_take(struct head_spares *s)
{
    return HEAD_SPARES && s->n > 0 ? s->block[--s->n] : NULL;
}

static void spare_give(struct head_spares *s, void *p, int first_size)
{
    if (HEAD_SPARES && p && first_size && s->n < HEAD_SPARE_MAX)
        s->block[s->n++] = p;
    else
        free(p);
}

void http_head_free_spares(void)
{
    while (spare_bufs.n > 0)
        free(spare_bufs.block[--spare_bufs.n]);
    while (spare_hdrs.n > 0)
        free(spare_hdrs.block[--spare_hdrs.n]);
}

void http_head_free(struct http_head *h)
{
    spare_give(&spare_bufs, h->buf, h->cap == HEAD_FIRST_BUF);
    spare_give(&spare_hdrs, h->hdr, h->hdr_cap == HEAD_FIRST_HDR);
    memset(h, 0, sizeof(*h));
}

/* Room for one more header entry: most heads have a handful, so the array
 * starts small and doubles, rather than every connection holding 128. */
static int head_grow_hdr(struct http_head *h)
{
    int cap = h->hdr_cap ? h->hdr_cap * 2 : HEAD_FIRST_HDR;
    struct http_header *nh;

    if (cap > HTTP_MAX_HEADERS)
        cap = HTTP_MAX_HEADERS;
    nh = h->hdr_cap == 0 ? spare_take(&spare_hdrs) : NULL;
    if (!nh)
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
        size_t cap = h->cap ? h->cap : HEAD_FIRST_BUF;
        char *nb = NULL;
        while (cap < h->len + len)
            cap *= 2;
        if (h->cap == 0 && cap == HEAD_FIRST_BUF)
            nb = spare_take(&spare_bufs);
        if (!nb)
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

static int name_is(const struct http_head *h, const struct http_header *hd, const char *name, size_t n)
{
    return hd->name_len == n && strncasecmp(h->buf + hd->name_off, name, n) == 0;
}

/* The position of the first field named <name> at or after <from>, or -1; <f> is field_of(name). */
static int find_field(const struct http_head *h, const char *name, size_t n, enum http_field f, int from)
{
    int i;

    if (h->indexed && f != HF_OTHER) {
        if (h->field_count[f] == 0)
            return -1;
        if (from <= h->field_first[f])
            return h->field_first[f];
        for (i = from; i < h->n_hdr; i++)
            if (h->hdr[i].id == f)
                return i;
        return -1;
    }
    for (i = from; i < h->n_hdr; i++)
        if (name_is(h, &h->hdr[i], name, n))
            return i;
    return -1;
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

/* <name> (<len> bytes) equals the lowercase <lit> of the same length, ignoring
 * the case of letters only (so that no other byte can pass for a letter). */
static int lower_equals(const char *name, const char *lit, size_t len)
{
    size_t i;

    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c != (unsigned char)lit[i] && !(c >= 'A' && c <= 'Z' && (c | 0x20) == (unsigned char)lit[i]))
            return 0;
    }
    return 1;
}

/* The field <name> names, by its length first: at most two comparisons. */
static enum http_field field_of(const char *name, size_t len)
{
#define IS(lit) lower_equals(name, lit, len)
    switch (len) {
    case 2: return IS("te") ? HF_TE : HF_OTHER;
    case 4: return IS("host") ? HF_HOST : HF_OTHER;
    case 6: return IS("expect") ? HF_EXPECT : HF_OTHER;
    case 7: return IS("upgrade") ? HF_UPGRADE : IS("trailer") ? HF_TRAILER : HF_OTHER;
    case 10: return IS("connection") ? HF_CONNECTION : IS("keep-alive") ? HF_KEEP_ALIVE : HF_OTHER;
    case 11: return IS("traceparent") ? HF_TRACEPARENT : HF_OTHER;
    case 12: return IS("x-request-id") ? HF_X_REQUEST_ID : HF_OTHER;
    case 14: return IS("content-length") ? HF_CONTENT_LENGTH : HF_OTHER;
    case 15: return IS("x-forwarded-for") ? HF_X_FORWARDED_FOR : IS("idempotency-key") ? HF_IDEMPOTENCY_KEY : HF_OTHER;
    case 16: return IS("proxy-connection") ? HF_PROXY_CONNECTION : HF_OTHER;
    case 17:
        return IS("transfer-encoding") ? HF_TRANSFER_ENCODING : IS("x-forwarded-proto") ? HF_X_FORWARDED_PROTO : HF_OTHER;
    case 18: return IS("proxy-authenticate") ? HF_PROXY_AUTHENTICATE : HF_OTHER;
    case 19: return IS("proxy-authorization") ? HF_PROXY_AUTHORIZATION : HF_OTHER;
    default: return HF_OTHER;
    }
#undef IS
}

static int field_is_hop(enum http_field f)
{
    return f >= HF_CONNECTION && f <= HF_LAST_HOP;
}

/* The field <hd> names (an empty name: buf may still be NULL). */
static enum http_field field_of_header(const struct http_head *h, const struct http_header *hd)
{
    return hd->name_len ? field_of(h->buf + hd->name_off, hd->name_len) : HF_OTHER;
}

/* The field of <hd>: from the index, or by its name in a head without one. */
static enum http_field field_id(const struct http_head *h, const struct http_header *hd)
{
    return h->indexed ? (enum http_field)hd->id : field_of_header(h, hd);
}

/* Each field's name, as http_head_field() searches a head without an index. */
static const struct {
    const char *name;
    size_t len;
} field_names[HF_COUNT] = {
#define F(id, lit) [id] = { lit, sizeof(lit) - 1 }
    F(HF_OTHER, ""), F(HF_CONNECTION, "connection"), F(HF_KEEP_ALIVE, "keep-alive"), F(HF_TE, "te"),
    F(HF_TRAILER, "trailer"), F(HF_TRANSFER_ENCODING, "transfer-encoding"), F(HF_UPGRADE, "upgrade"),
    F(HF_PROXY_CONNECTION, "proxy-connection"), F(HF_PROXY_AUTHENTICATE, "proxy-authenticate"),
    F(HF_PROXY_AUTHORIZATION, "proxy-authorization"), F(HF_HOST, "host"), F(HF_CONTENT_LENGTH, "content-length"),
    F(HF_X_FORWARDED_FOR, "x-forwarded-for"), F(HF_X_FORWARDED_PROTO, "x-forwarded-proto"), F(HF_EXPECT, "expect"),
    F(HF_X_REQUEST_ID, "x-request-id"), F(HF_TRACEPARENT, "traceparent"), F(HF_IDEMPOTENCY_KEY, "idempotency-key"),
#undef F
};

static int token_not_fixed_hop(const char *tok, size_t n, const void *arg)
{
    (void)arg;
    return !field_is_hop(field_of(tok, n));
}

static void head_index(struct http_head *h)
{
    int i;

    memset(h->field_count, 0, sizeof(h->field_count));
    h->connection_names_other = 0;
    for (i = 0; i < h->n_hdr; i++) {
        struct http_header *hd = &h->hdr[i];
        enum http_field f = field_of_header(h, hd);
        hd->id = (uint8_t)f;
        if (h->field_count[f]++ == 0)
            h->field_first[f] = (uint8_t)i;
        if (f == HF_CONNECTION) {
            const char *v;
            size_t vlen;
            trimmed(h, hd, &v, &vlen);
            if (each_token(v, vlen, token_not_fixed_hop, NULL))
                h->connection_names_other = 1;
        }
    }
    h->indexed = 1;
}

_Static_assert(HTTP_MAX_HEADERS <= 255, "the index counts fields in a byte");

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
    head_index(h);
}


/* Lookups by name and by field share these: <f> is field_of(name). */
static const char *get_named(const struct http_head *h, const char *name, size_t n, enum http_field f, size_t *len)
{
    int i = find_field(h, name, n, f, 0);
    const char *v;

    if (i < 0)
        return NULL;
    trimmed(h, &h->hdr[i], &v, len);
    return v;
}

/* 1 as soon as <fn> says 1 for a comma-separated token of a field named <name> (<f> is field_of(name)). */
static int any_token(const struct http_head *h, const char *name, size_t n, enum http_field f,
                     int (*fn)(const char *tok, size_t n, const void *arg), const void *arg)
{
    int i;

    for (i = find_field(h, name, n, f, 0); i >= 0; i = find_field(h, name, n, f, i + 1)) {
        const char *v;
        size_t vlen;
        trimmed(h, &h->hdr[i], &v, &vlen);
        if (each_token(v, vlen, fn, arg))
            return 1;
    }
    return 0;
}

static int has_token_named(const struct http_head *h, const char *name, size_t n, enum http_field f,
                           const char *token)
{
    return any_token(h, name, n, f, token_equals, token);
}

static int count_named(const struct http_head *h, const char *name, size_t n, enum http_field f)
{
    int i, count = 0;

    if (h->indexed && f != HF_OTHER)
        return h->field_count[f];
    for (i = 0; i < h->n_hdr; i++)
        count += name_is(h, &h->hdr[i], name, n);
    return count;
}

const char *http_head_get(const struct http_head *h, const char *name, size_t *len)
{
    size_t n = strlen(name);
    return get_named(h, name, n, field_of(name, n), len);
}

int http_head_has_token(const struct http_head *h, const char *name, const char *token)
{
    size_t n = strlen(name);
    return has_token_named(h, name, n, field_of(name, n), token);
}

int http_head_count(const struct http_head *h, const char *name)
{
    size_t n = strlen(name);
    return count_named(h, name, n, field_of(name, n));
}

const char *http_head_field(const struct http_head *h, enum http_field f, size_t *len)
{
    return get_named(h, field_names[f].name, field_names[f].len, f, len);
}

int http_head_field_has_token(const struct http_head *h, enum http_field f, const char *token)
{
    return has_token_named(h, field_names[f].name, field_names[f].len, f, token);
}

int http_head_field_count(const struct http_head *h, enum http_field f)
{
    return count_named(h, field_names[f].name, field_names[f].len, f);
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

/* 1 if a Connection header of <h> lists <name>. */
static int named_in_connection(const struct http_head *h, const char *name, size_t len)
{
    struct span s = { name, len };

    return any_token(h, "connection", 10, HF_CONNECTION, token_matches_span, &s);
}

/* http1_is_hop_by_hop() for a field of <h> whose kind is <f>. */
static int hop_by_hop(const struct http_head *h, const char *name, size_t len, enum http_field f)
{
    if (field_is_hop(f))
        return 1;
    /* Connection may not take Host away: a request without Host is not HTTP/1.1. */
    if (f == HF_HOST)
        return 0;
    /* An indexed head whose Connection headers (if any) list only fixed names has nothing more to drop. */
    if (h->indexed && !h->connection_names_other)
        return 0;
    return named_in_connection(h, name, len);
}

int http1_is_hop_by_hop(const struct http_head *h, const char *name, size_t len)
{
    return hop_by_hop(h, name, len, field_of(name, len));
}

static int field_is_hop_by_hop(const struct http_head *h, const struct http_header *hd)
{
    return hop_by_hop(h, h->buf + hd->name_off, hd->name_len, field_id(h, hd));
}

static int token_not_chunked(const char *tok, size_t n, const void *arg)
{
    (void)arg;
    return !(n == 7 && strncasecmp(tok, "chunked", 7) == 0);
}

int http1_only_chunked(const struct http_head *h)
{
    return !any_token(h, "transfer-encoding", 17, HF_TRANSFER_ENCODING, token_not_chunked, NULL);
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

/* Room for <n> more bytes: the inline buffer is outgrown only by unusual heads. 0 or -1 (out of memory). */
static int ho_grow(struct head_out *o, size_t n)
{
    size_t cap = o->cap * 2 > o->len + n ? o->cap * 2 : o->len + n;
    char *p;

    if (o->oom)
        return -1;
    p = o->p == o->inline_buf ? malloc(cap) : realloc(o->p, cap);
    if (!p) {
        o->oom = 1;
        return -1;
    }
    if (o->p == o->inline_buf)
        memcpy(p, o->inline_buf, o->len);
    o->p = p;
    o->cap = cap;
    return 0;
}

static inline void ho_add(struct head_out *o, const char *s, size_t n)
{
    if (o->len + n > o->cap && ho_grow(o, n) < 0)
        return;
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

/* "name: value\r\n", the value trimmed: one room check for the line. */
static void write_header(struct head_out *o, const struct http_head *h, const struct http_header *hd)
{
    size_t vlen, line;
    const char *v;
    char *p;

    trimmed(h, hd, &v, &vlen);
    line = hd->name_len + 2 + vlen + 2;
    if (o->len + line > o->cap && ho_grow(o, line) < 0)
        return;
    p = o->p + o->len;
    memcpy(p, h->buf + hd->name_off, hd->name_len);
    p += hd->name_len;
    *p++ = ':';
    *p++ = ' ';
    memcpy(p, v, vlen);
    p += vlen;
    *p++ = '\r';
    *p++ = '\n';
    o->len += line;
}

/* Headers nextup writes itself on the way to a peer, never copied. */
static int request_header_is_rewritten(enum http_field f)
{
    return f == HF_CONTENT_LENGTH || f == HF_X_FORWARDED_FOR || f == HF_X_FORWARDED_PROTO || f == HF_EXPECT;
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
        enum http_field f = field_id(req, hd);
        if (field_is_hop_by_hop(req, hd) || request_header_is_rewritten(f) || (request_id && f == HF_X_REQUEST_ID) ||
            (rw && rw->host && f == HF_HOST))
            continue;
        write_header(&o, req, hd);
    }
    if (request_id) {
        ho_add(&o, "X-Request-Id: ", 14);
        ho_str(&o, request_id);
        ho_add(&o, "\r\n", 2);
    }
    if (http_head_field_count(req, HF_HOST) == 0 && host_fallback && !(rw && rw->host)) {
        ho_add(&o, "Host: ", 6);
        ho_str(&o, host_fallback);
        ho_add(&o, "\r\n", 2);
    }
    /* Earlier hops' X-Forwarded-For values keep their order; this client goes last. */
    ho_add(&o, "X-Forwarded-For: ", 17);
    for (i = 0; i < req->n_hdr; i++) {
        const char *v;
        size_t vlen;
        if (field_id(req, &req->hdr[i]) != HF_X_FORWARDED_FOR)
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
        const char *up = http_head_field(req, HF_UPGRADE, &ulen);
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
        if (field_is_hop_by_hop(resp, hd) || field_id(resp, hd) == HF_CONTENT_LENGTH)
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
        const char *up = http_head_field(resp, HF_UPGRADE, &ulen);
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
