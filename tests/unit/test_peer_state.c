/* peer_state_next(): states x evidence x cap x time -> state, as a table, and
 * the invariants over every combination. Pure, so no set, no clock. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "peer_state.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))
#define T0 1000000
#define BASE 1000
#define MAX 8000

static const struct peer_state_policy POL = {
    .connect_failures_to_down = 1,
    .soft_failures_to_eject = 2,
    .eject_base_ms = BASE,
    .eject_max_ms = MAX,
    .max_eject_percent = 50,
};

struct row {
    const char *what;
    struct peer_health before;
    enum peer_evidence ev;
    enum peer_reason reason;
    struct peer_cap cap;
    int64_t now;
    /* expected */
    enum peer_state state;
    enum peer_reason why;
    int64_t until;
    int ejections;
    int changed;
};

#define H(st, rs, un, ej, cf) { .state = (st), .reason = (rs), .until_ms = (un), .ejections = (ej), .consecutive_failures = (cf) }
#define HEALTHY0 H(PEER_HEALTHY, REASON_NONE, 0, 0, 0)
#define ROOM { .takers = 2, .soft_out = 0 }     /* 3 peers, none out: one may go */
#define FULL { .takers = 2, .soft_out = 1 }     /* 3 peers, one soft-ejected already */
#define LAST { .takers = 0, .soft_out = 0 }     /* every other peer down or draining */

static const struct row rows[] = {
    { "one refused connect: down, with no time out", HEALTHY0, EVIDENCE_NO_CONNECT, REASON_CONNECT_FAILURES, ROOM, T0,
      PEER_DOWN, REASON_CONNECT_FAILURES, 0, 0, 1 },
    { "down takes no cap: the last taker may be down", HEALTHY0, EVIDENCE_NO_CONNECT, REASON_CONNECT_FAILURES, LAST,
      T0, PEER_DOWN, REASON_CONNECT_FAILURES, 0, 0, 1 },
    { "down does not end with time", H(PEER_DOWN, REASON_CONNECT_FAILURES, 0, 0, 0), EVIDENCE_NO_CONNECT,
      REASON_CONNECT_FAILURES, ROOM, T0 + 3600000, PEER_DOWN, REASON_CONNECT_FAILURES, 0, 0, 0 },
    { "down ends when a probe connects", H(PEER_DOWN, REASON_KERNEL_CONNECT, 0, 0, 3), EVIDENCE_PROBE_OK, REASON_NONE,
      ROOM, T0, PEER_HEALTHY, REASON_NONE, 0, 0, 1 },
    { "down ends with a response", H(PEER_DOWN, REASON_CONNECT_FAILURES, 0, 0, 0), EVIDENCE_OK, REASON_NONE, ROOM, T0,
      PEER_HEALTHY, REASON_NONE, 0, 0, 1 },
    { "down stays down when it also drains", H(PEER_DOWN, REASON_CONNECT_FAILURES, 0, 0, 0), EVIDENCE_DRAINING,
      REASON_DRAIN_503, ROOM, T0, PEER_DOWN, REASON_CONNECT_FAILURES, 0, 0, 0 },
    { "one gateway error: still healthy", HEALTHY0, EVIDENCE_SOFT_FAILURE, REASON_GATEWAY_ERRORS, ROOM, T0,
      PEER_HEALTHY, REASON_NONE, 0, 0, 0 },
    { "the second in a row ejects for the base time", H(PEER_HEALTHY, REASON_NONE, 0, 0, 1), EVIDENCE_SOFT_FAILURE,
      REASON_GATEWAY_ERRORS, ROOM, T0, PEER_EJECTED, REASON_GATEWAY_ERRORS, T0 + BASE, 1, 1 },
    { "the cap holds a soft ejection", H(PEER_HEALTHY, REASON_NONE, 0, 0, 1), EVIDENCE_SOFT_FAILURE,
      REASON_GATEWAY_ERRORS, FULL, T0, PEER_HEALTHY, REASON_NONE, 0, 0, 0 },
    { "the last taker is not ejected on soft evidence", H(PEER_HEALTHY, REASON_NONE, 0, 0, 1), EVIDENCE_SOFT_FAILURE,
      REASON_GATEWAY_ERRORS, LAST, T0, PEER_HEALTHY, REASON_NONE, 0, 0, 0 },
    { "kernel resets eject at once", HEALTHY0, EVIDENCE_SOFT_FAILURE, REASON_KERNEL_RESETS, ROOM, T0, PEER_EJECTED,
      REASON_KERNEL_RESETS, T0 + BASE, 1, 1 },
    { "a failed TLS handshake ejects at once", HEALTHY0, EVIDENCE_SOFT_FAILURE, REASON_TLS, ROOM, T0, PEER_EJECTED,
      REASON_TLS, T0 + BASE, 1, 1 },
    { "kernel refusals take it down whatever nextup's threshold", HEALTHY0, EVIDENCE_NO_CONNECT,
      REASON_KERNEL_CONNECT, ROOM, T0, PEER_DOWN, REASON_KERNEL_CONNECT, 0, 0, 1 },
    { "a probe that connects does not end an ejection", H(PEER_EJECTED, REASON_GATEWAY_ERRORS, T0 + BASE, 1, 0),
      EVIDENCE_PROBE_OK, REASON_NONE, ROOM, T0, PEER_EJECTED, REASON_GATEWAY_ERRORS, T0 + BASE, 1, 0 },
    { "a late good answer does not end an ejection", H(PEER_EJECTED, REASON_KERNEL_RESETS, T0 + BASE, 1, 0),
      EVIDENCE_OK, REASON_NONE, ROOM, T0 + 10, PEER_EJECTED, REASON_KERNEL_RESETS, T0 + BASE, 1, 0 },
    { "time up: the trial succeeds, healthy", H(PEER_EJECTED, REASON_KERNEL_RESETS, T0, 2, 0), EVIDENCE_OK,
      REASON_NONE, ROOM, T0, PEER_HEALTHY, REASON_NONE, 0, 0, 1 },
    { "time up: the trial fails, out twice as long", H(PEER_EJECTED, REASON_GATEWAY_ERRORS, T0, 1, 0),
      EVIDENCE_SOFT_FAILURE, REASON_GATEWAY_ERRORS, FULL, T0, PEER_EJECTED, REASON_TRIAL_FAILED, T0 + 2 * BASE, 2, 1 },
    { "a failed trial is re-ejected even at the cap", H(PEER_EJECTED, REASON_GATEWAY_ERRORS, T0, 1, 0),
      EVIDENCE_SOFT_FAILURE, REASON_GATEWAY_ERRORS, LAST, T0, PEER_EJECTED, REASON_TRIAL_FAILED, T0 + 2 * BASE, 2, 1 },
    { "the time out stops doubling at the max", H(PEER_EJECTED, REASON_GATEWAY_ERRORS, T0, 9, 0),
      EVIDENCE_SOFT_FAILURE, REASON_GATEWAY_ERRORS, ROOM, T0, PEER_EJECTED, REASON_TRIAL_FAILED, T0 + MAX, 10, 1 },
    { "a trial refused: down", H(PEER_EJECTED, REASON_GATEWAY_ERRORS, T0, 1, 0), EVIDENCE_NO_CONNECT,
      REASON_CONNECT_FAILURES, ROOM, T0, PEER_DOWN, REASON_CONNECT_FAILURES, 0, 1, 1 },
    { "503 with close: draining at once", HEALTHY0, EVIDENCE_DRAINING, REASON_DRAIN_503, ROOM, T0, PEER_DRAINING,
      REASON_DRAIN_503, T0 + BASE, 1, 1 },
    { "draining takes no cap", HEALTHY0, EVIDENCE_DRAINING, REASON_DRAIN_503, LAST, T0, PEER_DRAINING,
      REASON_DRAIN_503, T0 + BASE, 1, 1 },
    { "an ejected peer that drains moves out of the cap", H(PEER_EJECTED, REASON_GATEWAY_ERRORS, T0 + BASE, 1, 0),
      EVIDENCE_DRAINING, REASON_DRAIN_503, ROOM, T0, PEER_DRAINING, REASON_DRAIN_503, T0 + 2 * BASE, 2, 1 },
    { "draining, then refusing: down", H(PEER_DRAINING, REASON_DRAIN_503, T0 + BASE, 1, 0), EVIDENCE_NO_CONNECT,
      REASON_KERNEL_CONNECT, ROOM, T0 + 10, PEER_DOWN, REASON_KERNEL_CONNECT, 0, 1, 1 },
    { "draining repeats itself: no change", H(PEER_DRAINING, REASON_DRAIN_503, T0 + BASE, 1, 0), EVIDENCE_DRAINING,
      REASON_DRAIN_503, ROOM, T0 + 10, PEER_DRAINING, REASON_DRAIN_503, T0 + BASE, 1, 0 },
    { "a drain's trial that drains again: twice as long", H(PEER_DRAINING, REASON_DRAIN_503, T0, 1, 0),
      EVIDENCE_DRAINING, REASON_DRAIN_503, ROOM, T0, PEER_DRAINING, REASON_DRAIN_503, T0 + 2 * BASE, 2, 1 },
    { "a drain's trial that answers: healthy", H(PEER_DRAINING, REASON_DRAIN_503, T0, 1, 0), EVIDENCE_OK,
      REASON_NONE, ROOM, T0 + 5, PEER_HEALTHY, REASON_NONE, 0, 0, 1 },
    { "a success clears the count of failures", H(PEER_HEALTHY, REASON_NONE, 0, 3, 1), EVIDENCE_OK, REASON_NONE, ROOM,
      T0, PEER_HEALTHY, REASON_NONE, 0, 0, 0 },
};

static void test_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < N(rows); i++) {
        const struct row *r = &rows[i];
        struct peer_health h = r->before;
        int changed = peer_state_next(&h, r->ev, r->reason, &POL, &r->cap, r->now);
        if (h.state != r->state || h.reason != r->why || h.until_ms != r->until || h.ejections != r->ejections ||
            changed != r->changed)
            print_error("%s: got %s/%s until %+lld ejections %d changed %d; want %s/%s until %+lld ejections %d "
                        "changed %d\n",
                        r->what, peer_state_name(h.state), peer_reason_text(h.reason), (long long)(h.until_ms - T0),
                        h.ejections, changed, peer_state_name(r->state), peer_reason_text(r->why),
                        (long long)(r->until - T0), r->ejections, r->changed);
        assert_int_equal(h.state, r->state);
        assert_int_equal(h.reason, r->why);
        assert_int_equal(h.until_ms, r->until);
        assert_int_equal(h.ejections, r->ejections);
        assert_int_equal(changed, r->changed);
    }
}

static void test_consecutive_count(void **state)
{
    struct peer_health h = HEALTHY0;
    struct peer_cap room = ROOM;
    (void)state;

    /* A success between two gateway errors starts the count again. */
    peer_state_next(&h, EVIDENCE_SOFT_FAILURE, REASON_GATEWAY_ERRORS, &POL, &room, T0);
    peer_state_next(&h, EVIDENCE_OK, REASON_NONE, &POL, &room, T0);
    peer_state_next(&h, EVIDENCE_SOFT_FAILURE, REASON_GATEWAY_ERRORS, &POL, &room, T0);
    assert_int_equal(h.state, PEER_HEALTHY);
    peer_state_next(&h, EVIDENCE_SOFT_FAILURE, REASON_GATEWAY_ERRORS, &POL, &room, T0);
    assert_int_equal(h.state, PEER_EJECTED);
}

static void test_zero_thresholds_never_act(void **state)
{
    struct peer_state_policy off = POL;
    struct peer_cap room = ROOM;
    struct peer_health h = HEALTHY0;
    (void)state;

    off.connect_failures_to_down = 0;
    off.soft_failures_to_eject = 0;
    for (int k = 0; k < 10; k++) {
        peer_state_next(&h, EVIDENCE_NO_CONNECT, REASON_CONNECT_FAILURES, &off, &room, T0);
        peer_state_next(&h, EVIDENCE_SOFT_FAILURE, REASON_GATEWAY_ERRORS, &off, &room, T0);
    }
    assert_int_equal(h.state, PEER_HEALTHY);
}

static void test_zero_gateway_threshold_ignores_drain_503(void **state)
{
    struct peer_state_policy off = POL;
    struct peer_cap room = ROOM;
    struct peer_health h = HEALTHY0;
    (void)state;

    off.soft_failures_to_eject = 0;
    assert_int_equal(peer_state_next(&h, EVIDENCE_DRAINING, REASON_DRAIN_503, &off, &room, T0), 0);
    assert_int_equal(h.state, PEER_HEALTHY);
}

static void test_state_at(void **state)
{
    struct peer_health e = H(PEER_EJECTED, REASON_GATEWAY_ERRORS, T0 + BASE, 1, 0);
    struct peer_health d = H(PEER_DRAINING, REASON_DRAIN_503, T0 + BASE, 1, 0);
    struct peer_health down = H(PEER_DOWN, REASON_KERNEL_SYN, 0, 0, 0);
    (void)state;

    assert_int_equal(peer_state_at(&e, T0 + BASE - 1), PEER_EJECTED);
    assert_int_equal(peer_state_at(&e, T0 + BASE), PEER_TRIAL);
    assert_int_equal(peer_state_at(&d, T0 + BASE - 1), PEER_DRAINING);
    assert_int_equal(peer_state_at(&d, T0 + BASE), PEER_TRIAL);
    assert_int_equal(peer_state_at(&down, T0 + 100 * MAX), PEER_DOWN);
}

/* Every state x evidence x cap x time: what must hold whatever the table says. */
static void test_invariants(void **state)
{
    static const enum peer_state states[] = { PEER_HEALTHY, PEER_DRAINING, PEER_DOWN, PEER_EJECTED };
    static const enum peer_evidence evs[] = { EVIDENCE_OK, EVIDENCE_NO_CONNECT, EVIDENCE_SOFT_FAILURE,
                                              EVIDENCE_DRAINING, EVIDENCE_PROBE_OK };
    static const enum peer_reason reasons[] = { REASON_CONNECT_FAILURES, REASON_GATEWAY_ERRORS, REASON_KERNEL_RESETS,
                                                REASON_KERNEL_CONNECT, REASON_DRAIN_503, REASON_TLS };
    static const struct peer_cap caps[] = { { 0, 0 }, { 1, 0 }, { 2, 0 }, { 2, 1 }, { 3, 1 }, { 9, 5 } };
    static const int64_t offsets[] = { -1, 0, 1, 5 * MAX };
    (void)state;

    for (size_t a = 0; a < N(states); a++)
        for (size_t b = 0; b < N(evs); b++)
            for (size_t c = 0; c < N(reasons); c++)
                for (size_t d = 0; d < N(caps); d++)
                    for (size_t e = 0; e < N(offsets); e++)
                        for (int cf = 0; cf < 3; cf++) {
                            int64_t until = states[a] == PEER_EJECTED || states[a] == PEER_DRAINING ? T0 + BASE : 0;
                            struct peer_health h = H(states[a], states[a] == PEER_HEALTHY ? REASON_NONE
                                                                                        : REASON_GATEWAY_ERRORS,
                                                     until, 1, cf);
                            int64_t now = T0 + BASE + offsets[e];
                            enum peer_state was = peer_state_at(&h, now);
                            struct peer_health old = h;
                            int changed = peer_state_next(&h, evs[b], reasons[c], &POL, &caps[d], now);

                            /* Down leaves only on evidence that it serves. */
                            if (was == PEER_DOWN && h.state != PEER_DOWN)
                                assert_true(evs[b] == EVIDENCE_OK || evs[b] == EVIDENCE_PROBE_OK);
                            /* Nothing comes back to healthy without a response or a probe. */
                            if (h.state == PEER_HEALTHY && was != PEER_HEALTHY)
                                assert_true(evs[b] == EVIDENCE_OK || evs[b] == EVIDENCE_PROBE_OK);
                            /* A healthy peer leaves on soft evidence only within the cap. */
                            if (was == PEER_HEALTHY && h.state == PEER_EJECTED)
                                assert_true((caps[d].soft_out + 1) * 100 <=
                                            (caps[d].takers + 1) * POL.max_eject_percent);
                            /* A time out is always in the future, bounded by the max. */
                            if (h.state == PEER_EJECTED || h.state == PEER_DRAINING) {
                                assert_true(h.until_ms > now || !changed);
                                assert_true(h.until_ms <= now + MAX || !changed);
                            }
                            /* A state change is always reported. */
                            if (h.state != old.state || h.reason != old.reason)
                                assert_int_equal(changed, 1);
                            assert_true(h.state != PEER_TRIAL);   /* TRIAL is derived, never stored */
                        }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_consecutive_count),
        cmocka_unit_test(test_zero_thresholds_never_act),
        cmocka_unit_test(test_zero_gateway_threshold_ignores_drain_503),
        cmocka_unit_test(test_state_at),
        cmocka_unit_test(test_invariants),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
