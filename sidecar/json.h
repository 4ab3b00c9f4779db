/* json: JSON string bodies from arbitrary bytes, for the access log and JSON diagnostics.
 * API: json_escape(), json_add_str(). */
#ifndef SIDECAR_JSON_H
#define SIDECAR_JSON_H

#include <stddef.h>

struct evbuffer;

/* The replacement for a byte that is not part of valid UTF-8: U+FFFD, as UTF-8. */
#define JSON_REPLACEMENT "\xef\xbf\xbd"

/* Writes the escaped form of <s> (<n> bytes, no quotes added) into <dst> (<dstlen> bytes, not
 * NUL-terminated) until the next piece would not fit. " and \ are escaped, control bytes and
 * DEL become \u00XX, bytes that are not valid UTF-8 (stray continuation bytes, overlong forms,
 * surrogates, above U+10FFFF, cut sequences) each become U+FFFD. Never splits an escape or a
 * character. Returns the bytes written; *<used> = input bytes consumed. */
size_t json_escape(char *dst, size_t dstlen, const char *s, size_t n, size_t *used);

/* Appends "<escaped s>" (quotes included) to <out>, at most <cap> bytes between the quotes
 * (cap >= 64): a longer value is cut at a character and ends with "...[+N bytes]", N being
 * the input bytes left out. */
void json_add_str(struct evbuffer *out, const char *s, size_t n, size_t cap);

#endif
