/* accesslog: one JSON line per request on stdout (NEXTUP_ACCESS_LOG=on|off).
 * One buffer per worker, flushed every 200 ms or at 32 KiB, always in whole
 * lines, so lines from workers never interleave and a request costs no write().
 *
 * API: access_log_new() / access_log_free() (flushes), access_log_write(). */
#ifndef SIDECAR_ACCESSLOG_H
#define SIDECAR_ACCESSLOG_H

#include <stddef.h>
#include <stdint.h>

struct event_base;
struct access_log;

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
    int attempts;
    const char *const *retries;     /* reason of each retry, n_retries of them */
    int n_retries;
};

/* Declare entries with it: fields a caller does not know stay unset. */
#define ACCESS_ENTRY_INIT { 0 }

/* NULL on allocation failure. With <enabled> 0, a log that writes nothing. */
struct access_log *access_log_new(struct event_base *base, int enabled);
void access_log_write(struct access_log *l, const struct access_entry *e);
void access_log_free(struct access_log *l);

#endif
