/* app: nextup_main(), wire-up only: config -> hooks -> peers -> workers (listeners) -> admin -> signals. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <event2/thread.h>

#include "admin.h"
#include "config.h"
#include "tls.h"
#include "discovery.h"
#include "health.h"
#include "health_bpf.h"
#include "hook.h"
#include "nextup.h"
#include "log.h"
#include "peers.h"
#include "proxy.h"
#include "worker.h"

static struct config cfg;
static struct event *drain_deadline;
static struct event *drain_poll;
static struct event *tls_reload;

static void tls_reload_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    tls_reload_check();
}

static void drain_poll_cb(evutil_socket_t fd, short what, void *arg)
{
    struct event_base *base = arg;

    (void)fd;
    (void)what;
    if (workers_all_done())
        event_base_loopexit(base, NULL);
}

static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    struct event_base *base = arg;

    (void)fd;
    (void)what;
    LOG_WARN("drain: NEXTUP_DRAIN_TIMEOUT_MS reached with %d connection(s) open; closing them",
             workers_live_connections());
    event_base_loopexit(base, NULL);
}

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
    struct event_base *base = arg;
    struct timeval deadline = { cfg.drain_timeout_ms / 1000, (cfg.drain_timeout_ms % 1000) * 1000 };
    struct timeval poll = { 0, 20 * 1000 };

    (void)what;
    if (drain_deadline)
        return;
    LOG_INFO("%s: draining (up to %d ms)", sig == SIGTERM ? "SIGTERM" : "SIGINT", cfg.drain_timeout_ms);
    admin_set_draining();
    workers_drain();
    drain_deadline = evtimer_new(base, deadline_cb, base);
    drain_poll = event_new(base, -1, EV_PERSIST, drain_poll_cb, base);
    if (!drain_deadline || !drain_poll) {
        event_base_loopexit(base, NULL);
        return;
    }
    evtimer_add(drain_deadline, &deadline);
    event_add(drain_poll, &poll);
}

int nextup_main(int argc, char **argv, const struct nextup_hooks *hooks)
{
    char err[512];
    struct event_base *base = NULL;
    struct event *sigterm = NULL, *sigint = NULL;
    struct peers *peers = NULL;
    struct health_bpf *bpf = NULL;
    struct health *health = NULL;
    struct discovery *discovery = NULL;
    int workers_up = 0, rc = 0;

    if (argc > 1) {
        if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
            config_print_help(stdout);
            return 0;
        }
        fprintf(stderr, "nextup: unknown argument \"%s\": nextup takes only --help; it is configured by NEXTUP_* "
                        "environment variables\n", argv[1]);
        return 2;
    }
    if (config_from_env(&cfg, err, sizeof(err)) < 0 || hook_setup(&cfg, hooks, err, sizeof(err)) < 0) {
        fprintf(stderr, "nextup: %s\n", err);
        return 2;
    }
    log_set_level(cfg.log_level);
    signal(SIGPIPE, SIG_IGN);
    if (tls_setup(&cfg, err, sizeof(err)) < 0) {
        fprintf(stderr, "nextup: %s\n", err);
        tls_shutdown();
        return 2;
    }
    if (evthread_use_pthreads() < 0) {
        fprintf(stderr, "nextup: libevent has no pthread support\n");
        return 1;
    }
    peers = peers_new(cfg.upstreams, cfg.n_upstreams);
    base = event_base_new();
    if (!peers || !base) {
        snprintf(err, sizeof(err), "out of memory at startup");
        rc = 1;
        goto out;
    }
    peers->policy.connect_failures_to_eject = cfg.eject_connect_failures;
    peers->policy.gateway_errors_to_eject = cfg.eject_gateway_errors;
    peers->policy.eject_base_ms = cfg.eject_base_ms;
    peers->policy.eject_max_ms = cfg.eject_max_ms;
    peers->policy.max_eject_percent = cfg.max_ejection_percent;
    {
        struct health_bpf_opts bo = { cfg.bpf_mode, cfg.bpf_pin_dir, cfg.bpf_max_peers, 0 };
        if (health_bpf_open(&bo, &bpf, err, sizeof(err)) < 0) {
            rc = 2;
            goto out;
        }
    }
    health = health_new(base, &cfg, peers, bpf);
    if (!health) {
        snprintf(err, sizeof(err), "out of memory at startup");
        rc = 1;
        goto out;
    }
    discovery = discovery_new(base, &cfg, peers, err, sizeof(err));
    if (!discovery) {
        rc = 2;
        goto out;
    }
    if (tls_upstream_enabled() || tls_listener_enabled()) {
        struct timeval tv = { cfg.tls_reload_ms / 1000, (cfg.tls_reload_ms % 1000) * 1000 };
        tls_reload = event_new(base, -1, EV_PERSIST, tls_reload_cb, NULL);
        if (!tls_reload || event_add(tls_reload, &tv) < 0) {
            snprintf(err, sizeof(err), "out of memory at startup");
            rc = 1;
            goto out;
        }
    }
    proxy_init();
    if (admin_start(base, &cfg, peers, health, err, sizeof(err)) < 0) {
        rc = 2;
        goto out;
    }
    workers_up = 1;
    if (workers_start(&cfg, peers, err, sizeof(err)) < 0) {
        rc = 2;
        goto out;
    }
    sigterm = evsignal_new(base, SIGTERM, signal_cb, base);
    sigint = evsignal_new(base, SIGINT, signal_cb, base);
    if (!sigterm || !sigint || evsignal_add(sigterm, NULL) < 0 || evsignal_add(sigint, NULL) < 0) {
        snprintf(err, sizeof(err), "cannot install signal handlers");
        rc = 1;
        goto out;
    }
    LOG_INFO("listening on %s (admin %s), %d worker(s), %d peer(s), kernel health view %s", cfg.listen.text,
             cfg.admin.text, cfg.workers, peers->n, bpf ? "on" : "off");
    event_base_dispatch(base);

out:
    /* One way out, started or not: everything made is freed (sanitizer builds check it). */
    if (rc)
        fprintf(stderr, "nextup: %s\n", err);
    if (workers_up)
        workers_stop();
    if (rc == 0)
        LOG_INFO("stopped");
    admin_stop();
    discovery_free(discovery);
    health_free(health);
    health_bpf_close(bpf);
    if (sigterm)
        event_free(sigterm);
    if (sigint)
        event_free(sigint);
    if (drain_deadline)
        event_free(drain_deadline);
    if (drain_poll)
        event_free(drain_poll);
    if (tls_reload)
        event_free(tls_reload);
    tls_shutdown();
    if (base)
        event_base_free(base);
    peers_free(peers);
    libevent_global_shutdown();
    return rc;
}
