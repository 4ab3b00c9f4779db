#include "tunnel.h"

#include <stdatomic.h>
#include <stdlib.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/event_struct.h>

#include "conn.h"
#include "peers.h"
#include "upstream.h"

struct tunnel {
    struct conn *client;          /* borrowed */
    struct upconn *up;            /* owned */
    struct event idle_timer;
    int idle_ms;
    int client_paused, up_paused;
    tunnel_end_cb on_end;
    void *arg;
};

static void touch(struct tunnel *t)
{
    struct timeval tv = { t->idle_ms / 1000, (t->idle_ms % 1000) * 1000 };

    evtimer_add(&t->idle_timer, &tv);
}

/* A side reads only while the other side's output is below the high water. */
static void balance(struct tunnel *t)
{
    size_t to_up = evbuffer_get_length(conn_output(t->up->conn));
    size_t to_client = evbuffer_get_length(conn_output(t->client));

    if (!t->client_paused && to_up > TUNNEL_HIGH_WATER) {
        t->client_paused = 1;
        conn_read(t->client, 0);
    } else if (t->client_paused && to_up <= TUNNEL_HIGH_WATER) {
        t->client_paused = 0;
        conn_read(t->client, 1);
    }
    if (!t->up_paused && to_client > TUNNEL_HIGH_WATER) {
        t->up_paused = 1;
        conn_read(t->up->conn, 0);
    } else if (t->up_paused && to_client <= TUNNEL_HIGH_WATER) {
        t->up_paused = 0;
        conn_read(t->up->conn, 1);
    }
}

static void relay(struct tunnel *t, struct conn *from, struct conn *to)
{
    evbuffer_add_buffer(conn_output(to), conn_input(from));
    touch(t);
    conn_flush(to);
    balance(t);
}

static void client_read_cb(struct conn *c, void *arg)
{
    struct tunnel *t = arg;
    relay(t, c, t->up->conn);
}

static void up_read_cb(struct conn *c, void *arg)
{
    struct tunnel *t = arg;
    relay(t, c, t->client);
}

static void drained_cb(struct conn *c, void *arg)
{
    (void)c;
    balance(arg);
}

static void client_event_cb(struct conn *c, int what, int err, void *arg)
{
    struct tunnel *t = arg;

    (void)err;
    /* What the client sent last still goes up before both close. */
    if (what & CONN_EOF) {
        evbuffer_add_buffer(conn_output(t->up->conn), conn_input(c));
        conn_flush(t->up->conn);
    }
    t->on_end(t->arg, TUNNEL_CLIENT_CLOSED);
}

static void up_event_cb(struct conn *c, int what, int err, void *arg)
{
    struct tunnel *t = arg;

    (void)what;
    (void)err;
    evbuffer_add_buffer(conn_output(t->client), conn_input(c));
    t->on_end(t->arg, TUNNEL_UPSTREAM_CLOSED);
}

static void idle_cb(evutil_socket_t fd, short what, void *arg)
{
    struct tunnel *t = arg;

    (void)fd;
    (void)what;
    t->on_end(t->arg, TUNNEL_IDLE);
}

struct tunnel *tunnel_start(struct event_base *base, struct conn *client, struct upconn *up, int idle_ms,
                            tunnel_end_cb on_end, void *arg)
{
    struct tunnel *t = calloc(1, sizeof(*t));

    if (!t)
        return NULL;
    t->client = client;
    t->up = up;
    t->idle_ms = idle_ms;
    t->on_end = on_end;
    t->arg = arg;
    evtimer_assign(&t->idle_timer, base, idle_cb, t);
    conn_set_timeouts(up->conn, 0, 0);
    conn_set_timeouts(client, 0, 0);
    conn_set_read_limit(client, TUNNEL_HIGH_WATER);
    conn_set_read_limit(up->conn, TUNNEL_HIGH_WATER);
    conn_set_cbs(client, client_read_cb, drained_cb, client_event_cb, t);
    conn_set_cbs(up->conn, up_read_cb, drained_cb, up_event_cb, t);
    evbuffer_add_buffer(conn_output(up->conn), conn_input(client));
    evbuffer_add_buffer(conn_output(client), conn_input(up->conn));
    conn_read(client, 1);
    conn_read(up->conn, 1);
    conn_flush(up->conn);
    conn_flush(client);
    touch(t);
    balance(t);
    return t;
}

void tunnel_free(struct tunnel *t)
{
    event_del(&t->idle_timer);
    conn_set_cbs(t->client, NULL, NULL, NULL, NULL);
    conn_read(t->client, 0);
    atomic_fetch_sub_explicit(&t->up->peer->outstanding, 1, memory_order_relaxed);
    upstream_close(t->up);
    free(t);
}
