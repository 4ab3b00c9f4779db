/* http1: HTTP/1.x message heads, collected from llhttp callbacks, and the
 * heads nextup writes on each side (hop-by-hop removal, forwarding headers,
 * framing). No sockets, no event loop: evbuffer is used only as a byte sink.
 *
 * API:
 *   http_head_reset() / http_head_free()         one head, reused message after message
 *   http_head_add_*()                             feeders for llhttp data callbacks
 *   http_head_take_parser_facts()                 headers-complete: llhttp's facts, and the field index
 *   http_head_get() / http_head_has_token()       lookups (case-insensitive names)
 *   http1_check_request()                         smuggling, Host and open-proxy checks -> status (http1_check.c)
 *   http1_write_request_head()                    the head sent to a peer
 *   http1_write_response_head()                   the head sent to the client
 *   http1_write_error()                           a short plain-text response made by nextup
 *   http1_is_hop_by_hop()                         RFC 9110 7.6.1 */
#ifndef SIDECAR_HTTP1_H
#define SIDECAR_HTTP1_H

#include <stddef.h>
#include <stdint.h>

#include <llhttp.h>

struct evbuffer;

#define HTTP_MAX_HEADERS 128

struct http_header {
    uint32_t name_off, name_len;
    uint32_t value_off, value_len;
    uint8_t id;                       /* enum http_field, once the head is indexed */
};

/* The fields nextup itself looks at, recognised once per head at headers-complete
 * (http_head_take_parser_facts), so that lookups and the writers compare a byte,
 * not names. The hop-by-hop ones (RFC 9110 7.6.1, Proxy-*) come first. */
enum http_field {
    HF_OTHER,
    HF_CONNECTION,
    HF_KEEP_ALIVE,
    HF_TE,
    HF_TRAILER,
    HF_TRANSFER_ENCODING,
    HF_UPGRADE,
    HF_PROXY_CONNECTION,
    HF_PROXY_AUTHENTICATE,
    HF_PROXY_AUTHORIZATION,
    HF_LAST_HOP = HF_PROXY_AUTHORIZATION,
    HF_HOST,
    HF_CONTENT_LENGTH,
    HF_X_FORWARDED_FOR,
    HF_X_FORWARDED_PROTO,
    HF_EXPECT,
    HF_X_REQUEST_ID,
    HF_TRACEPARENT,
    HF_IDEMPOTENCY_KEY,
    HF_COUNT
};

struct http_head {
    char *buf;                        /* owned: target/reason, then names and values */
    size_t len, cap;
    uint32_t first_off, first_len;    /* request target, or response reason phrase */
    int n_hdr;
    int in_value;                     /* last data callback was a header value */
    int value_done;                   /* llhttp said the current value is complete */
    /* obs-fold detection: llhttp hands a folded line over as a second piece of
     * the same value, separated from the first by the CRLF it skipped. */
    uint64_t value_end;               /* stream offset just past the last value piece */
    const char *chunk_start;          /* the input chunk being parsed ... */
    uint64_t chunk_offset;            /* ... and its offset in the stream */
    int too_many;                     /* more than HTTP_MAX_HEADERS */
    /* Filled at headers-complete from the parser. */
    int method;                       /* llhttp_method_t, requests */
    int status;                       /* responses */
    int major, minor;
    int upgrade;                      /* llhttp's upgrade flag */
    int chunked;                      /* Transfer-Encoding: chunked */
    int has_content_length;
    uint64_t content_length;
    int keep_alive;                   /* llhttp_should_keep_alive() */
    /* The index (set by http_head_take_parser_facts; a head fed by hand has none
     * and is searched by name): per enum http_field, how many fields and the
     * first one's position; and whether a Connection header names a field other
     * than the fixed hop-by-hop ones (only then is every field checked against it). */
    int indexed;
    int connection_names_other;
    uint8_t field_count[HF_COUNT];
    uint8_t field_first[HF_COUNT];
    /* Last: a reset clears only what comes before (entries past n_hdr are never read). */
    struct http_header *hdr;          /* owned: hdr_cap entries, grown as headers come (up to HTTP_MAX_HEADERS) */
    int hdr_cap;
};

void http_head_reset(struct http_head *h);
/* At on_headers_complete: method, status, version, upgrade, framing and
 * keep-alive, as <p> parsed them, into <h>. */
void http_head_take_parser_facts(struct http_head *h, const llhttp_t *p);
void http_head_free(struct http_head *h);
/* Heads freed on this thread keep their first blocks for the next heads; this
 * gives them back to malloc (the worker's sweep, before malloc_trim()). */
void http_head_free_spares(void);

/* Feeders; each returns 0 or -ENOMEM / -E2BIG (more than <limit> bytes held) / -EPROTO (obs-fold). */
int http_head_add_first(struct http_head *h, const char *at, size_t len, size_t limit);
int http_head_add_field(struct http_head *h, const char *at, size_t len, size_t limit);
int http_head_add_value(struct http_head *h, const char *at, size_t len, size_t limit);

/* The parser moves to the chunk at <start>, <offset> bytes into the stream. */
static inline void http_head_chunk(struct http_head *h, const char *start, uint64_t offset)
{
    h->chunk_start = start;
    h->chunk_offset = offset;
}

/* llhttp's on_header_value_complete: more value bytes after it mean obs-fold,
 * which http_head_add_value then refuses with -EPROTO. One fold is not seen:
 * an empty first line continued on the next ("X:\r\n v"), which llhttp hands
 * over as a plain value; it reaches the peer on one line, the replacement of
 * obs-fold by a space that RFC 9112 5.2 allows. */
void http_head_value_complete(struct http_head *h);

/* Bytes the head holds, counting line overhead: compared with NEXTUP_MAX_HEADER_BYTES. */
size_t http_head_size(const struct http_head *h);

/* Value of the first header named <name>, trimmed; NULL if absent. <*len> gets its length. */
const char *http_head_get(const struct http_head *h, const char *name, size_t *len);
/* How many fields named <name> (case-insensitive) the head has. */
int http_head_count(const struct http_head *h, const char *name);
/* 1 if any header named <name> holds the comma-separated token <token> (case-insensitive). */
int http_head_has_token(const struct http_head *h, const char *name, const char *token);
/* The same three for a field nextup knows (not HF_OTHER): no name to compare. */
const char *http_head_field(const struct http_head *h, enum http_field f, size_t *len);
int http_head_field_count(const struct http_head *h, enum http_field f);
int http_head_field_has_token(const struct http_head *h, enum http_field f, const char *token);

/* 1 if <name> must not be forwarded: RFC 9110 7.6.1 hop-by-hop fields and
 * Proxy-* plus any field named in a Connection header of <h>. */
int http1_is_hop_by_hop(const struct http_head *h, const char *name, size_t len);

/* Header names must be tokens; values hold no CR, LF or NUL. 0, or -EINVAL with <*reason>. */
int http1_check_fields(const struct http_head *h, const char **reason);

/* 1 if every Transfer-Encoding coding of <h> is chunked (or there is none). */
int http1_only_chunked(const struct http_head *h);

/* 1 if <target> is absolute-form ("scheme://..."). */
int http1_is_absolute_form(const char *target, size_t len);

/* Checks a parsed request head (version, fields, target, one valid Host, framing,
 * Expect). 0 if it may be forwarded, else the status to answer (400, 405, 417,
 * 501) with a constant reason in <*reason>. An absolute-form target passes:
 * which authority may be proxied is the request path's to judge (services). */
int http1_check_request(const struct http_head *req, const char **reason);

/* Appends the head sent to a peer: HTTP/1.1, hop-by-hop fields removed,
 * X-Forwarded-For (+<client_ip>) and X-Forwarded-Proto (<proto>: "http", "https") set, Host added for an
 * HTTP/1.0 request without one (<host_fallback>), Expect dropped (nextup answers
 * 100-continue itself), Upgrade kept for upgrade requests, and framing: the
 * original Content-Length, or chunked (bodies are re-chunked), or none. A
 * <request_id> (NULL: the client's fields go as they are) replaces every
 * X-Request-Id of the client's. */
int http1_write_request_head(struct evbuffer *out, const struct http_head *req, const char *client_ip,
                             const char *host_fallback, const char *proto, const char *request_id);

/* What the request path changes in the head it sends: the target sent in
 * origin-form (an absolute-form request's path) and the Host. Unset fields keep
 * the client's. */
struct http1_rewrite {
    const char *target;           /* NULL: the client's target */
    size_t target_len;
    int target_slash;             /* 1: "/" goes before <target> */
    const char *host;             /* NULL: the client's Host; else it replaces every Host */
    size_t host_len;
};

/* http1_write_request_head() with <rw> (NULL: nothing rewritten). */
int http1_write_request_head_rw(struct evbuffer *out, const struct http_head *req, const char *client_ip,
                                const char *host_fallback, const char *proto, const char *request_id,
                                const struct http1_rewrite *rw);

enum resp_framing { RESP_NO_BODY, RESP_CONTENT_LENGTH, RESP_CHUNKED, RESP_CLOSE };

/* Decides how the response body is framed towards the client. */
enum resp_framing http1_response_framing(const struct http_head *resp, int request_is_head, int client_major,
                                         int client_minor);

/* Appends the head sent to the client: hop-by-hop fields removed, framing as
 * <framing>, "Connection: close" when <close>, "Connection: keep-alive" for an
 * HTTP/1.0 client kept alive, Upgrade/Connection kept for 101. */
int http1_write_response_head(struct evbuffer *out, const struct http_head *resp, enum resp_framing framing,
                              int close, int client_http10);

/* Appends a complete plain-text response made by nextup: "<status> <text>",
 * body "nextup: <reason>\n", Connection: close. */
int http1_write_error(struct evbuffer *out, int status, const char *reason);

/* Standard reason phrase, "Unknown" for codes nextup does not make. */
const char *http1_status_text(int status);

#endif
