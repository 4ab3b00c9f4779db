/* http1_check: whether a parsed request head may be forwarded -- field syntax,
 * the request target, one valid Host, framing, Expect (http1.h declares them).
 * Pure functions of the head, through http1.c's lookups. */
#include "http1.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>

#include <llhttp.h>

/* Byte classes as bitmaps of the 128 ASCII codes (bit c of lo for c < 64, bit
 * c - 64 of hi above): one shift and mask per byte.
 * tchar (RFC 9110 5.6.2): ALPHA DIGIT ! # $ % & ' * + - . ^ _ ` | ~
 * uri_plain (RFC 3986 unreserved / sub-delims): ALPHA DIGIT - . _ ~ ! $ & ' ( ) * + , ; = */
static const uint64_t URI_PLAIN_LO = 0x2bff7fd200000000ull, URI_PLAIN_HI = 0x47fffffe87fffffeull;

static int in_class(unsigned char c, uint64_t lo, uint64_t hi)
{
    if (c < 64)
        return (int)((lo >> c) & 1);
    if (c < 128)
        return (int)((hi >> (c - 64)) & 1);
    return 0;
}

/* Names are checked byte by byte on every head: tchar also as a 256-byte table,
 * made at compile time from the same bitmap. */
#define TCHAR_BIT(c) ((c) < 64 ? (TCHAR_LO_V >> ((c) & 63)) & 1 : (c) < 128 ? (TCHAR_HI_V >> ((c) & 63)) & 1 : 0)
#define TCHAR_LO_V UINT64_C(0x03ff6cfa00000000)
#define TCHAR_HI_V UINT64_C(0x57ffffffc7fffffe)
#define T4(c) TCHAR_BIT(c), TCHAR_BIT((c) + 1), TCHAR_BIT((c) + 2), TCHAR_BIT((c) + 3)
#define T16(c) T4(c), T4((c) + 4), T4((c) + 8), T4((c) + 12)
#define T64(c) T16(c), T16((c) + 16), T16((c) + 32), T16((c) + 48)
static const uint8_t tchar_table[256] = { T64(0), T64(64), T64(128), T64(192) };
#undef T64
#undef T16
#undef T4

static int is_tchar(unsigned char c)
{
    return tchar_table[c];
}

/* CR, LF and NUL: never in a value. */
static int is_value_stop(unsigned char c)
{
    return c <= '\r' && ((1u << c) & ((1u << '\r') | (1u << '\n') | 1u));
}

#define ONES UINT64_C(0x0101010101010101)
#define HIGHS UINT64_C(0x8080808080808080)

/* Some byte of <x> is 0 (the classic test: only a zero byte borrows into its own high bit first). */
static int has_zero_byte(uint64_t x)
{
    return ((x - ONES) & ~x & HIGHS) != 0;
}

/* 1 if <v> holds CR, LF or NUL; eight bytes a step, the tail one by one. */
static int value_has_stop(const char *v, size_t n)
{
    size_t k = 0;

    for (; k + 8 <= n; k += 8) {
        uint64_t w;
        memcpy(&w, v + k, 8);
        if (has_zero_byte(w) || has_zero_byte(w ^ (ONES * '\r')) || has_zero_byte(w ^ (ONES * '\n')))
            return 1;
    }
    for (; k < n; k++)
        if (is_value_stop((unsigned char)v[k]))
            return 1;
    return 0;
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
        if (hd->value_len && value_has_stop(h->buf + hd->value_off, hd->value_len)) {
            *reason = "invalid character in a header value (obs-fold, bare CR/LF or NUL)";
            return -EINVAL;
        }
    }
    return 0;
}

static int is_hex(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static int is_uri_plain(unsigned char c)
{
    return in_class(c, URI_PLAIN_LO, URI_PLAIN_HI);
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
    if (req->major == 1 && req->minor >= 1 && http_head_field_count(req, HF_HOST) != 1) {
        *reason = "HTTP/1.1 request needs exactly one Host header";
        return 400;
    }
    if (http_head_field_count(req, HF_HOST) > 1) {
        *reason = "more than one Host header";
        return 400;
    }
    /* A peer (or the service choice) would read an authority out of whatever is here. */
    host = http_head_field(req, HF_HOST, &hlen);
    if (host && !host_valid(host, hlen)) {
        *reason = hlen ? "invalid Host header (host[:port] expected)" : "empty Host header";
        return 400;
    }
    if (http_head_field_count(req, HF_TRANSFER_ENCODING) > 0) {
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
    if (http_head_field_count(req, HF_CONTENT_LENGTH) > 1) {
        *reason = "repeated Content-Length";
        return 400;
    }
    expect = http_head_field(req, HF_EXPECT, &elen);
    if (expect && !(elen == 12 && strncasecmp(expect, "100-continue", 12) == 0)) {
        *reason = "unsupported Expect";
        return 417;
    }
    return 0;
}
