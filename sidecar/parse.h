/* parse: llhttp run over the bytes of an evbuffer, for both sides' parsers.
 *
 * API:
 *   parse_evbuffer()   execute over everything buffered, draining what was consumed
 *   parse_failed()     whether llhttp's result is an error (not a pause) */
#ifndef SIDECAR_PARSE_H
#define SIDECAR_PARSE_H

#include <stdint.h>

#include <llhttp.h>

struct evbuffer;
struct http_head;

/* Runs <parser> over everything in <in>, draining what it consumed; stops at a
 * pause or an error. <head> learns where each chunk starts in the stream
 * (<stream_offset>, advanced here) for its obs-fold check. Returns llhttp's last errno. */
llhttp_errno_t parse_evbuffer(llhttp_t *parser, struct evbuffer *in, struct http_head *head,
                              uint64_t *stream_offset);

static inline int parse_failed(llhttp_errno_t err)
{
    return err != HPE_OK && err != HPE_PAUSED && err != HPE_PAUSED_UPGRADE;
}

#endif
