/* health_bpf: the user-space side of bpf/peer_stats.bpf.c.
 *
 * open -> set (map size, target_netns, which tcp_retransmit_skb variant) -> load -> lock the pin dir ->
 * reuse the pinned set or replace it -> unlock; then only an fd on the map and on each link is kept.
 *
 * One set of programs feeds one pinned map. A nextup that finds nothing usable pins the maps and, once
 * attached, one link per program (<pin_dir>/link_<program>): the programs stay attached while nextup is
 * restarted, so the counters cover the restart too. A nextup that finds a complete set pinned for its
 * namespace, whose links run exactly the programs it would load (same program tags) on exactly the
 * pinned map, reuses that set and attaches nothing: two nextups of one pod (a hand-over) share the
 * programs and every event counts once. Anything else pinned for this namespace (another layout or size,
 * another build, a set without links) is replaced whole, links first, map included: a map is never fed
 * by two sets, even while an older nextup still runs on the old one. Pins made for another namespace
 * are never touched. Every nextup holds fds on the map and links it uses, so `rm -r <pin_dir>` detaches
 * the programs once the last nextup using them has exited.
 *
 * Two nextups starting at once decide one after the other: the decision and the pinning happen under an
 * exclusive flock on the pin dir itself (bpffs holds no regular files, but a directory can be flocked;
 * the lock is on the inode, so it holds across containers that share the node's bpffs). */
#include "health_bpf.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <linux/capability.h>
#include <linux/magic.h>

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>

#include "config.h"
#include "log.h"
#include "peer_stats.skel.h"

_Static_assert(sizeof(struct peer_key) == 24, "struct peer_key must have no hidden padding");
_Static_assert(sizeof(struct peer_stats) == 14 * 8, "struct peer_stats must be 14 __u64");
_Static_assert(sizeof(struct peer_stats_meta) == 16, "struct peer_stats_meta must have no hidden padding");

#define HEALTH_BPF_DEFAULT_MAX_PEERS 4096
#define VMLINUX_BTF "/sys/kernel/btf/vmlinux"
/* NEXTUP_BPF_PIN_DIR is at most 255 bytes (struct config). */
#define PIN_DIR_MAX 256
#define LINK_PREFIX "link_"
/* How long a starting nextup waits for another one to finish setting up the same pin dir. */
#define PIN_LOCK_WAIT_MS 10000
/* Programs in the object; at most that many are attached (the two retransmit variants exclude each other). */
#define MAX_PROGS (sizeof(((struct peer_stats_bpf *)0)->progs) / sizeof(struct bpf_program *))

struct health_bpf {
    int map_fd;                     /* owned: the pinned peer_stats */
    int link_fd[MAX_PROGS];         /* owned: the links feeding it; -1 where unused */
};

/* One pin dir, and what this nextup needs to find in it. */
struct pin_set {
    const char *dir;
    char map_path[PIN_DIR_MAX + 16];     /* <dir>/peer_stats */
    char meta_path[PIN_DIR_MAX + 24];    /* <dir>/peer_stats_meta */
    __u32 max_entries;
    __u64 netns;
};

/* libbpf's messages (including the verifier log on a failed load) go to the debug log, a line at a time. */
__attribute__((format(printf, 2, 0)))
static int libbpf_print(enum libbpf_print_level level, const char *fmt, va_list ap)
{
    char buf[1024];
    char *line, *next;
    int n;

    (void)level;
    if (!log_enabled(LOG_LEVEL_DEBUG))
        return 0;
    n = vsnprintf(buf, sizeof(buf), fmt, ap);
    for (line = buf; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        /* Most lines already say "libbpf: "; the verifier log's do not. */
        if (*line)
            LOG_DEBUG("%s%s", strncmp(line, "libbpf: ", 8) ? "libbpf: " : "", line);
    }
    return n;
}

/* Whether this process may load tracing programs: CAP_SYS_ADMIN, or CAP_BPF with CAP_PERFMON.
 * true when capget itself fails: then the kernel's answer to the load is the one to report. */
static bool may_load_tracing(void)
{
    struct __user_cap_header_struct hdr = { .version = _LINUX_CAPABILITY_VERSION_3, .pid = 0 };
    struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];

    memset(data, 0, sizeof(data));
    if (syscall(SYS_capget, &hdr, data) != 0)
        return true;
#define HAS_CAP(c) ((data[CAP_TO_INDEX(c)].effective & CAP_TO_MASK(c)) != 0)
    return HAS_CAP(CAP_SYS_ADMIN) || (HAS_CAP(CAP_BPF) && HAS_CAP(CAP_PERFMON));
#undef HAS_CAP
}

/* Makes <dir> exist (like mkdir -p) on a bpffs mount. The nearest existing path among <dir> and
 * its parents must be on bpffs: outside bpffs a pin would fail anyway, and creating directories
 * in sysfs or tmpfs first would only leave litter. 0, or a negative errno with <why> filled. */
static int pin_dir_prepare(const char *dir, char *why, size_t whylen)
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

/* 1 when the kernel's tcp_retransmit_skb tracepoint passes (sk, skb, err) (newer kernels, 6.18 among
 * them), 0 when it passes (sk, skb); negative errno with <why> when BTF cannot tell. */
static int retransmit_tp_has_err(char *why, size_t whylen)
{
    const struct btf_type *t;
    struct btf *btf;
    int id, nargs = -1;

    btf = btf__load_vmlinux_btf();
    if (!btf) {
        int err = -errno;

        snprintf(why, whylen, "cannot read the kernel's BTF (%s): %s", VMLINUX_BTF, strerror(-err));
        return err;
    }
    /* typedef void (*btf_trace_tcp_retransmit_skb)(void *__data, <tracepoint arguments>) */
    id = btf__find_by_name_kind(btf, "btf_trace_tcp_retransmit_skb", BTF_KIND_TYPEDEF);
    t = id > 0 ? btf__type_by_id(btf, (__u32)id) : NULL;
    t = t ? btf__type_by_id(btf, t->type) : NULL;
    if (t && btf_is_ptr(t)) {
        t = btf__type_by_id(btf, t->type);
        if (t && btf_is_func_proto(t))
            nargs = btf_vlen(t) - 1;
    }
    btf__free(btf);
    if (nargs < 1) {
        snprintf(why, whylen, "the kernel's BTF has no tcp_retransmit_skb tracepoint");
        return -ENOENT;
    }
    return nargs >= 3;
}

/* Closes what <h> holds and marks it empty. */
static void health_bpf_drop_fds(struct health_bpf *h)
{
    size_t i;

    if (h->map_fd >= 0)
        close(h->map_fd);
    h->map_fd = -1;
    for (i = 0; i < MAX_PROGS; i++) {
        if (h->link_fd[i] >= 0)
            close(h->link_fd[i]);
        h->link_fd[i] = -1;
    }
}

/* Takes an exclusive flock on the pin dir itself, waiting up to PIN_LOCK_WAIT_MS for another nextup
 * setting it up: the fd whose close releases it, or a negative errno with <why>. */
static int pin_dir_lock(const char *dir, char *why, size_t whylen)
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
            snprintf(why, whylen, "NEXTUP_BPF_PIN_DIR=%s: another nextup has been setting it up for %d s",
                     dir, PIN_LOCK_WAIT_MS / 1000);
            close(fd);
            return -EAGAIN;
        }
        nanosleep(&pause, NULL);
    }
    return fd;
}

/* The record pinned at <path>: 0 with <meta> filled from its first 16 bytes, which keep their meaning
 * in every layout version (bpf/peer_stats.h); -ENOENT when nothing is pinned there, -EINVAL when it is
 * not such a record, or another negative errno. */
static int meta_read(const char *path, struct peer_stats_meta *meta)
{
    __u64 value[32];                /* a later layout may grow the record, up to 256 bytes */
    struct bpf_map_info info;
    __u32 len = sizeof(info), zero = 0;
    int fd, err;

    fd = bpf_obj_get(path);
    if (fd < 0)
        return fd;
    memset(&info, 0, sizeof(info));
    err = bpf_obj_get_info_by_fd(fd, &info, &len);
    if (!err && (info.type != BPF_MAP_TYPE_ARRAY || info.key_size != sizeof(__u32) ||
                 info.value_size < sizeof(*meta) || info.value_size > sizeof(value)))
        err = -EINVAL;
    if (!err)
        err = bpf_map_lookup_elem(fd, &zero, value);
    if (!err)
        memcpy(meta, value, sizeof(*meta));
    close(fd);
    return err;
}

/* 0 when the pins in <ps> may be replaced by this nextup: made for its namespace, or by nobody it can
 * tell (no readable peer_stats_meta). -EBUSY with <why> when they were made for another network
 * namespace: those are someone else's counters, and their programs count for that namespace. */
static int pins_owner_check(const struct pin_set *ps, char *why, size_t whylen)
{
    struct peer_stats_meta meta;

    if (meta_read(ps->meta_path, &meta) != 0 || meta.netns_inum == ps->netns)
        return 0;
    snprintf(why, whylen, "NEXTUP_BPF_PIN_DIR=%s: pinned by network namespace %llu, this one is %llu: give each "
             "pod its own pin directory (or remove it if that namespace is gone)", ps->dir,
             (unsigned long long)meta.netns_inum, (unsigned long long)ps->netns);
    return -EBUSY;
}

/* Whether <fd> is a BPF link: bpf_obj_get() opens maps, programs and links alike, and the info the
 * kernel returns for one does not say which it is. */
static bool fd_is_link(int fd)
{
    char proc[48], target[32];
    ssize_t n;

    snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
    n = readlink(proc, target, sizeof(target) - 1);
    if (n < 0)
        return false;
    target[n] = '\0';
    return strcmp(target, "anon_inode:bpf-link") == 0;
}

/* The fd of the link pinned at <path> when it runs the program <want> describes (same type, attach
 * point and tag: the instructions this build loads) and that program updates the map <map_id>.
 * -1 with <reason> for anything else. */
static int link_check(const char *path, const struct bpf_prog_info *want, __u32 map_id, char *reason,
                      size_t reasonlen)
{
    const char *name = strrchr(path, '/') + 1;
    struct bpf_link_info link;
    struct bpf_prog_info prog;
    __u32 ids[8], i, n, len;
    int fd, pfd = -1;

    fd = bpf_obj_get(path);
    if (fd < 0) {
        snprintf(reason, reasonlen, "%s: %s", name, fd == -ENOENT ? "not pinned" : strerror(-fd));
        return -1;
    }
    memset(&link, 0, sizeof(link));
    len = sizeof(link);
    if (!fd_is_link(fd) || bpf_obj_get_info_by_fd(fd, &link, &len) != 0) {
        snprintf(reason, reasonlen, "%s is not a BPF link", name);
        goto mismatch;
    }
    pfd = bpf_prog_get_fd_by_id(link.prog_id);
    memset(&prog, 0, sizeof(prog));
    prog.nr_map_ids = sizeof(ids) / sizeof(ids[0]);
    prog.map_ids = (__u64)(unsigned long)ids;
    len = sizeof(prog);
    if (pfd < 0 || bpf_obj_get_info_by_fd(pfd, &prog, &len) != 0) {
        snprintf(reason, reasonlen, "%s: its program is unreadable", name);
        goto mismatch;
    }
    if (prog.type != want->type || prog.attach_btf_id != want->attach_btf_id ||
        memcmp(prog.tag, want->tag, sizeof(prog.tag)) != 0) {
        snprintf(reason, reasonlen, "%s runs other code (another nextup build)", name);
        goto mismatch;
    }
    /* On return nr_map_ids is the program's count, which may exceed what fit in ids. */
    n = prog.nr_map_ids < sizeof(ids) / sizeof(ids[0]) ? prog.nr_map_ids : sizeof(ids) / sizeof(ids[0]);
    for (i = 0; i < n && ids[i] != map_id; i++)
        ;
    if (i == n) {
        snprintf(reason, reasonlen, "%s feeds another map", name);
        goto mismatch;
    }
    close(pfd);
    return fd;

mismatch:
    if (pfd >= 0)
        close(pfd);
    close(fd);
    return -1;
}

/* Whether <name> is that of a program this nextup attaches. */
static bool prog_attached_here(const struct peer_stats_bpf *skel, const char *name)
{
    struct bpf_program *prog;

    bpf_object__for_each_program(prog, skel->obj)
        if (bpf_program__autoload(prog) && strcmp(bpf_program__name(prog), name) == 0)
            return true;
    return false;
}

/* Decides on the pins in <ps> (whose owner pins_owner_check accepted), given the loaded <skel>.
 * 1: they are complete and what <skel> would make, with links running the same programs on the pinned
 * map; <h> then holds fds on the map and on each link. 0: they must be replaced (<reason> says why,
 * "no map pinned" for an empty dir); <h> holds nothing. A negative errno with <why> when the pins
 * cannot be inspected. */
static int pins_inspect(const struct pin_set *ps, const struct peer_stats_bpf *skel, struct health_bpf *h,
                        char *reason, size_t reasonlen, char *why, size_t whylen)
{
    char path[PIN_DIR_MAX + 64];
    struct peer_stats_meta meta;
    struct bpf_map_info info;
    struct bpf_prog_info want;
    struct bpf_program *prog;
    struct dirent *de;
    size_t n = 0;
    __u32 len;
    DIR *d;
    int fd, err;

    reason[0] = '\0';
    fd = bpf_obj_get(ps->map_path);
    if (fd < 0) {
        if (fd != -ENOENT) {
            snprintf(why, whylen, "cannot open pinned map %s: %s", ps->map_path, strerror(-fd));
            return fd;
        }
        snprintf(reason, reasonlen, "no map pinned");
        return 0;
    }
    h->map_fd = fd;

    memset(&info, 0, sizeof(info));
    len = sizeof(info);
    if (bpf_obj_get_info_by_fd(fd, &info, &len) != 0)
        snprintf(reason, reasonlen, "not a readable map");
    else if (info.type != BPF_MAP_TYPE_LRU_HASH)
        snprintf(reason, reasonlen, "map type %u, not LRU hash", info.type);
    else if (info.key_size != sizeof(struct peer_key) || info.value_size != sizeof(struct peer_stats))
        snprintf(reason, reasonlen, "key/value size %u/%u, expected %zu/%zu", info.key_size, info.value_size,
                 sizeof(struct peer_key), sizeof(struct peer_stats));
    else if (info.max_entries != ps->max_entries)
        snprintf(reason, reasonlen, "max_entries %u, NEXTUP_BPF_MAX_PEERS is %u", info.max_entries,
                 ps->max_entries);
    else if ((err = meta_read(ps->meta_path, &meta)) != 0)
        snprintf(reason, reasonlen, "no readable layout version (peer_stats_meta: %s)", strerror(-err));
    else if (meta.layout_version != PEER_STATS_LAYOUT_VERSION)
        snprintf(reason, reasonlen, "layout version %u, this nextup has %u", meta.layout_version,
                 PEER_STATS_LAYOUT_VERSION);
    if (reason[0])
        goto replace;

    bpf_object__for_each_program(prog, skel->obj) {
        if (!bpf_program__autoload(prog))
            continue;
        memset(&want, 0, sizeof(want));
        len = sizeof(want);
        err = bpf_obj_get_info_by_fd(bpf_program__fd(prog), &want, &len);
        if (err) {
            snprintf(why, whylen, "cannot read the loaded program %s: %s", bpf_program__name(prog),
                     strerror(-err));
            health_bpf_drop_fds(h);
            return err;
        }
        snprintf(path, sizeof(path), "%s/" LINK_PREFIX "%s", ps->dir, bpf_program__name(prog));
        fd = link_check(path, &want, info.id, reason, reasonlen);
        if (fd < 0)
            goto replace;
        h->link_fd[n++] = fd;
    }
    /* A link pinned for a program this nextup does not attach would feed the map a second time. */
    d = opendir(ps->dir);
    while (d && (de = readdir(d)) && !reason[0])
        if (strncmp(de->d_name, LINK_PREFIX, strlen(LINK_PREFIX)) == 0 &&
            !prog_attached_here(skel, de->d_name + strlen(LINK_PREFIX)))
            snprintf(reason, reasonlen, "%s attaches a program this nextup does not", de->d_name);
    if (d)
        closedir(d);
    if (!reason[0])
        return 1;

replace:
    health_bpf_drop_fds(h);
    return 0;
}

/* Unpins everything this module pins in <ps>: the links first (their programs are detached unless a
 * running nextup still holds them), then the maps. How many pins were removed. */
static int pins_clear(const struct pin_set *ps)
{
    char path[PIN_DIR_MAX + 300];
    struct dirent *de;
    int removed = 0;
    DIR *d;

    d = opendir(ps->dir);
    while (d && (de = readdir(d))) {
        if (strncmp(de->d_name, LINK_PREFIX, strlen(LINK_PREFIX)) != 0)
            continue;
        snprintf(path, sizeof(path), "%s/%s", ps->dir, de->d_name);
        removed += unlink(path) == 0;
    }
    if (d)
        closedir(d);
    removed += unlink(ps->map_path) == 0;
    removed += unlink(ps->meta_path) == 0;
    return removed;
}

/* Pins <skel>'s maps in the emptied <ps> (the meta record written first: it names the owner), then
 * attaches each program and pins its link. 0 with <h> holding fds on the map and the links; or a
 * negative errno with <why>, and everything pinned here unpinned again. */
static int pins_create(const struct pin_set *ps, struct peer_stats_bpf *skel, struct health_bpf *h, char *why,
                       size_t whylen)
{
    struct peer_stats_meta meta = { .layout_version = PEER_STATS_LAYOUT_VERSION, .netns_inum = ps->netns };
    char path[PIN_DIR_MAX + 64];
    struct bpf_program *prog;
    struct bpf_link *link;
    size_t n = 0, i;
    __u32 zero = 0;
    int err;

    err = bpf_map_update_elem(bpf_map__fd(skel->maps.peer_stats_meta), &zero, &meta, BPF_ANY);
    if (err) {
        snprintf(why, whylen, "cannot write the layout version: %s", strerror(-err));
        return err;
    }
    err = bpf_map__pin(skel->maps.peer_stats_meta, ps->meta_path);
    if (!err)
        err = bpf_map__pin(skel->maps.peer_stats, ps->map_path);
    if (err) {
        snprintf(why, whylen, "cannot pin the map at %s: %s", ps->map_path, strerror(-err));
        goto undo;
    }
    h->map_fd = fcntl(bpf_map__fd(skel->maps.peer_stats), F_DUPFD_CLOEXEC, 0);
    if (h->map_fd < 0) {
        err = -errno;
        snprintf(why, whylen, "cannot keep the map: %s", strerror(-err));
        goto undo;
    }

    bpf_object__for_each_program(prog, skel->obj) {
        if (!bpf_program__autoload(prog))
            continue;
        link = bpf_program__attach(prog);
        if (!link) {
            err = -errno;
            snprintf(why, whylen, "attaching the tp_btf program %s failed: %s", bpf_program__name(prog),
                     strerror(-err));
            goto undo;
        }
        snprintf(path, sizeof(path), "%s/" LINK_PREFIX "%s", ps->dir, bpf_program__name(prog));
        err = bpf_link__pin(link, path);
        if (err) {
            snprintf(why, whylen, "cannot pin the link at %s: %s", path, strerror(-err));
            bpf_link__destroy(link);
            goto undo;
        }
        /* The fd moves to <h>: destroying the libbpf object then leaves the link attached. */
        h->link_fd[n++] = bpf_link__fd(link);
        bpf_link__disconnect(link);
        bpf_link__destroy(link);
    }
    return 0;

undo:
    /* Only what was pinned here: link pins of the first n programs, then the maps. */
    i = 0;
    bpf_object__for_each_program(prog, skel->obj) {
        if (!bpf_program__autoload(prog) || i++ >= n)
            continue;
        snprintf(path, sizeof(path), "%s/" LINK_PREFIX "%s", ps->dir, bpf_program__name(prog));
        unlink(path);
    }
    if (bpf_map__is_pinned(skel->maps.peer_stats))
        bpf_map__unpin(skel->maps.peer_stats, NULL);
    if (bpf_map__is_pinned(skel->maps.peer_stats_meta))
        bpf_map__unpin(skel->maps.peer_stats_meta, NULL);
    health_bpf_drop_fds(h);
    return err;
}

/* Loads the programs for <o>, then, under the pin dir's lock, reuses or replaces the pinned set. The
 * reason of a failure goes to <why>, without the NEXTUP_BPF= prefix the caller adds. */
static int health_bpf_load(const struct health_bpf_opts *o, struct health_bpf **out, char *why, size_t whylen)
{
    const char *pin_dir = o->pin_dir && o->pin_dir[0] ? o->pin_dir : "/sys/fs/bpf/nextup";
    struct peer_stats_bpf *skel = NULL;
    struct health_bpf *h = NULL;
    struct pin_set ps;
    char reason[PIN_DIR_MAX + 128];
    struct stat st;
    int err, has_err, reused, lock = -1;
    size_t i;

    memset(&ps, 0, sizeof(ps));
    ps.dir = pin_dir;
    ps.max_entries = o->max_peers > 0 ? (__u32)o->max_peers : HEALTH_BPF_DEFAULT_MAX_PEERS;
    ps.netns = o->netns_inum;
    snprintf(ps.map_path, sizeof(ps.map_path), "%s/peer_stats", pin_dir);
    snprintf(ps.meta_path, sizeof(ps.meta_path), "%s/peer_stats_meta", pin_dir);

    if (access(VMLINUX_BTF, R_OK) != 0) {
        snprintf(why, whylen, "the kernel has no BTF (%s missing: needs CONFIG_DEBUG_INFO_BTF=y)", VMLINUX_BTF);
        return -EOPNOTSUPP;
    }
    if (!may_load_tracing()) {
        snprintf(why, whylen, "missing CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN): not root");
        return -EPERM;
    }
    if (!ps.netns) {
        if (stat("/proc/self/ns/net", &st) != 0) {
            err = -errno;
            snprintf(why, whylen, "cannot read this process's network namespace (/proc/self/ns/net): %s",
                     strerror(-err));
            return err;
        }
        ps.netns = (__u64)st.st_ino;
    }
    err = pin_dir_prepare(pin_dir, why, whylen);
    if (err)
        return err;
    has_err = retransmit_tp_has_err(why, whylen);
    if (has_err < 0)
        return has_err;

    h = calloc(1, sizeof(*h));
    if (!h) {
        snprintf(why, whylen, "out of memory");
        return -ENOMEM;
    }
    h->map_fd = -1;
    for (i = 0; i < MAX_PROGS; i++)
        h->link_fd[i] = -1;

    /* Loaded with maps of its own, whatever is pinned: the verifier's pass is the price of comparing
     * program tags, and nothing is attached until the decision. */
    skel = peer_stats_bpf__open();
    if (!skel) {
        err = -errno;
        snprintf(why, whylen, "cannot open the BPF object: %s", strerror(-err));
        goto cleanup;
    }
    err = bpf_map__set_max_entries(skel->maps.peer_stats, ps.max_entries);
    if (err) {
        snprintf(why, whylen, "cannot size the map to %u entries: %s", ps.max_entries, strerror(-err));
        goto cleanup;
    }
    skel->rodata->target_netns = ps.netns;
    bpf_program__set_autoload(skel->progs.handle_retransmit_skb, has_err);
    bpf_program__set_autoload(skel->progs.handle_retransmit_skb_noerr, !has_err);
    err = peer_stats_bpf__load(skel);
    if (err) {
        if (err == -EPERM || err == -EACCES)
            snprintf(why, whylen, "the kernel refused to load the BPF programs (%s): needs root or CAP_BPF and "
                     "CAP_PERFMON, and a kernel not locked down", strerror(-err));
        else
            snprintf(why, whylen, "loading the BPF programs failed: %s (NEXTUP_LOG_LEVEL=debug shows "
                     "libbpf's log)", strerror(-err));
        goto cleanup;
    }

    lock = pin_dir_lock(pin_dir, why, whylen);
    if (lock < 0) {
        err = lock;
        goto cleanup;
    }
    err = pins_owner_check(&ps, why, whylen);
    if (err)
        goto cleanup;
    reused = pins_inspect(&ps, skel, h, reason, sizeof(reason), why, whylen);
    if (reused < 0) {
        err = reused;
        goto cleanup;
    }
    if (reused) {
        LOG_INFO("health_bpf: reusing pinned map %s and the programs attached to it (counters kept)",
                 ps.map_path);
    } else {
        if (pins_clear(&ps) > 0)
            LOG_INFO("health_bpf: replacing pinned map %s and its programs: %s", ps.map_path, reason);
        err = pins_create(&ps, skel, h, why, whylen);
        if (err)
            goto cleanup;
    }
    LOG_DEBUG("health_bpf: counting TCP peers of netns %llu in %s (max %u peers)", (unsigned long long)ps.netns,
              ps.map_path, ps.max_entries);
    *out = h;
    h = NULL;

cleanup:
    if (lock >= 0)
        close(lock);
    /* What is kept is in <h>: the skeleton's own fds go, pins and <h> keep the objects alive. */
    peer_stats_bpf__destroy(skel);
    health_bpf_close(h);
    return err;
}

int health_bpf_open(const struct health_bpf_opts *o, struct health_bpf **out, char *err, size_t errlen)
{
    char why[1024];
    int rc;

    if (err && errlen)
        err[0] = '\0';
    if (!o || !out)
        return -EINVAL;
    *out = NULL;
    if (o->mode == CONFIG_BPF_OFF)
        return 0;
    if (o->mode != CONFIG_BPF_AUTO && o->mode != CONFIG_BPF_ON) {
        if (err && errlen)
            snprintf(err, errlen, "NEXTUP_BPF: unknown mode %d", o->mode);
        return -EINVAL;
    }

    libbpf_set_print(libbpf_print);
    why[0] = '\0';
    rc = health_bpf_load(o, out, why, sizeof(why));
    if (rc == 0)
        return 0;
    if (o->mode == CONFIG_BPF_AUTO) {
        LOG_WARN("NEXTUP_BPF=auto: kernel peer counters disabled: %s", why);
        return 0;
    }
    if (err && errlen)
        snprintf(err, errlen, "NEXTUP_BPF=on: %s", why);
    return rc;
}

int health_bpf_lookup(struct health_bpf *h, const struct sockaddr *sa, struct peer_stats *out)
{
    struct peer_key key;
    struct sockaddr_in in;
    struct sockaddr_in6 in6;

    if (!h || !sa || !out)
        return -EINVAL;
    memset(&key, 0, sizeof(key));
    /* Copies, not casts: <sa> may be any suitably sized buffer. */
    switch (sa->sa_family) {
    case AF_INET:
        memcpy(&in, sa, sizeof(in));
        key.addr[10] = 0xff;
        key.addr[11] = 0xff;
        memcpy(&key.addr[12], &in.sin_addr, 4);
        key.port = ntohs(in.sin_port);
        key.family = AF_INET;
        break;
    case AF_INET6:
        memcpy(&in6, sa, sizeof(in6));
        memcpy(key.addr, &in6.sin6_addr, 16);
        key.port = ntohs(in6.sin6_port);
        key.family = IN6_IS_ADDR_V4MAPPED(&in6.sin6_addr) ? AF_INET : AF_INET6;
        break;
    default:
        return -EAFNOSUPPORT;
    }
    return bpf_map_lookup_elem(h->map_fd, &key, out);
}

void health_bpf_close(struct health_bpf *h)
{
    if (!h)
        return;
    /* Only this process's references: the pins keep the map and the programs attached. */
    health_bpf_drop_fds(h);
    free(h);
}

int health_bpf_map_fd(const struct health_bpf *h)
{
    return h ? h->map_fd : -EINVAL;
}
