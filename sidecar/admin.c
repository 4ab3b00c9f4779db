#include "admin.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>

#include "clock.h"
#include "config.h"
#include "health.h"
#include "log.h"
#include "metrics.h"
#include "net.h"
#include "peers.h"
#include "service.h"
#include "worker.h"

/* The manifests bind the admin listener beyond loopback (the kubelet probes the pod IP),
 * under a 128 MiB limit: whoever reaches the pod may talk to it. No endpoint takes a body,
 * a probe's head is a few hundred bytes, and a probe or a scrape holds one connection for
 * a moment. evhttp's defaults are unlimited heads and bodies, and an idle timeout that
 * every byte restarts. */
#define ADMIN_MAX_HEAD_BYTES 8192
#define ADMIN_MAX_BODY_BYTES 0
#define ADMIN_MAX_CONNECTIONS 64
#define ADMIN_TIMEOUT_S 10           /* idle limit, and the time a whole request may take */
#define ADMIN_REFUSED_LOG_S 10
#define ADMIN_ACCEPT_PAUSE_MS 100

/* One connection evhttp accepted. libevent 2.1 has no connection cap and no hook at
 * accept but evhttp_set_bevcb, which runs before the connection exists; its close callback
 * (evhttp_connection_set_closecb), run once when evhttp frees an incoming connection
 * however it ended, needs the connection. evhttp passes its connection as the callback
 * argument of the bufferevent it was given (http.c), so the bufferevent made here leads
 * to it, once, on the same turn of the loop. */
struct admin_conn {
    struct bufferevent *bev;        /* owned by evhttp; one extra reference until registered */
    struct event *timer;            /* owned: registration (at once), then the request deadline */
    int registered;                 /* the close callback is set and the extra reference dropped */
    int refused;                    /* over the cap: shut down at once, not counted */
    struct admin_conn *prev, *next; /* in <conns> */
};

static struct evhttp *http;
static const struct services *known_services;
static struct health *health;
static int draining;
static int debug_any;
static struct admin_conn *conns;
static int n_conns;                 /* entries of <conns> not refused */
static uint64_t refused_total;
static uint64_t refused_unlogged;
static struct timespec refused_logged;
static struct evconnlistener *listener;     /* evhttp's: freed by evhttp_free */
static struct event *accept_resume_ev;      /* owned: ends an accept pause */
static struct net_accept_log accept_log;

void admin_set_draining(void)
{
    draining = 1;
}

static void conn_forget(struct admin_conn *ac)
{
    if (ac->prev)
        ac->prev->next = ac->next;
    else
        conns = ac->next;
    if (ac->next)
        ac->next->prev = ac->prev;
    if (!ac->refused)
        n_conns--;
    event_free(ac->timer);
    free(ac);
}

/* evhttp is freeing the connection (its last act on it). */
static void conn_closed_cb(struct evhttp_connection *evcon, void *arg)
{
    (void)evcon;
    conn_forget(arg);
}

/* Shutting the socket down makes evhttp read EOF (or fail its write) and free the
 * connection from its own callback; it is never freed from here. */
static void conn_shutdown(struct admin_conn *ac)
{
    evutil_socket_t fd = bufferevent_getfd(ac->bev);

    if (fd >= 0)
        shutdown(fd, SHUT_RDWR);
}

/* <evcon> is NULL when evhttp already let the connection go (it could not set it up). */
static void conn_register(struct admin_conn *ac, struct evhttp_connection *evcon)
{
    struct timeval tv = { ADMIN_TIMEOUT_S, 0 };

    ac->registered = 1;
    if (evcon)
        evhttp_connection_set_closecb(evcon, conn_closed_cb, ac);
    bufferevent_decref(ac->bev);
    if (!evcon) {
        conn_forget(ac);
        return;
    }
    if (ac->refused)
        conn_shutdown(ac);
    else
        evtimer_add(ac->timer, &tv);
}

static void conn_timer_cb(evutil_socket_t unused, short what, void *arg)
{
    struct admin_conn *ac = arg;
    void *cbarg = NULL;

    (void)unused;
    (void)what;
    if (ac->registered) {
        conn_shutdown(ac);  /* the deadline */
        return;
    }
    /* NULL callbacks: evhttp freed the bufferevent already (our reference kept it). */
    bufferevent_getcb(ac->bev, NULL, NULL, NULL, &cbarg);
    conn_register(ac, cbarg);
}

static void note_refused(void)
{
    struct timespec now;

    refused_total++;
    refused_unlogged++;
    clock_gettime(CLOCK_MONOTONIC, &now);
    /* A crowd of connections must not become a crowd of log lines. */
    if (refused_logged.tv_sec && now.tv_sec - refused_logged.tv_sec < ADMIN_REFUSED_LOG_S)
        return;
    LOG_WARN("admin: %d connections open, the most allowed; closed %llu new one(s) at once (this line at most "
             "every %d s)", n_conns, (unsigned long long)refused_unlogged, ADMIN_REFUSED_LOG_S);
    refused_unlogged = 0;
    refused_logged = now;
}

/* evhttp's bevcb, once per accepted connection, before it has an fd. NULL (allocation
 * failure) makes evhttp use a bufferevent of its own: that one connection goes uncounted. */
static struct bufferevent *conn_bev_cb(struct event_base *base, void *arg)
{
    struct admin_conn *ac = calloc(1, sizeof(*ac));

    (void)arg;
    if (!ac)
        return NULL;
    ac->timer = evtimer_new(base, conn_timer_cb, ac);
    /* CLOSE_ON_FREE: the fd is closed when the bufferevent is finalized, after its events. */
    ac->bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (!ac->timer || !ac->bev) {
        if (ac->bev)
            bufferevent_free(ac->bev);
        if (ac->timer)
            event_free(ac->timer);
        free(ac);
        return NULL;
    }
    ac->refused = n_conns >= ADMIN_MAX_CONNECTIONS;
    if (ac->refused)
        note_refused();
    else
        n_conns++;
    bufferevent_incref(ac->bev);
    /* Active now: it runs on this turn of the loop, before any byte of this connection is read. */
    event_active(ac->timer, EV_TIMEOUT, 0);
    ac->next = conns;
    if (conns)
        conns->prev = ac;
    conns = ac;
    return ac->bev;
}

static struct admin_conn *conn_of(struct evhttp_request *req)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    struct bufferevent *bev = evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;

    for (struct admin_conn *ac = conns; ac; ac = ac->next)
        if (ac->bev == bev)
            return ac;
    return NULL;
}

/* 127.0.0.0/8, ::1 and ::ffff:127.0.0.0/104, from the socket itself. */
static int from_loopback(struct evhttp_request *req)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    struct bufferevent *bev = evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);

    if (!bev || getpeername(bufferevent_getfd(bev), (struct sockaddr *)&ss, &len) < 0)
        return 0;
    if (ss.ss_family == AF_INET)
        return (ntohl(((struct sockaddr_in *)&ss)->sin_addr.s_addr) >> 24) == 127;
    if (ss.ss_family == AF_INET6) {
        const struct in6_addr *a = &((struct sockaddr_in6 *)&ss)->sin6_addr;
        return IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
    }
    return 0;
}

static void reply(struct evhttp_request *req, int code, const char *reason, const char *ctype, struct evbuffer *body)
{
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", ctype);
    evhttp_send_reply(req, code, reason, body);
}

static void write_admin_metrics(struct evbuffer *out)
{
    evbuffer_add_printf(out, "# HELP nextup_admin_connections Open connections to the admin listener (at most %d).\n"
                             "# TYPE nextup_admin_connections gauge\n"
                             "nextup_admin_connections %d\n"
                             "# HELP nextup_admin_connections_refused_total Admin connections closed at once "
                             "because %d were open.\n"
                             "# TYPE nextup_admin_connections_refused_total counter\n"
                             "nextup_admin_connections_refused_total %llu\n",
                        ADMIN_MAX_CONNECTIONS, n_conns, ADMIN_MAX_CONNECTIONS, (unsigned long long)refused_total);
}

/* GET /logging: the level now. POST /logging?level=debug|info|warn|error: sets it (every
 * worker, from its next line on) and answers with it. The query is the only input: a POST
 * has no body here (evhttp answers 413 to one). */
static void logging_endpoint(struct evhttp_request *req, const char *query, struct evbuffer *body)
{
    enum log_level old = log_get_level(), level;
    const char *v;
    size_t vlen;

    if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
        evbuffer_add_printf(body, "level=%s\n", log_level_name(old));
        reply(req, 200, "OK", "text/plain", body);
        return;
    }
    v = query[0] == '?' && strncmp(query + 1, "level=", 6) == 0 ? query + 7 : NULL;
    vlen = v ? strcspn(v, "&") : 0;
    if (!v || v[vlen] != '\0' || log_level_parse(v, vlen, &level) < 0) {
        evbuffer_add_printf(body, "bad request: expected POST /logging?level=debug, info, warn or error\n");
        reply(req, 400, "Bad Request", "text/plain", body);
        return;
    }
    log_set_level(level);
    /* At warn so that the change shows in the log unless the new level is error. */
    LOG_WARN("admin: log level %s (was %s), set through POST /logging", log_level_name(level), log_level_name(old));
    evbuffer_add_printf(body, "level=%s\n", log_level_name(level));
    reply(req, 200, "OK", "text/plain", body);
}

/* 200 when every service has a usable peer; else 503 and one line per service without one. */
static void readyz_upstreams(struct evhttp_request *req, struct evbuffer *body)
{
    int64_t now = clock_mono_ms();
    int missing = 0;

    if (draining) {
        evbuffer_add_printf(body, "draining\n");
        reply(req, 503, "Service Unavailable", "text/plain", body);
        return;
    }
    for (int i = 0; known_services && i < known_services->n; i++) {
        const struct service *svc = &known_services->svc[i];
        int active = peers_active_count(svc->peers);
        if (peers_usable_count(svc->peers, now) > 0)
            continue;
        missing++;
        if (active == 0)
            evbuffer_add_printf(body, "service %s: no peer known (%s)\n", svc->name, svc->cfg->upstreams_var);
        else
            evbuffer_add_printf(body, "service %s: none of its %d peer(s) usable (down or draining)\n", svc->name,
                                active);
    }
    if (missing) {
        reply(req, 503, "Service Unavailable", "text/plain", body);
        return;
    }
    evbuffer_add_printf(body, "ready: every service has a usable peer\n");
    reply(req, 200, "OK", "text/plain", body);
}

static void admin_cb(struct evhttp_request *req, void *arg)
{
    const char *uri = evhttp_request_get_uri(req);
    struct admin_conn *ac = conn_of(req);
    struct evbuffer *body;
    size_t plen;
    int is_logging;

    (void)arg;
    if (ac && ac->refused) {
        /* Its request was read before the timer closed it (evhttp_send_error closes after). */
        evhttp_send_error(req, 503, "too many admin connections");
        return;
    }
    if (ac) {
        /* The next request on this connection has the full time again. */
        struct timeval tv = { ADMIN_TIMEOUT_S, 0 };
        if (!ac->registered)
            conn_register(ac, evhttp_request_get_connection(req));
        evtimer_add(ac->timer, &tv);
    }
    body = evbuffer_new();
    if (!body) {
        evhttp_send_error(req, 503, "out of memory");
        return;
    }
    plen = strcspn(uri, "?");
    is_logging = plen == 8 && strncmp(uri, "/logging", 8) == 0;
    if (((plen >= 6 && strncmp(uri, "/debug", 6) == 0 && (plen == 6 || uri[6] == '/')) || is_logging) &&
        !debug_any && !from_loopback(req)) {
        evbuffer_add_printf(body, "forbidden: %s answers only clients on loopback "
                                  "(NEXTUP_ADMIN_DEBUG_FROM=any opens it to every client)\n",
                            is_logging ? "/logging" : "/debug/*");
        reply(req, 403, "Forbidden", "text/plain", body);
    } else if (evhttp_request_get_command(req) == EVHTTP_REQ_POST && !is_logging) {
        /* POST is let through evhttp for /logging alone. */
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
        evbuffer_add_printf(body, "method not allowed: only /logging takes POST\n");
        reply(req, 405, "Method Not Allowed", "text/plain", body);
    } else if (is_logging) {
        logging_endpoint(req, uri + plen, body);
    } else if (plen == 8 && strncmp(uri, "/healthz", 8) == 0) {
        evbuffer_add_printf(body, "ok\n");
        reply(req, 200, "OK", "text/plain", body);
    } else if (plen == 7 && strncmp(uri, "/readyz", 7) == 0) {
        /* nextup's own readiness: Kubernetes folds a sidecar's into the pod's, so one service's
         * outage must not take the application out of its own Service. */
        if (draining) {
            evbuffer_add_printf(body, "draining\n");
            reply(req, 503, "Service Unavailable", "text/plain", body);
        } else {
            evbuffer_add_printf(body, "ready\n");
            reply(req, 200, "OK", "text/plain", body);
        }
    } else if (plen == 17 && strncmp(uri, "/readyz/upstreams", 17) == 0) {
        readyz_upstreams(req, body);
    } else if (plen == 8 && strncmp(uri, "/metrics", 8) == 0) {
        metrics_write_prometheus(body);
        metrics_write_process(body, workers_live_connections());
        if (known_services)
            metrics_write_services(body, known_services);
        write_admin_metrics(body);
        if (health)
            health_write_metrics(health, body);
        reply(req, 200, "OK", "text/plain; version=0.0.4", body);
    } else if (plen == 12 && strncmp(uri, "/debug/peers", 12) == 0 && health) {
        health_write_debug_json(health, body);
        reply(req, 200, "OK", "application/json", body);
    } else {
        evbuffer_add_printf(body, "not found: try /healthz, /readyz, /readyz/upstreams, /metrics, /logging or "
                                  "/debug/peers\n");
        reply(req, 404, "Not Found", "text/plain", body);
    }
    evbuffer_free(body);
}

/* evhttp's listener calls this instead of printing libevent's warning, errno still from
 * accept(). Out of descriptors, the connection stays in the backlog and the level-triggered
 * listener readable: asking again at once would spin the main thread. Nothing here learns
 * when a worker frees a descriptor, so the pause ends on the timer only. */
static void accept_error_cb(struct evconnlistener *l, void *arg)
{
    int err = EVUTIL_SOCKET_ERROR();
    struct timeval tv = { 0, ADMIN_ACCEPT_PAUSE_MS * 1000 };
    char then[48];
    int pause = net_accept_must_pause(err);

    (void)arg;  /* evhttp's, not ours */
    if (pause) {
        evconnlistener_disable(l);
        evtimer_add(accept_resume_ev, &tv);
    }
    snprintf(then, sizeof(then), "not accepting for %d ms", ADMIN_ACCEPT_PAUSE_MS);
    net_accept_log(&accept_log, err, "admin", pause ? then : NULL);
}

static void accept_resume_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    if (listener)
        evconnlistener_enable(listener);
}

int admin_start(struct event_base *base, const struct config *cfg, const struct services *svcs, struct health *h,
                char *err, size_t errlen)
{
    struct evhttp_bound_socket *bound;
    int fd;

    known_services = svcs;
    health = h;
    debug_any = cfg->admin_debug_any;
    http = evhttp_new(base);
    accept_resume_ev = evtimer_new(base, accept_resume_cb, NULL);
    if (!http || !accept_resume_ev) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    fd = net_listen((const struct sockaddr *)&cfg->admin.sa, cfg->admin.salen, 0);
    if (fd < 0) {
        snprintf(err, errlen, "NEXTUP_ADMIN=\"%s\": cannot listen: %s", cfg->admin.text, strerror(-fd));
        return fd;
    }
    bound = evhttp_accept_socket_with_handle(http, fd);
    if (!bound) {
        snprintf(err, errlen, "NEXTUP_ADMIN=\"%s\": cannot accept", cfg->admin.text);
        return -EINVAL;
    }
    listener = evhttp_bound_socket_get_listener(bound);
    evconnlistener_set_error_cb(listener, accept_error_cb);
    evhttp_set_gencb(http, admin_cb, NULL);
    evhttp_set_bevcb(http, conn_bev_cb, NULL);
    /* Over these evhttp answers by itself: 400 for a longer head, 413 for any body (read
     * no further: evhttp stops reading and closes), 501 for another method. POST is for
     * /logging only (405 elsewhere); it needs no body either. */
    evhttp_set_max_headers_size(http, ADMIN_MAX_HEAD_BYTES);
    evhttp_set_max_body_size(http, ADMIN_MAX_BODY_BYTES);
    evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST);
    evhttp_set_timeout(http, ADMIN_TIMEOUT_S);
    return 0;
}

void admin_stop(void)
{
    if (accept_resume_ev)
        event_free(accept_resume_ev);
    accept_resume_ev = NULL;
    listener = NULL;
    if (http)
        evhttp_free(http);
    http = NULL;
    /* evhttp_free ran every close callback; what is left was accepted on the last turn
     * of the loop and never registered. */
    while (conns) {
        bufferevent_decref(conns->bev);
        conn_forget(conns);
    }
}
