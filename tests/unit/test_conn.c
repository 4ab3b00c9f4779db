/* conn over real sockets (socketpairs and a loopback listener) on a real
 * libevent loop: what each verb does, what is reported, and when. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <errno.h>
#include <fcntl.h>
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

static void pair(int sv[2])
{
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
}

static void test_read_then_eof(void **state)
{
    struct event_base *base = event_base_new();
    struct seen s = { .base = base };
    int sv[2];
    struct conn *c;

    (void)state;
    pair(sv);
    c = conn_plain_new(base, sv[0]);
    conn_set_cbs(c, on_read, on_drained, on_event, &s);
    conn_read(c, 1);
    assert_int_equal(write(sv[1], "hello", 5), 5);
    run(base);
    assert_int_equal(s.reads, 1);
    assert_int_equal(evbuffer_get_length(conn_input(c)), 5);
    assert_memory_equal(evbuffer_pullup(conn_input(c), 5), "hello", 5);
    close(sv[1]);
    run(base);
    assert_int_equal(s.events, 1);
    assert_true(s.last_what & CONN_EOF);
    conn_free(c);
    event_base_free(base);
}

static void test_reads_off_means_no_callback(void **state)
{
    struct event_base *base = event_base_new();
    struct seen s = { .base = base };
    int sv[2];
    struct conn *c;

    (void)state;
    pair(sv);
    c = conn_plain_new(base, sv[0]);
    conn_set_cbs(c, on_read, on_drained, on_event, &s);
    assert_int_equal(write(sv[1], "x", 1), 1);
    {
        struct timeval tv = { 0, 100000 };
        event_base_loopexit(base, &tv);
        event_base_dispatch(base);
    }
    assert_int_equal(s.reads, 0);
    conn_read(c, 1);
    run(base);
    assert_int_equal(s.reads, 1);
    conn_free(c);
    close(sv[1]);
    event_base_free(base);
}

/* A flush the socket takes whole reports through its return value, not through on_drained. */
static void test_flush_all_at_once(void **state)
{
    struct event_base *base = event_base_new();
    struct seen s = { .base = base };
    int sv[2];
    char buf[16];
    struct conn *c;

    (void)state;
    pair(sv);
    c = conn_plain_new(base, sv[0]);
    conn_set_cbs(c, on_read, on_drained, on_event, &s);
    evbuffer_add(conn_output(c), "abc", 3);
    assert_int_equal(conn_flush(c), 0);
    assert_int_equal(read(sv[1], buf, sizeof(buf)), 3);
    {
        struct timeval tv = { 0, 100000 };
        event_base_loopexit(base, &tv);
        event_base_dispatch(base);
    }
    assert_int_equal(s.drained, 0);
    conn_free(c);
    close(sv[1]);
    event_base_free(base);
}

/* What the socket did not take is written on EV_WRITE; on_drained comes once it is all out. */
static void test_flush_rest_then_drained(void **state)
{
    struct event_base *base = event_base_new();
    struct seen s = { .base = base };
    static char big[4 << 20];
    char sink[65536];
    size_t got = 0;
    int sv[2];
    struct conn *c;

    (void)state;
    pair(sv);
    c = conn_plain_new(base, sv[0]);
    conn_set_cbs(c, on_read, on_drained, on_event, &s);
    evbuffer_add(conn_output(c), big, sizeof(big));
    assert_true(conn_flush(c) > 0);
    assert_int_equal(s.drained, 0);
    while (got < sizeof(big) && s.drained == 0) {
        ssize_t n = read(sv[1], sink, sizeof(sink));
        if (n > 0)
            got += (size_t)n;
        {
            struct timeval tv = { 0, 1000 };
            event_base_loopexit(base, &tv);
            event_base_dispatch(base);
        }
    }
    while (got < sizeof(big)) {
        ssize_t n = read(sv[1], sink, sizeof(sink));
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    assert_int_equal(got, sizeof(big));
    assert_int_equal(s.drained, 1);
    assert_int_equal(evbuffer_get_length(conn_output(c)), 0);
    conn_free(c);
    close(sv[1]);
    event_base_free(base);
}

/* Above the read limit reading pauses; draining the input below it resumes by itself. */
static void test_read_limit_pauses_and_resumes(void **state)
{
    struct event_base *base = event_base_new();
    struct seen s = { .base = base };
    char chunk[1000];
    int sv[2];
    struct conn *c;

    (void)state;
    memset(chunk, 'a', sizeof(chunk));
    pair(sv);
    c = conn_plain_new(base, sv[0]);
    conn_set_cbs(c, on_read, on_drained, on_event, &s);
    conn_set_read_limit(c, 500);
    conn_read(c, 1);
    assert_int_equal(write(sv[1], chunk, sizeof(chunk)), (ssize_t)sizeof(chunk));
    run(base);
    assert_int_equal(s.reads, 1);
    assert_int_equal(write(sv[1], chunk, sizeof(chunk)), (ssize_t)sizeof(chunk));
    {
        struct timeval tv = { 0, 100000 };
        event_base_loopexit(base, &tv);
        event_base_dispatch(base);
    }
    assert_int_equal(s.reads, 1);     /* paused: 1000 >= 500 */
    evbuffer_drain(conn_input(c), evbuffer_get_length(conn_input(c)));
    run(base);
    assert_int_equal(s.reads, 2);     /* resumed */
    conn_free(c);
    close(sv[1]);
    event_base_free(base);
}

static void test_read_timeout(void **state)
{
    struct event_base *base = event_base_new();
    struct seen s = { .base = base };
    int sv[2];
    struct conn *c;

    (void)state;
    pair(sv);
    c = conn_plain_new(base, sv[0]);
    conn_set_cbs(c, on_read, on_drained, on_event, &s);
    conn_set_timeouts(c, 50, 0);
    conn_read(c, 1);
    run(base);
    assert_int_equal(s.events, 1);
    assert_int_equal(s.last_what, CONN_TIMEOUT | CONN_READING);
    conn_free(c);
    close(sv[1]);
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
    struct event_base *base = event_base_new();
    struct seen s = { .base = base };
    int sv[2];
    struct conn *c;

    (void)state;
    pair(sv);
    c = conn_plain_new(base, sv[0]);
    conn_set_cbs(c, on_read, on_drained, on_event, &s);
    conn_read(c, 1);
    conn_set_cbs(c, NULL, NULL, NULL, NULL);
    close(sv[1]);
    {
        struct timeval tv = { 0, 100000 };
        event_base_loopexit(base, &tv);
        event_base_dispatch(base);
    }
    assert_int_equal(s.events + s.reads, 0);
    conn_free(c);
    event_base_free(base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_read_then_eof),
        cmocka_unit_test(test_reads_off_means_no_callback),
        cmocka_unit_test(test_flush_all_at_once),
        cmocka_unit_test(test_flush_rest_then_drained),
        cmocka_unit_test(test_read_limit_pauses_and_resumes),
        cmocka_unit_test(test_read_timeout),
        cmocka_unit_test(test_connect_refused_and_connected),
        cmocka_unit_test(test_no_callbacks_after_letting_go),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
