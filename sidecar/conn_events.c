/* conn_events: a conn's interest (the read and write events added or removed
 * to match its state), its reports to the owner, the read limit, and the
 * timeouts' deadlines and timer. Shared by conn.c and conn_tls.c through
 * conn_events.h; it calls neither. */
#include "conn.h"
#include "conn_events.h"

#include <stdatomic.h>
#include <time.h>

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

/* ---- deadlines ------------------------------------------------------------ */

/* Not the wall clock: a clock step neither fires nor delays a timeout. Coarse:
 * the time of the kernel's last tick, read without a system call, and cheaper
 * than CLOCK_MONOTONIC (6 ns against 24 here); libevent's timers run on it too. */
int64_t conn_clock_us(void)
{
    struct timespec ts;

    if (clock_gettime(CLOCK_MONOTONIC_COARSE, &ts) != 0)
        clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* How much later than the true time a deadline is put, in us, so that it never
 * passes early: the coarse clock is behind by up to one tick (clock_getres) and
 * the time the tick took to be handled -- 1.0 to 5.5 ms with 4 ms ticks in a VM
 * here, so one tick is not enough -- hence two (the 1 us of rounding down to us
 * is well inside them). A timeout fires about two ticks late (6.5 to 9.5 ms
 * for 60 ms in test_conn). Measured once, by whichever thread comes first. */
static int64_t clock_slack_us(void)
{
    static _Atomic int64_t slack;
    int64_t s = atomic_load_explicit(&slack, memory_order_relaxed);

    if (!s) {
        struct timespec res;
        int64_t tick_us = 10000;

        if (clock_getres(CLOCK_MONOTONIC_COARSE, &res) == 0)
            tick_us = (int64_t)res.tv_sec * 1000000 + (res.tv_nsec + 999) / 1000;
        s = 2 * tick_us;
        atomic_store_explicit(&slack, s, memory_order_relaxed);
    }
    return s;
}

int64_t conn_deadline_after(int64_t now, int ms)
{
    return ms > 0 ? now + (int64_t)ms * 1000 + clock_slack_us() : 0;
}

/* The timer set to ring at <at>. */
static void timer_set(struct conn *c, int64_t at, int64_t now)
{
    int64_t us = at > now ? at - now : 0;
    struct timeval tv = { (time_t)(us / 1000000), (suseconds_t)(us % 1000000) };

    event_add(&c->timer, &tv);
    c->timer_at = at;
}

/* The lazy part: a deadline pushed later leaves the timer where it is (it rings
 * early, finds nothing passed, and is set again by conn_timer_rearm). */
void conn_deadline_start(struct conn *c, int64_t *deadline, int ms)
{
    int64_t now;

    if (ms <= 0) {
        *deadline = 0;
        return;
    }
    now = conn_clock_us();
    *deadline = conn_deadline_after(now, ms);
    if (!c->timer_at || *deadline < c->timer_at)
        timer_set(c, *deadline, now);
}

static int64_t earlier(int64_t a, int64_t b)
{
    if (!a || !b)
        return a ? a : b;
    return a < b ? a : b;
}

void conn_timer_rearm(struct conn *c, int64_t now)
{
    int64_t next = earlier(earlier(c->rd_deadline, c->wr_deadline), c->connect_deadline);

    if (next && (!c->timer_at || next < c->timer_at))
        timer_set(c, next, now);
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

/* Adds or removes the read event to match what the owner (and TLS) wants, and
 * starts or stops the read timeout with it. Only a change touches epoll. */
void conn_rd_update(struct conn *c)
{
    int want = want_rd(c);

    if (want && !c->rd_added) {
        event_add(&c->rd, NULL);
        c->rd_added = 1;
        conn_deadline_start(c, &c->rd_deadline, c->read_ms);
    } else if (!want && c->rd_added) {
        event_del(&c->rd);
        c->rd_added = 0;
        c->rd_deadline = 0;
    }
}

void conn_wr_arm(struct conn *c)
{
    if (!c->wr_added) {
        event_add(&c->wr, NULL);
        c->wr_added = 1;
        conn_deadline_start(c, &c->wr_deadline, c->write_ms);
    }
}

void conn_wr_disarm(struct conn *c)
{
    if (c->wr_added) {
        event_del(&c->wr);
        c->wr_added = 0;
        c->wr_deadline = 0;
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
