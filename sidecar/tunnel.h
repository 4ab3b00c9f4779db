/* tunnel: bytes both ways, unparsed, between a client connection and an
 * upstream one, after a 101 Switching Protocols.
 *
 * API:
 *   tunnel_start()   takes the upstream connection, borrows the client's, relays
 *   tunnel_free()    closes the upstream connection; the client's goes back to its owner
 * Backpressure as everywhere: a side stops reading while the other side's output
 * holds more than TUNNEL_HIGH_WATER. */
#ifndef SIDECAR_TUNNEL_H
#define SIDECAR_TUNNEL_H

#define TUNNEL_HIGH_WATER (256 * 1024)

struct conn;
struct event_base;
struct tunnel;
struct upconn;

enum tunnel_end {
    TUNNEL_UPSTREAM_CLOSED,   /* the upstream closed or failed: the client gets what is queued, then a close */
    TUNNEL_CLIENT_CLOSED,     /* the client closed or failed */
    TUNNEL_IDLE,              /* no byte either way for the idle time */
};

/* Called once, from the loop, as the last thing the tunnel does: the owner may free it there. */
typedef void (*tunnel_end_cb)(void *arg, enum tunnel_end how);

/* Relays between <client> (borrowed: its callbacks are the tunnel's until
 * tunnel_free) and <up> (taken on success). Bytes already in either input
 * cross over first. <idle_ms> ends a silent tunnel. NULL on allocation failure
 * (nothing taken). */
struct tunnel *tunnel_start(struct event_base *base, struct conn *client, struct upconn *up, int idle_ms,
                            tunnel_end_cb on_end, void *arg);

/* Closes the upstream connection and frees <t>; the client connection is left
 * with no callbacks and reading off, for its owner to take back. */
void tunnel_free(struct tunnel *t);

#endif
