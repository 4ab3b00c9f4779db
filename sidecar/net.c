#include "net.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

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
