/* Unit tests for sidecar/peers.c: building the set from configured upstreams,
 * selection with exclusions, least-outstanding preference (power of two
 * choices over a distinct pair), spread over equal peers, the peer mask and
 * the xorshift source. Randomized checks use fixed seeds: a failure repeats. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "peers.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))
#define DRAWS 10000
/* A monotonic time with no peer ejected. */
#define NOW ((int64_t)1000000)

/* ~85 KB: off the test stack. */
static struct config_upstream ups[PEERS_MAX];
static struct peers *set;

static int setup(void **state)
{
    (void)state;
    memset(ups, 0, sizeof(ups));
    set = NULL;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    peers_free(set);
    set = NULL;
    return 0;
}

/* Upstream <i> as 10.0.<i/250>.<i%250+1>:<8000+i>, named "svc-<i>:<port>". */
static void make_upstream(int i)
{
    char addr[64];

    snprintf(addr, sizeof(addr), "10.0.%d.%d:%d", i / 250, i % 250 + 1, 8000 + i);
    assert_int_equal(config_parse_addr(addr, &ups[i].sa, &ups[i].salen), 0);
    snprintf(ups[i].name, sizeof(ups[i].name), "svc-%d:%d", i, 8000 + i);
    snprintf(ups[i].addr_text, sizeof(ups[i].addr_text), "%s", addr);
}

static struct peers *make_set(int n)
{
    int i;

    for (i = 0; i < n; i++)
        make_upstream(i);
    set = peers_new(ups, n);
    assert_non_null(set);
    assert_int_equal(set->n, n);
    return set;
}

/* The index of <p> in <s>, failing if it is not one of its peers. */
static int index_of(const struct peers *s, const struct peer *p)
{
    int i;

    assert_non_null(p);
    for (i = 0; i < s->n; i++)
        if (s->peer[i] == p) {
            assert_int_equal(p->index, i);
            return i;
        }
    fail_msg("peer %p is not in the set", (const void *)p);
    return -1;
}

/* splitmix64: the tests' own randomness, independent of peers_rand. */
static uint64_t mix_rand(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);

    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static void test_peers_new(void **state)
{
    const struct sockaddr_in *s4;
    const struct sockaddr_in6 *s6;
    struct in6_addr loop6 = IN6ADDR_LOOPBACK_INIT;
    int i;
    (void)state;

    assert_int_equal(config_parse_addr("10.1.2.3:8080", &ups[0].sa, &ups[0].salen), 0);
    snprintf(ups[0].name, sizeof(ups[0].name), "orders:8080");
    snprintf(ups[0].addr_text, sizeof(ups[0].addr_text), "10.1.2.3:8080");
    assert_int_equal(config_parse_addr("[::1]:9090", &ups[1].sa, &ups[1].salen), 0);
    snprintf(ups[1].name, sizeof(ups[1].name), "[::1]:9090");
    snprintf(ups[1].addr_text, sizeof(ups[1].addr_text), "[::1]:9090");
    make_upstream(2);

    set = peers_new(ups, 3);
    assert_non_null(set);
    assert_int_equal(set->n, 3);
    for (i = 0; i < 3; i++) {
        assert_non_null(set->peer[i]);
        assert_int_equal(set->peer[i]->index, i);
        assert_int_equal(atomic_load(&set->peer[i]->outstanding), 0);
        assert_int_equal(peer_is_out(set->peer[i], NOW), 0);
        assert_int_equal(set->peer[i]->salen, ups[i].salen);
        assert_memory_equal(&set->peer[i]->sa, &ups[i].sa, ups[i].salen);
        assert_string_equal(set->peer[i]->name, ups[i].name);
        assert_string_equal(set->peer[i]->addr_text, ups[i].addr_text);
    }
    /* Each peer is its own allocation, not an alias of the configuration. */
    assert_ptr_not_equal(set->peer[0], set->peer[1]);
    assert_ptr_not_equal((const void *)set->peer[0]->name, (const void *)ups[0].name);

    s4 = (const struct sockaddr_in *)&set->peer[0]->sa;
    assert_int_equal(s4->sin_family, AF_INET);
    assert_int_equal(set->peer[0]->salen, sizeof(struct sockaddr_in));
    assert_int_equal(ntohs(s4->sin_port), 8080);
    assert_int_equal(ntohl(s4->sin_addr.s_addr), 0x0a010203);
    assert_string_equal(set->peer[0]->name, "orders:8080");

    s6 = (const struct sockaddr_in6 *)&set->peer[1]->sa;
    assert_int_equal(s6->sin6_family, AF_INET6);
    assert_int_equal(set->peer[1]->salen, sizeof(struct sockaddr_in6));
    assert_int_equal(ntohs(s6->sin6_port), 9090);
    assert_memory_equal(&s6->sin6_addr, &loop6, sizeof(loop6));
}

static void test_peers_new_full(void **state)
{
    int i;
    (void)state;

    make_set(PEERS_MAX);
    for (i = 0; i < PEERS_MAX; i++) {
        assert_int_equal(set->peer[i]->index, i);
        assert_string_equal(set->peer[i]->addr_text, ups[i].addr_text);
    }
}

static void test_select_empty(void **state)
{
    uint64_t rng = 1;
    struct peer_mask none = { { 0 } };
    (void)state;

    set = peers_new(ups, 0);
    assert_non_null(set);
    assert_int_equal(set->n, 0);
    assert_null(peers_select(set, NULL, NOW, &rng));
    assert_null(peers_select(set, &none, NOW, &rng));
}

static void test_select_one(void **state)
{
    struct peer_mask all;
    uint64_t rng = 7;
    int d;
    (void)state;

    make_set(1);
    memset(&all, 0xff, sizeof(all));
    for (d = 0; d < 1000; d++) {
        assert_ptr_equal(peers_select(set, NULL, NOW, &rng), set->peer[0]);
        /* Excluded, but the only one: a request still gets a peer. */
        assert_ptr_equal(peers_select(set, &all, NOW, &rng), set->peer[0]);
    }
}

/* Over set sizes 2..12 and random exclusion masks, never an excluded peer while another exists. */
static void test_select_never_excluded(void **state)
{
    uint64_t rng = 0x1234567, trng = 42;
    int sizes[] = { 2, 3, 4, 5, 7, 12, 64, 65, 200 };
    size_t k;
    (void)state;

    for (k = 0; k < N(sizes); k++) {
        int n = sizes[k], d, i;
        make_set(n);
        for (i = 0; i < n; i++)
            atomic_store(&set->peer[i]->outstanding, (int)(mix_rand(&trng) % 4));
        for (d = 0; d < DRAWS; d++) {
            struct peer_mask ex;
            int allowed = 0, got;
            memset(&ex, 0, sizeof(ex));
            /* Densities from none to nearly all excluded. */
            uint64_t density = mix_rand(&trng) % 8;
            for (i = 0; i < n; i++)
                if (mix_rand(&trng) % 8 < density)
                    peer_mask_set(&ex, i);
            /* Often leave exactly one allowed peer, the hardest case. */
            if (d % 5 == 0) {
                int keep = (int)(mix_rand(&trng) % (uint64_t)n);
                memset(&ex, 0, sizeof(ex));
                for (i = 0; i < n; i++)
                    if (i != keep)
                        peer_mask_set(&ex, i);
            }
            for (i = 0; i < n; i++)
                allowed += !peer_mask_has(&ex, i);
            got = index_of(set, peers_select(set, &ex, NOW, &rng));
            if (allowed > 0 && peer_mask_has(&ex, got))
                fail_msg("n=%d draw %d: excluded peer %d chosen while %d were allowed", n, d, got, allowed);
        }
        peers_free(set);
        set = NULL;
    }
}

/* Every allowed peer is reachable: exclusions do not starve anyone. */
static void test_select_reaches_every_allowed_peer(void **state)
{
    struct peer_mask ex;
    uint64_t rng = 99;
    int seen[10] = { 0 };
    int d, i;
    (void)state;

    make_set(10);
    memset(&ex, 0, sizeof(ex));
    peer_mask_set(&ex, 0);
    peer_mask_set(&ex, 3);
    peer_mask_set(&ex, 9);
    for (d = 0; d < DRAWS; d++)
        seen[index_of(set, peers_select(set, &ex, NOW, &rng))]++;
    for (i = 0; i < 10; i++) {
        if (i == 0 || i == 3 || i == 9)
            assert_int_equal(seen[i], 0);
        else
            assert_true(seen[i] > DRAWS / 7 / 2);
    }
}

static void test_select_all_excluded(void **state)
{
    struct peer_mask all;
    uint64_t rng = 5;
    int seen[4] = { 0 };
    int d, i;
    (void)state;

    make_set(4);
    memset(&all, 0, sizeof(all));
    for (i = 0; i < 4; i++)
        peer_mask_set(&all, i);
    for (d = 0; d < DRAWS; d++)
        seen[index_of(set, peers_select(set, &all, NOW, &rng))]++;
    /* Still a peer each time, and any of them. */
    for (i = 0; i < 4; i++)
        assert_true(seen[i] > 0);
}

static void test_select_last_of_full_set(void **state)
{
    struct peer_mask ex;
    uint64_t rng = 3;
    int d, i;
    (void)state;

    make_set(PEERS_MAX);
    memset(&ex, 0, sizeof(ex));
    for (i = 0; i < PEERS_MAX - 1; i++)
        peer_mask_set(&ex, i);
    for (d = 0; d < 1000; d++)
        assert_ptr_equal(peers_select(set, &ex, NOW, &rng), set->peer[PEERS_MAX - 1]);
}

static void test_select_least_outstanding_pair(void **state)
{
    uint64_t rng = 11;
    int d;
    (void)state;

    make_set(2);
    atomic_store(&set->peer[0]->outstanding, 100);
    atomic_store(&set->peer[1]->outstanding, 0);
    for (d = 0; d < DRAWS; d++)
        assert_ptr_equal(peers_select(set, NULL, NOW, &rng), set->peer[1]);
    /* And the other way round. */
    atomic_store(&set->peer[0]->outstanding, 0);
    atomic_store(&set->peer[1]->outstanding, 1);
    for (d = 0; d < DRAWS; d++)
        assert_ptr_equal(peers_select(set, NULL, NOW, &rng), set->peer[0]);
}

/* Power of two choices over a distinct pair: the loaded peer is always paired with a
 * less loaded one, so it is never chosen; the other two share the draws. */
static void test_select_loaded_peer_avoided(void **state)
{
    uint64_t rng = 0xdeadbeef;
    int loaded, seen[3], d, i;
    (void)state;

    make_set(3);
    for (loaded = 0; loaded < 3; loaded++) {
        memset(seen, 0, sizeof(seen));
        for (i = 0; i < 3; i++)
            atomic_store(&set->peer[i]->outstanding, i == loaded ? 50 : 2);
        for (d = 0; d < DRAWS; d++)
            seen[index_of(set, peers_select(set, NULL, NOW, &rng))]++;
        assert_int_equal(seen[loaded], 0);
        for (i = 0; i < 3; i++)
            if (i != loaded)
                assert_true(seen[i] > DRAWS * 4 / 10);
    }
}

/* With a mask leaving two peers, the less loaded of those two wins every time,
 * even if an excluded peer is idle. */
static void test_select_least_outstanding_among_allowed(void **state)
{
    struct peer_mask ex;
    uint64_t rng = 77;
    int d;
    (void)state;

    make_set(4);
    atomic_store(&set->peer[0]->outstanding, 0);
    atomic_store(&set->peer[1]->outstanding, 9);
    atomic_store(&set->peer[2]->outstanding, 0);
    atomic_store(&set->peer[3]->outstanding, 3);
    memset(&ex, 0, sizeof(ex));
    peer_mask_set(&ex, 0);
    peer_mask_set(&ex, 2);
    for (d = 0; d < DRAWS; d++)
        assert_ptr_equal(peers_select(set, &ex, NOW, &rng), set->peer[3]);
}

static void test_select_uniform(void **state)
{
    uint64_t seeds[] = { 1, 2, 0x9E3779B97F4A7C15ULL };
    size_t k;
    (void)state;

    make_set(4);
    for (k = 0; k < N(seeds); k++) {
        uint64_t rng = seeds[k];
        int seen[4] = { 0 }, d, i;
        for (d = 0; d < DRAWS; d++)
            seen[index_of(set, peers_select(set, NULL, NOW, &rng))]++;
        for (i = 0; i < 4; i++) {
            if (seen[i] < DRAWS * 20 / 100 || seen[i] > DRAWS * 30 / 100)
                print_error("seed %zu: peer %d chosen %d of %d\n", k, i, seen[i], DRAWS);
            assert_in_range(seen[i], DRAWS * 20 / 100, DRAWS * 30 / 100);
        }
    }
}

static void test_peer_mask(void **state)
{
    static const int idx[] = { 0, 63, 64, 255 };
    struct peer_mask m;
    size_t k;
    int i;
    (void)state;

    assert_int_equal(sizeof(m.bits) * 8, PEERS_MAX);
    for (k = 0; k < N(idx); k++) {
        memset(&m, 0, sizeof(m));
        peer_mask_set(&m, idx[k]);
        for (i = 0; i < PEERS_MAX; i++)
            assert_int_equal(peer_mask_has(&m, i), i == idx[k]);
        /* Setting twice changes nothing. */
        peer_mask_set(&m, idx[k]);
        assert_int_equal(peer_mask_has(&m, idx[k]), 1);
    }
    memset(&m, 0, sizeof(m));
    for (k = 0; k < N(idx); k++)
        peer_mask_set(&m, idx[k]);
    for (i = 0; i < PEERS_MAX; i++)
        assert_int_equal(peer_mask_has(&m, i), i == 0 || i == 63 || i == 64 || i == 255);
    assert_int_equal(m.bits[0], (1ULL << 63) | 1ULL);
    assert_int_equal(m.bits[1], 1ULL);
    assert_int_equal(m.bits[2], 0);
    assert_int_equal(m.bits[3], 1ULL << 63);
}

static void test_rand(void **state)
{
    uint64_t seeds[] = { 1, 2, 0xffffffffffffffffULL, 0x8000000000000000ULL, 12345 };
    size_t k;
    (void)state;

    for (k = 0; k < N(seeds); k++) {
        uint64_t st = seeds[k], again = seeds[k], prev;
        int d, hi = 0;
        prev = peers_rand(&st);
        assert_int_not_equal(st, 0);
        assert_int_equal(peers_rand(&again), prev);
        for (d = 1; d < 1000; d++) {
            uint64_t v = peers_rand(&st);
            assert_int_not_equal(st, 0);
            assert_int_not_equal(v, prev);
            /* Same seed, same sequence: a worker's draws are reproducible. */
            assert_int_equal(peers_rand(&again), v);
            hi += (v >> 63) & 1;
            prev = v;
        }
        /* The top bit is not stuck. */
        assert_in_range(hi, 400, 600);
    }
}

/* ---- health: the states as peers.h stores them (peer_state.c decides) ---- */

static void fail_gateway(struct peer *p, int64_t t)
{
    for (int k = 0; k < PEERS_GATEWAY_ERRORS_TO_EJECT; k++)
        peers_report(set, p, PEER_GATEWAY_ERROR, t);
}

/* A refused connect takes a peer down; time alone never brings it back, a probe does. */
static void test_report_connect_failure_takes_it_down(void **state)
{
    struct peer *p;
    (void)state;

    make_set(4);
    p = set->peer[1];
    peers_report(set, p, PEER_CONNECT_FAILED, NOW);
    assert_int_equal(peer_state_now(p, NOW), PEER_DOWN);
    assert_int_equal(peer_state_now(p, NOW + 10 * PEERS_EJECT_MAX_MS), PEER_DOWN);
    assert_false(peer_is_out(set->peer[0], NOW));
    assert_int_equal(peers_observe(set, p, EVIDENCE_PROBE_OK, REASON_NONE, NULL, NOW + 5), 1);
    assert_int_equal(peer_state_now(p, NOW + 5), PEER_HEALTHY);
}

static void test_report_gateway_errors_in_a_row(void **state)
{
    struct peer *p;
    int k;
    (void)state;

    make_set(4);
    p = set->peer[2];
    for (k = 1; k < PEERS_GATEWAY_ERRORS_TO_EJECT; k++) {
        peers_report(set, p, PEER_GATEWAY_ERROR, NOW);
        assert_false(peer_is_out(p, NOW));
    }
    /* A success between them starts the count again. */
    peers_report(set, p, PEER_OK, NOW);
    for (k = 1; k < PEERS_GATEWAY_ERRORS_TO_EJECT; k++) {
        peers_report(set, p, PEER_GATEWAY_ERROR, NOW);
        assert_false(peer_is_out(p, NOW));
    }
    peers_report(set, p, PEER_GATEWAY_ERROR, NOW);
    assert_int_equal(peer_state_now(p, NOW), PEER_EJECTED);
    /* Its time up, it is in trial: still out of ordinary selection. */
    assert_int_equal(peer_state_now(p, NOW + PEERS_EJECT_BASE_MS), PEER_TRIAL);
    assert_true(peer_is_out(p, NOW + PEERS_EJECT_BASE_MS));
}

/* One trial at a time; its outcome decides; failed trials double the time out. */
static void test_trial(void **state)
{
    struct peer *p;
    int64_t t = NOW, out = PEERS_EJECT_BASE_MS;
    struct peer_mask ex;
    int k;
    (void)state;

    make_set(4);
    p = set->peer[3];
    fail_gateway(p, t);
    assert_null(peers_take_trial(set, NULL, t + out - 1, 500));
    for (k = 0; k < 5; k++) {
        t += out;
        assert_ptr_equal(peers_take_trial(set, NULL, t, 500), p);
        assert_null(peers_take_trial(set, NULL, t + 1, 500));   /* the token is taken */
        memset(&ex, 0, sizeof(ex));
        peer_mask_set(&ex, 3);
        peers_report(set, p, PEER_GATEWAY_ERROR, t + 2);         /* the trial failed */
        out = out * 2 > PEERS_EJECT_MAX_MS ? PEERS_EJECT_MAX_MS : out * 2;
        assert_int_equal(peer_state_now(p, t + 2), PEER_EJECTED);
        assert_int_equal(peer_state_now(p, t + 2 + out - 1), PEER_EJECTED);
        assert_int_equal(peer_state_now(p, t + 2 + out), PEER_TRIAL);
        t += 2;
    }
    t += out;
    /* An excluded peer (tried for this request) is not its trial. */
    assert_null(peers_take_trial(set, &ex, t, 500));
    assert_ptr_equal(peers_take_trial(set, NULL, t, 500), p);
    peers_report(set, p, PEER_OK, t + 1);
    assert_int_equal(peer_state_now(p, t + 1), PEER_HEALTHY);
    /* Back to the first time out after a success. */
    fail_gateway(p, t + 2);
    assert_int_equal(peer_state_now(p, t + 2 + PEERS_EJECT_BASE_MS - 1), PEER_EJECTED);
    assert_int_equal(peer_state_now(p, t + 2 + PEERS_EJECT_BASE_MS), PEER_TRIAL);
    /* A trial token that nobody answers runs out. */
    assert_ptr_equal(peers_take_trial(set, NULL, t + 2 + PEERS_EJECT_BASE_MS, 500), p);
    assert_null(peers_take_trial(set, NULL, t + 2 + PEERS_EJECT_BASE_MS + 499, 500));
    assert_ptr_equal(peers_take_trial(set, NULL, t + 2 + PEERS_EJECT_BASE_MS + 500, 500), p);
}

/* Soft ejections never take more than PEERS_MAX_EJECT_PERCENT of the peers that take connections. */
static void test_report_eject_cap(void **state)
{
    static const int sizes[] = { 1, 2, 3, 4, 10 };
    size_t k;
    (void)state;

    for (k = 0; k < N(sizes); k++) {
        int n = sizes[k], i, ejected = 0;
        make_set(n);
        for (i = 0; i < n; i++)
            fail_gateway(set->peer[i], NOW);
        for (i = 0; i < n; i++)
            ejected += peer_is_out(set->peer[i], NOW);
        assert_true(ejected * 100 <= n * PEERS_MAX_EJECT_PERCENT);
        assert_int_equal(ejected, n * PEERS_MAX_EJECT_PERCENT / 100);
        peers_free(set);
        set = NULL;
    }
}

/* Down and draining peers have no capacity: they take no room under the cap. */
static void test_cap_counts_capacity(void **state)
{
    uint64_t rng = 5;
    int d;
    (void)state;

    make_set(3);
    peers_report(set, set->peer[0], PEER_CONNECT_FAILED, NOW);      /* refusing: down */
    peers_report(set, set->peer[1], PEER_SAID_LEAVING, NOW);        /* 503 + close: draining */
    assert_int_equal(peer_state_now(set->peer[0], NOW), PEER_DOWN);
    assert_int_equal(peer_state_now(set->peer[1], NOW), PEER_DRAINING);
    /* The third is the last that takes connections: soft evidence cannot take it out... */
    fail_gateway(set->peer[2], NOW);
    assert_int_equal(peer_state_now(set->peer[2], NOW), PEER_HEALTHY);
    for (d = 0; d < 1000; d++)
        assert_int_equal(index_of(set, peers_select(set, NULL, NOW, &rng)), 2);
    peers_free(set);

    /* ...while with one peer down, of four, two others can still be ejected for 5xx. */
    make_set(4);
    peers_report(set, set->peer[0], PEER_CONNECT_FAILED, NOW);
    fail_gateway(set->peer[1], NOW);
    fail_gateway(set->peer[2], NOW);
    assert_int_equal(peer_state_now(set->peer[1], NOW), PEER_EJECTED);
    assert_int_equal(peer_state_now(set->peer[2], NOW), PEER_HEALTHY);   /* 1 of the 3 takers out: cap */
    peers_report(set, set->peer[3], PEER_SAID_LEAVING, NOW);
    assert_int_equal(peer_state_now(set->peer[3], NOW), PEER_DRAINING);
}

static void test_select_skips_out(void **state)
{
    uint64_t rng = 21;
    int seen[4] = { 0 }, d;
    (void)state;

    make_set(4);
    peers_report(set, set->peer[1], PEER_CONNECT_FAILED, NOW);
    peers_report(set, set->peer[2], PEER_SAID_LEAVING, NOW);
    assert_true(peer_is_out(set->peer[1], NOW));
    assert_true(peer_is_out(set->peer[2], NOW));
    /* Peers out of rotation are idle, so least-outstanding alone would pick them. */
    atomic_store(&set->peer[0]->outstanding, 5);
    atomic_store(&set->peer[3]->outstanding, 5);
    assert_int_equal(peers_has_fresh(set, NULL, NOW), 1);
    for (d = 0; d < DRAWS; d++)
        seen[index_of(set, peers_select(set, NULL, NOW, &rng))]++;
    assert_int_equal(seen[1], 0);
    assert_int_equal(seen[2], 0);
    assert_true(seen[0] > 0 && seen[3] > 0);
    /* Their time running out is not enough: the down one waits for a probe, the draining one for its trial. */
    memset(seen, 0, sizeof(seen));
    for (d = 0; d < DRAWS; d++)
        seen[index_of(set, peers_select(set, NULL, NOW + PEERS_EJECT_MAX_MS, &rng))]++;
    assert_int_equal(seen[1] + seen[2], 0);
    peers_observe(set, set->peer[1], EVIDENCE_PROBE_OK, REASON_NONE, NULL, NOW + PEERS_EJECT_MAX_MS);
    assert_ptr_equal(peers_take_trial(set, NULL, NOW + PEERS_EJECT_MAX_MS, 100), set->peer[2]);
    peers_report(set, set->peer[2], PEER_OK, NOW + PEERS_EJECT_MAX_MS);
    for (d = 0; d < DRAWS; d++)
        seen[index_of(set, peers_select(set, NULL, NOW + PEERS_EJECT_MAX_MS, &rng))]++;
    assert_true(seen[1] > 0 && seen[2] > 0);
}

/* Panic mode: out-of-rotation but untried peers come before excluded (already tried) ones. */
static void test_select_panic_order(void **state)
{
    struct peer_mask ex;
    uint64_t rng = 31;
    int d, got;
    (void)state;

    make_set(4);
    peers_report(set, set->peer[1], PEER_CONNECT_FAILED, NOW);
    peers_report(set, set->peer[2], PEER_CONNECT_FAILED, NOW);
    memset(&ex, 0, sizeof(ex));
    peer_mask_set(&ex, 0);
    peer_mask_set(&ex, 3);
    assert_int_equal(peers_has_fresh(set, &ex, NOW), 0);
    for (d = 0; d < DRAWS; d++) {
        got = index_of(set, peers_select(set, &ex, NOW, &rng));
        assert_true(got == 1 || got == 2);
    }
    /* Everything excluded and some out: still a peer. */
    peer_mask_set(&ex, 1);
    peer_mask_set(&ex, 2);
    for (d = 0; d < 1000; d++)
        index_of(set, peers_select(set, &ex, NOW, &rng));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
        T(test_peers_new),
        T(test_peers_new_full),
        T(test_select_empty),
        T(test_select_one),
        T(test_select_never_excluded),
        T(test_select_reaches_every_allowed_peer),
        T(test_select_all_excluded),
        T(test_select_last_of_full_set),
        T(test_select_least_outstanding_pair),
        T(test_select_loaded_peer_avoided),
        T(test_select_least_outstanding_among_allowed),
        T(test_select_uniform),
        T(test_peer_mask),
        T(test_rand),
        T(test_report_connect_failure_takes_it_down),
        T(test_report_gateway_errors_in_a_row),
        T(test_trial),
        T(test_report_eject_cap),
        T(test_cap_counts_capacity),
        T(test_select_skips_out),
        T(test_select_panic_order),
#undef T
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
