/* request_id: the X-Request-Id of a request, passed through or made.
 * API: request_id_decide(), request_id_make(). No sockets, no clock: the request path
 * asks, then sends the id upstream and logs it (accesslog's request_id). */
#ifndef SIDECAR_REQUEST_ID_H
#define SIDECAR_REQUEST_ID_H

#include <stddef.h>
#include <stdint.h>

#define REQUEST_ID_LEN 36        /* a made id: UUID version 4, "xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx" */
#define REQUEST_ID_MAX 128       /* longest id passed through */

enum request_id_action {
    REQUEST_ID_KEEP,             /* forward the client's X-Request-Id unchanged, log it */
    REQUEST_ID_MAKE,             /* none: make one, add it to the request sent upstream, log it */
    REQUEST_ID_REPLACE,          /* unusable (several, empty, too long, bytes outside 0x21..0x7e):
                                    remove every X-Request-Id, add a made one */
};

/* Pure: what to do, given the request's X-Request-Id fields. <value>/<len>: the first one's
 * value, trimmed (NULL when there is none); <count>: how many the request had. */
enum request_id_action request_id_decide(const char *value, size_t len, int count);

/* Writes a new id (REQUEST_ID_LEN characters and a NUL) into <out>, from the worker's
 * generator <rng> (seeded by rng_seed(), this thread only). */
void request_id_make(uint64_t *rng, char out[REQUEST_ID_LEN + 1]);

#endif
