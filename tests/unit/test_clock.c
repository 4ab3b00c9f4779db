/* Unit tests for sidecar/clock.h: inside a batch the monotonic clock is read
 * once and that reading returned; outside it, and after it, every call reads. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <time.h>

#include "clock.h"

static void sleep_ms(int ms)
{
    struct timespec ts = { 0, ms * 1000000L };
    nanosleep(&ts, NULL);
}

static void test_outside_a_batch_every_call_reads(void **state)
{
    int64_t a, b;
    (void)state;

    a = clock_mono_us();
    sleep_ms(2);
    b = clock_mono_us();
    assert_true(b - a >= 2000);
}

static void test_a_batch_keeps_its_first_reading(void **state)
{
    int64_t before, a, b, c, after;
    (void)state;

    before = clock_mono_read_us();
    clock_batch_begin();
    a = clock_mono_us();
    sleep_ms(2);
    b = clock_mono_us();
    /* A nested batch (a callback inside a callback) shares the reading. */
    clock_batch_begin();
    sleep_ms(2);
    c = clock_mono_us();
    clock_batch_end();
    assert_int_equal(clock_mono_ms(), a / 1000);
    clock_batch_end();
    after = clock_mono_us();
    assert_true(a >= before);
    assert_int_equal(a, b);
    assert_int_equal(a, c);
    assert_true(after - a >= 4000);
    /* The next batch reads again. */
    clock_batch_begin();
    assert_true(clock_mono_us() >= after);
    clock_batch_end();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_outside_a_batch_every_call_reads),
        cmocka_unit_test(test_a_batch_keeps_its_first_reading),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
