#include "worker.h"

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/listener.h>

#include "accesslog.h"
#include "config.h"
#include "downstream.h"
#include "evmem.h"
#include "http1.h"
#include "log.h"
#include "metrics.h"
#include "net.h"
#include "peers.h"
#include "proxy.h"
#include "rng.h"
#include "service.h"
#include "upstream.h"

/* After this many connections closed since the most open, what malloc holds for
 * them goes back to the system (glibc keeps freed memory in its arenas otherwise). */
#define TRIM_AFTER_CLOSES 256

static struct worker *workers;
static int n_workers;            /* workers allocated (a failed start may leave some half made) */
static int n_threads;            /* of them, threads started */
static _Atomic int live_connections;
static _Atomic int loops_done;
/* Shared by the workers: a process out of descriptors says so once a second, not once per worker. */
static struct net_accept_log accept_log;

int workers_live_connections(void)
{
    return atomic_load(&live_connections);
}

int workers_all_done(void)
{
    return atomic_load(&loops_done) == n_workers;
}

static void reject_connection(int fd)
{
    static const char resp[] = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                               "Content-Length: 48\r\nConnection: close\r\n\r\n"
                               "nextup: too many connections (NEXTUP_MAX_CONNECTIONS)\n";
    /* Best effort on a fresh socket: the kernel buffer takes it whole or the client is gone. */
    ssize_t n = write(fd, resp, sizeof(resp) - 1);
    (void)n;
    close(fd);
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg)
{
    struct worker *w = arg;

    (void)l;
    if (atomic_fetch_add(&live_connections, 1) >= w->ctx.cfg->max_connections) {
        atomic_fetch_sub(&live_connections, 1);
        metrics_inc(M_DOWNSTREAM_REJECTED);
        LOG_WARN("refusing a connection: NEXTUP_MAX_CONNECTIONS=%d reached", w->ctx.cfg->max_connections);
        reject_connection(fd);
        return;
    }
    metrics_inc(M_DOWNSTREAM_CONNECTIONS);
    if (proxy_accept(&w->ctx, fd, sa, (socklen_t)salen) < 0) {
        atomic_fetch_sub(&live_connections, 1);
        LOG_ERROR("out of memory accepting a connection");
        close(fd);
        return;
    }
    if (++w->n_conns > w->n_conns_peak)
        w->n_conns_peak = w->n_conns;
}

/* libevent calls this instead of printing its own warning, with errno still from accept(). */
static void accept_error_cb(struct evconnlistener *l, void *arg)
{
    struct worker *w = arg;
    int err = EVUTIL_SOCKET_ERROR();
    struct timeval tv = { 0, ACCEPT_PAUSE_MS * 1000 };
    int pause = net_accept_must_pause(err);
    char who[32], then[80];

    metrics_inc(M_DOWNSTREAM_ACCEPT_ERRORS);
    /* The connection stays in the backlog and the listener readable: asking again at once would spin. */
    if (pause) {
        evconnlistener_disable(l);
        w->accept_paused = 1;
        evtimer_add(w->accept_resume_ev, &tv);
    }
    snprintf(who, sizeof(who), "worker %d", w->id);
    snprintf(then, sizeof(then), "not accepting for %d ms or until a connection closes", ACCEPT_PAUSE_MS);
    net_accept_log(&accept_log, err, who, pause ? then : NULL);
}

static void accept_resume(struct worker *w)
{
    if (!w->accept_paused)
        return;
    w->accept_paused = 0;
    evtimer_del(w->accept_resume_ev);
    /* NULL once draining (drain_cb freed it) or stopping. */
    if (w->listener)
        evconnlistener_enable(w->listener);
}

static void accept_resume_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    accept_resume(arg);
}

/* A client connection closed (its descriptor freed): counts, an accept pause
 * ended, a drained loop ended. */
static void connection_closed(void *arg)
{
    struct worker *w = arg;

    w->n_conns--;
    atomic_fetch_sub(&live_connections, 1);
    /* A descriptor was just freed: no need to wait out the pause. */
    accept_resume(w);
    if (w->ctx.draining && w->n_conns == 0)
        event_base_loopexit(w->ctx.base, NULL);
}

static void drain_cb(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    struct downstream *ds, *next;

    (void)fd;
    (void)what;
    if (w->ctx.draining)
        return;
    w->ctx.draining = 1;
    if (w->listener) {
        evconnlistener_free(w->listener);
        w->listener = NULL;
    }
    accept_resume(w);
    for (int i = 0; i < w->ctx.services->n; i++)
        upstream_pool_close_idle(w->ctx.pools[i]);
    for (ds = w->ctx.conns; ds; ds = next) {
        next = downstream_next(ds);
        downstream_drain(ds);
    }
    if (w->n_conns == 0)
        event_base_loopexit(w->ctx.base, NULL);
}

static void sweep_cb(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;

    (void)fd;
    (void)what;
    proxy_trim(&w->ctx);
    for (int i = 0; i < w->ctx.services->n; i++)
        upstream_pool_close_inactive(w->ctx.pools[i]);
    if (w->n_conns_peak - w->n_conns >= TRIM_AFTER_CLOSES) {
        w->n_conns_peak = w->n_conns;
        evmem_trim();
        http_head_free_spares();
        malloc_trim(0);
    }
}

/* libevent keeps one small entry per fd number a loop ever watched, made on first
 * use and never freed. Made as connections come, they sit among the connections'
 * memory and pin its pages after the connections close: a burst's RSS would stay
 * for good. Made here, before any connection, for the fd numbers the process can
 * have (up to PREWARM_FDS), they sit together. */
#define PREWARM_FDS 4096

static void noop_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
}

static void prewarm_fd_map(struct event_base *base)
{
    struct rlimit rl;
    int upto = PREWARM_FDS, probe, fd;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)upto)
        upto = (int)rl.rlim_cur;
    probe = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (probe < 0)
        return;
    for (fd = probe + 1; fd < upto; fd++) {
        struct event *ev;
        if (fcntl(fd, F_GETFD) != -1 || errno != EBADF)
            continue;   /* open already: its entry is made when it is used */
        if (dup2(probe, fd) < 0)
            break;
        ev = event_new(base, fd, EV_READ, noop_cb, NULL);
        if (ev) {
            event_add(ev, NULL);
            event_del(ev);
            event_free(ev);
        }
        close(fd);
    }
    close(probe);
}

/* A worker's loop has no lock (libevent's locks cost a mutex pair per event
 * change, several per request): other threads reach it only through its
 * eventfd, with what they want in <w->wake_want>. */
static struct event_base *loop_base_new(void)
{
    struct event_config *ec = event_config_new();
    struct event_base *base;

    if (!ec)
        return NULL;
    event_config_set_flag(ec, EVENT_BASE_FLAG_NOLOCK);
    base = event_base_new_with_config(ec);
    event_config_free(ec);
    return base;
}

/* From another thread: asks <w>'s loop to drain or to stop. */
static void wake(struct worker *w, int what)
{
    uint64_t one = 1;
    ssize_t n;

    atomic_fetch_or(&w->wake_want, what);
    if (w->wake_fd >= 0)
        n = write(w->wake_fd, &one, sizeof(one));
    (void)n;
}

static void wake_cb(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    uint64_t count;
    ssize_t n = read(fd, &count, sizeof(count));
    int want = atomic_exchange(&w->wake_want, 0);

    (void)n;
    (void)what;
    if (want & WAKE_STOP) {
        event_base_loopexit(w->ctx.base, NULL);
        return;
    }
    if (want & WAKE_DRAIN)
        drain_cb(-1, 0, w);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;

    event_base_loop(w->ctx.base, EVLOOP_NO_EXIT_ON_EMPTY);
    atomic_fetch_add(&loops_done, 1);
    return NULL;
}

int workers_start(const struct config *cfg, const struct services *services, char *err, size_t errlen)
{
    struct timeval sweep_tv = { 1, 0 };
    int i;

    workers = calloc((size_t)cfg->workers, sizeof(*workers));
    if (!workers) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    n_workers = cfg->workers;
    for (i = 0; i < n_workers; i++)
        workers[i].wake_fd = -1;
    for (i = 0; i < n_workers; i++) {
        struct worker *w = &workers[i];
        int fd;

        w->id = i;
        w->ctx.cfg = cfg;
        w->ctx.services = services;
        w->ctx.peers = services->svc[0].peers;
        w->ctx.rng = rng_seed();
        w->ctx.on_conn_closed = connection_closed;
        w->ctx.on_conn_closed_arg = w;
        w->ctx.base = loop_base_new();
        /* Two priorities: pooled upstream connections' events (0) run before the
         * rest (1) of a loop turn; see conn_set_priority(). */
        if (!w->ctx.base || event_base_priority_init(w->ctx.base, 2) < 0) {
            snprintf(err, errlen, "cannot create an event loop");
            return -ENOMEM;
        }
        prewarm_fd_map(w->ctx.base);
        fd = net_listen((const struct sockaddr *)&cfg->listen.sa, cfg->listen.salen, 1);
        if (fd < 0) {
            snprintf(err, errlen, "NEXTUP_LISTEN=\"%s\": cannot listen: %s", cfg->listen.text, strerror(-fd));
            return fd;
        }
        w->listener = evconnlistener_new(w->ctx.base, accept_cb, w, LEV_OPT_CLOSE_ON_FREE, -1, fd);
        if (w->listener)
            evconnlistener_set_error_cb(w->listener, accept_error_cb);
        w->accept_resume_ev = evtimer_new(w->ctx.base, accept_resume_cb, w);
        w->ctx.pools = calloc((size_t)services->n, sizeof(*w->ctx.pools));
        for (int k = 0; w->ctx.pools && k < services->n; k++)
            if (!(w->ctx.pools[k] = upstream_pool_new(w->ctx.base, PEERS_MAX, cfg->pool_max_idle, cfg->connect_timeout_ms,
                                                  cfg->idle_timeout_ms))) {
                snprintf(err, errlen, "out of memory");
                return -ENOMEM;
            }
        w->ctx.pool = w->ctx.pools ? w->ctx.pools[0] : NULL;
        w->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        w->drain_ev = w->wake_fd >= 0 ? event_new(w->ctx.base, w->wake_fd, EV_READ | EV_PERSIST, wake_cb, w) : NULL;
        w->ctx.alog = access_log_new(w->ctx.base, cfg->access_log);
        w->sweep_ev = event_new(w->ctx.base, -1, EV_PERSIST, sweep_cb, w);
        if (!w->listener || !w->accept_resume_ev || !w->ctx.pool || !w->drain_ev || !w->ctx.alog || !w->sweep_ev ||
            event_add(w->sweep_ev, &sweep_tv) < 0 || event_add(w->drain_ev, NULL) < 0) {
            snprintf(err, errlen, "out of memory");
            return -ENOMEM;
        }
    }
    for (i = 0; i < n_workers; i++) {
        int r = pthread_create(&workers[i].thread, NULL, worker_main, &workers[i]);
        if (r) {
            snprintf(err, errlen, "cannot start worker thread: %s", strerror(r));
            return -r;
        }
        n_threads++;
    }
    return 0;
}

void workers_drain(void)
{
    int i;

    for (i = 0; i < n_workers; i++)
        wake(&workers[i], WAKE_DRAIN);
}

void workers_stop(void)
{
    int i;

    for (i = 0; i < n_threads; i++)
        wake(&workers[i], WAKE_STOP);
    for (i = 0; i < n_threads; i++)
        pthread_join(workers[i].thread, NULL);
    for (i = 0; i < n_workers; i++) {
        struct worker *w = &workers[i];
        if (w->listener) {
            evconnlistener_free(w->listener);
            w->listener = NULL;
        }
        /* Connections still open at the drain deadline are closed here; they may end
         * an accept pause, so the timer goes after them. */
        proxy_free_all(&w->ctx);
        if (w->accept_resume_ev)
            event_free(w->accept_resume_ev);
        for (int k = 0; w->ctx.pools && k < w->ctx.services->n; k++)
            upstream_pool_free(w->ctx.pools[k]);
        free(w->ctx.pools);
        access_log_free(w->ctx.alog);
        if (w->drain_ev)
            event_free(w->drain_ev);
        if (w->wake_fd >= 0)
            close(w->wake_fd);
        if (w->sweep_ev)
            event_free(w->sweep_ev);
        if (w->ctx.base)
            event_base_free(w->ctx.base);
    }
    free(workers);
    workers = NULL;
    n_workers = n_threads = 0;
}
