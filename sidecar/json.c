#include "json.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <event2/buffer.h>

#define MARKER_MAX 32   /* "...[+18446744073709551615 bytes]" fits in 32 */

/* Length of the valid UTF-8 sequence at <s> (at most <n> bytes), 0 if there is none (RFC 3629). */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t len;
    uint32_t cp;

    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;   /* continuation byte, 0xc0/0xc1 (overlong) or above 0xf4 */
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

size_t json_escape(char *dst, size_t dstlen, const char *s, size_t n, size_t *used)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, o = 0;

    while (i < n) {
        unsigned c = u[i];
        char esc[8];
        const char *piece;
        size_t plen, in;

        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            piece = esc;
            plen = 2;
            in = 1;
        } else if (c < 0x20 || c == 0x7f) {
            snprintf(esc, sizeof(esc), "\\u%04x", c);
            piece = esc;
            plen = 6;
            in = 1;
        } else if (c < 0x80) {
            /* a run of plain ASCII: copied at once */
            size_t j = i;
            while (j < n && u[j] >= 0x20 && u[j] < 0x7f && u[j] != '"' && u[j] != '\\')
                j++;
            plen = j - i;
            if (plen > dstlen - o)
                plen = dstlen - o;
            if (plen == 0)
                break;
            memcpy(dst + o, s + i, plen);
            o += plen;
            i += plen;
            continue;
        } else {
            in = utf8_len(u + i, n - i);
            if (in) {
                piece = s + i;
                plen = in;
            } else {
                piece = JSON_REPLACEMENT;
                plen = 3;
                in = 1;
            }
        }
        if (plen > dstlen - o)
            break;
        memcpy(dst + o, piece, plen);
        o += plen;
        i += in;
    }
    *used = i;
    return o;
}

void json_add_str(struct evbuffer *out, const char *s, size_t n, size_t cap)
{
    char chunk[512];
    size_t room = cap > MARKER_MAX ? cap - MARKER_MAX : 0;
    size_t used, w;

    evbuffer_add(out, "\"", 1);
    /* Up to <cap> - MARKER_MAX bytes first ... */
    while (n > 0 && room > 0) {
        w = json_escape(chunk, room < sizeof(chunk) ? room : sizeof(chunk), s, n, &used);
        if (w == 0)
            break;
        evbuffer_add(out, chunk, w);
        room -= w;
        s += used;
        n -= used;
    }
    /* ... then the rest if it fits in the marker's room, else the marker. */
    if (n > 0) {
        w = json_escape(chunk, MARKER_MAX + room, s, n, &used);
        if (used == n)
            evbuffer_add(out, chunk, w);
        else
            evbuffer_add_printf(out, "...[+%zu bytes]", n);
    }
    evbuffer_add(out, "\"", 1);
}
