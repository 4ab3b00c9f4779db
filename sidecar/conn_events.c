/* conn_events: a conn's interest (the read and write events added or removed
 * to match its state), its reports to the owner, and the read limit. Shared by
 * conn.c and conn_tls.c through conn_events.h; it calls neither. */
#include "conn.h"
#include "conn_events.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/event_struct.h>

/* A conn whose owner let go (callbacks NULL) reports nothing. */
void conn_emit_event(struct conn *c, int what, int err, void *arg)
{
    if (c->on_event)
        c->on_event(c, what, err, arg);
}

void conn_emit_read(struct conn *c)
{
    if (c->on_read)
        c->on_read(c, c->arg);
}

void conn_emit_drained(struct conn *c)
{
    if (c->on_drained)
        c->on_drained(c, c->arg);
}

static int tv_set(const struct timeval *tv)
{
    return tv->tv_sec || tv->tv_usec;
}

void conn_event_add_tv(struct event *ev, const struct timeval *tv)
{
    if (tv_set(tv))
        event_add(ev, tv);
    else {
        event_add(ev, NULL);
        event_remove_timer(ev);
    }
}

/* ---- interest ------------------------------------------------------------ */

/* The owner's reads can run now (TLS: the handshake is over, no write blocks them). */
int conn_owner_reads(const struct conn *c)
{
    return c->reading && !c->resume_cb && !c->connecting && !c->read_eof && !c->handshaking &&
           !c->rd_want_wr && !c->failed;
}

static int want_rd(const struct conn *c)
{
    if (c->failed)
        return 0;
    return conn_owner_reads(c) || (c->handshaking && c->hs_want_rd) || c->wr_want_rd;
}

static int want_wr(const struct conn *c)
{
    if (!c->ssl)
        return c->wr_added;         /* plain: armed and disarmed where it happens */
    if (c->failed)
        return 0;
    return c->connecting || (c->handshaking && c->hs_want_wr) || c->rd_want_wr ||
           (c->out_waiting && !c->wr_want_rd && !c->handshaking);
}

/* Adds or removes the read event to match what the owner (and TLS) wants. Only
 * a change touches epoll. */
void conn_rd_update(struct conn *c)
{
    int want = want_rd(c);

    if (want && !c->rd_added) {
        conn_event_add_tv(&c->rd, &c->read_tv);
        c->rd_added = 1;
    } else if (!want && c->rd_added) {
        event_del(&c->rd);
        c->rd_added = 0;
    }
}

void conn_wr_arm(struct conn *c)
{
    if (!c->wr_added) {
        conn_event_add_tv(&c->wr, &c->write_tv);
        c->wr_added = 1;
    }
}

void conn_wr_disarm(struct conn *c)
{
    if (c->wr_added) {
        event_del(&c->wr);
        c->wr_added = 0;
    }
}

void conn_wr_update(struct conn *c)
{
    if (want_wr(c))
        conn_wr_arm(c);
    else
        conn_wr_disarm(c);
}

/* The owner's reads became possible again: what OpenSSL holds is read from the
 * loop (never from inside the verb), as is an end of the stream not yet reported. */
void conn_rd_kick(struct conn *c)
{
    if (conn_owner_reads(c) && conn_tls_has_pending(c))
        event_active(&c->rd, EV_READ, 1);
    else if (c->reading && c->end_what)
        event_active(&c->rd, EV_READ, 1);
}

static void resume_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    struct conn *c = arg;

    (void)info;
    if (evbuffer_get_length(buf) >= c->read_high)
        return;
    evbuffer_remove_cb_entry(buf, c->resume_cb);
    c->resume_cb = NULL;
    conn_rd_update(c);
    conn_rd_kick(c);
}

void conn_pause_for_limit(struct conn *c)
{
    if (c->resume_cb || !c->read_high || evbuffer_get_length(c->in) < c->read_high)
        return;
    c->resume_cb = evbuffer_add_cb(c->in, resume_cb, c);
    conn_rd_update(c);
}
