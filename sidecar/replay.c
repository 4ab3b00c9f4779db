#include "request.h"

#include <errno.h>

#include <event2/buffer.h>

#include "config.h"
#include "ctx.h"
#include "downstream.h"
#include "exchange.h"
#include "retry.h"
#include "service.h"

int request_replayable(const struct request *r)
{
    return !r->st.sent_any || r->st.replay_whole;
}

static void replay_keep(struct request *r, const void *data, size_t len)
{
    if (!r->st.replay_whole)
        return;
    if (!retry_buffer_fits(evbuffer_get_length(r->replay), len, (uint64_t)r->lc->cfg->retry_buffer_bytes) ||
        evbuffer_add(r->replay, data, len) < 0) {
        /* Past the retry buffer the request still streams, but it cannot be replayed. */
        r->st.replay_whole = 0;
        evbuffer_drain(r->replay, evbuffer_get_length(r->replay));
    }
}

int request_produce(struct request *r, const void *data, size_t len)
{
    replay_keep(r, data, len);
    if (exchange_connected(r->ex))
        r->st.sent_any = 1;
    return exchange_send(r->ex, data, len);
}

/* The head sent upstream, into <out>: written once per attempt, never copied. */
int request_write_head(struct request *r, struct evbuffer *out)
{
    const struct peers *peers = r->svc->peers;
    const char *host_fallback = peers->n > 0 ? peers->peer[0]->name : "localhost";

    return http1_write_request_head_rw(out, downstream_head(r->ds), downstream_client_ip(r->ds), host_fallback,
                                    downstream_is_tls(r->ds) ? "https" : "http",
                                    r->st.request_id_made ? r->st.request_id : NULL, &r->st.rewrite);
}

/* Copies every byte of <src> to the end of <dst>, leaving <src> as it was. */
static int evbuffer_copy_all(struct evbuffer *dst, struct evbuffer *src)
{
    struct evbuffer_iovec vec[16];
    struct evbuffer_ptr pos;
    int n, i;

    evbuffer_ptr_set(src, &pos, 0, EVBUFFER_PTR_SET);
    for (;;) {
        n = evbuffer_peek(src, -1, &pos, vec, 16);
        if (n <= 0)
            return 0;
        for (i = 0; i < n && i < 16; i++) {
            if (evbuffer_add(dst, vec[i].iov_base, vec[i].iov_len) < 0)
                return -ENOMEM;
            if (evbuffer_ptr_set(src, &pos, vec[i].iov_len, EVBUFFER_PTR_ADD) < 0)
                return 0;
        }
        if (n <= 16)
            return 0;
    }
}

/* Puts every byte of the request back in tosend for another attempt. */
int request_rewind(struct request *r)
{
    if (!r->st.sent_any)
        return 0;
    evbuffer_drain(r->tosend, evbuffer_get_length(r->tosend));
    if (request_write_head(r, r->tosend) < 0)
        return -ENOMEM;
    return evbuffer_copy_all(r->tosend, r->replay);
}
