/* Unit tests for sidecar/health_bpf.c with the REAL programs of bpf/peer_stats.bpf.c: loads them,
 * makes TCP connections on loopback (refused, established, reset) and into a network namespace that
 * drops SYNs (SYN retransmits, timeouts), and reads the counters back. Exact counts for N refused
 * connects. Also: netns scoping (by inode, and with real traffic from a namespace of our own), pin
 * reuse across a restart, replacing a pin of another layout, bpftool's view of the pinned map, modes;
 * the node's program set: one per node (a second open of a pin dir and another pod share it; a
 * namespace's entry goes with its last opener, the set with the last on the node), another namespace's
 * pins left alone, a damaged set replaced with no double count, two processes opening one pin dir at
 * once, the sweep of entries and sets left by openers that died.
 *
 * Needs root (BPF, bpffs, ip netns): without it the binary says SKIPPED on stderr and FAILS, so a
 * run without privileges is never mistaken for a pass. bpffs is mounted at /sys/fs/bpf if it is not
 * (and unmounted at the end only if this test mounted it and left it empty); every pin goes under
 * /sys/fs/bpf/nextup-test-<pid> (the node dir is <that>/node), removed at the end (which detaches the
 * pinned programs). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <sched.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <linux/magic.h>

#include <bpf/bpf.h>

#include "config.h"
#include "health_bpf.h"
#include "log.h"

#define BPFFS "/sys/fs/bpf"

static char base_dir[128];      /* /sys/fs/bpf/nextup-test-<pid> */
static char node_dir[160];      /* <base_dir>/node: NEXTUP_BPF_NODE_DIR of every open here */
static int mounted_bpffs;       /* this test mounted BPFFS */

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void pin_dir(char *buf, size_t len, const char *name)
{
    snprintf(buf, len, "%s/%s", base_dir, name);
}

static struct health_bpf *open_on(const char *dir, unsigned long long netns)
{
    struct health_bpf_opts o = { .mode = CONFIG_BPF_ON, .pin_dir = dir, .max_peers = 1024, .netns_inum = netns,
                                 .node_dir = node_dir };
    struct health_bpf *h = NULL;
    char err[512] = "";
    int rc;

    rc = health_bpf_open(&o, &h, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "health_bpf_open(%s): %d %s\n", dir, rc, err);
    assert_int_equal(rc, 0);
    assert_non_null(h);
    assert_true(health_bpf_map_fd(h) >= 0);
    return h;
}

static struct sockaddr_in sin_of(const char *ip, uint16_t port)
{
    struct sockaddr_in sa;

    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    assert_int_equal(inet_pton(AF_INET, ip, &sa.sin_addr), 1);
    return sa;
}

static int lookup(struct health_bpf *h, const char *ip, uint16_t port, struct peer_stats *st)
{
    struct sockaddr_in sa = sin_of(ip, port);

    memset(st, 0xa5, sizeof(*st));
    return health_bpf_lookup(h, (const struct sockaddr *)&sa, st);
}

static void print_stats(const char *what, uint16_t port, const struct peer_stats *s)
{
    fprintf(stderr,
            "  [%s] port %u: attempts=%llu established=%llu failures=%llu refused=%llu timeouts=%llu "
            "unreachable=%llu syn_rtx=%llu rst_rcvd=%llu rst_sent=%llu data_rtx=%llu srtt_us=%llu "
            "last_failure_ns=%llu last_success_ns=%llu peer_fins=%llu\n",
            what, port, (unsigned long long)s->connect_attempts, (unsigned long long)s->connects_established,
            (unsigned long long)s->connect_failures, (unsigned long long)s->refused,
            (unsigned long long)s->connect_timeouts, (unsigned long long)s->unreachable,
            (unsigned long long)s->syn_retransmits, (unsigned long long)s->resets_received,
            (unsigned long long)s->resets_sent, (unsigned long long)s->data_retransmits,
            (unsigned long long)s->srtt_us, (unsigned long long)s->last_failure_ns,
            (unsigned long long)s->last_success_ns, (unsigned long long)s->peer_fins);
}

/* A loopback port nobody listens on (bound and released: nothing else on this host binds it
 * within the test's microseconds, in practice). */
static uint16_t unused_port(void)
{
    struct sockaddr_in sa = sin_of("127.0.0.1", 0);
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    close(fd);
    return ntohs(sa.sin_port);
}

/* A blocking connect to 127.0.0.1:<port> that must be refused. */
static void connect_refused(uint16_t port)
{
    struct sockaddr_in sa = sin_of("127.0.0.1", port);
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    assert_true(fd >= 0);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), -1);
    assert_int_equal(errno, ECONNREFUSED);
    close(fd);
}

/* A listener on 127.0.0.1:<*port> (ephemeral). */
static int listener(uint16_t *port)
{
    struct sockaddr_in sa = sin_of("127.0.0.1", 0);
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(fd, 16), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    *port = ntohs(sa.sin_port);
    return fd;
}

/* Connects to the listener (blocking) and accepts: *client and *server connected, *client_port its
 * ephemeral port. */
static void connect_pair(int lfd, uint16_t port, int *client, int *server, uint16_t *client_port)
{
    struct sockaddr_in sa = sin_of("127.0.0.1", port);
    socklen_t len = sizeof(sa);

    *client = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(*client >= 0);
    assert_int_equal(connect(*client, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(*client, (struct sockaddr *)&sa, &len), 0);
    *client_port = ntohs(sa.sin_port);
    *server = accept(lfd, NULL, NULL);
    assert_true(*server >= 0);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

static int group_setup(void **state)
{
    struct statfs fs;

    (void)state;
    if (getenv("TEST_HEALTH_BPF_DEBUG"))
        log_set_level(LOG_LEVEL_DEBUG);
    if (statfs(BPFFS, &fs) != 0 || fs.f_type != BPF_FS_MAGIC) {
        if (mount("bpf", BPFFS, "bpf", 0, "mode=0700") != 0) {
            fprintf(stderr, "cannot mount bpffs at %s: %s\n", BPFFS, strerror(errno));
            return -1;
        }
        mounted_bpffs = 1;
    }
    snprintf(base_dir, sizeof(base_dir), "%s/nextup-test-%d", BPFFS, (int)getpid());
    snprintf(node_dir, sizeof(node_dir), "%s/node", base_dir);
    if (mkdir(base_dir, 0700) != 0) {
        fprintf(stderr, "cannot create %s: %s\n", base_dir, strerror(errno));
        return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    struct stat st;
    int left = 0;

    (void)state;
    nftw(base_dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
    if (stat(base_dir, &st) == 0)
        fprintf(stderr, "warning: could not remove %s\n", base_dir);
    if (mounted_bpffs) {
        /* Someone may have pinned there meanwhile (e.g. an e2e nextup): their pins die with the
         * mount, so it stays mounted unless it holds only what every new bpffs has (the preloaded
         * maps.debug / progs.debug iterators). */
        DIR *d = opendir(BPFFS);
        struct dirent *de;

        while (d && (de = readdir(d)))
            if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..") && strcmp(de->d_name, "maps.debug") &&
                strcmp(de->d_name, "progs.debug"))
                left++;
        if (d)
            closedir(d);
        if (!left)
            umount(BPFFS);
        else
            fprintf(stderr, "note: leaving %s mounted: it holds pins of others\n", BPFFS);
    }
    return 0;
}

/* (a) connect() to a port with no listener: one attempt, refused once (the RST in SYN_SENT is not
 * also a resets_received), last_failure_ns a CLOCK_MONOTONIC time. */
static void test_refused(void **state)
{
    char dir[192];
    struct health_bpf *h;
    struct peer_stats st, st6;
    struct sockaddr_in6 sa6;
    uint16_t port = unused_port();
    uint64_t before, after;

    (void)state;
    pin_dir(dir, sizeof(dir), "refused");
    h = open_on(dir, 0);
    before = now_ns();
    connect_refused(port);
    after = now_ns();

    assert_int_equal(lookup(h, "127.0.0.1", port, &st), 0);
    print_stats("refused", port, &st);
    assert_true(st.connect_attempts >= 1);
    assert_true(st.refused >= 1);
    assert_int_equal(st.resets_received, 0);
    assert_int_equal(st.connects_established, 0);
    assert_int_equal(st.connect_timeouts + st.unreachable + st.connect_failures, 0);
    assert_true(st.last_failure_ns >= before && st.last_failure_ns <= after);
    assert_int_equal(st.last_success_ns, 0);

    /* ::ffff:127.0.0.1 is the same peer. */
    memset(&sa6, 0, sizeof(sa6));
    sa6.sin6_family = AF_INET6;
    sa6.sin6_port = htons(port);
    assert_int_equal(inet_pton(AF_INET6, "::ffff:127.0.0.1", &sa6.sin6_addr), 1);
    assert_int_equal(health_bpf_lookup(h, (const struct sockaddr *)&sa6, &st6), 0);
    assert_memory_equal(&st, &st6, sizeof(st));

    /* A peer never contacted. */
    assert_int_equal(lookup(h, "127.0.0.1", unused_port(), &st), -ENOENT);
    health_bpf_close(h);
}

/* (a'') Exactness: N blocking connects to a closed loopback port are N attempts and N refusals, not
 * one more or one less (one CLOSE->SYN_SENT and one SYN_SENT->CLOSE per socket, the RST in SYN_SENT
 * counted once), and nothing in any other failure class. */
#define EXACT_N 5
static void test_refused_exact(void **state)
{
    char dir[192];
    struct health_bpf *h;
    struct peer_stats st;
    uint16_t port = unused_port();
    int i;

    (void)state;
    pin_dir(dir, sizeof(dir), "refused-exact");
    h = open_on(dir, 0);
    assert_int_equal(lookup(h, "127.0.0.1", port, &st), -ENOENT);
    for (i = 0; i < EXACT_N; i++)
        connect_refused(port);
    assert_int_equal(lookup(h, "127.0.0.1", port, &st), 0);
    print_stats("5 refused connects", port, &st);
    assert_int_equal(st.connect_attempts, EXACT_N);
    assert_int_equal(st.refused, EXACT_N);
    assert_int_equal(st.connects_established, 0);
    assert_int_equal(st.connect_timeouts + st.unreachable + st.connect_failures, 0);
    assert_int_equal(st.resets_received + st.resets_sent + st.syn_retransmits + st.data_retransmits, 0);
    health_bpf_close(h);
}

/* (a') IPv6: a refused connect to [::1] is keyed with family AF_INET6 (skipped without IPv6 loopback). */
static void test_refused_ipv6(void **state)
{
    char dir[192];
    struct health_bpf *h;
    struct peer_stats st;
    struct sockaddr_in6 sa6;
    socklen_t len = sizeof(sa6);
    uint16_t port;
    int fd;

    (void)state;
    fd = socket(AF_INET6, SOCK_STREAM, 0);
    memset(&sa6, 0, sizeof(sa6));
    sa6.sin6_family = AF_INET6;
    sa6.sin6_addr = in6addr_loopback;
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa6, sizeof(sa6)) != 0) {
        fprintf(stderr, "  [ipv6] no IPv6 loopback here: not tested\n");
        if (fd >= 0)
            close(fd);
        skip();
    }
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa6, &len), 0);
    port = ntohs(sa6.sin6_port);
    close(fd);

    pin_dir(dir, sizeof(dir), "refused6");
    h = open_on(dir, 0);
    fd = socket(AF_INET6, SOCK_STREAM, 0);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa6, sizeof(sa6)), -1);
    assert_int_equal(errno, ECONNREFUSED);
    close(fd);
    assert_int_equal(health_bpf_lookup(h, (const struct sockaddr *)&sa6, &st), 0);
    print_stats("refused ::1", port, &st);
    assert_true(st.connect_attempts >= 1);
    assert_true(st.refused >= 1);
    health_bpf_close(h);
}

/* (b) An accepted connection: established, last_success_ns set; srtt_us is the handshake sample
 * (it may round to 0 us on loopback). */
static void test_established(void **state)
{
    char dir[192];
    struct health_bpf *h;
    struct peer_stats st;
    uint16_t port, cport;
    char buf[8];
    int lfd, c, s;
    uint64_t before;

    (void)state;
    pin_dir(dir, sizeof(dir), "established");
    h = open_on(dir, 0);
    lfd = listener(&port);
    before = now_ns();
    connect_pair(lfd, port, &c, &s, &cport);
    assert_int_equal(write(c, "ping", 4), 4);
    /* Read it all: closing with unread data would send a RST (and rightly count one). */
    assert_int_equal(read(s, buf, sizeof(buf)), 4);
    close(c);
    close(s);
    close(lfd);

    assert_int_equal(lookup(h, "127.0.0.1", port, &st), 0);
    print_stats("established", port, &st);
    assert_true(st.connect_attempts >= 1);
    assert_true(st.connects_established >= 1);
    assert_true(st.last_success_ns >= before && st.last_success_ns <= now_ns());
    assert_int_equal(st.refused + st.connect_timeouts + st.unreachable + st.connect_failures, 0);
    assert_int_equal(st.resets_received, 0);
    /* The accepted side is not an active open: its peer (the client's ephemeral port) gets no entry. */
    assert_int_equal(lookup(h, "127.0.0.1", cport, &st), -ENOENT);
    health_bpf_close(h);
}

/* Aborts <fd> with SO_LINGER {1, 0}: close sends a RST. */
static void abort_close(int fd)
{
    struct linger lg = { .l_onoff = 1, .l_linger = 0 };

    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)), 0);
    close(fd);
}

static void expect_reset(int fd)
{
    struct pollfd pfd = { .fd = fd, .events = POLLIN };
    char buf[16];

    assert_int_equal(poll(&pfd, 1, 2000), 1);
    assert_int_equal(read(fd, buf, sizeof(buf)), -1);
    assert_int_equal(errno, ECONNRESET);
}

/* (c) The server aborts (SO_LINGER {1, 0}): the client receives a RST, counted against the server's
 * port. The server's RST goes to the client's ephemeral port, a peer of an accepted socket: no entry
 * is made for it. Then the client aborts: resets_sent against the server's port. */
static void test_reset(void **state)
{
    char dir[192];
    struct health_bpf *h;
    struct peer_stats st;
    uint16_t port, cport;
    int lfd, c, s;

    (void)state;
    pin_dir(dir, sizeof(dir), "reset");
    h = open_on(dir, 0);
    lfd = listener(&port);

    connect_pair(lfd, port, &c, &s, &cport);
    abort_close(s);
    expect_reset(c);
    close(c);
    assert_int_equal(lookup(h, "127.0.0.1", port, &st), 0);
    print_stats("server aborted, client view", port, &st);
    assert_true(st.connects_established >= 1);
    assert_int_equal(st.resets_received, 1);
    assert_int_equal(st.resets_sent, 0);
    assert_true(st.last_failure_ns >= st.last_success_ns && st.last_success_ns > 0);
    assert_int_equal(st.refused, 0);
    assert_int_equal(lookup(h, "127.0.0.1", cport, &st), -ENOENT);

    connect_pair(lfd, port, &c, &s, &cport);
    abort_close(c);
    expect_reset(s);
    close(s);
    assert_int_equal(lookup(h, "127.0.0.1", port, &st), 0);
    print_stats("client aborted, client view", port, &st);
    assert_true(st.connects_established >= 2);
    assert_int_equal(st.resets_received, 1);
    assert_int_equal(st.resets_sent, 1);
    assert_int_equal(lookup(h, "127.0.0.1", cport, &st), -ENOENT);

    close(lfd);
    health_bpf_close(h);
}

/* (d) Programs loaded for another namespace (inum 1) count nothing here, while a second instance
 * loaded for this namespace at the same time sees the same connections (the control). */
/* (d) Who closes first: the server's FIN first (it closes, the client's socket goes ESTABLISHED ->
 * CLOSE_WAIT) counts one peer_fins against the server's port; the client closing first counts none. */
static void test_peer_fins(void **state)
{
    char dir[192];
    struct health_bpf *h;
    struct peer_stats st;
    uint16_t port, cport;
    char buf[8];
    int lfd, c, s, k;

    (void)state;
    pin_dir(dir, sizeof(dir), "fins");
    h = open_on(dir, 0);
    lfd = listener(&port);
    for (k = 0; k < 3; k++) {
        connect_pair(lfd, port, &c, &s, &cport);
        close(s);                                        /* the server's FIN first */
        assert_int_equal(read(c, buf, sizeof(buf)), 0);   /* the client has it: CLOSE_WAIT */
        close(c);
    }
    connect_pair(lfd, port, &c, &s, &cport);
    close(c);                                            /* the client first: not the peer's */
    assert_int_equal(read(s, buf, sizeof(buf)), 0);
    close(s);
    assert_int_equal(lookup(h, "127.0.0.1", port, &st), 0);
    print_stats("3 server-first closes, 1 client-first", port, &st);
    assert_int_equal(st.peer_fins, 3);
    assert_int_equal(lookup(h, "127.0.0.1", cport, &st), -ENOENT);
    close(lfd);
    health_bpf_close(h);
}

static void test_netns_scoping(void **state)
{
    char dir_other[192], dir_here[192];
    struct health_bpf *other, *here;
    struct peer_stats st;
    uint16_t refused_port = unused_port(), port, cport;
    int lfd, c, s;

    (void)state;
    pin_dir(dir_other, sizeof(dir_other), "netns-other");
    pin_dir(dir_here, sizeof(dir_here), "netns-here");
    other = open_on(dir_other, 1);
    here = open_on(dir_here, 0);

    connect_refused(refused_port);
    lfd = listener(&port);
    connect_pair(lfd, port, &c, &s, &cport);
    close(c);
    close(s);
    close(lfd);

    assert_int_equal(lookup(other, "127.0.0.1", refused_port, &st), -ENOENT);
    assert_int_equal(lookup(other, "127.0.0.1", port, &st), -ENOENT);
    assert_int_equal(lookup(other, "127.0.0.1", cport, &st), -ENOENT);
    assert_int_equal(lookup(here, "127.0.0.1", refused_port, &st), 0);
    print_stats("netns control, refused", refused_port, &st);
    assert_true(st.refused >= 1);
    assert_int_equal(lookup(here, "127.0.0.1", port, &st), 0);
    print_stats("netns control, established", port, &st);
    assert_true(st.connects_established >= 1);
    fprintf(stderr, "  [netns] instance for netns 1: no entry for ports %u, %u, %u\n", refused_port, port, cport);
    health_bpf_close(other);
    health_bpf_close(here);
}

/* ---- (e) a namespace that swallows SYNs ---- */

static char ns_name[32], veth_host[16], veth_ns_name[16];

static int run(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int run(const char *fmt, ...)
{
    char cmd[512];
    va_list ap;
    int rc;

    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    rc = system(cmd);
    if (rc != 0)
        fprintf(stderr, "  command failed (%d): %s\n", rc, cmd);
    return rc;
}

static void blackhole_down(void)
{
    if (veth_host[0])
        run("ip link del %s >/dev/null 2>&1 || true", veth_host);
    if (ns_name[0])
        run("ip netns del %s >/dev/null 2>&1 || true", ns_name);
    ns_name[0] = veth_host[0] = veth_ns_name[0] = '\0';
}

/* Host veth 10.214.<x>.1/24 <-> namespace veth 10.214.<x>.3/24. A permanent neighbour entry sends
 * 10.214.<x>.2 to the namespace's MAC; the namespace does not own .2 and does not forward, so it drops
 * the SYNs without a word (no RST, no ICMP). Returns x, or -1. */
static int blackhole_up(void)
{
    int pid = (int)getpid(), x = -1, i;

    /* A /24 nobody here uses (another test run may hold one). */
    for (i = 0; i < 200 && x < 0; i++) {
        int cand = 20 + (pid + i) % 200;

        if (run("ip -4 route show 10.214.%d.0/24 | grep -q . && exit 1 || exit 0", cand) == 0)
            x = cand;
    }
    if (x < 0)
        return -1;
    snprintf(ns_name, sizeof(ns_name), "nxt-bpf-%d", pid);
    snprintf(veth_host, sizeof(veth_host), "nxh%d", pid % 1000000);
    snprintf(veth_ns_name, sizeof(veth_ns_name), "nxn%d", pid % 1000000);
    if (run("ip netns add %s", ns_name) ||
        run("ip link add %s type veth peer name %s netns %s", veth_host, veth_ns_name, ns_name) ||
        run("ip -n %s link set %s address 02:6e:78:00:%02x:03", ns_name, veth_ns_name, x) ||
        run("ip -n %s addr add 10.214.%d.3/24 dev %s", ns_name, x, veth_ns_name) ||
        run("ip -n %s link set %s up", ns_name, veth_ns_name) ||
        run("ip addr add 10.214.%d.1/24 dev %s", x, veth_host) ||
        run("ip link set %s up", veth_host) ||
        run("ip neigh replace 10.214.%d.2 lladdr 02:6e:78:00:%02x:03 dev %s nud permanent", x, x, veth_host)) {
        blackhole_down();
        return -1;
    }
    return x;
}

static int connect_nonblocking(const char *ip, uint16_t port, int syncnt)
{
    struct sockaddr_in sa = sin_of(ip, port);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);

    assert_true(fd >= 0);
    if (syncnt)
        assert_int_equal(setsockopt(fd, IPPROTO_TCP, TCP_SYNCNT, &syncnt, sizeof(syncnt)), 0);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), -1);
    assert_int_equal(errno, EINPROGRESS);
    return fd;
}

/* (e) SYNs into the void: after the first retransmit (1 s) the application gives up (close in
 * SYN_SENT, no error): syn_retransmits and connect_timeouts. A second socket with TCP_SYNCNT=1 lets
 * the kernel time out (sk_err ETIMEDOUT): connect_timeouts through the other path. Then a peer
 * behind an unreachable route: ICMP host unreachable, counted as unreachable. */
static void test_syn_timeout(void **state)
{
    char dir[192], ip[32];
    struct health_bpf *h;
    struct peer_stats st;
    struct pollfd pfd;
    int x, a, b, soerr = 0;
    socklen_t len = sizeof(soerr);
    uint64_t t0, waited;

    (void)state;
    x = blackhole_up();
    assert_true(x >= 0);
    snprintf(ip, sizeof(ip), "10.214.%d.2", x);
    pin_dir(dir, sizeof(dir), "syn");
    h = open_on(dir, 0);

    t0 = now_ns();
    a = connect_nonblocking(ip, 80, 0);
    b = connect_nonblocking(ip, 81, 1);
    usleep(1500 * 1000);
    close(a);
    assert_int_equal(lookup(h, ip, 80, &st), 0);
    print_stats("gave up after 1.5 s", 80, &st);
    assert_true(st.connect_attempts >= 1);
    assert_true(st.syn_retransmits >= 1);
    assert_true(st.connect_timeouts >= 1);
    assert_int_equal(st.connects_established + st.refused + st.unreachable + st.connect_failures, 0);
    assert_true(st.last_failure_ns > t0);

    /* SYN at 0 s, retransmit at 1 s, timeout at 3 s (later if the kernel adds linear timeouts). */
    pfd.fd = b;
    pfd.events = POLLOUT;
    assert_int_equal(poll(&pfd, 1, 10000), 1);
    waited = (now_ns() - t0) / 1000000;
    assert_int_equal(getsockopt(b, SOL_SOCKET, SO_ERROR, &soerr, &len), 0);
    assert_int_equal(soerr, ETIMEDOUT);
    close(b);
    assert_int_equal(lookup(h, ip, 81, &st), 0);
    print_stats("TCP_SYNCNT=1, ETIMEDOUT", 81, &st);
    fprintf(stderr, "  [syn] ETIMEDOUT after %llu ms\n", (unsigned long long)waited);
    assert_true(st.syn_retransmits >= 1);
    assert_true(st.connect_timeouts >= 1);
    assert_int_equal(st.connects_established + st.refused + st.unreachable + st.connect_failures, 0);

    /* Now let the namespace answer for .4 with ICMP host unreachable: forwarding on (ip_error is
     * silent without it) and an unreachable route. A hard ICMP error in SYN_SENT closes the socket. */
    assert_int_equal(run("ip netns exec %s sysctl -qw net.ipv4.ip_forward=1", ns_name), 0);
    assert_int_equal(run("ip -n %s route add unreachable 10.214.%d.4/32", ns_name, x), 0);
    assert_int_equal(run("ip neigh replace 10.214.%d.4 lladdr 02:6e:78:00:%02x:03 dev %s nud permanent", x, x,
                         veth_host), 0);
    snprintf(ip, sizeof(ip), "10.214.%d.4", x);
    {
        struct sockaddr_in sa = sin_of(ip, 80);
        int fd = socket(AF_INET, SOCK_STREAM, 0);

        assert_true(fd >= 0);
        assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), -1);
        assert_int_equal(errno, EHOSTUNREACH);
        close(fd);
    }
    assert_int_equal(lookup(h, ip, 80, &st), 0);
    print_stats("ICMP host unreachable", 80, &st);
    assert_true(st.connect_attempts >= 1);
    assert_true(st.unreachable >= 1);
    assert_int_equal(st.connects_established + st.refused + st.connect_timeouts + st.connect_failures, 0);

    /* Data retransmits: a connection to a listener inside the namespace (.3 is the namespace's own),
     * then its frames go astray and the client writes: retransmits after the RTO (>= 200 ms). */
    {
        struct sockaddr_in sa = sin_of("0.0.0.0", 0);
        socklen_t slen = sizeof(sa);
        char path[64], data[512];
        int self_ns, target_ns, lfd, c, srv;
        uint16_t port;

        snprintf(path, sizeof(path), "/var/run/netns/%s", ns_name);
        self_ns = open("/proc/self/ns/net", O_RDONLY);
        target_ns = open(path, O_RDONLY);
        assert_true(self_ns >= 0 && target_ns >= 0);
        /* A socket lives in the namespace it was created in, whatever the thread does after. */
        assert_int_equal(setns(target_ns, CLONE_NEWNET), 0);
        lfd = socket(AF_INET, SOCK_STREAM, 0);
        assert_int_equal(setns(self_ns, CLONE_NEWNET), 0);
        close(self_ns);
        close(target_ns);
        assert_true(lfd >= 0);
        assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        assert_int_equal(listen(lfd, 4), 0);
        assert_int_equal(getsockname(lfd, (struct sockaddr *)&sa, &slen), 0);
        port = ntohs(sa.sin_port);

        snprintf(ip, sizeof(ip), "10.214.%d.3", x);
        sa = sin_of(ip, port);
        c = socket(AF_INET, SOCK_STREAM, 0);
        assert_int_equal(connect(c, (struct sockaddr *)&sa, sizeof(sa)), 0);
        srv = accept(lfd, NULL, NULL);
        assert_true(srv >= 0);
        /* Point .3 at a MAC nobody has: the namespace drops the frames as not its own. (Taking the
         * link down instead would flush the neighbour entry and park the segment in its ARP queue:
         * the retransmit then fails with EBUSY, still queued in the host, and rightly is not counted.) */
        assert_int_equal(run("ip neigh replace %s lladdr 02:6e:78:ff:ff:01 dev %s nud permanent", ip, veth_host), 0);
        memset(data, 'x', sizeof(data));
        assert_int_equal(write(c, data, sizeof(data)), (ssize_t)sizeof(data));
        usleep(800 * 1000);
        assert_int_equal(lookup(h, ip, port, &st), 0);
        print_stats("frames dropped, data retransmits", port, &st);
        assert_true(st.connects_established >= 1);
        assert_true(st.data_retransmits >= 1);
        assert_int_equal(st.syn_retransmits, 0);
        abort_close(c);
        close(srv);
        close(lfd);
        assert_int_equal(lookup(h, ip, port, &st), 0);
        assert_int_equal(st.resets_sent, 1);
    }

    health_bpf_close(h);
    blackhole_down();
}

/* ---- (d') real traffic from another network namespace ---- */

static char scope_ns[32];       /* nxt-scope-<pid> while it exists */

static void scope_ns_down(void)
{
    if (scope_ns[0])
        run("ip netns del %s >/dev/null 2>&1 || true", scope_ns);
    scope_ns[0] = '\0';
}

/* In a child that joined network namespace <ns_path>: <n> blocking connects to 127.0.0.1:<port>.
 * Returns how many were refused (the child's exit status), or -1. No cmocka asserts in the child. */
static int refused_connects_in_netns(const char *ns_path, uint16_t port, int n)
{
    int status = 0;
    pid_t pid = fork();

    assert_true(pid >= 0);
    if (pid == 0) {
        struct sockaddr_in sa;
        int fd, i, refused = 0;

        fd = open(ns_path, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || setns(fd, CLONE_NEWNET) != 0)
            _exit(200);
        close(fd);
        memset(&sa, 0, sizeof(sa));
        sa.sin_family = AF_INET;
        sa.sin_port = htons(port);
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        for (i = 0; i < n; i++) {
            fd = socket(AF_INET, SOCK_STREAM, 0);
            if (fd < 0)
                _exit(201);
            if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == -1 && errno == ECONNREFUSED)
                refused++;
            close(fd);
        }
        _exit(refused);
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (!WIFEXITED(status))
        return -1;
    return WEXITSTATUS(status);
}

/* (d') Scoping with real traffic: a namespace of our own (loopback up) where a child process makes
 * EXACT_N refused connects to 127.0.0.1:<port>. The instance loaded for THIS namespace must not see
 * them (no entry for the port), while an instance loaded for that namespace (its inode number) counts
 * exactly them. Then the same connects here: the instance for this namespace counts exactly them,
 * the other one's counters do not move. */
static void test_netns_scoping_real(void **state)
{
    char dir_here[192], dir_there[192], path[96];
    struct health_bpf *here, *there;
    struct peer_stats st;
    struct stat nst, self;
    uint16_t port = unused_port();
    int i, refused;

    (void)state;
    snprintf(scope_ns, sizeof(scope_ns), "nxt-scope-%d", (int)getpid());
    run("ip netns del %s >/dev/null 2>&1 || true", scope_ns); /* leftover of a run killed hard */
    assert_int_equal(run("ip netns add %s", scope_ns), 0);
    assert_int_equal(run("ip -n %s link set lo up", scope_ns), 0);
    snprintf(path, sizeof(path), "/var/run/netns/%s", scope_ns);
    assert_int_equal(stat(path, &nst), 0);
    assert_int_equal(stat("/proc/self/ns/net", &self), 0);
    assert_int_not_equal(nst.st_ino, self.st_ino);

    pin_dir(dir_here, sizeof(dir_here), "scope-here");
    pin_dir(dir_there, sizeof(dir_there), "scope-there");
    here = open_on(dir_here, 0);
    there = open_on(dir_there, (unsigned long long)nst.st_ino);

    refused = refused_connects_in_netns(path, port, EXACT_N);
    fprintf(stderr, "  [netns real] %d of %d connects to 127.0.0.1:%u refused inside %s (ns inode %llu)\n",
            refused, EXACT_N, port, scope_ns, (unsigned long long)nst.st_ino);
    assert_int_equal(refused, EXACT_N);

    assert_int_equal(lookup(here, "127.0.0.1", port, &st), -ENOENT);
    assert_int_equal(lookup(there, "127.0.0.1", port, &st), 0);
    print_stats("instance for the other netns, after its traffic", port, &st);
    assert_int_equal(st.connect_attempts, EXACT_N);
    assert_int_equal(st.refused, EXACT_N);

    for (i = 0; i < EXACT_N; i++)
        connect_refused(port);
    assert_int_equal(lookup(here, "127.0.0.1", port, &st), 0);
    print_stats("instance for this netns, after this netns's traffic", port, &st);
    assert_int_equal(st.connect_attempts, EXACT_N);
    assert_int_equal(st.refused, EXACT_N);
    assert_int_equal(lookup(there, "127.0.0.1", port, &st), 0);
    assert_int_equal(st.connect_attempts, EXACT_N);
    assert_int_equal(st.refused, EXACT_N);

    health_bpf_close(here);
    health_bpf_close(there);
    scope_ns_down();
}

static uint32_t map_id(int fd, struct bpf_map_info *info)
{
    __u32 len = sizeof(*info);

    memset(info, 0, sizeof(*info));
    assert_int_equal(bpf_obj_get_info_by_fd(fd, info, &len), 0);
    return info->id;
}

/* Programs attached per pin dir: set_state, receive_reset, send_reset and one tcp_retransmit_skb variant. */
#define N_PROGS 4
static const char *const prog_names[N_PROGS - 1] = { "handle_set_state", "handle_receive_reset",
                                                      "handle_send_reset" };

/* Whether map <id> is fed by a program using map <used>: <used> is <id>, or a map of maps holding <id>
 * (a pod's map, registered in the node set's netns_maps). */
static int map_reaches(uint32_t used, uint32_t id)
{
    struct bpf_map_info mi;
    __u32 len = sizeof(mi), inner;
    __u64 key, *prev = NULL;
    int fd, found = 0;

    if (used == id)
        return 1;
    fd = bpf_map_get_fd_by_id(used);
    if (fd < 0)
        return 0;
    memset(&mi, 0, sizeof(mi));
    if (bpf_obj_get_info_by_fd(fd, &mi, &len) == 0 && mi.type == BPF_MAP_TYPE_HASH_OF_MAPS && mi.key_size == 8) {
        while (!found && bpf_map_get_next_key(fd, prev, &key) == 0) {
            found = bpf_map_lookup_elem(fd, &key, &inner) == 0 && inner == id;
            prev = &key;
        }
    }
    close(fd);
    return found;
}

/* How many BPF links in the whole system run a program that updates the map <id>, directly or through
 * the node set's map of namespaces: a pod's map must be fed by exactly one set (N_PROGS), whoever holds
 * it, and by none once no nextup has it open. */
static int links_feeding(uint32_t id)
{
    struct bpf_link_info li;
    struct bpf_prog_info pi;
    __u32 next = 0, ids[8], i, n, len;
    int fd, pfd, count = 0;

    while (bpf_link_get_next_id(next, &next) == 0) {
        fd = bpf_link_get_fd_by_id(next);
        if (fd < 0)
            continue;                   /* released meanwhile */
        memset(&li, 0, sizeof(li));
        len = sizeof(li);
        if (bpf_obj_get_info_by_fd(fd, &li, &len) == 0 && (pfd = bpf_prog_get_fd_by_id(li.prog_id)) >= 0) {
            memset(&pi, 0, sizeof(pi));
            pi.nr_map_ids = 8;
            pi.map_ids = (__u64)(unsigned long)ids;
            len = sizeof(pi);
            if (bpf_obj_get_info_by_fd(pfd, &pi, &len) == 0)
                for (i = 0, n = pi.nr_map_ids < 8 ? pi.nr_map_ids : 8; i < n; i++)
                    count += map_reaches(ids[i], id);
            close(pfd);
        }
        close(fd);
    }
    return count;
}

/* links_feeding(<id>) once it is <want>, or after 2 s: the last reference to a link, dropped by an
 * unlink, is released by a kernel worker a moment later. */
static int links_feeding_settled(uint32_t id, int want)
{
    int i, n = links_feeding(id);

    for (i = 0; i < 200 && n != want; i++) {
        usleep(10 * 1000);
        n = links_feeding(id);
    }
    return n;
}

/* The id of the BPF object pinned at <dir>/<name>, 0 when there is none. */
static uint32_t pinned_id(const char *dir, const char *name)
{
    char path[256];
    struct bpf_link_info info;      /* id is the second __u32 of link, map and prog info alike */
    __u32 len = sizeof(info);
    int fd;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    fd = bpf_obj_get(path);
    if (fd < 0)
        return 0;
    memset(&info, 0, sizeof(info));
    if (bpf_obj_get_info_by_fd(fd, &info, &len) != 0)
        info.id = 0;
    close(fd);
    return info.id;
}

/* The link pins in <dir>, sorted, as "link_a,link_b,..." in <out>; how many there are. */
static int link_pins(const char *dir, char *out, size_t len)
{
    struct dirent **names;
    int i, n, count = 0;
    size_t used = 0;

    out[0] = '\0';
    n = scandir(dir, &names, NULL, alphasort);
    for (i = 0; i < n; i++) {
        if (strncmp(names[i]->d_name, "link_", 5) == 0) {
            used += (size_t)snprintf(out + used, used < len ? len - used : 0, "%s%s", count ? "," : "",
                                     names[i]->d_name);
            count++;
        }
        free(names[i]);
    }
    if (n >= 0)
        free(names);
    return count;
}

/* (f) Close and reopen: the pinned map is reused (same map id, counters kept), and the pinned programs
 * counted while nothing had it open. A map of another layout pinned under the same name is replaced
 * with its programs (the old ones then feed nothing), and the new one counts exactly. So is one of
 * another size. */
static void test_pin_reuse(void **state)
{
    char dir[192], path[256];
    struct health_bpf *h;
    struct peer_stats st;
    struct bpf_map_info info;
    uint16_t port = unused_port();
    uint32_t id1, id2, bogus_id;
    unsigned long long refused;
    struct health_bpf_opts o;
    char err[256];
    int fd;

    (void)state;
    pin_dir(dir, sizeof(dir), "reuse");
    snprintf(path, sizeof(path), "%s/peer_stats", dir);

    h = open_on(dir, 0);
    id1 = map_id(health_bpf_map_fd(h), &info);
    connect_refused(port);
    assert_int_equal(lookup(h, "127.0.0.1", port, &st), 0);
    refused = st.refused;
    assert_true(refused >= 1);
    health_bpf_close(h);

    /* Between the two opens the map lives on in bpffs with its counters; with no nextup of this
     * namespace left, its entry is gone from the node's set: nothing counts into it. */
    fd = bpf_obj_get(path);
    assert_true(fd >= 0);
    assert_int_equal(map_id(fd, &info), id1);
    close(fd);
    assert_int_equal(links_feeding_settled(id1, 0), 0);
    connect_refused(port);

    h = open_on(dir, 0);
    id2 = map_id(health_bpf_map_fd(h), &info);
    assert_int_equal(id2, id1);
    assert_int_equal(lookup(h, "127.0.0.1", port, &st), 0);
    assert_int_equal(st.refused, refused);
    connect_refused(port);
    assert_int_equal(lookup(h, "127.0.0.1", port, &st), 0);
    assert_int_equal(st.refused, refused + 1);
    assert_int_equal(links_feeding(id1), N_PROGS);
    fprintf(stderr, "  [reuse] map id %u before and after restart, refused %llu -> %llu (none while closed)\n",
            id1, refused, (unsigned long long)st.refused);
    health_bpf_close(h);

    /* A pinned map from a build with another PEER_STATS_LAYOUT_VERSION: replaced, counters gone. */
    snprintf(path, sizeof(path), "%s/peer_stats_meta", dir);
    fd = bpf_obj_get(path);
    assert_true(fd >= 0);
    {
        struct peer_stats_meta meta;
        __u32 zero = 0;

        assert_int_equal(bpf_map_lookup_elem(fd, &zero, &meta), 0);
        assert_int_equal(meta.layout_version, PEER_STATS_LAYOUT_VERSION);
        meta.layout_version = PEER_STATS_LAYOUT_VERSION + 1;
        assert_int_equal(bpf_map_update_elem(fd, &zero, &meta, BPF_ANY), 0);
    }
    close(fd);
    snprintf(path, sizeof(path), "%s/peer_stats", dir);
    h = open_on(dir, 0);
    id2 = map_id(health_bpf_map_fd(h), &info);
    assert_int_not_equal(id2, id1);
    assert_int_equal(lookup(h, "127.0.0.1", port, &st), -ENOENT);
    assert_int_equal(links_feeding(id2), N_PROGS);
    assert_int_equal(links_feeding_settled(id1, 0), 0);
    health_bpf_close(h);

    /* Another layout under the same name: an array map, as an old or foreign program might leave. */
    assert_int_equal(unlink(path), 0);
    fd = bpf_map_create(BPF_MAP_TYPE_ARRAY, "peer_stats", 4, 8, 1, NULL);
    assert_true(fd >= 0);
    bogus_id = map_id(fd, &info);
    assert_int_equal(bpf_obj_pin(fd, path), 0);
    close(fd);

    h = open_on(dir, 0);
    assert_int_not_equal(map_id(health_bpf_map_fd(h), &info), bogus_id);
    assert_int_equal(info.type, BPF_MAP_TYPE_LRU_HASH);
    assert_int_equal(info.max_entries, 1024);
    fd = bpf_obj_get(path);
    assert_true(fd >= 0);
    assert_int_equal(map_id(fd, &info), map_id(health_bpf_map_fd(h), &info));
    close(fd);
    assert_int_equal(lookup(h, "127.0.0.1", port, &st), -ENOENT);
    connect_refused(port);
    assert_int_equal(lookup(h, "127.0.0.1", port, &st), 0);
    assert_int_equal(st.connect_attempts, 1);
    assert_int_equal(st.refused, 1);
    id1 = map_id(health_bpf_map_fd(h), &info);
    assert_int_equal(links_feeding(id1), N_PROGS);
    assert_int_equal(links_feeding_settled(id2, 0), 0);
    health_bpf_close(h);

    /* NEXTUP_BPF_MAX_PEERS changed: a map of the old size is replaced too. */
    memset(&o, 0, sizeof(o));
    o.node_dir = node_dir;
    o.mode = CONFIG_BPF_ON;
    o.pin_dir = dir;
    o.max_peers = 2048;
    assert_int_equal(health_bpf_open(&o, &h, err, sizeof(err)), 0);
    assert_int_not_equal(map_id(health_bpf_map_fd(h), &info), id1);
    assert_int_equal(info.max_entries, 2048);
    assert_int_equal(links_feeding(info.id), N_PROGS);
    assert_int_equal(links_feeding_settled(id1, 0), 0);
    health_bpf_close(h);
}

/* The node's set dir of this build: the one v* directory under node_dir (tests here run one build);
 * "" when there is none. */
static void set_dir_of(char *out, size_t len)
{
    struct dirent *de;
    DIR *d = opendir(node_dir);

    out[0] = '\0';
    while (d && (de = readdir(d)))
        if (de->d_name[0] == 'v')
            snprintf(out, len, "%s/%.40s", node_dir, de->d_name);
    if (d)
        closedir(d);
}

/* (f') One program set per node: its links are pinned in the node's set dir, none in the pod's pin dir.
 * A second open of the same pin dir while the first is still open (a hand-over) reuses the map and the
 * set: one set feeds the map, each event counts once. A second pod (another namespace, another pin dir)
 * shares the same links. When the last opener of a namespace closes, its entry goes (nothing counts
 * into its map, which stays pinned with its counters); when the last one on the node closes, the set
 * goes too (its links unpinned and detached). The next open brings both back, counters kept. */
static void test_links_shared_and_outlive(void **state)
{
    char dir[192], dir2[192], set[320], pins[256], pins2[256], path[400];
    struct health_bpf *h1, *h2, *other;
    struct peer_stats st;
    struct bpf_map_info info;
    struct stat sst;
    uint16_t port = unused_port();
    uint32_t map, link[N_PROGS - 1];
    int i;

    (void)state;
    pin_dir(dir, sizeof(dir), "shared");
    pin_dir(dir2, sizeof(dir2), "shared-other-pod");
    h1 = open_on(dir, 0);
    map = map_id(health_bpf_map_fd(h1), &info);
    set_dir_of(set, sizeof(set));
    assert_true(set[0]);
    assert_int_equal(link_pins(dir, pins, sizeof(pins)), 0);
    assert_int_equal(link_pins(set, pins, sizeof(pins)), N_PROGS);
    fprintf(stderr, "  [links] %s: %s; links feeding map %u: %d\n", set, pins, map, links_feeding(map));
    assert_int_equal(links_feeding(map), N_PROGS);
    for (i = 0; i < N_PROGS - 1; i++) {
        snprintf(path, sizeof(path), "link_%s", prog_names[i]);
        link[i] = pinned_id(set, path);
        assert_true(link[i] > 0);
    }

    h2 = open_on(dir, 0);
    other = open_on(dir2, 1);               /* another pod: its own map, the same programs */
    assert_int_equal(map_id(health_bpf_map_fd(h2), &info), map);
    assert_int_not_equal(map_id(health_bpf_map_fd(other), &info), map);
    assert_int_equal(link_pins(set, pins2, sizeof(pins2)), N_PROGS);
    assert_string_equal(pins2, pins);
    for (i = 0; i < N_PROGS - 1; i++) {
        snprintf(path, sizeof(path), "link_%s", prog_names[i]);
        assert_int_equal(pinned_id(set, path), link[i]);
    }
    assert_int_equal(links_feeding(map), N_PROGS);
    assert_int_equal(links_feeding(map_id(health_bpf_map_fd(other), &info)), N_PROGS);
    for (i = 0; i < EXACT_N; i++)
        connect_refused(port);
    assert_int_equal(lookup(h2, "127.0.0.1", port, &st), 0);
    print_stats("two opens of one pin dir, 5 refused connects", port, &st);
    assert_int_equal(st.connect_attempts, EXACT_N);
    assert_int_equal(st.refused, EXACT_N);
    assert_int_equal(lookup(other, "127.0.0.1", port, &st), -ENOENT);

    health_bpf_close(h1);                   /* h2 still runs in this namespace: the entry stays */
    assert_int_equal(links_feeding(map), N_PROGS);
    connect_refused(port);
    assert_int_equal(lookup(h2, "127.0.0.1", port, &st), 0);
    assert_int_equal(st.refused, EXACT_N + 1);
    health_bpf_close(h2);                   /* the last of this namespace: its entry goes */
    assert_int_equal(links_feeding_settled(map, 0), 0);
    assert_int_equal(pinned_id(set, "link_handle_set_state"), link[0]);     /* <other> still uses the set */
    connect_refused(port);
    health_bpf_close(other);                /* the last on the node: the set goes */
    assert_int_not_equal(stat(set, &sst), 0);

    h1 = open_on(dir, 0);
    assert_int_equal(map_id(health_bpf_map_fd(h1), &info), map);
    assert_int_equal(lookup(h1, "127.0.0.1", port, &st), 0);
    assert_int_equal(st.connect_attempts, EXACT_N + 1);     /* the one made while closed did not count */
    assert_int_equal(st.refused, EXACT_N + 1);
    connect_refused(port);
    assert_int_equal(lookup(h1, "127.0.0.1", port, &st), 0);
    assert_int_equal(st.refused, EXACT_N + 2);
    fprintf(stderr, "  [links] entry removed with the last opener, set removed with the last on the node; "
            "map %u kept with its counters (refused %llu)\n", map, (unsigned long long)st.refused);
    health_bpf_close(h1);
}

/* (f'') Pins made for another network namespace (here: inum 1) are never replaced: mode on fails with
 * -EBUSY and one line naming NEXTUP_BPF_PIN_DIR and both namespaces; auto gives NULL (a warning). Even
 * with another layout version in their meta and another size asked for, the map, the meta and the
 * links stay as they were, attached. */
static void test_foreign_netns_left_alone(void **state)
{
    char dir[192], err[512], want[512], path[256];
    struct health_bpf_opts o;
    struct health_bpf *h;
    struct peer_stats_meta meta;
    struct bpf_map_info info;
    struct stat self;
    uint32_t map, link;
    __u32 zero = 0;
    int rc, fd;

    (void)state;
    assert_int_equal(stat("/proc/self/ns/net", &self), 0);
    pin_dir(dir, sizeof(dir), "foreign");
    h = open_on(dir, 1);
    map = map_id(health_bpf_map_fd(h), &info);
    health_bpf_close(h);
    link = pinned_id(dir, "peer_stats_meta");
    assert_true(link > 0);

    memset(&o, 0, sizeof(o));
    o.node_dir = node_dir;
    o.mode = CONFIG_BPF_ON;
    o.pin_dir = dir;
    o.max_peers = 1024;
    h = (struct health_bpf *)&o;
    rc = health_bpf_open(&o, &h, err, sizeof(err));
    fprintf(stderr, "  [foreign] on: %d \"%s\"\n", rc, err);
    assert_int_equal(rc, -EBUSY);
    assert_null(h);
    snprintf(want, sizeof(want), "NEXTUP_BPF=on: NEXTUP_BPF_PIN_DIR=%s: pinned by network namespace 1, this one "
             "is %llu: give each pod its own pin directory", dir, (unsigned long long)self.st_ino);
    assert_non_null(strstr(err, want));
    assert_null(strchr(err, '\n'));

    o.mode = CONFIG_BPF_AUTO;
    h = (struct health_bpf *)&o;
    strcpy(err, "untouched");
    assert_int_equal(health_bpf_open(&o, &h, err, sizeof(err)), 0);
    assert_null(h);
    assert_string_equal(err, "");

    snprintf(path, sizeof(path), "%s/peer_stats_meta", dir);
    fd = bpf_obj_get(path);
    assert_true(fd >= 0);
    assert_int_equal(bpf_map_lookup_elem(fd, &zero, &meta), 0);
    meta.layout_version = PEER_STATS_LAYOUT_VERSION + 1;
    assert_int_equal(bpf_map_update_elem(fd, &zero, &meta, BPF_ANY), 0);
    o.mode = CONFIG_BPF_ON;
    o.max_peers = 2048;
    h = (struct health_bpf *)&o;
    assert_int_equal(health_bpf_open(&o, &h, err, sizeof(err)), -EBUSY);
    assert_null(h);

    assert_int_equal(pinned_id(dir, "peer_stats"), map);
    assert_int_equal(pinned_id(dir, "peer_stats_meta"), link);
    assert_int_equal(bpf_map_lookup_elem(fd, &zero, &meta), 0);
    assert_int_equal(meta.netns_inum, 1);
    close(fd);
    fprintf(stderr, "  [foreign] map %u and meta %u of netns 1 untouched\n", map, link);
}

/* Whether a BPF link with id <id> still exists anywhere. */
static int link_exists(uint32_t id)
{
    int fd = bpf_link_get_fd_by_id(id);

    if (fd < 0)
        return 0;
    close(fd);
    return 1;
}

/* (f''') A damaged set: its pinned links run other code (two link pins swapped, so each runs the other's
 * program) while a nextup still uses it. The next nextup replaces the set whole (a new map of namespaces,
 * new links) after emptying the old one, so the old programs count nothing; the running one moves to the
 * new set at its next sweep: exact counts, and the old links go once it let go of them. A set missing
 * one of its links (an interrupted start) is replaced the same way. */
static void test_build_mismatch_replaced(void **state)
{
    char dir[192], dir2[192], set[320], a[400], b[400], tmp[400];
    struct health_bpf *h, *h2;
    struct peer_stats st;
    struct bpf_map_info info;
    uint16_t port = unused_port();
    uint32_t map1, outer1, outer2, link1, link2;
    int i;

    (void)state;
    pin_dir(dir, sizeof(dir), "mismatch");
    pin_dir(dir2, sizeof(dir2), "mismatch-2");
    h = open_on(dir, 0);
    map1 = map_id(health_bpf_map_fd(h), &info);
    set_dir_of(set, sizeof(set));
    outer1 = pinned_id(set, "netns_maps");
    link1 = pinned_id(set, "link_handle_send_reset");
    snprintf(a, sizeof(a), "%s/link_handle_send_reset", set);
    snprintf(b, sizeof(b), "%s/link_handle_receive_reset", set);
    snprintf(tmp, sizeof(tmp), "%s/swap", set);
    assert_int_equal(rename(a, tmp), 0);
    assert_int_equal(rename(b, a), 0);
    assert_int_equal(rename(tmp, b), 0);

    h2 = open_on(dir2, 1);
    outer2 = pinned_id(set, "netns_maps");
    assert_int_not_equal(outer2, outer1);
    assert_int_not_equal(pinned_id(set, "link_handle_receive_reset"), link1);
    assert_int_equal(link_pins(set, tmp, sizeof(tmp)), N_PROGS);
    assert_int_equal(links_feeding(map1), 0);              /* the old set was emptied: no double count */
    assert_int_equal(links_feeding(map_id(health_bpf_map_fd(h2), &info)), N_PROGS);
    usleep((HEALTH_BPF_SWEEP_MS + 100) * 1000);
    assert_int_equal(health_bpf_sweep(h), 0);              /* follows the set, registers again */
    assert_int_equal(links_feeding_settled(map1, N_PROGS), N_PROGS);
    for (i = 0; i < 20 && link_exists(link1); i++)
        usleep(100 * 1000);
    assert_false(link_exists(link1));
    for (i = 0; i < EXACT_N; i++)
        connect_refused(port);
    assert_int_equal(lookup(h, "127.0.0.1", port, &st), 0);
    print_stats("a damaged set replaced, then 5 refused connects", port, &st);
    assert_int_equal(st.connect_attempts, EXACT_N);
    assert_int_equal(st.refused, EXACT_N);
    assert_int_equal(lookup(h2, "127.0.0.1", port, &st), -ENOENT);
    health_bpf_close(h2);

    link2 = pinned_id(set, "link_handle_send_reset");
    assert_int_equal(unlink(a), 0);
    h2 = open_on(dir2, 1);
    assert_int_not_equal(pinned_id(set, "netns_maps"), outer2);
    assert_int_equal(link_pins(set, tmp, sizeof(tmp)), N_PROGS);
    assert_int_not_equal(pinned_id(set, "link_handle_send_reset"), link2);
    fprintf(stderr, "  [mismatch] set maps %u -> %u (swapped links) -> %u (a link missing); the running opener "
            "followed, old links gone\n", outer1, outer2, pinned_id(set, "netns_maps"));
    health_bpf_close(h2);
    health_bpf_close(h);
}

/* (f'''') Two processes open one fresh pin dir at the same moment: both succeed, on the same map, fed
 * by one set of programs. To make them meet in the critical part (their loads take a varying time
 * before it), the test holds the pin dir's flock itself: neither may finish while it does, and once it
 * is released both come out of their wait for the lock at once. */
static void test_concurrent_open_one_set(void **state)
{
    char dir[192], name[32];
    int go[2], ids[2], hold[2], round, i, status, lock;
    struct pollfd pfd;
    uint32_t id[2];
    pid_t pid[2];

    (void)state;
    for (round = 0; round < 3; round++) {
        snprintf(name, sizeof(name), "race-%d", round);
        pin_dir(dir, sizeof(dir), name);
        assert_int_equal(mkdir(dir, 0700), 0);
        lock = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        assert_true(lock >= 0);
        assert_int_equal(flock(lock, LOCK_EX), 0);
        assert_int_equal(pipe(go), 0);
        assert_int_equal(pipe(ids), 0);
        assert_int_equal(pipe(hold), 0);
        for (i = 0; i < 2; i++) {
            pid[i] = fork();
            assert_true(pid[i] >= 0);
            if (pid[i] == 0) {
                /* No cmocka asserts in the child: it reports a map id, 0 for a failure. */
                struct health_bpf_opts o = { CONFIG_BPF_ON, dir, 1024, 0, node_dir };
                struct health_bpf *h = NULL;
                struct bpf_map_info info;
                __u32 len = sizeof(info);
                uint32_t mid = 0;
                char c, err[512] = "";

                close(lock);                    /* the parent's flock stays held: same open file */
                close(go[1]);
                close(ids[0]);
                close(hold[1]);
                if (read(go[0], &c, 1) != 0)
                    _exit(3);
                if (health_bpf_open(&o, &h, err, sizeof(err)) == 0 && h) {
                    memset(&info, 0, sizeof(info));
                    if (bpf_obj_get_info_by_fd(health_bpf_map_fd(h), &info, &len) == 0)
                        mid = info.id;
                } else {
                    fprintf(stderr, "  [race] child %d: %s\n", (int)getpid(), err);
                }
                if (write(ids[1], &mid, sizeof(mid)) != (ssize_t)sizeof(mid))
                    _exit(4);
                if (read(hold[0], &c, 1) < 0)   /* until the parent has looked */
                    _exit(5);
                health_bpf_close(h);
                _exit(0);
            }
        }
        close(go[0]);
        close(ids[1]);
        close(hold[0]);
        close(go[1]);                           /* both go, load, and wait for the lock */
        pfd.fd = ids[0];
        pfd.events = POLLIN;
        assert_int_equal(poll(&pfd, 1, 400), 0);
        /* The children closed their copies of <lock>: this drops the last reference, and the flock. */
        close(lock);
        for (i = 0; i < 2; i++)
            assert_int_equal(read(ids[0], &id[i], sizeof(id[i])), (ssize_t)sizeof(id[i]));
        fprintf(stderr, "  [race] round %d: nothing done while the test held the lock; then map ids %u and %u, "
                "links feeding it: %d\n", round, id[0], id[1], links_feeding(id[0]));
        assert_true(id[0] > 0);
        assert_int_equal(id[1], id[0]);
        assert_int_equal(links_feeding(id[0]), N_PROGS);
        close(hold[1]);
        close(ids[0]);
        for (i = 0; i < 2; i++) {
            assert_int_equal(waitpid(pid[i], &status, 0), pid[i]);
            assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        }
        /* Both gone: the namespace's entry (and the node's set) went with the last of them. */
        assert_int_equal(links_feeding_settled(id[0], 0), 0);
    }
}

/* Whether the netns_maps pinned in <set> has an entry for namespace <inum>. */
static int set_has(const char *set, unsigned long long inum)
{
    char path[400];
    __u32 v;
    __u64 key = inum;
    int fd, rc;

    snprintf(path, sizeof(path), "%s/netns_maps", set);
    fd = bpf_obj_get(path);
    if (fd < 0)
        return 0;
    rc = bpf_map_lookup_elem(fd, &key, &v) == 0;
    close(fd);
    return rc;
}

/* A child opens for namespace <inum> and dies without closing (SIGKILL, a crash): its entry stays. */
static void open_and_die(const char *dir, unsigned long long inum)
{
    int status;
    pid_t pid = fork();

    assert_true(pid >= 0);
    if (pid == 0) {
        struct health_bpf_opts o = { CONFIG_BPF_ON, dir, 1024, inum, node_dir };
        struct health_bpf *h = NULL;
        char err[512] = "";

        if (health_bpf_open(&o, &h, err, sizeof(err)) == 0 && h)
            _exit(0);
        fprintf(stderr, "  [sweep] child: %s\n", err);
        _exit(1);
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* (f'''''') The sweep: entries left by nextups that died without their exit go, at the next open and at
 * the periodic sweep (health_bpf_sweep, every HEALTH_BPF_SWEEP_MS), with their ns/ dirs; an entry whose
 * ns/ dir is held stays. Sets of other builds go once none of their namespaces has a nextup, and stay
 * while one has. */
static void test_sweep(void **state)
{
    char dir[192], dead[192], set[320], path[480], other[200], held[220];
    struct health_bpf *h;
    struct stat st;
    __u64 key = 9;
    __u32 inner = 0;
    int ofd, ifd, hfd;

    (void)state;
    pin_dir(dir, sizeof(dir), "sweep");
    pin_dir(dead, sizeof(dead), "sweep-dead");
    open_and_die(dead, 7);
    set_dir_of(set, sizeof(set));
    assert_true(set[0]);
    assert_true(set_has(set, 7));

    /* Another build's set, its one namespace held by a running nextup (here: this test's flock). */
    snprintf(other, sizeof(other), "%s/v0-00000000000000aa", node_dir);
    assert_int_equal(mkdir(other, 0700), 0);
    ifd = bpf_map_create(BPF_MAP_TYPE_LRU_HASH, "peer_stats", sizeof(struct peer_key), sizeof(struct peer_stats),
                         16, NULL);
    assert_true(ifd >= 0);
    {
        LIBBPF_OPTS(bpf_map_create_opts, mo, .inner_map_fd = ifd);
        ofd = bpf_map_create(BPF_MAP_TYPE_HASH_OF_MAPS, "netns_maps", 8, 4, 16, &mo);
    }
    assert_true(ofd >= 0);
    assert_int_equal(bpf_map_update_elem(ofd, &key, &ifd, BPF_ANY), 0);
    snprintf(path, sizeof(path), "%s/netns_maps", other);
    assert_int_equal(bpf_obj_pin(ofd, path), 0);
    snprintf(path, sizeof(path), "%s/ns", other);
    assert_int_equal(mkdir(path, 0700), 0);
    snprintf(held, sizeof(held), "%s/ns/9", other);
    assert_int_equal(mkdir(held, 0700), 0);
    hfd = open(held, O_RDONLY | O_DIRECTORY);
    assert_true(hfd >= 0);
    assert_int_equal(flock(hfd, LOCK_SH), 0);

    h = open_on(dir, 0);                     /* sweeps at start */
    assert_false(set_has(set, 7));
    snprintf(path, sizeof(path), "%s/ns/7", set);
    assert_int_not_equal(stat(path, &st), 0);
    assert_int_equal(stat(other, &st), 0);   /* held: kept */
    assert_int_equal(bpf_map_lookup_elem(ofd, &key, &inner), 0);

    pin_dir(dead, sizeof(dead), "sweep-dead-2");
    open_and_die(dead, 8);
    assert_true(set_has(set, 8));
    close(hfd);                              /* the other build's last nextup is gone */
    assert_int_equal(health_bpf_sweep(h), 0); /* not yet: at most every HEALTH_BPF_SWEEP_MS */
    assert_true(set_has(set, 8));
    usleep((HEALTH_BPF_SWEEP_MS + 100) * 1000);
    assert_int_equal(health_bpf_sweep(h), 1);
    assert_false(set_has(set, 8));
    assert_int_not_equal(stat(other, &st), 0);
    assert_int_not_equal(bpf_map_lookup_elem(ofd, &key, &inner), 0);
    fprintf(stderr, "  [sweep] entries of dead openers (inum 7 at open, 8 at the periodic sweep) removed; "
            "the other build's set kept while held, removed after\n");
    close(ofd);
    close(ifd);
    health_bpf_close(h);
}

/* (g) The pinned map carries BTF: bpftool prints named fields. */
static void test_bpftool_dump(void **state)
{
    char dir[192], cmd[320], line[256];
    static char out[1 << 16];
    struct health_bpf *h;
    uint16_t port = unused_port();
    size_t used = 0;
    FILE *p;
    int shown = 0;

    (void)state;
    pin_dir(dir, sizeof(dir), "dump");
    h = open_on(dir, 0);
    connect_refused(port);
    snprintf(cmd, sizeof(cmd), "bpftool map dump pinned %s/peer_stats 2>&1", dir);
    p = popen(cmd, "r");
    assert_non_null(p);
    while (fgets(line, sizeof(line), p)) {
        size_t n = strlen(line);

        if (used + n < sizeof(out)) {
            memcpy(out + used, line, n);
            used += n;
        }
    }
    out[used] = '\0';
    assert_int_equal(pclose(p), 0);
    fprintf(stderr, "  [bpftool] %s (first lines):\n", cmd);
    for (char *s = out, *e; *s && shown < 24; s = e + 1, shown++) {
        e = strchr(s, '\n');
        if (!e)
            break;
        fprintf(stderr, "    %.*s\n", (int)(e - s), s);
    }
    assert_non_null(strstr(out, "\"connect_attempts\""));
    assert_non_null(strstr(out, "\"refused\""));
    assert_non_null(strstr(out, "\"last_failure_ns\""));
    assert_non_null(strstr(out, "\"port\""));
    snprintf(line, sizeof(line), "\"port\": %u,", port);
    assert_non_null(strstr(out, line));
    health_bpf_close(h);
}

/* (h) off: nothing, no error. on with a pin dir outside bpffs: an error naming NEXTUP_BPF, and no
 * directory created. auto with the same: NULL, 0 (one warning). */
static void test_modes(void **state)
{
    struct health_bpf_opts o;
    struct health_bpf *h = (struct health_bpf *)&o;
    char err[256], dir[128];
    struct stat st;
    int rc;

    (void)state;
    memset(&o, 0, sizeof(o));
    o.node_dir = node_dir;
    o.mode = CONFIG_BPF_OFF;
    o.pin_dir = base_dir;
    strcpy(err, "untouched");
    assert_int_equal(health_bpf_open(&o, &h, err, sizeof(err)), 0);
    assert_null(h);
    assert_string_equal(err, "");

    snprintf(dir, sizeof(dir), "/tmp/nextup-test-bpf-%d/x", (int)getpid());
    o.mode = CONFIG_BPF_ON;
    o.pin_dir = dir;
    h = (struct health_bpf *)&o;
    rc = health_bpf_open(&o, &h, err, sizeof(err));
    fprintf(stderr, "  [modes] on, %s: %d \"%s\"\n", dir, rc, err);
    assert_true(rc < 0);
    assert_null(h);
    assert_non_null(strstr(err, "NEXTUP_BPF=on"));
    assert_non_null(strstr(err, "not on a bpffs mount"));
    assert_non_null(strstr(err, dir));
    assert_int_not_equal(stat(dir, &st), 0);

    o.mode = CONFIG_BPF_AUTO;
    h = (struct health_bpf *)&o;
    err[0] = '\0';
    assert_int_equal(health_bpf_open(&o, &h, err, sizeof(err)), 0);
    assert_null(h);
    assert_string_equal(err, "");

    assert_int_equal(health_bpf_map_fd(NULL), -EINVAL);
    health_bpf_close(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_modes),
        cmocka_unit_test(test_refused),
        cmocka_unit_test(test_refused_exact),
        cmocka_unit_test(test_refused_ipv6),
        cmocka_unit_test(test_established),
        cmocka_unit_test(test_reset),
        cmocka_unit_test(test_peer_fins),
        cmocka_unit_test(test_netns_scoping),
        cmocka_unit_test(test_netns_scoping_real),
        cmocka_unit_test(test_syn_timeout),
        cmocka_unit_test(test_pin_reuse),
        cmocka_unit_test(test_links_shared_and_outlive),
        cmocka_unit_test(test_foreign_netns_left_alone),
        cmocka_unit_test(test_build_mismatch_replaced),
        cmocka_unit_test(test_concurrent_open_one_set),
        cmocka_unit_test(test_sweep),
        cmocka_unit_test(test_bpftool_dump),
    };
    int rc;

    if (geteuid() != 0) {
        fprintf(stderr, "\n*** test_health_bpf SKIPPED: needs root (loads BPF programs, mounts bpffs, "
                        "creates network namespaces). Counted as a FAILURE. ***\n\n");
        return 1;
    }
    rc = cmocka_run_group_tests(tests, group_setup, group_teardown);
    blackhole_down();
    scope_ns_down();
    return rc;
}
