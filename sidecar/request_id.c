#include "request_id.h"

#include "peers.h"

enum request_id_action request_id_decide(const char *value, size_t len, int count)
{
    if (count <= 0 || !value)
        return REQUEST_ID_MAKE;
    /* Two ids would make two logs disagree on which request this was. */
    if (count > 1 || len == 0 || len > REQUEST_ID_MAX)
        return REQUEST_ID_REPLACE;
    /* Visible ASCII only: an id is copied into logs and other services' headers. */
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)value[i] < 0x21 || (unsigned char)value[i] > 0x7e)
            return REQUEST_ID_REPLACE;
    return REQUEST_ID_KEEP;
}

void request_id_make(uint64_t *rng, char out[REQUEST_ID_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    uint64_t hi = peers_rand(rng), lo = peers_rand(rng);
    unsigned char b[16];
    int o = 0;

    for (int i = 0; i < 8; i++) {
        b[i] = (unsigned char)(hi >> (8 * i));
        b[8 + i] = (unsigned char)(lo >> (8 * i));
    }
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);   /* version 4 */
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);   /* variant 10 (RFC 9562) */
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hex[b[i] >> 4];
        out[o++] = hex[b[i] & 0x0f];
    }
    out[o] = '\0';
}
