/* Unit tests for sidecar/health_bpf.c with the REAL programs of bpf/peer_stats.bpf.c: loads them,
 * makes TCP connections on loopback (refused, established, reset) and into a network namespace that
 * drops SYNs (SYN retransmits, timeouts), and reads the counters back. Also: netns scoping, pin reuse
 * across a restart, replacing a pin of another layout, bpftool's view of the pinned map, mode off/on.
 *
 * Needs root (BPF, bpffs, ip netns): without it the binary says SKIPPED on stderr and FAILS, so a
 * run without privileges is never mistaken for a pass. bpffs is mounted at /sys/fs/bpf if it is not
 * (and unmounted at the end only if this test mounted it and left it empty); every pin goes under
 * /sys/fs/bpf/nextup-test-<pid>, removed at the end. */
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
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <linux/magic.h>

#include <bpf/bpf.h>

#include "config.h"
#include "health_bpf.h"
#include "log.h"

#define BPFFS "/sys/fs/bpf"

static char base_dir[128];      /* /sys/fs/bpf/nextup-test-<pid> */
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
    struct health_bpf_opts o = { .mode = CONFIG_BPF_ON, .pin_dir = dir, .max_peers = 1024, .netns_inum = netns };
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
            "last_failure_ns=%llu last_success_ns=%llu\n",
            what, port, (unsigned long long)s->connect_attempts, (unsigned long long)s->connects_established,
            (unsigned long long)s->connect_failures, (unsigned long long)s->refused,
            (unsigned long long)s->connect_timeouts, (unsigned long long)s->unreachable,
            (unsigned long long)s->syn_retransmits, (unsigned long long)s->resets_received,
            (unsigned long long)s->resets_sent, (unsigned long long)s->data_retransmits,
            (unsigned long long)s->srtt_us, (unsigned long long)s->last_failure_ns,
            (unsigned long long)s->last_success_ns);
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

static uint32_t map_id(int fd, struct bpf_map_info *info)
{
    __u32 len = sizeof(*info);

    memset(info, 0, sizeof(*info));
    assert_int_equal(bpf_obj_get_info_by_fd(fd, info, &len), 0);
    return info->id;
}

/* (f) Close and reopen: the pinned map is reused (same map id, counters kept). A map of another
 * layout pinned under the same name is replaced, and the new one counts. So is one of another size. */
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

    /* Between the two opens nothing counts, but the map lives on in bpffs. */
    fd = bpf_obj_get(path);
    assert_true(fd >= 0);
    assert_int_equal(map_id(fd, &info), id1);
    close(fd);

    h = open_on(dir, 0);
    id2 = map_id(health_bpf_map_fd(h), &info);
    assert_int_equal(id2, id1);
    assert_int_equal(lookup(h, "127.0.0.1", port, &st), 0);
    assert_int_equal(st.refused, refused);
    connect_refused(port);
    assert_int_equal(lookup(h, "127.0.0.1", port, &st), 0);
    assert_int_equal(st.refused, refused + 1);
    fprintf(stderr, "  [reuse] map id %u before and after restart, refused %llu -> %llu\n", id1, refused,
            (unsigned long long)st.refused);
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
    assert_int_not_equal(map_id(health_bpf_map_fd(h), &info), id1);
    assert_int_equal(lookup(h, "127.0.0.1", port, &st), -ENOENT);
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
    assert_int_equal(st.refused, 1);
    id1 = map_id(health_bpf_map_fd(h), &info);
    health_bpf_close(h);

    /* NEXTUP_BPF_MAX_PEERS changed: a map of the old size is replaced too. */
    memset(&o, 0, sizeof(o));
    o.mode = CONFIG_BPF_ON;
    o.pin_dir = dir;
    o.max_peers = 2048;
    assert_int_equal(health_bpf_open(&o, &h, err, sizeof(err)), 0);
    assert_int_not_equal(map_id(health_bpf_map_fd(h), &info), id1);
    assert_int_equal(info.max_entries, 2048);
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
        cmocka_unit_test(test_refused_ipv6),
        cmocka_unit_test(test_established),
        cmocka_unit_test(test_reset),
        cmocka_unit_test(test_netns_scoping),
        cmocka_unit_test(test_syn_timeout),
        cmocka_unit_test(test_pin_reuse),
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
    return rc;
}
