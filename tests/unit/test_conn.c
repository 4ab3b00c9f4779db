/* conn over real sockets (socketpairs and a loopback listener) on a real
 * libevent loop: what each verb does, what is reported, and when. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <time.h>

#include <cmocka.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "conn.h"

struct seen {
    int reads, drained, events, last_what, last_err;
    struct event_base *base;
};

static void on_read(struct conn *c, void *arg)
{
    struct seen *s = arg;
    (void)c;
    s->reads++;
    event_base_loopbreak(s->base);
}

static void on_drained(struct conn *c, void *arg)
{
    struct seen *s = arg;
    (void)c;
    s->drained++;
    event_base_loopbreak(s->base);
}

static void on_event(struct conn *c, int what, int err, void *arg)
{
    struct seen *s = arg;
    (void)c;
    s->events++;
    s->last_what = what;
    s->last_err = err;
    event_base_loopbreak(s->base);
}

/* Runs the loop until a callback breaks it, or 2 s. */
static void run(struct event_base *base)
{
    struct timeval tv = { 2, 0 };
    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
}

static void set_flag(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    *(int *)arg = 1;
}

/* Runs the loop for <usec> whatever happens (to see that nothing is reported).
 * Its own timer, not event_base_loopexit(): a callback's loopbreak would leave
 * that one pending, to cut a later run short. */
static void run_for(struct event_base *base, long usec)
{
    struct timeval tv = { usec / 1000000, usec % 1000000 };
    int done = 0;
    struct event *t = evtimer_new(base, set_flag, &done);

    evtimer_add(t, &tv);
    while (!done)
        event_base_loop(base, EVLOOP_ONCE);
    event_free(t);
}

/* How much earlier than its value a timeout may fire, in ms: none. (libevent's
 * own timeouts, used before the deadlines, ran on its cached coarse clock and
 * fired up to a tick early: this was 5.) */
#define EARLY_MS 0

/* The precise monotonic clock, the tests' own measure of when things happen. */
static long long now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static long long now_ms(void)
{
    return now_us() / 1000;
}

/* Runs the loop until <s> saw an event or <limit_ms> passed since <t0_us>; the
 * ms from <t0_us> to the event (or to the limit). */
static long long wait_event_since(struct event_base *base, const struct seen *s, long long t0_us, long long limit_ms)
{
    while (s->events == 0 && now_us() - t0_us < limit_ms * 1000)
        run_for(base, 1000);
    return (now_us() - t0_us) / 1000;
}

/* A loop and a conn on one end of a socketpair (the other end: peer), its
 * callbacks counting into s. */
struct fx {
    struct event_base *base;
    struct seen s;
    struct conn *c;
    int peer;
};

static int pair_setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    int sv[2];

    if (!f || socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) < 0)
        return -1;
    f->base = event_base_new();
    f->s.base = f->base;
    f->c = conn_plain_new(f->base, sv[0]);
    if (!f->c)
        return -1;
    conn_set_cbs(f->c, on_read, on_drained, on_event, &f->s);
    f->peer = sv[1];
    *state = f;
    return 0;
}

static int pair_teardown(void **state)
{
    struct fx *f = *state;

    conn_free(f->c);
    if (f->peer >= 0)
        close(f->peer);
    event_base_free(f->base);
    free(f);
    return 0;
}

static void test_read_then_eof(void **state)
{
    struct fx *f = *state;
    struct event_base *base = f->base;
    struct seen *s = &f->s;
    struct conn *c = f->c;

    conn_read(c, 1);
    assert_int_equal(write(f->peer, "hello", 5), 5);
    run(base);
    assert_int_equal(s->reads, 1);
    assert_int_equal(evbuffer_get_length(conn_input(c)), 5);
    assert_memory_equal(evbuffer_pullup(conn_input(c), 5), "hello", 5);
    close(f->peer);
    f->peer = -1;
    run(base);
    assert_int_equal(s->events, 1);
    assert_true(s->last_what & CONN_EOF);
}

static void test_reads_off_means_no_callback(void **state)
{
    struct fx *f = *state;
    struct event_base *base = f->base;
    struct seen *s = &f->s;
    struct conn *c = f->c;

    assert_int_equal(write(f->peer, "x", 1), 1);
    run_for(base, 100000);
    assert_int_equal(s->reads, 0);
    conn_read(c, 1);
    run(base);
    assert_int_equal(s->reads, 1);
}

/* A flush the socket takes whole reports through its return value, not through on_drained. */
static void test_flush_all_at_once(void **state)
{
    struct fx *f = *state;
    struct event_base *base = f->base;
    struct seen *s = &f->s;
    struct conn *c = f->c;
    char buf[16];

    evbuffer_add(conn_output(c), "abc", 3);
    assert_int_equal(conn_flush(c), 0);
    assert_int_equal(read(f->peer, buf, sizeof(buf)), 3);
    run_for(base, 100000);
    assert_int_equal(s->drained, 0);
}

/* What the socket did not take is written on EV_WRITE; on_drained comes once it is all out. */
static void test_flush_rest_then_drained(void **state)
{
    struct fx *f = *state;
    struct event_base *base = f->base;
    struct seen *s = &f->s;
    struct conn *c = f->c;
    static char big[4 << 20];
    char sink[65536];
    size_t got = 0;

    evbuffer_add(conn_output(c), big, sizeof(big));
    assert_true(conn_flush(c) > 0);
    assert_int_equal(s->drained, 0);
    while (got < sizeof(big) && s->drained == 0) {
        ssize_t n = read(f->peer, sink, sizeof(sink));
        if (n > 0)
            got += (size_t)n;
        run_for(base, 1000);
    }
    while (got < sizeof(big)) {
        ssize_t n = read(f->peer, sink, sizeof(sink));
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    assert_int_equal(got, sizeof(big));
    assert_int_equal(s->drained, 1);
    assert_int_equal(evbuffer_get_length(conn_output(c)), 0);
}

/* Above the read limit reading pauses; draining the input below it resumes by itself. */
static void test_read_limit_pauses_and_resumes(void **state)
{
    struct fx *f = *state;
    struct event_base *base = f->base;
    struct seen *s = &f->s;
    struct conn *c = f->c;
    char chunk[1000];

    memset(chunk, 'a', sizeof(chunk));
    conn_set_read_limit(c, 500);
    conn_read(c, 1);
    assert_int_equal(write(f->peer, chunk, sizeof(chunk)), (ssize_t)sizeof(chunk));
    run(base);
    assert_int_equal(s->reads, 1);
    assert_int_equal(write(f->peer, chunk, sizeof(chunk)), (ssize_t)sizeof(chunk));
    run_for(base, 100000);
    assert_int_equal(s->reads, 1);     /* paused: 1000 >= 500 */
    evbuffer_drain(conn_input(c), evbuffer_get_length(conn_input(c)));
    run(base);
    assert_int_equal(s->reads, 2);     /* resumed */
}

static void test_read_timeout(void **state)
{
    struct fx *f = *state;
    struct event_base *base = f->base;
    struct seen *s = &f->s;
    struct conn *c = f->c;

    conn_set_timeouts(c, 50, 0);
    conn_read(c, 1);
    run(base);
    assert_int_equal(s->events, 1);
    assert_int_equal(s->last_what, CONN_TIMEOUT | CONN_READING);
}

/* ---- timeouts: when each one runs, restarts and stops ---- */

/* A read timeout runs from where reading went on: not before it has passed. */
static void test_read_timeout_when_no_data(void **state)
{
    struct fx *f = *state;
    long long t0 = now_us(), took;

    conn_set_timeouts(f->c, 60, 0);
    conn_read(f->c, 1);
    took = wait_event_since(f->base, &f->s, t0, 2000);
    assert_int_equal(f->s.events, 1);
    assert_int_equal(f->s.last_what, CONN_TIMEOUT | CONN_READING);
    assert_in_range(took, 60 - EARLY_MS, 149);
}

/* Data every 30 ms keeps a 60 ms read timeout from firing for 300 ms; it fires
 * 60 ms after the last byte, not earlier (a lazy timer armed at the first
 * deadline must look again and wait for the one the reads pushed later). */
static void test_read_timeout_restarted_by_reads(void **state)
{
    struct fx *f = *state;
    long long last = 0, took;

    conn_set_timeouts(f->c, 60, 0);
    conn_read(f->c, 1);
    for (int i = 0; i < 10; i++) {
        assert_int_equal(write(f->peer, "x", 1), 1);
        last = now_us();
        run_for(f->base, 30000);
    }
    assert_int_equal(f->s.events, 0);
    assert_int_equal(f->s.reads, 10);
    took = wait_event_since(f->base, &f->s, last, 2000);
    assert_int_equal(f->s.events, 1);
    assert_int_equal(f->s.last_what, CONN_TIMEOUT | CONN_READING);
    assert_in_range(took, 60 - EARLY_MS, 149);
}

/* One byte halfway through a 100 ms read timeout pushes it 100 ms past that
 * byte: the timer, set for the first deadline, rings before the new one and
 * must be set again for it (not report, and not give up). */
static void test_read_timeout_pushed_later_by_one_read(void **state)
{
    struct fx *f = *state;
    long long t1, took;

    conn_set_timeouts(f->c, 100, 0);
    conn_read(f->c, 1);
    run_for(f->base, 50000);
    assert_int_equal(write(f->peer, "x", 1), 1);
    t1 = now_us();
    took = wait_event_since(f->base, &f->s, t1, 2000);
    assert_int_equal(f->s.reads, 1);
    assert_int_equal(f->s.events, 1);
    assert_int_equal(f->s.last_what, CONN_TIMEOUT | CONN_READING);
    assert_in_range(took, 100 - EARLY_MS, 199);
}

/* conn_set_timeouts() on a running read timeout restarts it at the new value:
 * shorter fires at the new, earlier time. */
static void test_set_timeouts_shortens_read_timeout(void **state)
{
    struct fx *f = *state;
    long long t0, took;

    conn_set_timeouts(f->c, 1000, 0);
    conn_read(f->c, 1);
    run_for(f->base, 20000);
    conn_set_timeouts(f->c, 60, 0);
    t0 = now_us();
    took = wait_event_since(f->base, &f->s, t0, 2000);
    assert_int_equal(f->s.events, 1);
    assert_int_equal(f->s.last_what, CONN_TIMEOUT | CONN_READING);
    assert_in_range(took, 60 - EARLY_MS, 399);
}

/* ... longer does not fire at the old time, and does at the new one. */
static void test_set_timeouts_lengthens_read_timeout(void **state)
{
    struct fx *f = *state;
    long long t0, took;

    conn_set_timeouts(f->c, 60, 0);
    conn_read(f->c, 1);
    run_for(f->base, 20000);
    conn_set_timeouts(f->c, 300, 0);
    t0 = now_us();
    run_for(f->base, 200000);
    assert_int_equal(f->s.events, 0);
    took = wait_event_since(f->base, &f->s, t0, 2000);
    assert_int_equal(f->s.events, 1);
    assert_int_equal(f->s.last_what, CONN_TIMEOUT | CONN_READING);
    assert_in_range(took, 300 - EARLY_MS, 599);
}

/* ... and 0 stops it. */
static void test_set_timeouts_zero_stops_read_timeout(void **state)
{
    struct fx *f = *state;

    conn_set_timeouts(f->c, 60, 0);
    conn_read(f->c, 1);
    run_for(f->base, 20000);
    conn_set_timeouts(f->c, 0, 0);
    run_for(f->base, 300000);
    assert_int_equal(f->s.events, 0);
}

/* A timeout that is left running after it fired fires again a period later,
 * as libevent's persistent timeouts do, until the owner stops it. */
static void test_read_timeout_repeats_until_stopped(void **state)
{
    struct fx *f = *state;
    long long t0 = now_us(), first, second;

    conn_set_timeouts(f->c, 60, 0);
    conn_read(f->c, 1);
    first = wait_event_since(f->base, &f->s, t0, 2000);
    assert_int_equal(f->s.events, 1);
    f->s.events = 0;
    second = wait_event_since(f->base, &f->s, t0, 2000);
    assert_int_equal(f->s.events, 1);
    assert_int_equal(f->s.last_what, CONN_TIMEOUT | CONN_READING);
    assert_in_range(second - first, 60 - EARLY_MS, 149);
    f->s.events = 0;
    conn_set_timeouts(f->c, 0, 0);
    run_for(f->base, 200000);
    assert_int_equal(f->s.events, 0);
}

/* Reading off: no read timeout runs (the old deadline passes unseen); reading
 * on again starts it at its full value. */
static void test_read_off_stops_timeout_and_on_restarts_it(void **state)
{
    struct fx *f = *state;
    long long t0, took;

    conn_set_timeouts(f->c, 60, 0);
    conn_read(f->c, 1);
    run_for(f->base, 40000);
    conn_read(f->c, 0);
    run_for(f->base, 150000);
    assert_int_equal(f->s.events, 0);
    conn_read(f->c, 1);
    t0 = now_us();
    took = wait_event_since(f->base, &f->s, t0, 2000);
    assert_int_equal(f->s.events, 1);
    assert_int_equal(f->s.last_what, CONN_TIMEOUT | CONN_READING);
    assert_in_range(took, 60 - EARLY_MS, 149);
}

/* Reading paused by the read limit: no read timeout; resumed, the full one. */
static void test_read_limit_pause_stops_read_timeout(void **state)
{
    struct fx *f = *state;
    char chunk[1000];
    long long t0, took;

    memset(chunk, 'a', sizeof(chunk));
    conn_set_read_limit(f->c, 500);
    conn_set_timeouts(f->c, 60, 0);
    conn_read(f->c, 1);
    assert_int_equal(write(f->peer, chunk, sizeof(chunk)), (ssize_t)sizeof(chunk));
    run(f->base);
    assert_int_equal(f->s.reads, 1);
    run_for(f->base, 200000);
    assert_int_equal(f->s.events, 0);
    evbuffer_drain(conn_input(f->c), evbuffer_get_length(conn_input(f->c)));
    t0 = now_us();
    took = wait_event_since(f->base, &f->s, t0, 2000);
    assert_int_equal(f->s.events, 1);
    assert_int_equal(f->s.last_what, CONN_TIMEOUT | CONN_READING);
    assert_in_range(took, 60 - EARLY_MS, 149);
}

/* Everything the peer end holds, read without blocking: the byte count. */
static size_t drain_peer(int fd)
{
    static char sink[65536];
    size_t got = 0;
    ssize_t n;

    while ((n = read(fd, sink, sizeof(sink))) > 0)
        got += (size_t)n;
    return got;
}

/* More output than the (small) socket buffer takes: the rest waits on EV_WRITE. */
static void queue_big_output(struct fx *f, size_t len)
{
    int small = 4096;
    char *big = calloc(1, len);

    assert_non_null(big);
    assert_int_equal(setsockopt(conn_fd(f->c), SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)), 0);
    assert_int_equal(setsockopt(f->peer, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small)), 0);
    evbuffer_add(conn_output(f->c), big, len);
    free(big);
    assert_true(conn_flush(f->c) > 0);
}

/* The peer reads nothing: the write timeout ends the wait, not before its time. */
static void test_write_timeout_when_peer_reads_nothing(void **state)
{
    struct fx *f = *state;
    long long t0 = now_us(), took;

    conn_set_timeouts(f->c, 0, 60);
    queue_big_output(f, 1 << 20);
    took = wait_event_since(f->base, &f->s, t0, 2000);
    assert_int_equal(f->s.events, 1);
    assert_int_equal(f->s.last_what, CONN_TIMEOUT | CONN_WRITING);
    assert_int_equal(f->s.drained, 0);
    assert_in_range(took, 60 - EARLY_MS, 149);
}

/* A peer that reads every 30 ms keeps a 60 ms write timeout from firing: each
 * write restarts it. Once the peer stops, it fires 60 ms after the last write. */
static void test_write_timeout_restarted_by_progress(void **state)
{
    struct fx *f = *state;
    size_t got = 0;
    long long last = 0, took;

    conn_set_timeouts(f->c, 0, 60);
    queue_big_output(f, 1 << 20);
    for (int i = 0; i < 10; i++) {
        run_for(f->base, 30000);
        got += drain_peer(f->peer);
        last = now_us();
    }
    assert_int_equal(f->s.events, 0);
    assert_true(got > 0);
    assert_true(evbuffer_get_length(conn_output(f->c)) > 0);
    took = wait_event_since(f->base, &f->s, last, 2000);
    assert_int_equal(f->s.events, 1);
    assert_int_equal(f->s.last_what, CONN_TIMEOUT | CONN_WRITING);
    assert_in_range(took, 60 - EARLY_MS, 149);
}

/* Once the output drained, the write timeout does not run (nor after its time). */
static void test_no_write_timeout_once_drained(void **state)
{
    struct fx *f = *state;
    size_t got = 0;

    conn_set_timeouts(f->c, 0, 60);
    queue_big_output(f, 256 << 10);
    for (int i = 0; i < 5000 && f->s.drained == 0; i++) {
        got += drain_peer(f->peer);
        run_for(f->base, 1000);
    }
    got += drain_peer(f->peer);
    assert_int_equal(got, 256 << 10);
    assert_int_equal(f->s.drained, 1);
    run_for(f->base, 200000);
    assert_int_equal(f->s.events, 0);
}

static void on_event_free(struct conn *c, int what, int err, void *arg)
{
    struct fx *f = arg;

    (void)err;
    f->s.events++;
    f->s.last_what = what;
    conn_free(c);
    f->c = NULL;
}

/* Both directions time out at once and the first report frees the conn: the
 * second is not reported, and nothing touches the freed conn (ASan). */
static void test_timeout_callback_frees_conn(void **state)
{
    struct fx *f = *state;

    conn_set_cbs(f->c, NULL, NULL, on_event_free, f);
    conn_set_timeouts(f->c, 50, 50);
    conn_read(f->c, 1);
    queue_big_output(f, 1 << 20);
    run_for(f->base, 300000);
    assert_int_equal(f->s.events, 1);
    assert_true(f->s.last_what & CONN_TIMEOUT);
    assert_null(f->c);
}

static int loopback_listener(struct sockaddr_in *sa, int do_listen);

/* A listener whose accept queue is full drops the SYN: the connect timeout
 * ends the connect, reported as a write timeout. */
static void test_plain_connect_timeout(void **state)
{
    struct event_base *base = event_base_new();
    struct seen s = { .base = base };
    struct sockaddr_in sa;
    int lfd = loopback_listener(&sa, 0), fill[2];
    long long t0, took;
    struct conn *c;

    (void)state;
    assert_int_equal(listen(lfd, 0), 0);
    for (int i = 0; i < 2; i++) {
        fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        connect(fill[i], (struct sockaddr *)&sa, sizeof(sa));
        run_for(base, 20000);
    }
    t0 = now_us();
    c = conn_plain_connect(base, (struct sockaddr *)&sa, sizeof(sa), 100);
    assert_non_null(c);
    conn_set_cbs(c, on_read, on_drained, on_event, &s);
    took = wait_event_since(base, &s, t0, 2000);
    assert_int_equal(s.events, 1);
    assert_int_equal(s.last_what, CONN_TIMEOUT | CONN_WRITING);
    assert_in_range(took, 100 - EARLY_MS, 899);
    conn_free(c);
    close(fill[0]);
    close(fill[1]);
    close(lfd);
    event_base_free(base);
}

/* The connect timeout bounds the connect only: connected, with nothing to
 * write, nothing times out afterwards. */
static void test_plain_connect_timeout_ends_with_connect(void **state)
{
    struct event_base *base = event_base_new();
    struct seen s = { .base = base };
    struct sockaddr_in sa;
    int lfd = loopback_listener(&sa, 1);
    struct conn *c;

    (void)state;
    c = conn_plain_connect(base, (struct sockaddr *)&sa, sizeof(sa), 100);
    assert_non_null(c);
    conn_set_cbs(c, on_read, on_drained, on_event, &s);
    run(base);
    assert_int_equal(s.last_what, CONN_CONNECTED);
    s.events = 0;
    run_for(base, 300000);
    assert_int_equal(s.events, 0);
    conn_free(c);
    close(lfd);
    event_base_free(base);
}

static void test_connect_refused_and_connected(void **state)
{
    struct event_base *base = event_base_new();
    struct seen s = { .base = base };
    struct sockaddr_in sa = { .sin_family = AF_INET };
    socklen_t len = sizeof(sa);
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct conn *c;

    (void)state;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(lfd, (struct sockaddr *)&sa, &len), 0);
    /* Bound, not listening: a connect to it is refused. */
    c = conn_plain_connect(base, (struct sockaddr *)&sa, sizeof(sa), 1000);
    if (c) {
        conn_set_cbs(c, on_read, on_drained, on_event, &s);
        run(base);
        assert_int_equal(s.events, 1);
        assert_true(s.last_what & CONN_ERROR);
        assert_int_equal(s.last_err, ECONNREFUSED);
        conn_free(c);
    } else {
        assert_int_equal(errno, ECONNREFUSED);
    }
    assert_int_equal(listen(lfd, 8), 0);
    memset(&s, 0, sizeof(s));
    s.base = base;
    c = conn_plain_connect(base, (struct sockaddr *)&sa, sizeof(sa), 1000);
    assert_non_null(c);
    conn_set_cbs(c, on_read, on_drained, on_event, &s);
    /* Queued before the connect ends: written once it has. */
    evbuffer_add(conn_output(c), "ping", 4);
    assert_int_equal(conn_flush(c), 4);
    run(base);
    assert_int_equal(s.last_what, CONN_CONNECTED);
    assert_int_equal(conn_flush(c), 0);
    {
        int afd = accept(lfd, NULL, NULL);
        char buf[8];
        assert_true(afd >= 0);
        assert_int_equal(read(afd, buf, sizeof(buf)), 4);
        close(afd);
    }
    conn_free(c);
    close(lfd);
    event_base_free(base);
}

/* A conn whose owner dropped its callbacks reports nothing (deferred frees). */
static void test_no_callbacks_after_letting_go(void **state)
{
    struct fx *f = *state;
    struct event_base *base = f->base;
    struct seen *s = &f->s;
    struct conn *c = f->c;

    conn_read(c, 1);
    conn_set_cbs(c, NULL, NULL, NULL, NULL);
    close(f->peer);
    f->peer = -1;
    run_for(base, 100000);
    assert_int_equal(s->events + s->reads, 0);
}

/* ---- TLS ----------------------------------------------------------------- */

/* One self-signed certificate (P-256, CN=localhost) made in memory for every TLS
 * test, and the contexts built on it. */
static EVP_PKEY *tls_key;
static X509 *tls_cert;

static int tls_global_setup(void)
{
    X509_NAME *name;

    tls_key = EVP_EC_gen("P-256");
    tls_cert = X509_new();
    if (!tls_key || !tls_cert)
        return -1;
    ASN1_INTEGER_set(X509_get_serialNumber(tls_cert), 1);
    X509_gmtime_adj(X509_getm_notBefore(tls_cert), -60);
    X509_gmtime_adj(X509_getm_notAfter(tls_cert), 3600);
    X509_set_pubkey(tls_cert, tls_key);
    name = X509_get_subject_name(tls_cert);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"localhost", -1, -1, 0);
    X509_set_issuer_name(tls_cert, name);
    return X509_sign(tls_cert, tls_key, EVP_sha256()) > 0 ? 0 : -1;
}

static SSL_CTX *server_ctx(int max_version)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());

    assert_non_null(ctx);
    assert_int_equal(SSL_CTX_use_certificate(ctx, tls_cert), 1);
    assert_int_equal(SSL_CTX_use_PrivateKey(ctx, tls_key), 1);
    if (max_version)
        SSL_CTX_set_max_proto_version(ctx, max_version);
    return ctx;
}

static SSL_CTX *client_ctx(int min_version, int verify)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

    assert_non_null(ctx);
    if (min_version)
        SSL_CTX_set_min_proto_version(ctx, min_version);
    /* verify: against an empty store, so the self-signed certificate is refused. */
    SSL_CTX_set_verify(ctx, verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
    return ctx;
}

/* A loop and a TLS server conn on one end of a socketpair; on the other end
 * either a TLS client conn (cli) or a bare OpenSSL client driven by the test
 * (raw, on raw_fd). */
struct tfx {
    struct event_base *base;
    SSL_CTX *sctx, *cctx;
    struct seen ss, cs;
    struct conn *srv, *cli;
    SSL *raw;
    int raw_fd;
};

/* Runs the loop until <cond> holds or 20 s pass. */
#define RUN_UNTIL(base, cond)                                                    \
    do {                                                                         \
        for (int i_ = 0; i_ < 20000 && !(cond); i_++)                            \
            run_for(base, 1000);                                                 \
    } while (0)

static struct tfx *tfx_new(void)
{
    struct tfx *f = calloc(1, sizeof(*f));

    assert_non_null(f);
    f->base = event_base_new();
    f->ss.base = f->base;
    f->cs.base = f->base;
    f->raw_fd = -1;
    f->sctx = server_ctx(0);
    f->cctx = client_ctx(0, 0);
    return f;
}

static int tls_pair_setup(void **state)
{
    struct tfx *f = tfx_new();
    int sv[2];

    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) < 0)
        return -1;
    f->srv = conn_tls_new(f->base, sv[0], SSL_new(f->sctx), 1);
    f->cli = conn_tls_new(f->base, sv[1], SSL_new(f->cctx), 0);
    if (!f->srv || !f->cli)
        return -1;
    conn_set_cbs(f->srv, on_read, on_drained, on_event, &f->ss);
    conn_set_cbs(f->cli, on_read, on_drained, on_event, &f->cs);
    conn_read(f->srv, 1);
    conn_read(f->cli, 1);
    RUN_UNTIL(f->base, f->ss.events && f->cs.events);
    if (f->ss.last_what != CONN_CONNECTED || f->cs.last_what != CONN_CONNECTED)
        return -1;
    f->ss.events = f->cs.events = 0;
    *state = f;
    return 0;
}

/* The test's own client: one handshake step at a time, the loop run between. */
static int raw_handshake(struct tfx *f)
{
    for (int i = 0; i < 2000; i++) {
        int r = SSL_do_handshake(f->raw);
        if (r == 1)
            return 0;
        if (SSL_get_error(f->raw, r) != SSL_ERROR_WANT_READ && SSL_get_error(f->raw, r) != SSL_ERROR_WANT_WRITE)
            return -1;
        run_for(f->base, 1000);
    }
    return -1;
}

/* A server conn and a bare client whose handshake is done on the client's side
 * only: its Finished is in the socket, not yet read by the conn. */
static int tls_raw_setup(void **state)
{
    struct tfx *f = tfx_new();
    int sv[2];

    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) < 0)
        return -1;
    f->srv = conn_tls_new(f->base, sv[0], SSL_new(f->sctx), 1);
    if (!f->srv)
        return -1;
    conn_set_cbs(f->srv, on_read, on_drained, on_event, &f->ss);
    conn_read(f->srv, 1);
    f->raw_fd = sv[1];
    f->raw = SSL_new(f->cctx);
    SSL_set_fd(f->raw, f->raw_fd);
    SSL_set_connect_state(f->raw);
    if (raw_handshake(f) < 0)
        return -1;
    *state = f;
    return 0;
}

static int tls_teardown(void **state)
{
    struct tfx *f = *state;

    conn_free(f->srv);
    conn_free(f->cli);
    if (f->raw)
        SSL_free(f->raw);
    if (f->raw_fd >= 0)
        close(f->raw_fd);
    SSL_CTX_free(f->sctx);
    SSL_CTX_free(f->cctx);
    event_base_free(f->base);
    free(f);
    return 0;
}

/* Waits for the server conn's CONNECTED after tls_raw_setup. */
static void raw_wait_connected(struct tfx *f)
{
    RUN_UNTIL(f->base, f->ss.events > 0);
    assert_int_equal(f->ss.events, 1);
    assert_int_equal(f->ss.last_what, CONN_CONNECTED);
    f->ss.events = 0;
}

/* The socket under the server conn holds nothing: whatever the conn delivers
 * came out of OpenSSL's buffer, not from a new readable event. */
static void assert_socket_empty(struct conn *c)
{
    char b;

    assert_int_equal(recv(conn_fd(c), &b, 1, MSG_PEEK | MSG_DONTWAIT), -1);
    assert_true(errno == EAGAIN || errno == EWOULDBLOCK);
}

static void test_tls_handshake_both_sides(void **state)
{
    struct tfx *f = *state;

    assert_true(conn_is_tls(f->srv));
    assert_non_null(conn_ssl(f->srv));
    assert_true(conn_fd(f->srv) >= 0);
    evbuffer_add(conn_output(f->cli), "ping", 4);
    assert_int_equal(conn_flush(f->cli), 0);
    RUN_UNTIL(f->base, evbuffer_get_length(conn_input(f->srv)) >= 4);
    assert_memory_equal(evbuffer_pullup(conn_input(f->srv), 4), "ping", 4);
    evbuffer_add(conn_output(f->srv), "pong", 4);
    assert_int_equal(conn_flush(f->srv), 0);
    RUN_UNTIL(f->base, evbuffer_get_length(conn_input(f->cli)) >= 4);
    assert_memory_equal(evbuffer_pullup(conn_input(f->cli), 4), "pong", 4);
    assert_int_equal(f->ss.events + f->cs.events, 0);
}

/* ---- large echo: le-proxy's backpressure on a TLS pair ---- */

#define ECHO_BYTES (8u << 20)
#define ECHO_LIMIT (64u << 10)

struct echo {
    struct event_base *base;
    struct conn *srv, *cli;
    size_t checked;             /* bytes the client got back, compared */
    int mismatch, events, srv_pauses, cli_drained;
};

static unsigned char echo_byte(size_t i)
{
    return (unsigned char)(i * 131 + (i >> 13));
}

static void echo_srv_read(struct conn *c, void *arg)
{
    struct echo *e = arg;

    evbuffer_add_buffer(conn_output(c), conn_input(c));
    if (conn_flush(c) > ECHO_LIMIT) {
        e->srv_pauses++;
        conn_read(c, 0);
    }
}

static void echo_srv_drained(struct conn *c, void *arg)
{
    (void)arg;
    conn_read(c, 1);
}

static void echo_cli_read(struct conn *c, void *arg)
{
    struct echo *e = arg;
    struct evbuffer *in = conn_input(c);
    size_t n = evbuffer_get_length(in);
    unsigned char *p = evbuffer_pullup(in, (ssize_t)n);

    for (size_t i = 0; i < n; i++)
        if (p[i] != echo_byte(e->checked + i))
            e->mismatch++;
    e->checked += n;
    evbuffer_drain(in, n);
    if (e->checked >= ECHO_BYTES)
        event_base_loopbreak(e->base);
}

static void echo_cli_drained(struct conn *c, void *arg)
{
    struct echo *e = arg;
    (void)c;
    e->cli_drained++;
}

static void echo_event(struct conn *c, int what, int err, void *arg)
{
    struct echo *e = arg;
    (void)c;
    (void)what;
    (void)err;
    e->events++;
    event_base_loopbreak(e->base);
}

/* 8 MiB out and the same 8 MiB back at once, both inputs under a read limit, the
 * echoing side pausing its reads while its output is above the limit (le-proxy),
 * and resuming from on_drained. */
static void test_tls_large_echo_with_backpressure(void **state)
{
    struct tfx *f = *state;
    struct echo e = { .base = f->base, .srv = f->srv, .cli = f->cli };
    unsigned char *data = malloc(ECHO_BYTES);

    assert_non_null(data);
    for (size_t i = 0; i < ECHO_BYTES; i++)
        data[i] = echo_byte(i);
    conn_set_cbs(f->srv, echo_srv_read, echo_srv_drained, echo_event, &e);
    conn_set_cbs(f->cli, echo_cli_read, echo_cli_drained, echo_event, &e);
    conn_set_read_limit(f->srv, ECHO_LIMIT);
    conn_set_read_limit(f->cli, ECHO_LIMIT);
    evbuffer_add(conn_output(f->cli), data, ECHO_BYTES);
    free(data);
    /* The client reads nothing at first: the echo backs up until the server pauses. */
    conn_read(f->cli, 0);
    assert_true(conn_flush(f->cli) > 0);
    RUN_UNTIL(f->base, e.srv_pauses > 0 || e.events > 0);
    assert_int_equal(e.srv_pauses, 1);
    conn_read(f->cli, 1);
    RUN_UNTIL(f->base, e.checked >= ECHO_BYTES || e.events > 0);
    assert_int_equal(e.events, 0);
    assert_int_equal(e.checked, ECHO_BYTES);
    assert_int_equal(e.mismatch, 0);
    assert_int_equal(e.cli_drained, 1);
    assert_true(e.srv_pauses > 0);
}

/* ---- bytes OpenSSL holds ---- */

#define SMALL_RECORDS 64

/* Many small records written at once reach the socket together; the conn reads
 * them all in one read(2) and must hand every one over without waiting for a
 * readable event that will not come. */
static void raw_write_records(struct tfx *f)
{
    for (int i = 0; i < SMALL_RECORDS; i++) {
        char rec[10];
        memset(rec, 'a' + i % 26, sizeof(rec));
        assert_int_equal(SSL_write(f->raw, rec, sizeof(rec)), (int)sizeof(rec));
    }
}

static void test_tls_records_in_one_segment(void **state)
{
    struct tfx *f = *state;

    raw_wait_connected(f);
    raw_write_records(f);
    RUN_UNTIL(f->base, evbuffer_get_length(conn_input(f->srv)) >= SMALL_RECORDS * 10);
    run_for(f->base, 50000);
    assert_int_equal(evbuffer_get_length(conn_input(f->srv)), SMALL_RECORDS * 10);
    assert_socket_empty(f->srv);
    assert_int_equal(f->ss.events, 0);
}

/* The same records with a read limit far below them: reading pauses with the rest
 * inside OpenSSL, and draining the input gets it out without any new byte on the socket. */
static void test_tls_records_held_past_read_limit(void **state)
{
    struct tfx *f = *state;
    struct evbuffer *in = conn_input(f->srv);
    size_t total = 0;

    raw_wait_connected(f);
    conn_set_read_limit(f->srv, 100);
    raw_write_records(f);
    RUN_UNTIL(f->base, f->ss.reads > 0);
    run_for(f->base, 20000);
    assert_true(evbuffer_get_length(in) >= 100);
    assert_true(evbuffer_get_length(in) < SMALL_RECORDS * 10);
    assert_socket_empty(f->srv);
    for (int round = 0; round < 100 && total < SMALL_RECORDS * 10; round++) {
        total += evbuffer_get_length(in);
        evbuffer_drain(in, evbuffer_get_length(in));
        run_for(f->base, 5000);
    }
    total += evbuffer_get_length(in);
    assert_int_equal(total, SMALL_RECORDS * 10);
    assert_int_equal(f->ss.events, 0);
}

/* Order of a seen conn's reports: 'C' CONNECTED, 'R' a read. */
struct order {
    struct event_base *base;
    char log[8];
    int n;
};

static void order_read(struct conn *c, void *arg)
{
    struct order *o = arg;
    (void)c;
    if (o->n < 7)
        o->log[o->n++] = 'R';
    event_base_loopbreak(o->base);
}

static void order_event(struct conn *c, int what, int err, void *arg)
{
    struct order *o = arg;
    (void)c;
    (void)err;
    if (o->n < 7)
        o->log[o->n++] = what == CONN_CONNECTED ? 'C' : 'E';
}

/* A client's request in the flight of its Finished: CONNECTED, then the request,
 * though the socket held it all at the handshake's last step. */
static void test_tls_request_in_the_handshake_flight(void **state)
{
    struct tfx *f = *state;
    struct order o = { .base = f->base };

    conn_set_cbs(f->srv, order_read, NULL, order_event, &o);
    assert_int_equal(SSL_write(f->raw, "GET / HTTP/1.1\r\n\r\n", 18), 18);
    RUN_UNTIL(f->base, o.n >= 2);
    assert_string_equal(o.log, "CR");
    assert_int_equal(evbuffer_get_length(conn_input(f->srv)), 18);
    assert_socket_empty(f->srv);
}

static void test_tls_eof_on_close_notify(void **state)
{
    struct tfx *f = *state;

    raw_wait_connected(f);
    assert_true(SSL_shutdown(f->raw) >= 0);
    RUN_UNTIL(f->base, f->ss.events > 0);
    assert_int_equal(f->ss.events, 1);
    assert_int_equal(f->ss.last_what, CONN_EOF | CONN_READING);
    assert_int_equal(f->ss.reads, 0);
}

/* A close without close_notify ("dirty shutdown") is an end too. */
static void test_tls_eof_on_tcp_close(void **state)
{
    struct tfx *f = *state;

    char b[64];

    raw_wait_connected(f);
    /* The tickets the server sent are read first: a close with unread bytes is a
     * reset (ECONNRESET), not the FIN wanted here. */
    run_for(f->base, 20000);
    assert_true(SSL_read(f->raw, b, sizeof(b)) <= 0);
    close(f->raw_fd);
    f->raw_fd = -1;
    RUN_UNTIL(f->base, f->ss.events > 0);
    assert_int_equal(f->ss.events, 1);
    assert_int_equal(f->ss.last_what, CONN_EOF | CONN_READING);
}

/* Data and the close_notify in one segment: the data, then the end. */
static void test_tls_data_then_close_notify(void **state)
{
    struct tfx *f = *state;

    raw_wait_connected(f);
    assert_int_equal(SSL_write(f->raw, "bye", 3), 3);
    assert_true(SSL_shutdown(f->raw) >= 0);
    RUN_UNTIL(f->base, f->ss.events > 0);
    assert_int_equal(f->ss.reads, 1);
    assert_int_equal(evbuffer_get_length(conn_input(f->srv)), 3);
    assert_int_equal(f->ss.events, 1);
    assert_int_equal(f->ss.last_what, CONN_EOF | CONN_READING);
}

/* ---- failures ---- */

/* A TLS pair from two contexts; both conns' reports counted. */
static void handshake_pair(struct tfx *f, SSL_CTX *sctx, SSL_CTX *cctx)
{
    int sv[2];

    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    f->srv = conn_tls_new(f->base, sv[0], SSL_new(sctx), 1);
    f->cli = conn_tls_new(f->base, sv[1], SSL_new(cctx), 0);
    assert_non_null(f->srv);
    assert_non_null(f->cli);
    conn_set_cbs(f->srv, on_read, on_drained, on_event, &f->ss);
    conn_set_cbs(f->cli, on_read, on_drained, on_event, &f->cs);
    conn_read(f->srv, 1);
    conn_read(f->cli, 1);
    RUN_UNTIL(f->base, f->ss.events && f->cs.events);
}

static void test_tls_handshake_failure_versions(void **state)
{
    struct tfx *f = tfx_new();

    (void)state;
    SSL_CTX_free(f->sctx);
    SSL_CTX_free(f->cctx);
    f->sctx = server_ctx(TLS1_2_VERSION);
    f->cctx = client_ctx(TLS1_3_VERSION, 0);
    handshake_pair(f, f->sctx, f->cctx);
    assert_true(f->ss.last_what & CONN_ERROR);
    assert_true(f->cs.last_what & CONN_ERROR);
    assert_true(f->ss.last_err != 0);
    assert_int_not_equal(conn_tls_error(f->srv), 0);
    assert_int_not_equal(conn_tls_error(f->cli), 0);
    /* Left for the next connection of the thread: nothing. */
    assert_int_equal(ERR_peek_error(), 0);
    tls_teardown((void **)&f);
}

/* A refused certificate: ERROR, an error code, and the verify result that tells
 * proxy.c "verify" from "handshake". */
static void test_tls_handshake_failure_verify(void **state)
{
    struct tfx *f = tfx_new();

    (void)state;
    SSL_CTX_free(f->cctx);
    f->cctx = client_ctx(0, 1);
    handshake_pair(f, f->sctx, f->cctx);
    assert_true(f->cs.last_what & CONN_ERROR);
    assert_int_not_equal(conn_tls_error(f->cli), 0);
    assert_int_not_equal(SSL_get_verify_result(conn_ssl(f->cli)), X509_V_OK);
    tls_teardown((void **)&f);
}

static void test_tls_plain_http_on_tls_side(void **state)
{
    struct tfx *f = tfx_new();
    int sv[2];

    (void)state;
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    f->srv = conn_tls_new(f->base, sv[0], SSL_new(f->sctx), 1);
    conn_set_cbs(f->srv, on_read, on_drained, on_event, &f->ss);
    conn_read(f->srv, 1);
    f->raw_fd = sv[1];
    assert_int_equal(write(f->raw_fd, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 27), 27);
    RUN_UNTIL(f->base, f->ss.events > 0);
    assert_int_equal(f->ss.events, 1);
    assert_true(f->ss.last_what & CONN_ERROR);
    assert_int_equal(f->ss.reads, 0);
    assert_int_not_equal(conn_tls_error(f->srv), 0);
    tls_teardown((void **)&f);
}

/* ---- writes ---- */

/* The peer reads nothing: the write timeout ends the wait. */
static void test_tls_write_timeout(void **state)
{
    struct tfx *f = *state;
    static char big[8 << 20];
    long long t0 = now_us(), took;

    conn_read(f->cli, 0);
    conn_set_timeouts(f->srv, 0, 100);
    evbuffer_add(conn_output(f->srv), big, sizeof(big));
    assert_true(conn_flush(f->srv) > 0);
    took = wait_event_since(f->base, &f->ss, t0, 2000);
    assert_int_equal(f->ss.events, 1);
    assert_int_equal(f->ss.last_what, CONN_TIMEOUT | CONN_WRITING);
    assert_int_equal(f->ss.drained, 0);
    assert_in_range(took, 100 - EARLY_MS, 999);
}

/* The client takes a little every 30 ms: each record the server writes restarts
 * its 60 ms write timeout; once the client stops, it fires 60 ms after the last. */
static void test_tls_write_timeout_restarted_by_progress(void **state)
{
    struct tfx *f = *state;
    static char big[8 << 20];
    int small = 4096;
    long long last = 0, took;
    size_t got = 0;

    assert_int_equal(setsockopt(conn_fd(f->srv), SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)), 0);
    assert_int_equal(setsockopt(conn_fd(f->cli), SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)), 0);
    conn_read(f->cli, 0);
    conn_set_timeouts(f->srv, 0, 60);
    evbuffer_add(conn_output(f->srv), big, sizeof(big));
    assert_true(conn_flush(f->srv) > 0);
    for (int i = 0; i < 10; i++) {
        run_for(f->base, 30000);
        conn_read(f->cli, 1);
        event_base_loop(f->base, EVLOOP_NONBLOCK);
        conn_read(f->cli, 0);
        got += evbuffer_get_length(conn_input(f->cli));
        evbuffer_drain(conn_input(f->cli), evbuffer_get_length(conn_input(f->cli)));
        last = now_us();
    }
    assert_int_equal(f->ss.events + f->cs.events, 0);
    assert_true(got > 0);
    assert_true(evbuffer_get_length(conn_output(f->srv)) > 0);
    took = wait_event_since(f->base, &f->ss, last, 2000);
    assert_int_equal(f->ss.events, 1);
    assert_int_equal(f->ss.last_what, CONN_TIMEOUT | CONN_WRITING);
    assert_in_range(took, 60 - EARLY_MS, 149);
}

/* Records every 30 ms keep the server's 60 ms read timeout from firing; it
 * fires 60 ms after the last. */
static void test_tls_read_timeout_restarted_by_records(void **state)
{
    struct tfx *f = *state;
    long long last = 0, took;

    conn_set_timeouts(f->srv, 60, 0);
    for (int i = 0; i < 10; i++) {
        evbuffer_add(conn_output(f->cli), "x", 1);
        assert_int_equal(conn_flush(f->cli), 0);
        last = now_us();
        run_for(f->base, 30000);
    }
    assert_int_equal(f->ss.events + f->cs.events, 0);
    assert_int_equal(evbuffer_get_length(conn_input(f->srv)), 10);
    took = wait_event_since(f->base, &f->ss, last, 2000);
    assert_int_equal(f->ss.events, 1);
    assert_int_equal(f->ss.last_what, CONN_TIMEOUT | CONN_READING);
    assert_in_range(took, 60 - EARLY_MS, 149);
}

/* A flush written whole reports through its return value; one that waits on
 * EV_WRITE reports on_drained once, when it is all out. */
static void test_tls_drained_only_after_armed_write(void **state)
{
    struct tfx *f = *state;
    static char big[4 << 20];
    size_t got = 0;

    evbuffer_add(conn_output(f->srv), "abc", 3);
    assert_int_equal(conn_flush(f->srv), 0);
    run_for(f->base, 50000);
    assert_int_equal(f->ss.drained, 0);
    assert_int_equal(evbuffer_get_length(conn_input(f->cli)), 3);
    evbuffer_drain(conn_input(f->cli), 3);

    conn_read(f->cli, 0);
    evbuffer_add(conn_output(f->srv), big, sizeof(big));
    assert_true(conn_flush(f->srv) > 0);
    run_for(f->base, 50000);
    assert_int_equal(f->ss.drained, 0);
    conn_read(f->cli, 1);
    while (got < sizeof(big) && f->ss.events + f->cs.events == 0) {
        run_for(f->base, 1000);
        got += evbuffer_get_length(conn_input(f->cli));
        evbuffer_drain(conn_input(f->cli), evbuffer_get_length(conn_input(f->cli)));
    }
    assert_int_equal(got, sizeof(big));
    RUN_UNTIL(f->base, f->ss.drained > 0);
    run_for(f->base, 20000);
    assert_int_equal(f->ss.drained, 1);
    assert_int_equal(evbuffer_get_length(conn_output(f->srv)), 0);
    assert_int_equal(f->ss.events + f->cs.events, 0);
}

/* ---- connect ---- */

static int loopback_listener(struct sockaddr_in *sa, int do_listen)
{
    socklen_t len = sizeof(*sa);
    int lfd = socket(AF_INET, SOCK_STREAM, 0);

    memset(sa, 0, sizeof(*sa));
    sa->sin_family = AF_INET;
    sa->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(lfd, (struct sockaddr *)sa, sizeof(*sa)), 0);
    assert_int_equal(getsockname(lfd, (struct sockaddr *)sa, &len), 0);
    if (do_listen)
        assert_int_equal(listen(lfd, 8), 0);
    return lfd;
}

/* conn_tls_connect against a conn_tls_new server: CONNECTED after the handshake,
 * what was queued before it written once it is done. */
static void test_tls_connect_then_request(void **state)
{
    struct tfx *f = tfx_new();
    struct sockaddr_in sa;
    int lfd = loopback_listener(&sa, 1), afd;

    (void)state;
    f->cli = conn_tls_connect(f->base, (struct sockaddr *)&sa, sizeof(sa), SSL_new(f->cctx), 2000);
    assert_non_null(f->cli);
    conn_set_cbs(f->cli, on_read, on_drained, on_event, &f->cs);
    conn_read(f->cli, 1);
    evbuffer_add(conn_output(f->cli), "ping", 4);
    assert_int_equal(conn_flush(f->cli), 4);
    afd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
    assert_true(afd >= 0);
    f->srv = conn_tls_new(f->base, afd, SSL_new(f->sctx), 1);
    conn_set_cbs(f->srv, on_read, on_drained, on_event, &f->ss);
    conn_read(f->srv, 1);
    RUN_UNTIL(f->base, f->cs.events > 0 && evbuffer_get_length(conn_input(f->srv)) >= 4);
    assert_int_equal(f->cs.last_what, CONN_CONNECTED);
    assert_int_equal(f->ss.last_what, CONN_CONNECTED);
    assert_memory_equal(evbuffer_pullup(conn_input(f->srv), 4), "ping", 4);
    close(lfd);
    tls_teardown((void **)&f);
}

/* A listener that never answers the ClientHello (the kernel accepts the TCP
 * connection): the connect timeout ends the handshake too. */
static void test_tls_connect_timeout_bounds_handshake(void **state)
{
    struct tfx *f = tfx_new();
    struct sockaddr_in sa;
    int lfd = loopback_listener(&sa, 1);
    long long t0 = now_ms(), took;

    (void)state;
    f->cli = conn_tls_connect(f->base, (struct sockaddr *)&sa, sizeof(sa), SSL_new(f->cctx), 150);
    assert_non_null(f->cli);
    conn_set_cbs(f->cli, on_read, on_drained, on_event, &f->cs);
    conn_read(f->cli, 1);
    RUN_UNTIL(f->base, f->cs.events > 0);
    took = now_ms() - t0;
    assert_int_equal(f->cs.events, 1);
    assert_true(f->cs.last_what & CONN_TIMEOUT);
    assert_in_range(took, 140, 1499);
    close(lfd);
    tls_teardown((void **)&f);
}

/* The connect deadline bounds the connect and the handshake only: once both
 * are done it does not fire, however long the connection then stays quiet. */
static void test_tls_connect_deadline_ends_with_handshake(void **state)
{
    struct tfx *f = tfx_new();
    struct sockaddr_in sa;
    int lfd = loopback_listener(&sa, 1), afd;

    (void)state;
    f->cli = conn_tls_connect(f->base, (struct sockaddr *)&sa, sizeof(sa), SSL_new(f->cctx), 150);
    assert_non_null(f->cli);
    conn_set_cbs(f->cli, on_read, on_drained, on_event, &f->cs);
    conn_read(f->cli, 1);
    afd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
    assert_true(afd >= 0);
    f->srv = conn_tls_new(f->base, afd, SSL_new(f->sctx), 1);
    conn_set_cbs(f->srv, on_read, on_drained, on_event, &f->ss);
    conn_read(f->srv, 1);
    RUN_UNTIL(f->base, f->cs.events > 0 && f->ss.events > 0);
    assert_int_equal(f->cs.last_what, CONN_CONNECTED);
    f->cs.events = f->ss.events = 0;
    run_for(f->base, 400000);
    assert_int_equal(f->cs.events + f->ss.events, 0);
    close(lfd);
    tls_teardown((void **)&f);
}

/* Refused at once or from the loop; the SSL is the conn's either way (ASan
 * sees a leak or a double free otherwise). */
static void test_tls_connect_refused(void **state)
{
    struct tfx *f = tfx_new();
    struct sockaddr_in sa;
    int lfd = loopback_listener(&sa, 0);

    (void)state;
    f->cli = conn_tls_connect(f->base, (struct sockaddr *)&sa, sizeof(sa), SSL_new(f->cctx), 1000);
    if (f->cli) {
        conn_set_cbs(f->cli, on_read, on_drained, on_event, &f->cs);
        RUN_UNTIL(f->base, f->cs.events > 0);
        assert_true(f->cs.last_what & CONN_ERROR);
        assert_int_equal(f->cs.last_err, ECONNREFUSED);
    } else {
        assert_int_equal(errno, ECONNREFUSED);
    }
    close(lfd);
    tls_teardown((void **)&f);
}

/* ---- a peer that sends records without data ---- */

static void timer_fired(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (*(int *)arg)++;
}

/* A TLS 1.3 server may send session tickets at any time; one that never stops
 * (and never sends data) would keep a pooled connection's first-priority read
 * event busy ahead of the whole loop. The conn ends it with ERROR; a normal
 * priority timer still runs meanwhile. */
static void test_tls_ticket_flood_ends_first_priority_conn(void **state)
{
    struct tfx *f = tfx_new();
    struct event *timer;
    struct timeval tv = { 0, 20000 };
    int sv[2], fired = 0, sent = 0;

    (void)state;
    event_base_free(f->base);
    f->base = event_base_new();
    f->cs.base = f->ss.base = f->base;
    assert_int_equal(event_base_priority_init(f->base, 2), 0);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    f->cli = conn_tls_new(f->base, sv[0], SSL_new(f->cctx), 0);
    conn_set_cbs(f->cli, on_read, on_drained, on_event, &f->cs);
    conn_read(f->cli, 1);
    conn_set_priority(f->cli, 0);
    f->raw_fd = sv[1];
    f->raw = SSL_new(f->sctx);
    SSL_set_fd(f->raw, f->raw_fd);
    SSL_set_accept_state(f->raw);
    assert_int_equal(raw_handshake(f), 0);
    RUN_UNTIL(f->base, f->cs.events > 0);
    assert_int_equal(f->cs.last_what, CONN_CONNECTED);
    f->cs.events = 0;
    timer = evtimer_new(f->base, timer_fired, &fired);
    evtimer_add(timer, &tv);
    for (int i = 0; i < 20000 && f->cs.events == 0; i++) {
        if (SSL_new_session_ticket(f->raw) == 1 && SSL_do_handshake(f->raw) == 1)
            sent++;
        if (i % 8 == 0)
            run_for(f->base, 200);
    }
    RUN_UNTIL(f->base, f->cs.events > 0 && fired > 0);
    assert_true(sent > 0);
    assert_int_equal(f->cs.events, 1);
    assert_true(f->cs.last_what & CONN_ERROR);
    assert_int_equal(f->cs.reads, 0);
    assert_int_equal(fired, 1);
    event_free(timer);
    tls_teardown((void **)&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_read_then_eof, pair_setup, pair_teardown),
        cmocka_unit_test_setup_teardown(test_reads_off_means_no_callback, pair_setup, pair_teardown),
        cmocka_unit_test_setup_teardown(test_flush_all_at_once, pair_setup, pair_teardown),
        cmocka_unit_test_setup_teardown(test_flush_rest_then_drained, pair_setup, pair_teardown),
        cmocka_unit_test_setup_teardown(test_read_limit_pauses_and_resumes, pair_setup, pair_teardown),
        cmocka_unit_test_setup_teardown(test_read_timeout, pair_setup, pair_teardown),
        cmocka_unit_test_setup_teardown(test_read_timeout_when_no_data, pair_setup, pair_teardown),
        cmocka_unit_test_setup_teardown(test_read_timeout_restarted_by_reads, pair_setup, pair_teardown),
        cmocka_unit_test_setup_teardown(test_read_timeout_pushed_later_by_one_read, pair_setup, pair_teardown),
        cmocka_unit_test_setup_teardown(test_set_timeouts_shortens_read_timeout, pair_setup, pair_teardown),
        cmocka_unit_test_setup_teardown(test_set_timeouts_lengthens_read_timeout, pair_setup, pair_teardown),
        cmocka_unit_test_setup_teardown(test_set_timeouts_zero_stops_read_timeout, pair_setup, pair_teardown),
        cmocka_unit_test_setup_teardown(test_read_timeout_repeats_until_stopped, pair_setup, pair_teardown),
        cmocka_unit_test_setup_teardown(test_read_off_stops_timeout_and_on_restarts_it, pair_setup, pair_teardown),
        cmocka_unit_test_setup_teardown(test_read_limit_pause_stops_read_timeout, pair_setup, pair_teardown),
        cmocka_unit_test_setup_teardown(test_write_timeout_when_peer_reads_nothing, pair_setup, pair_teardown),
        cmocka_unit_test_setup_teardown(test_write_timeout_restarted_by_progress, pair_setup, pair_teardown),
        cmocka_unit_test_setup_teardown(test_no_write_timeout_once_drained, pair_setup, pair_teardown),
        cmocka_unit_test_setup_teardown(test_timeout_callback_frees_conn, pair_setup, pair_teardown),
        cmocka_unit_test(test_plain_connect_timeout),
        cmocka_unit_test(test_plain_connect_timeout_ends_with_connect),
        cmocka_unit_test(test_connect_refused_and_connected),
        cmocka_unit_test_setup_teardown(test_no_callbacks_after_letting_go, pair_setup, pair_teardown),
        cmocka_unit_test_setup_teardown(test_tls_handshake_both_sides, tls_pair_setup, tls_teardown),
        cmocka_unit_test_setup_teardown(test_tls_large_echo_with_backpressure, tls_pair_setup, tls_teardown),
        cmocka_unit_test_setup_teardown(test_tls_records_in_one_segment, tls_raw_setup, tls_teardown),
        cmocka_unit_test_setup_teardown(test_tls_records_held_past_read_limit, tls_raw_setup, tls_teardown),
        cmocka_unit_test_setup_teardown(test_tls_request_in_the_handshake_flight, tls_raw_setup, tls_teardown),
        cmocka_unit_test_setup_teardown(test_tls_eof_on_close_notify, tls_raw_setup, tls_teardown),
        cmocka_unit_test_setup_teardown(test_tls_eof_on_tcp_close, tls_raw_setup, tls_teardown),
        cmocka_unit_test_setup_teardown(test_tls_data_then_close_notify, tls_raw_setup, tls_teardown),
        cmocka_unit_test(test_tls_handshake_failure_versions),
        cmocka_unit_test(test_tls_handshake_failure_verify),
        cmocka_unit_test(test_tls_plain_http_on_tls_side),
        cmocka_unit_test_setup_teardown(test_tls_write_timeout, tls_pair_setup, tls_teardown),
        cmocka_unit_test_setup_teardown(test_tls_write_timeout_restarted_by_progress, tls_pair_setup, tls_teardown),
        cmocka_unit_test_setup_teardown(test_tls_read_timeout_restarted_by_records, tls_pair_setup, tls_teardown),
        cmocka_unit_test_setup_teardown(test_tls_drained_only_after_armed_write, tls_pair_setup, tls_teardown),
        cmocka_unit_test(test_tls_connect_then_request),
        cmocka_unit_test(test_tls_connect_timeout_bounds_handshake),
        cmocka_unit_test(test_tls_connect_deadline_ends_with_handshake),
        cmocka_unit_test(test_tls_connect_refused),
        cmocka_unit_test(test_tls_ticket_flood_ends_first_priority_conn),
    };

    /* A test writes to a peer that may be gone (nextup ignores SIGPIPE too). */
    signal(SIGPIPE, SIG_IGN);
    if (tls_global_setup() < 0)
        return 1;
    return cmocka_run_group_tests(tests, NULL, NULL);
}
