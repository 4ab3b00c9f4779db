#include "parse.h"

#include <event2/buffer.h>

#include "http1.h"

llhttp_errno_t parse_evbuffer(llhttp_t *parser, struct evbuffer *in, struct http_head *head,
                              uint64_t *stream_offset)
{
    struct evbuffer_iovec vec[8];
    llhttp_errno_t err = HPE_OK;

    /* Not on an empty buffer: a chain reserved for a read and committed empty
     * is still peeked, with nothing in it to consume. */
    while (err == HPE_OK && evbuffer_get_length(in) > 0) {
        size_t consumed = 0;
        int n = evbuffer_peek(in, -1, NULL, vec, 8), i;
        if (n <= 0)
            break;
        for (i = 0; i < n && i < 8 && err == HPE_OK; i++) {
            http_head_chunk(head, vec[i].iov_base, *stream_offset + consumed);
            err = llhttp_execute(parser, vec[i].iov_base, vec[i].iov_len);
            if (err == HPE_OK)
                consumed += vec[i].iov_len;
            else if (err == HPE_PAUSED || err == HPE_PAUSED_UPGRADE)
                consumed += (size_t)(llhttp_get_error_pos(parser) - (const char *)vec[i].iov_base);
        }
        evbuffer_drain(in, consumed);
        *stream_offset += consumed;
    }
    return err;
}
