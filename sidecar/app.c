/* app: nextup_main(), wire-up only: config -> hooks -> services (their peers) -> health, discovery ->
 * admin -> workers (listeners) -> signals
 * (drain on SIGTERM/SIGINT/SIGQUIT, log files reopened on SIGHUP/SIGUSR1, SIGUSR2 ignored). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/thread.h>

#include "admin.h"
#include "config.h"
#include "tls.h"
#include "discovery.h"
#include "evmem.h"
#include "health.h"
#include "health_bpf.h"
#include "hook.h"
#include "nextup.h"
#include "log.h"
#include "peers.h"
#include "metrics.h"
#include "proxy.h"
#include "service.h"
#include "version.h"
#include "worker.h"

static struct config cfg;
static struct event *drain_deadline;
static struct event *drain_poll;
static struct event *tls_reload;

/* The files behind stdout (access log) and stderr (diagnostics), noted at start: after a
 * rotation renamed them, SIGHUP/SIGUSR1 open the same names again. */
struct log_file {
    int fd;                     /* STDOUT_FILENO or STDERR_FILENO */
    const char *name;
    char path[PATH_MAX];        /* "" when not a regular file that can be named */
    mode_t mode;                /* of the original, for a file created again */
};

static struct log_file log_files[] = {
    { STDOUT_FILENO, "stdout", "", 0 },
    { STDERR_FILENO, "stderr", "", 0 },
};

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

static const char *signal_name(int sig)
{
    switch (sig) {
    case SIGTERM: return "SIGTERM";
    case SIGINT: return "SIGINT";
    case SIGQUIT: return "SIGQUIT";
    case SIGHUP: return "SIGHUP";
    case SIGUSR1: return "SIGUSR1";
    case SIGUSR2: return "SIGUSR2";
    default: return "signal";
    }
}

/* Only a regular file reachable by the name /proc gives can be opened again; a pipe or a
 * terminal (the container runtime's, systemd's journal) has nothing to reopen. */
static void log_files_note(void)
{
    for (size_t i = 0; i < sizeof(log_files) / sizeof(log_files[0]); i++) {
        struct log_file *lf = &log_files[i];
        struct stat st, named;
        char link[32];
        ssize_t n;

        lf->path[0] = '\0';
        if (fstat(lf->fd, &st) < 0 || !S_ISREG(st.st_mode))
            continue;
        snprintf(link, sizeof(link), "/proc/self/fd/%d", lf->fd);
        n = readlink(link, lf->path, sizeof(lf->path) - 1);
        if (n <= 0) {
            lf->path[0] = '\0';
            continue;
        }
        lf->path[n] = '\0';
        /* Deleted already ("... (deleted)") or another file under that name: not ours to open. */
        if (lf->path[0] != '/' || stat(lf->path, &named) < 0 || named.st_dev != st.st_dev ||
            named.st_ino != st.st_ino) {
            lf->path[0] = '\0';
            continue;
        }
        lf->mode = st.st_mode & 0666;
    }
}

/* SIGHUP, SIGUSR1: the log files are opened again by name (O_APPEND) and put in place
 * with dup2, which is atomic for the worker threads writing to them: each write lands
 * whole in the old file or in the new one. Access lines still in a worker's buffer
 * (at most 200 ms of them) go to the new file. */
static void reopen_cb(evutil_socket_t sig, short what, void *arg)
{
    char done[2 * PATH_MAX + 64] = "", skipped[64] = "";
    size_t dlen = 0;

    (void)what;
    (void)arg;
    fflush(NULL);
    for (size_t i = 0; i < sizeof(log_files) / sizeof(log_files[0]); i++) {
        struct log_file *lf = &log_files[i];
        int fd;

        if (!lf->path[0]) {
            snprintf(skipped + strlen(skipped), sizeof(skipped) - strlen(skipped), "%s%s",
                     skipped[0] ? " and " : "", lf->name);
            continue;
        }
        fd = open(lf->path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, lf->mode);
        if (fd < 0 || dup2(fd, lf->fd) < 0) {
            LOG_WARN("%s: cannot reopen %s (%s): %s; it keeps writing to the file it had",
                     signal_name((int)sig), lf->name, lf->path, strerror(errno));
            if (fd >= 0)
                close(fd);
            continue;
        }
        close(fd);
        if (dlen < sizeof(done))
            dlen += (size_t)snprintf(done + dlen, sizeof(done) - dlen, "%s%s (%s)", dlen ? " and " : "",
                                     lf->name, lf->path);
    }
    if (!done[0])
        LOG_INFO("%s: %s %s not a regular file: nothing to reopen", signal_name((int)sig),
                 skipped, strchr(skipped, ' ') ? "are" : "is");
    else if (skipped[0])
        LOG_INFO("%s: reopened %s; %s %s not a regular file, nothing to reopen there", signal_name((int)sig),
                 done, skipped, strchr(skipped, ' ') ? "are" : "is");
    else
        LOG_INFO("%s: reopened %s", signal_name((int)sig), done);
}

/* nginx upgrades its binary on SIGUSR2; nextup has no such thing, and dying would drop
 * every request in flight. */
static void ignore_cb(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    (void)arg;
    LOG_WARN("%s ignored: nextup has no binary upgrade; to run a new binary, restart it (SIGTERM drains)",
             signal_name((int)sig));
}

/* SIGTERM, SIGINT and SIGQUIT (nginx's graceful stop) drain alike. */
static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
    struct event_base *base = arg;
    struct timeval deadline = { cfg.drain_timeout_ms / 1000, (cfg.drain_timeout_ms % 1000) * 1000 };
    struct timeval poll = { 0, 20 * 1000 };

    (void)what;
    if (drain_deadline)
        return;
    LOG_INFO("%s: draining (up to %d ms)", signal_name((int)sig), cfg.drain_timeout_ms);
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

static const struct peers_observer metrics_peers_observer = { metrics_service_peer_reset, metrics_service_ejection };

int nextup_main(int argc, char **argv, const struct nextup_hooks *hooks)
{
    char err[512];
    struct event_base *base = NULL;
    static const struct {
        int sig;
        event_callback_fn cb;
    } handled[] = {
        { SIGTERM, signal_cb }, { SIGINT, signal_cb }, { SIGQUIT, signal_cb },
        { SIGHUP, reopen_cb }, { SIGUSR1, reopen_cb }, { SIGUSR2, ignore_cb },
    };
    struct event *sigev[sizeof(handled) / sizeof(handled[0])] = { NULL };
    struct services *services = NULL;
    struct peers *sets[CONFIG_MAX_SERVICES];
    const char *names[CONFIG_MAX_SERVICES];
    int n_peers = 0;
    struct health_bpf *bpf = NULL;
    struct health *health = NULL;
    struct discovery *discovery = NULL;
    int workers_up = 0, rc = 0;

    /* Before libevent allocates anything (a block must be freed by the functions that made it). */
    evmem_install();
    if (argc > 1) {
        if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
            config_print_help(stdout);
            return 0;
        }
        if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "-V") == 0) {
            version_line(err, sizeof(err));
            printf("%s\n", err);
            return 0;
        }
        fprintf(stderr, "nextup: unknown argument \"%s\": nextup takes only --help and --version; it is configured "
                        "by NEXTUP_* environment variables\n", argv[1]);
        return 2;
    }
    if (config_from_env(&cfg, err, sizeof(err)) < 0 || hook_setup(&cfg, hooks, err, sizeof(err)) < 0) {
        fprintf(stderr, "nextup: %s\n", err);
        return 2;
    }
    log_set_level(cfg.log_level);
    log_set_format(cfg.log_format);
    for (int i = 0; i < cfg.n_warnings; i++)
        LOG_WARN("%s", cfg.warnings[i]);
    log_files_note();
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
    /* Peer sets tell the metrics of new slots and ejections through this. */
    peers_set_observer(&metrics_peers_observer);
    /* A configuration error found while building the table (one host in two services) exits 2, as config's do. */
    rc = services_new(&cfg, &services, err, sizeof(err));
    if (rc < 0) {
        rc = rc == -ENOMEM ? 1 : 2;
        goto out;
    }
    for (int i = 0; i < services->n; i++) {
        sets[i] = services->svc[i].peers;
        names[i] = services->svc[i].name;
        n_peers += sets[i]->n;
    }
    base = event_base_new();
    if (!base || metrics_services_init(services->n, names) < 0) {
        snprintf(err, sizeof(err), "out of memory at startup");
        rc = 1;
        goto out;
    }
    {
        struct health_bpf_opts bo = { cfg.bpf_mode, cfg.bpf_pin_dir, cfg.bpf_max_peers, 0, cfg.bpf_node_dir };
        if (health_bpf_open(&bo, &bpf, err, sizeof(err)) < 0) {
            rc = 2;
            goto out;
        }
    }
    health = health_new(base, &cfg, sets, names, services->n, bpf);
    if (!health) {
        snprintf(err, sizeof(err), "out of memory at startup");
        rc = 1;
        goto out;
    }
    discovery = discovery_new(base, &cfg, sets, err, sizeof(err));
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
    if (admin_start(base, &cfg, services, health, err, sizeof(err)) < 0) {
        rc = 2;
        goto out;
    }
    workers_up = 1;
    if (workers_start(&cfg, services, err, sizeof(err)) < 0) {
        rc = 2;
        goto out;
    }
    for (size_t i = 0; i < sizeof(handled) / sizeof(handled[0]); i++) {
        sigev[i] = evsignal_new(base, handled[i].sig, handled[i].cb, base);
        if (!sigev[i] || evsignal_add(sigev[i], NULL) < 0) {
            snprintf(err, sizeof(err), "cannot install a handler for %s", signal_name(handled[i].sig));
            rc = 1;
            goto out;
        }
    }
    /* The first line at info, once started (a startup error stays the one line on stderr). */
    version_line(err, sizeof(err));
    LOG_INFO("%s, pid %d: listening on %s (admin %s), %d worker(s), %d peer(s), kernel health view %s", err,
             (int)getpid(), cfg.listen.text, cfg.admin.text, cfg.workers, n_peers, bpf ? "on" : "off");
    if (cfg.services_listed)
        LOG_INFO("%d service(s): %s; default service: %s; namespace: %s", services->n, cfg.services_list,
                 services->default_service ? services->default_service->name : "none (unknown authorities refused)",
                 cfg.namespace_[0] ? cfg.namespace_ : "unknown (short names only)");
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
    for (size_t i = 0; i < sizeof(sigev) / sizeof(sigev[0]); i++)
        if (sigev[i])
            event_free(sigev[i]);
    if (drain_deadline)
        event_free(drain_deadline);
    if (drain_poll)
        event_free(drain_poll);
    if (tls_reload)
        event_free(tls_reload);
    tls_shutdown();
    if (base)
        event_base_free(base);
    metrics_services_free();
    services_free(services);
    libevent_global_shutdown();
    return rc;
}
