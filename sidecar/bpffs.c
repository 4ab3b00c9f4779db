/* bpffs: pin directories on a bpffs mount (bpffs.h has the API). */
#include "bpffs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>
#include <linux/magic.h>

/* How long a starting nextup waits for another one to finish setting up the same pin dir. */
#define PIN_LOCK_WAIT_MS 10000

int bpffs_dir_prepare(const char *dir, char *why, size_t whylen)
{
    char path[PIN_DIR_MAX];
    struct statfs fs;
    char *slash;
    size_t len = strlen(dir);

    if (len == 0 || len >= sizeof(path)) {
        snprintf(why, whylen, "pin dir \"%s\" is empty or too long", dir);
        return -EINVAL;
    }
    memcpy(path, dir, len + 1);
    while (statfs(path, &fs) != 0) {
        if (errno != ENOENT) {
            int err = -errno;

            snprintf(why, whylen, "cannot inspect %s: %s", path, strerror(-err));
            return err;
        }
        slash = strrchr(path, '/');
        if (!slash || slash == path) {
            strcpy(path, slash ? "/" : ".");
            if (statfs(path, &fs) != 0)
                fs.f_type = 0;
            break;
        }
        *slash = '\0';
    }
    if (fs.f_type != BPF_FS_MAGIC) {
        snprintf(why, whylen, "%s is not on a bpffs mount (mount -t bpf bpf /sys/fs/bpf)", dir);
        return -ENODEV;
    }

    /* mkdir -p: every component, existing ones are fine. */
    memcpy(path, dir, len + 1);
    for (slash = strchr(path + 1, '/');; slash = strchr(slash + 1, '/')) {
        if (slash)
            *slash = '\0';
        if (path[0] && mkdir(path, 0700) != 0 && errno != EEXIST) {
            int err = -errno;

            snprintf(why, whylen, "cannot create pin dir %s: %s", path, strerror(-err));
            return err;
        }
        if (!slash)
            break;
        *slash = '/';
    }
    return 0;
}

int bpffs_dir_lock(const char *dir, const char *var, char *why, size_t whylen)
{
    const struct timespec pause = { 0, 10 * 1000 * 1000 };
    int fd, err, waited_ms;

    fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        err = -errno;
        snprintf(why, whylen, "cannot open pin dir %s: %s", dir, strerror(-err));
        return err;
    }
    for (waited_ms = 0; flock(fd, LOCK_EX | LOCK_NB) != 0; waited_ms += 10) {
        err = -errno;
        if (err != -EWOULDBLOCK) {
            snprintf(why, whylen, "cannot lock pin dir %s: %s", dir, strerror(-err));
            close(fd);
            return err;
        }
        if (waited_ms >= PIN_LOCK_WAIT_MS) {
            snprintf(why, whylen, "%s=%s: another nextup has been setting it up for %d s", var, dir,
                     PIN_LOCK_WAIT_MS / 1000);
            close(fd);
            return -EAGAIN;
        }
        nanosleep(&pause, NULL);
    }
    return fd;
}

int bpffs_lock_wait(int fd)
{
    const struct timespec pause = { 0, 10 * 1000 * 1000 };
    int waited_ms;

    for (waited_ms = 0; flock(fd, LOCK_EX | LOCK_NB) != 0; waited_ms += 10) {
        if (errno != EWOULDBLOCK)
            return -errno;
        if (waited_ms >= PIN_LOCK_WAIT_MS)
            return -EAGAIN;
        nanosleep(&pause, NULL);
    }
    return 0;
}

int bpffs_pins_clear(const char *dir, const char *map, const char *meta)
{
    char path[SET_DIR_MAX + 300];
    struct dirent *de;
    int removed = 0;
    DIR *d;

    d = opendir(dir);
    while (d && (de = readdir(d))) {
        if (strncmp(de->d_name, LINK_PREFIX, strlen(LINK_PREFIX)) != 0 &&
            strncmp(de->d_name, PROG_PREFIX, strlen(PROG_PREFIX)) != 0)
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
        removed += unlink(path) == 0;
    }
    if (d)
        closedir(d);
    snprintf(path, sizeof(path), "%s/%s", dir, map);
    removed += unlink(path) == 0;
    if (meta) {
        snprintf(path, sizeof(path), "%s/%s", dir, meta);
        removed += unlink(path) == 0;
    }
    return removed;
}
