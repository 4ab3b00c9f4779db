/* accesslog: one JSON line per request on stdout (NEXTUP_ACCESS_LOG=on|off).
 * One buffer per worker, flushed every 200 ms or at 32 KiB, always in whole
 * lines, so lines from workers never interleave and a request costs no write().
 * Every line is valid UTF-8 JSON whatever the request held: quotes, backslashes and control
 * bytes are escaped, bytes that are not UTF-8 become U+FFFD, and each text field is capped
 * (ACCESS_LOG_CAP_*; a longer value ends in "...[+N bytes]"), so a line is never longer than
 * ACCESS_LOG_MAX_LINE.
 *
 * API: access_log_new() / access_log_free() (flushes), access_log_write(), access_log_enabled(),
 *      access_status_source_name(). */
#ifndef SIDECAR_ACCESSLOG_H
#define SIDECAR_ACCESSLOG_H

#include <stddef.h>
#include <stdint.h>

struct event_base;
struct access_log;

#define ACCESS_LOG_CAP_PATH 2048     /* bytes of a text field once escaped, marker included */
#define ACCESS_LOG_CAP_FIELD 256     /* every other text field */
#define ACCESS_LOG_MAX_LINE 8192     /* whatever the request held */

/* Who produced the status the client got: the replica, or nextup and why. */
enum access_status_source {
    ACCESS_SOURCE_UNSET = 0,        /* not filled in: the field is left out */
    ACCESS_SOURCE_UPSTREAM,         /* "upstream": a replica's response, forwarded */
    ACCESS_SOURCE_TIMEOUT,          /* "nextup:timeout": 504, NEXTUP_REQUEST_TIMEOUT_MS with no response head */
    ACCESS_SOURCE_PER_TRY_TIMEOUT,  /* "nextup:per_try_timeout": 504, the last attempt's NEXTUP_PER_TRY_TIMEOUT_MS */
    ACCESS_SOURCE_REFUSED,          /* "nextup:refused": 502, the last attempt's connection was refused */
    ACCESS_SOURCE_CONNECT_FAILURE,  /* "nextup:connect_failure": 502, connect timed out or failed otherwise */
    ACCESS_SOURCE_RESET,            /* "nextup:reset": 502, the connection closed or reset before a response head */
    ACCESS_SOURCE_TLS,              /* "nextup:tls": 502, the TLS handshake with the replica failed */
    ACCESS_SOURCE_BAD_RESPONSE,     /* "nextup:bad_response": 502, the replica's response head was unreadable */
    ACCESS_SOURCE_BUDGET,           /* "nextup:budget": 502/504, a retry was wanted but the retry budget was spent */
    ACCESS_SOURCE_NO_PEER,          /* "nextup:no_peer": 502, no peer known */
    ACCESS_SOURCE_NO_SERVICE,       /* "nextup:no_service": 421, the authority is no configured service */
    ACCESS_SOURCE_BAD_REQUEST,      /* "nextup:bad_request": 4xx/5xx answered by nextup for the request itself
                                       (400, 408, 413, 414, 431, 501, 505, ...) */
    ACCESS_SOURCE_OVERLOAD,         /* "nextup:overload": 503, NEXTUP_MAX_CONNECTIONS or draining */
    ACCESS_SOURCE_CLIENT_CLOSED,    /* "client_closed": the client went away before the response was whole */
    ACCESS_SOURCE_COUNT
};

struct access_entry {
    int64_t start_unix_ms;          /* when the request head was read, wall clock */
    int64_t duration_ms;
    const char *client;             /* client address */
    const char *method;
    const char *path;               /* not NUL-terminated: path_len bytes */
    size_t path_len;
    int status;
    uint64_t bytes;                 /* response body bytes sent to the client */
    const char *upstream;           /* the peer that answered, "" when none did */
    const char *service;            /* the service the request was routed to; NULL: none */
    int attempts;
    const char *const *retries;     /* reason of each retry, n_retries of them */
    int n_retries;
    /* Facts added for issue 13; each is left out of the line while unset (NULL, or -1 for
     * the numbers): declare the entry with ACCESS_ENTRY_INIT. The byte strings are borrowed
     * and need not be NUL-terminated; they may hold any byte. */
    const char *request_id;         /* X-Request-Id as sent upstream (passed through or made) */
    size_t request_id_len;
    const char *traceparent;        /* the request's traceparent header, when it had one */
    size_t traceparent_len;
    const char *host;               /* Host (or the absolute-form target's authority) */
    size_t host_len;
    const char *protocol;           /* "HTTP/1.1", "HTTP/1.0" */
    int64_t request_bytes;          /* request body bytes read from the client; -1 unset */
    int64_t upstream_ms;            /* the answering attempt: request sent -> response head, ms; -1 unset */
    enum access_status_source status_source;
};

#define ACCESS_ENTRY_INIT { .request_bytes = -1, .upstream_ms = -1 }

/* NULL on allocation failure. With <enabled> 0, a log that writes nothing. */
struct access_log *access_log_new(struct event_base *base, int enabled);
/* Appends <e> as one line (see the top of this file for what is escaped and capped). */
void access_log_write(struct access_log *l, const struct access_entry *e);
/* 0 when <l> writes nothing (NEXTUP_ACCESS_LOG=off): the caller need not fill an entry. */
int access_log_enabled(const struct access_log *l);
void access_log_free(struct access_log *l);
/* "upstream", "nextup:timeout", ...; NULL for ACCESS_SOURCE_UNSET or out of range. */
const char *access_status_source_name(enum access_status_source s);

#endif
