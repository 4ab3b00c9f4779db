#include "admin.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/http.h>

#include "config.h"
#include "health.h"
#include "metrics.h"
#include "net.h"
#include "peers.h"

static struct evhttp *http;
static const struct peers *known_peers;
static struct health *health;
static int draining;

void admin_set_draining(void)
{
    draining = 1;
}

static void reply(struct evhttp_request *req, int code, const char *reason, const char *ctype, struct evbuffer *body)
{
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", ctype);
    evhttp_send_reply(req, code, reason, body);
}

static void admin_cb(struct evhttp_request *req, void *arg)
{
    const char *uri = evhttp_request_get_uri(req);
    struct evbuffer *body = evbuffer_new();
    size_t plen;

    (void)arg;
    if (!body) {
        evhttp_send_error(req, 503, "out of memory");
        return;
    }
    plen = strcspn(uri, "?");
    if (plen == 8 && strncmp(uri, "/healthz", 8) == 0) {
        evbuffer_add_printf(body, "ok\n");
        reply(req, 200, "OK", "text/plain", body);
    } else if (plen == 7 && strncmp(uri, "/readyz", 7) == 0) {
        if (draining) {
            evbuffer_add_printf(body, "draining\n");
            reply(req, 503, "Service Unavailable", "text/plain", body);
        } else if (!known_peers || peers_active_count(known_peers) == 0) {
            evbuffer_add_printf(body, "no upstream peer known\n");
            reply(req, 503, "Service Unavailable", "text/plain", body);
        } else {
            evbuffer_add_printf(body, "ready\n");
            reply(req, 200, "OK", "text/plain", body);
        }
    } else if (plen == 8 && strncmp(uri, "/metrics", 8) == 0) {
        metrics_write_prometheus(body);
        if (health)
            health_write_metrics(health, body);
        reply(req, 200, "OK", "text/plain; version=0.0.4", body);
    } else if (plen == 12 && strncmp(uri, "/debug/peers", 12) == 0 && health) {
        health_write_debug_json(health, body);
        reply(req, 200, "OK", "application/json", body);
    } else {
        evbuffer_add_printf(body, "not found: try /healthz, /readyz, /metrics or /debug/peers\n");
        reply(req, 404, "Not Found", "text/plain", body);
    }
    evbuffer_free(body);
}

int admin_start(struct event_base *base, const struct config *cfg, const struct peers *peers, struct health *h,
                char *err, size_t errlen)
{
    int fd;

    known_peers = peers;
    health = h;
    http = evhttp_new(base);
    if (!http) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    fd = net_listen((const struct sockaddr *)&cfg->admin.sa, cfg->admin.salen, 0);
    if (fd < 0) {
        snprintf(err, errlen, "NEXTUP_ADMIN=\"%s\": cannot listen: %s", cfg->admin.text, strerror(-fd));
        return fd;
    }
    if (!evhttp_accept_socket_with_handle(http, fd)) {
        snprintf(err, errlen, "NEXTUP_ADMIN=\"%s\": cannot accept", cfg->admin.text);
        return -EINVAL;
    }
    evhttp_set_gencb(http, admin_cb, NULL);
    evhttp_set_timeout(http, 10);
    return 0;
}

void admin_stop(void)
{
    if (http)
        evhttp_free(http);
    http = NULL;
}
