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
#include <sys/socket.h>

#include <cmocka.h>
#include <event2/buffer.h>
#include <event2/event.h>

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

/* Runs the loop for <usec> whatever happens (to see that nothing is reported). */
static void run_for(struct event_base *base, long usec)
{
    struct timeval tv = { usec / 1000000, usec % 1000000 };
    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_read_then_eof, pair_setup, pair_teardown),
        cmocka_unit_test_setup_teardown(test_reads_off_means_no_callback, pair_setup, pair_teardown),
        cmocka_unit_test_setup_teardown(test_flush_all_at_once, pair_setup, pair_teardown),
        cmocka_unit_test_setup_teardown(test_flush_rest_then_drained, pair_setup, pair_teardown),
        cmocka_unit_test_setup_teardown(test_read_limit_pauses_and_resumes, pair_setup, pair_teardown),
        cmocka_unit_test_setup_teardown(test_read_timeout, pair_setup, pair_teardown),
        cmocka_unit_test(test_connect_refused_and_connected),
        cmocka_unit_test_setup_teardown(test_no_callbacks_after_letting_go, pair_setup, pair_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
