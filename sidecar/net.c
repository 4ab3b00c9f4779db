#include "net.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "clock.h"
#include "log.h"

#define ACCEPT_LOG_INTERVAL_MS 1000

int net_listen(const struct sockaddr *sa, socklen_t salen, int reuseport)
{
    int one = 1;
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int err;

    if (fd < 0)
        return -errno;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) ||
        bind(fd, sa, salen) < 0 || listen(fd, 1024) < 0) {
        err = errno;
        close(fd);
        return -err;
    }
    return fd;
}

int net_accept_must_pause(int err)
{
    return err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM;
}

void net_accept_log(struct net_accept_log *log, int err, const char *who, const char *then)
{
    int64_t now = clock_mono_ms();
    int64_t last = atomic_load(&log->logged_ms);
    uint64_t unlogged;
    char more[80] = "";

    /* A process out of descriptors fails every accept: it says so once a second, not each time. */
    if ((last != 0 && now - last < ACCEPT_LOG_INTERVAL_MS) ||
        !atomic_compare_exchange_strong(&log->logged_ms, &last, now)) {
        atomic_fetch_add(&log->unlogged, 1);
        return;
    }
    unlogged = atomic_exchange(&log->unlogged, 0);
    if (unlogged)
        snprintf(more, sizeof(more), "; %" PRIu64 " more failures since the last message", unlogged);
    LOG_WARN("accept: %s (%s)%s%s%s", strerror(err), who, then ? ": " : "", then ? then : "", more);
}
