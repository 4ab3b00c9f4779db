/* health_bpf: the user-space side of bpf/peer_stats.bpf.c.
 *
 * One program set per node, one counters map per pod (bpf/peer_stats.h has the layout):
 *   <node_dir>/<set>/netns_maps, link_<program>,  the set: loaded and attached by the first nextup of
 *                    prog_<program>                this build on the node, reused by every later one
 *   <node_dir>/<set>/ns/<inum>                     one empty directory per registered namespace; each
 *                                                  nextup of it holds a shared flock on it while it runs
 *   <pin_dir>/peer_stats, peer_stats_meta          the pod's own map, registered as netns_maps[<inum>]
 * <set> is named after the layout version and a hash of the BPF object: another build gets another set,
 * and both run side by side while each is used (a pod's map is registered with one set only, so nothing
 * counts twice). A set whose namespaces are all gone is removed by the next nextup that sweeps: the sets
 * on a node are bounded by the builds running there.
 *
 * open: open the object -> under the set dir's flock: inspect the set (each link_<prog> must run the
 * prog_<prog> pinned beside it on the pinned netns_maps) -> load (the programs only when the set must be
 * made: a nextup joining a set loads no program; the maps always, for a fresh pod map sized by
 * NEXTUP_BPF_MAX_PEERS) -> make the set if needed -> under the pin dir's flock: reuse the pod's map (same
 * layout, size, namespace and set) or replace it -> register it -> sweep -> unlock. close: the last nextup of a namespace removes its entry and its ns/<inum> dir.
 * sweep (from the health timer): entries whose ns/<inum> nobody holds (their nextups are gone, and with
 * them, for a pod, its namespace) are removed, and so are other sets left with no entry.
 *
 * Every decision that changes a set happens under an exclusive flock on its directory (bpffs holds no
 * regular files, but a directory can be flocked; the lock is on the inode, so it holds across containers
 * that share the node's bpffs); flocks on ns/<inum> change only under it. */
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

#include "clock.h"
#include "config.h"
#include "log.h"
#include "peer_stats.skel.h"

_Static_assert(sizeof(struct peer_key) == 24, "struct peer_key must have no hidden padding");
_Static_assert(sizeof(struct peer_stats) == 14 * 8, "struct peer_stats must be 14 __u64");
_Static_assert(sizeof(struct peer_stats_meta) == 24, "struct peer_stats_meta must have no hidden padding");

#define HEALTH_BPF_DEFAULT_MAX_PEERS 4096
#define HEALTH_BPF_DEFAULT_PIN_DIR "/sys/fs/bpf/nextup"
#define HEALTH_BPF_DEFAULT_NODE_DIR "/sys/fs/bpf/nextup-node"
#define VMLINUX_BTF "/sys/kernel/btf/vmlinux"
/* NEXTUP_BPF_PIN_DIR and NEXTUP_BPF_NODE_DIR are at most 255 bytes (struct config). */
#define PIN_DIR_MAX 256
#define SET_DIR_MAX (PIN_DIR_MAX + 32)
#define LINK_PREFIX "link_"
#define PROG_PREFIX "prog_"
#define SET_PREFIX "v"
/* How long a starting nextup waits for another one to finish setting up the same pin dir. */
#define PIN_LOCK_WAIT_MS 10000
/* Programs in the object; at most that many are attached (the two retransmit variants exclude each other). */
#define MAX_PROGS (sizeof(((struct peer_stats_bpf *)0)->progs) / sizeof(struct bpf_program *))

struct health_bpf {
    int map_fd;                     /* owned: the pod's peer_stats */
    int outer_fd;                   /* owned: the set's netns_maps */
    int set_fd;                     /* owned: the set dir, flocked (exclusively) only while changing it */
    int live_fd;                    /* owned: <set>/ns/<inum>, shared flock held while this nextup runs */
    int link_fd[MAX_PROGS];         /* owned: the set's links */
    __u64 netns;
    __u32 map_id;
    int64_t next_sweep_ms;
    char node_dir[PIN_DIR_MAX];
    char set_dir[SET_DIR_MAX];
};

/* One pin dir, and what this nextup needs to find in it. */
struct pin_set {
    const char *dir;
    char map_path[PIN_DIR_MAX + 16];     /* <dir>/peer_stats */
    char meta_path[PIN_DIR_MAX + 24];    /* <dir>/peer_stats_meta */
    __u32 max_entries;
    __u64 netns;
    __u64 set_id;
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

/* Takes an exclusive flock on the pin dir itself, waiting up to PIN_LOCK_WAIT_MS for another nextup
 * setting it up: the fd whose close releases it, or a negative errno with <why>. */
static int pin_dir_lock(const char *dir, const char *var, char *why, size_t whylen)
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

/* The record pinned at <path>: 0 with <meta> filled (its first 16 bytes keep their meaning in every
 * layout version, bpf/peer_stats.h; what a shorter record lacks reads 0); -ENOENT when nothing is pinned there, -EINVAL when it is
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
    memset(value, 0, sizeof(value));
    err = bpf_obj_get_info_by_fd(fd, &info, &len);
    /* 16 bytes (layout 2) name the owner too. */
    if (!err && (info.type != BPF_MAP_TYPE_ARRAY || info.key_size != sizeof(__u32) ||
                 info.value_size < 16 || info.value_size > sizeof(value)))
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

/* The fd of the link pinned at <dir>/link_<name> when it runs the program pinned at <dir>/prog_<name>,
 * which is named <name> and updates the map <map_id>. -1 with <reason> for anything else. Pinned
 * programs are what makes this check possible without CAP_SYS_ADMIN (which opening a program by the id
 * a link reports would need); the set dir's name already says which build's programs belong there. */
static int link_check(const char *dir, const char *name, __u32 map_id, char *reason, size_t reasonlen)
{
    char path[SET_DIR_MAX + 64];
    struct bpf_link_info link;
    struct bpf_prog_info prog;
    __u32 ids[8], i, n, len;
    int fd, pfd = -1;

    snprintf(path, sizeof(path), "%s/" LINK_PREFIX "%s", dir, name);
    fd = bpf_obj_get(path);
    if (fd < 0) {
        snprintf(reason, reasonlen, LINK_PREFIX "%s: %s", name, fd == -ENOENT ? "not pinned" : strerror(-fd));
        return -1;
    }
    memset(&link, 0, sizeof(link));
    len = sizeof(link);
    if (!fd_is_link(fd) || bpf_obj_get_info_by_fd(fd, &link, &len) != 0) {
        snprintf(reason, reasonlen, LINK_PREFIX "%s is not a BPF link", name);
        goto mismatch;
    }
    snprintf(path, sizeof(path), "%s/" PROG_PREFIX "%s", dir, name);
    pfd = bpf_obj_get(path);
    memset(&prog, 0, sizeof(prog));
    prog.nr_map_ids = sizeof(ids) / sizeof(ids[0]);
    prog.map_ids = (__u64)(unsigned long)ids;
    len = sizeof(prog);
    if (pfd < 0 || fd_is_link(pfd) || bpf_obj_get_info_by_fd(pfd, &prog, &len) != 0) {
        snprintf(reason, reasonlen, PROG_PREFIX "%s: not a pinned program", name);
        goto mismatch;
    }
    /* Kernel program names keep BPF_OBJ_NAME_LEN - 1 characters. */
    if (prog.type != BPF_PROG_TYPE_TRACING || strncmp(prog.name, name, sizeof(prog.name) - 1) != 0) {
        snprintf(reason, reasonlen, PROG_PREFIX "%s is no %s program", name, name);
        goto mismatch;
    }
    if (link.prog_id != prog.id) {
        snprintf(reason, reasonlen, LINK_PREFIX "%s runs other code than " PROG_PREFIX "%s", name, name);
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

/* Closes what <h> holds and marks it empty (its flocks go with the fds). */
static void health_bpf_drop_fds(struct health_bpf *h)
{
    int *fds[] = { &h->map_fd, &h->outer_fd, &h->set_fd, &h->live_fd };
    size_t i;

    for (i = 0; i < sizeof(fds) / sizeof(fds[0]); i++) {
        if (*fds[i] >= 0)
            close(*fds[i]);
        *fds[i] = -1;
    }
    for (i = 0; i < MAX_PROGS; i++) {
        if (h->link_fd[i] >= 0)
            close(h->link_fd[i]);
        h->link_fd[i] = -1;
    }
}

/* FNV-1a over the embedded BPF object: one build's programs and maps hash alike on every node, and
 * another build's (other code, another map layout) almost surely not. */
static __u64 object_hash(void)
{
    const unsigned char *p;
    __u64 hash = 0xcbf29ce484222325ULL;
    size_t sz = 0, i;

    p = peer_stats_bpf__elf_bytes(&sz);
    for (i = 0; i < sz; i++) {
        hash ^= p[i];
        hash *= 0x100000001b3ULL;
    }
    return hash;
}

static __u32 fd_map_id(int fd)
{
    struct bpf_map_info info;
    __u32 len = sizeof(info);

    memset(&info, 0, sizeof(info));
    return bpf_obj_get_info_by_fd(fd, &info, &len) == 0 ? info.id : 0;
}

/* Takes the exclusive flock on <fd>, waiting up to PIN_LOCK_WAIT_MS: 0, or a negative errno. */
static int lock_wait(int fd)
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

/* Creates and locks the set dir of <h>: the locked fd, or a negative errno with <why>. A set removed
 * by its last user while this one waited for its lock is made afresh (the lock of a removed directory
 * guards nothing). */
static int set_lock(struct health_bpf *h, char *why, size_t whylen)
{
    struct stat a, b;
    int fd, err, tries;

    for (tries = 0; tries < 5; tries++) {
        err = pin_dir_prepare(h->set_dir, why, whylen);
        if (err)
            return err;
        fd = pin_dir_lock(h->set_dir, "NEXTUP_BPF_NODE_DIR", why, whylen);
        if (fd < 0)
            return fd;
        if (fstat(fd, &a) == 0 && stat(h->set_dir, &b) == 0 && a.st_ino == b.st_ino && a.st_dev == b.st_dev)
            return fd;
        close(fd);
    }
    snprintf(why, whylen, "NEXTUP_BPF_NODE_DIR: %s keeps being removed while this nextup sets it up", h->set_dir);
    return -EAGAIN;
}

/* Decides on the program set pinned in <dir>, given the opened (not necessarily loaded) <skel>, whose
 * autoload flags say which programs this nextup attaches. 1: it is complete: a link per such program
 * running the program pinned beside it under its name, on the pinned netns_maps; <h> then holds fds on
 * that map and the links. 0: it must be made afresh (<reason> says why); <h> holds none of it. A negative
 * errno with <why> when it cannot be inspected. */
static int set_inspect(const char *dir, const struct peer_stats_bpf *skel, struct health_bpf *h, char *reason,
                       size_t reasonlen, char *why, size_t whylen)
{
    char path[SET_DIR_MAX + 64];
    struct bpf_map_info info;
    struct bpf_program *prog;
    struct dirent *de;
    size_t n = 0, i;
    __u32 len;
    DIR *d;
    int fd;

    reason[0] = '\0';
    snprintf(path, sizeof(path), "%s/netns_maps", dir);
    fd = bpf_obj_get(path);
    if (fd < 0) {
        if (fd != -ENOENT) {
            snprintf(why, whylen, "cannot open the node's pinned map %s: %s", path, strerror(-fd));
            return fd;
        }
        snprintf(reason, reasonlen, "no set pinned");
        return 0;
    }
    h->outer_fd = fd;
    memset(&info, 0, sizeof(info));
    len = sizeof(info);
    if (bpf_obj_get_info_by_fd(fd, &info, &len) != 0 || info.type != BPF_MAP_TYPE_HASH_OF_MAPS ||
        info.key_size != sizeof(__u64) || info.value_size != sizeof(__u32) || info.max_entries != NETNS_MAPS_MAX) {
        snprintf(reason, reasonlen, "%s is not this build's map of namespaces", path);
        goto redo;
    }
    bpf_object__for_each_program(prog, skel->obj) {
        if (!bpf_program__autoload(prog))
            continue;
        fd = link_check(dir, bpf_program__name(prog), info.id, reason, reasonlen);
        if (fd < 0)
            goto redo;
        h->link_fd[n++] = fd;
    }
    /* A link pinned for a program this nextup does not attach would count events a second time. */
    d = opendir(dir);
    while (d && (de = readdir(d)) && !reason[0])
        if (strncmp(de->d_name, LINK_PREFIX, strlen(LINK_PREFIX)) == 0 &&
            !prog_attached_here(skel, de->d_name + strlen(LINK_PREFIX)))
            snprintf(reason, reasonlen, "%s attaches a program this nextup does not", de->d_name);
    if (d)
        closedir(d);
    if (!reason[0])
        return 1;
redo:
    close(h->outer_fd);
    h->outer_fd = -1;
    for (i = 0; i < n; i++) {
        close(h->link_fd[i]);
        h->link_fd[i] = -1;
    }
    return 0;
}

/* Unpins every link_* and prog_* in <dir> (the programs are detached once no running nextup holds
 * them), then <dir>/<map> and, when given, <dir>/<meta>. How many pins were removed. */
static int pins_clear(const char *dir, const char *map, const char *meta)
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

/* Empties the netns_maps pinned in <dir> before the set is replaced: its programs (still attached while
 * a running nextup holds their links) then count nothing, and no event counts twice once those nextups
 * register with the new set (at their next sweep). */
static void set_empty(const char *dir)
{
    char path[SET_DIR_MAX + 32];
    __u64 key;
    int fd, n;

    snprintf(path, sizeof(path), "%s/netns_maps", dir);
    fd = bpf_obj_get(path);
    if (fd < 0)
        return;
    for (n = 0; n < NETNS_MAPS_MAX && bpf_map_get_next_key(fd, NULL, &key) == 0; n++)
        bpf_map_delete_elem(fd, &key);
    close(fd);
}

/* Pins <skel>'s netns_maps in the emptied set <dir>, then pins, attaches each program and pins its link. 0 with
 * <h> holding fds on the map and the links; or a negative errno with <why>, and nothing left pinned. */
static int set_create(const char *dir, struct peer_stats_bpf *skel, struct health_bpf *h, char *why, size_t whylen)
{
    char path[SET_DIR_MAX + 64];
    struct bpf_program *prog;
    struct bpf_link *link;
    size_t n = 0, i;
    int err;

    snprintf(path, sizeof(path), "%s/netns_maps", dir);
    err = bpf_map__pin(skel->maps.netns_maps, path);
    if (err) {
        snprintf(why, whylen, "cannot pin the node's map at %s: %s", path, strerror(-err));
        return err;
    }
    h->outer_fd = fcntl(bpf_map__fd(skel->maps.netns_maps), F_DUPFD_CLOEXEC, 0);
    if (h->outer_fd < 0) {
        err = -errno;
        snprintf(why, whylen, "cannot keep the node's map: %s", strerror(-err));
        goto undo;
    }
    bpf_object__for_each_program(prog, skel->obj) {
        if (!bpf_program__autoload(prog))
            continue;
        snprintf(path, sizeof(path), "%s/" PROG_PREFIX "%s", dir, bpf_program__name(prog));
        err = bpf_obj_pin(bpf_program__fd(prog), path);
        if (err) {
            snprintf(why, whylen, "cannot pin the program at %s: %s", path, strerror(-err));
            goto undo;
        }
        link = bpf_program__attach(prog);
        if (!link) {
            err = -errno;
            snprintf(why, whylen, "attaching the tp_btf program %s failed: %s", bpf_program__name(prog),
                     strerror(-err));
            goto undo;
        }
        snprintf(path, sizeof(path), "%s/" LINK_PREFIX "%s", dir, bpf_program__name(prog));
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
    pins_clear(dir, "netns_maps", NULL);
    if (h->outer_fd >= 0)
        close(h->outer_fd);
    h->outer_fd = -1;
    for (i = 0; i < n; i++) {
        close(h->link_fd[i]);
        h->link_fd[i] = -1;
    }
    return err;
}

/* Decides on the pod's pins in <ps> (whose owner pins_owner_check accepted). 1: its map is what this
 * nextup would make (type, sizes, NEXTUP_BPF_MAX_PEERS, layout, program set); h->map_fd then holds it.
 * 0: it must be replaced (<reason> says why, "no map pinned" for an empty dir). A negative errno with
 * <why> when the pins cannot be inspected. */
static int pod_inspect(const struct pin_set *ps, struct health_bpf *h, char *reason, size_t reasonlen, char *why,
                       size_t whylen)
{
    struct peer_stats_meta meta;
    struct bpf_map_info info;
    struct dirent *de;
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
    else if (meta.set_id != ps->set_id)
        snprintf(reason, reasonlen, "fed by program set %016llx, this nextup runs %016llx (another nextup build)",
                 (unsigned long long)meta.set_id, (unsigned long long)ps->set_id);
    /* Links in the pod's own dir are an older nextup's per-pod programs: unpinned with the map they feed. */
    d = reason[0] ? NULL : opendir(ps->dir);
    while (d && (de = readdir(d)) && !reason[0])
        if (strncmp(de->d_name, LINK_PREFIX, strlen(LINK_PREFIX)) == 0)
            snprintf(reason, reasonlen, "%s: programs of a nextup with one set per pod", de->d_name);
    if (d)
        closedir(d);
    if (reason[0]) {
        close(fd);
        return 0;
    }
    h->map_fd = fd;
    return 1;
}

/* Pins <skel>'s peer_stats and its meta record (written first: it names the owner) in the emptied
 * <ps>. 0 with h->map_fd holding the map, or a negative errno with <why> and nothing left pinned. */
static int pod_create(const struct pin_set *ps, struct peer_stats_bpf *skel, struct health_bpf *h, char *why,
                      size_t whylen)
{
    struct peer_stats_meta meta = { .layout_version = PEER_STATS_LAYOUT_VERSION, .netns_inum = ps->netns,
                                    .set_id = ps->set_id };
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
    if (h->map_fd >= 0)
        return 0;
    err = -errno;
    snprintf(why, whylen, "cannot keep the map: %s", strerror(-err));
undo:
    if (bpf_map__is_pinned(skel->maps.peer_stats))
        bpf_map__unpin(skel->maps.peer_stats, NULL);
    if (bpf_map__is_pinned(skel->maps.peer_stats_meta))
        bpf_map__unpin(skel->maps.peer_stats_meta, NULL);
    return err;
}

/* Whether a running nextup holds <set_dir>/ns/<netns> (the caller holds the set's lock, so nobody takes
 * or drops those flocks meanwhile). */
static bool ns_held(const char *set_dir, __u64 netns)
{
    char path[SET_DIR_MAX + 32];
    bool held;
    int fd;

    snprintf(path, sizeof(path), "%s/ns/%llu", set_dir, (unsigned long long)netns);
    fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return false;
    held = flock(fd, LOCK_EX | LOCK_NB) != 0;
    close(fd);
    return held;
}

/* Removes from the set in <set_dir> (locked by the caller; <outer> its netns_maps) the entries of
 * namespaces no running nextup holds, and their ns/ dirs: nextups that died without their exit, and
 * with them, for a pod, its namespace. How many entries went. */
static int set_sweep(const char *set_dir, int outer)
{
    char path[SET_DIR_MAX + 32];
    __u64 *keys, key, *prev = NULL;
    struct dirent *de;
    int n = 0, i, removed = 0;
    DIR *d;

    keys = calloc(NETNS_MAPS_MAX, sizeof(*keys));
    if (!keys)
        return -ENOMEM;
    /* Keys first, deletions after: deleting while walking may skip entries. */
    while (n < NETNS_MAPS_MAX && bpf_map_get_next_key(outer, prev, &key) == 0) {
        keys[n] = key;
        prev = &keys[n++];
    }
    for (i = 0; i < n; i++) {
        if (ns_held(set_dir, keys[i]))
            continue;
        if (bpf_map_delete_elem(outer, &keys[i]) == 0) {
            removed++;
            LOG_INFO("health_bpf: removed network namespace %llu from %s: no nextup runs there any more",
                     (unsigned long long)keys[i], set_dir);
        }
    }
    free(keys);
    snprintf(path, sizeof(path), "%s/ns", set_dir);
    d = opendir(path);
    while (d && (de = readdir(d))) {
        char *end;
        unsigned long long inum = strtoull(de->d_name, &end, 10);

        if (de->d_name[0] == '.' || *end || ns_held(set_dir, inum))
            continue;
        snprintf(path, sizeof(path), "%s/ns/%s", set_dir, de->d_name);
        rmdir(path);
    }
    if (d)
        closedir(d);
    return removed;
}

/* Unpins the set in <set_dir> (locked by the caller) when no namespace is registered in it any more:
 * its programs are detached once no running nextup holds their links. Whether it was removed. */
static bool set_remove_if_unused(const char *set_dir, int outer)
{
    char path[SET_DIR_MAX + 32];
    __u64 key;

    if (outer >= 0 && bpf_map_get_next_key(outer, NULL, &key) == 0)
        return false;
    pins_clear(set_dir, "netns_maps", NULL);
    snprintf(path, sizeof(path), "%s/ns", set_dir);
    rmdir(path);
    return rmdir(set_dir) == 0;
}

/* Sweeps every other set in <node_dir> not locked at the moment, and removes those left without an
 * entry: the programs of builds no nextup on the node runs any more. */
static void node_sweep_others(const char *node_dir, const char *own_set)
{
    char path[SET_DIR_MAX + 300];
    struct dirent *de;
    int fd, outer;
    DIR *d;

    d = opendir(node_dir);
    while (d && (de = readdir(d))) {
        if (strncmp(de->d_name, SET_PREFIX, strlen(SET_PREFIX)) != 0 || de->d_type != DT_DIR)
            continue;
        snprintf(path, sizeof(path), "%s/%s", node_dir, de->d_name);
        if (strcmp(path, own_set) == 0)
            continue;
        fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
            continue;
        if (flock(fd, LOCK_EX | LOCK_NB) == 0) {
            snprintf(path + strlen(path), sizeof(path) - strlen(path), "/netns_maps");
            outer = bpf_obj_get(path);
            path[strlen(path) - strlen("/netns_maps")] = '\0';
            if (outer >= 0)
                set_sweep(path, outer);
            if (set_remove_if_unused(path, outer))
                LOG_INFO("health_bpf: removed the program set %s: no nextup of that build runs on this node", path);
            if (outer >= 0)
                close(outer);
        }
        close(fd);
    }
    if (d)
        closedir(d);
}

/* Registers h->map_fd as netns_maps[h->netns] in the set (locked by the caller) and keeps a shared flock
 * on <set>/ns/<netns> while this nextup runs. -EBUSY with <why> when another running nextup of this
 * namespace counts into another map (another pin dir). */
static int ns_register(struct health_bpf *h, const char *pin_dir, char *why, size_t whylen)
{
    char path[SET_DIR_MAX + 32];
    __u32 cur = 0;
    bool alone, have;
    int fd, err;

    snprintf(path, sizeof(path), "%s/ns", h->set_dir);
    if (mkdir(path, 0700) != 0 && errno != EEXIST)
        goto fs_err;
    snprintf(path, sizeof(path), "%s/ns/%llu", h->set_dir, (unsigned long long)h->netns);
    if (mkdir(path, 0700) != 0 && errno != EEXIST)
        goto fs_err;
    fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        goto fs_err;
    alone = flock(fd, LOCK_EX | LOCK_NB) == 0;
    have = bpf_map_lookup_elem(h->outer_fd, &h->netns, &cur) == 0;
    if (!alone && have && cur != h->map_id) {
        snprintf(why, whylen, "NEXTUP_BPF_PIN_DIR=%s: another running nextup counts network namespace %llu into "
                 "another map (id %u): the nextups of one pod must share one pin dir", pin_dir,
                 (unsigned long long)h->netns, cur);
        close(fd);
        return -EBUSY;
    }
    if (!have || cur != h->map_id) {
        err = bpf_map_update_elem(h->outer_fd, &h->netns, &h->map_fd, BPF_ANY);
        if (err) {
            snprintf(why, whylen, "cannot register network namespace %llu in %s/netns_maps: %s%s",
                     (unsigned long long)h->netns, h->set_dir, strerror(-err),
                     err == -E2BIG || err == -ENOSPC ? " (the node's set serves at most " "4096 namespaces)" : "");
            close(fd);
            return err;
        }
        if (have)
            LOG_INFO("health_bpf: network namespace %llu was registered with map id %u, left by a nextup gone "
                     "since: now %u", (unsigned long long)h->netns, cur, h->map_id);
    }
    /* From exclusive (alone) or nothing to shared; the set's lock keeps others from meddling meanwhile. */
    if (flock(fd, LOCK_SH) != 0) {
        err = -errno;
        snprintf(why, whylen, "cannot lock %s: %s", path, strerror(-err));
        close(fd);
        return err;
    }
    h->live_fd = fd;
    return 0;

fs_err:
    err = -errno;
    snprintf(why, whylen, "cannot make %s: %s", path, strerror(-err));
    return err;
}

/* Loads the programs for <o>; then, under the set's lock, reuses or makes the node's set, reuses or
 * replaces the pod's map (under the pin dir's lock too), registers it and sweeps. The reason of a
 * failure goes to <why>, without the NEXTUP_BPF= prefix the caller adds. */
static int health_bpf_load(const struct health_bpf_opts *o, struct health_bpf **out, char *why, size_t whylen)
{
    const char *pin_dir = o->pin_dir && o->pin_dir[0] ? o->pin_dir : HEALTH_BPF_DEFAULT_PIN_DIR;
    const char *node_dir = o->node_dir && o->node_dir[0] ? o->node_dir : HEALTH_BPF_DEFAULT_NODE_DIR;
    struct peer_stats_bpf *skel = NULL;
    struct health_bpf *h = NULL;
    struct pin_set ps;
    char reason[SET_DIR_MAX + 128];
    struct stat st;
    int err, has_err, reused, lock = -1;
    size_t i;

    memset(&ps, 0, sizeof(ps));
    ps.dir = pin_dir;
    ps.max_entries = o->max_peers > 0 ? (__u32)o->max_peers : HEALTH_BPF_DEFAULT_MAX_PEERS;
    ps.netns = o->netns_inum;
    ps.set_id = object_hash();
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
    if (strlen(node_dir) >= PIN_DIR_MAX) {
        snprintf(why, whylen, "NEXTUP_BPF_NODE_DIR is too long");
        return -EINVAL;
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
    h->map_fd = h->outer_fd = h->set_fd = h->live_fd = -1;
    for (i = 0; i < MAX_PROGS; i++)
        h->link_fd[i] = -1;
    h->netns = ps.netns;
    snprintf(h->node_dir, sizeof(h->node_dir), "%s", node_dir);
    snprintf(h->set_dir, sizeof(h->set_dir), "%s/" SET_PREFIX "%u-%016llx", node_dir, PEER_STATS_LAYOUT_VERSION,
             (unsigned long long)ps.set_id);

    /* Opened now, loaded once the set is inspected: programs only to make a set, maps in any case (the
     * pod's map, sized and with BTF, should it need a new one). */
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
    bpf_program__set_autoload(skel->progs.handle_retransmit_skb, has_err);
    bpf_program__set_autoload(skel->progs.handle_retransmit_skb_noerr, !has_err);

    err = set_lock(h, why, whylen);
    if (err < 0)
        goto cleanup;
    h->set_fd = err;
    reused = set_inspect(h->set_dir, skel, h, reason, sizeof(reason), why, whylen);
    if (reused < 0) {
        err = reused;
        goto cleanup;
    }
    /* With the set running, only the maps are made (a pod map, should this pod need a new one): no
     * program of this nextup is loaded, so the node's count of nextup programs stays the set's. */
    if (reused) {
        struct bpf_program *prog;

        bpf_object__for_each_program(prog, skel->obj)
            bpf_program__set_autoload(prog, false);
    }
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
    if (!reused) {
        set_empty(h->set_dir);
        if (pins_clear(h->set_dir, "netns_maps", NULL) > 0)
            LOG_INFO("health_bpf: replacing the program set %s: %s", h->set_dir, reason);
        err = set_create(h->set_dir, skel, h, why, whylen);
        if (err)
            goto cleanup;
        LOG_DEBUG("health_bpf: loaded and attached the node's program set %s", h->set_dir);
    }

    lock = pin_dir_lock(pin_dir, "NEXTUP_BPF_PIN_DIR", why, whylen);
    if (lock < 0) {
        err = lock;
        goto cleanup;
    }
    err = pins_owner_check(&ps, why, whylen);
    if (err)
        goto cleanup;
    reused = pod_inspect(&ps, h, reason, sizeof(reason), why, whylen);
    if (reused < 0) {
        err = reused;
        goto cleanup;
    }
    if (reused) {
        LOG_INFO("health_bpf: reusing pinned map %s (counters kept)", ps.map_path);
    } else {
        if (pins_clear(pin_dir, "peer_stats", "peer_stats_meta") > 0)
            LOG_INFO("health_bpf: replacing pinned map %s: %s", ps.map_path, reason);
        err = pod_create(&ps, skel, h, why, whylen);
        if (err)
            goto cleanup;
    }
    h->map_id = fd_map_id(h->map_fd);
    err = ns_register(h, pin_dir, why, whylen);
    if (err)
        goto cleanup;
    set_sweep(h->set_dir, h->outer_fd);
    node_sweep_others(node_dir, h->set_dir);
    flock(h->set_fd, LOCK_UN);
    h->next_sweep_ms = clock_mono_ms() + HEALTH_BPF_SWEEP_MS;
    LOG_DEBUG("health_bpf: counting TCP peers of netns %llu in %s (max %u peers), program set %s",
              (unsigned long long)ps.netns, ps.map_path, ps.max_entries, h->set_dir);
    *out = h;
    h = NULL;

cleanup:
    if (lock >= 0)
        close(lock);
    /* What is kept is in <h>: the skeleton's own fds go, pins and <h> keep the objects alive. */
    peer_stats_bpf__destroy(skel);
    if (h && h->set_fd >= 0 && h->outer_fd >= 0)
        set_remove_if_unused(h->set_dir, h->outer_fd);
    if (h) {
        health_bpf_drop_fds(h);
        free(h);
    }
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

/* When another nextup replaced the set <h> registered with (a damaged one: set_inspect), moves <h> to
 * the set now pinned there: its netns_maps, where the sweep then registers <h>'s map. */
static void set_follow(struct health_bpf *h)
{
    char path[SET_DIR_MAX + 32];
    size_t i;
    int fd;

    snprintf(path, sizeof(path), "%s/netns_maps", h->set_dir);
    fd = bpf_obj_get(path);
    if (fd < 0)
        return;
    if (fd_map_id(fd) == fd_map_id(h->outer_fd)) {
        close(fd);
        return;
    }
    LOG_INFO("health_bpf: the program set %s was replaced: registering with the new one", h->set_dir);
    close(h->outer_fd);
    h->outer_fd = fd;
    /* The old set's links: unpinned already, detached once their last holder lets go. */
    for (i = 0; i < MAX_PROGS; i++) {
        if (h->link_fd[i] >= 0)
            close(h->link_fd[i]);
        h->link_fd[i] = -1;
    }
}

int health_bpf_sweep(struct health_bpf *h)
{
    int64_t now = clock_mono_ms();
    __u32 cur = 0;
    int removed;

    if (!h)
        return -EINVAL;
    if (now < h->next_sweep_ms)
        return 0;
    h->next_sweep_ms = now + HEALTH_BPF_SWEEP_MS;
    /* Busy: another nextup is setting up or sweeping this set; the next round will do. */
    if (flock(h->set_fd, LOCK_EX | LOCK_NB) != 0)
        return 0;
    set_follow(h);
    removed = set_sweep(h->set_dir, h->outer_fd);
    /* Our own entry, should anything have removed it: counting must not stop while we run. */
    if (bpf_map_lookup_elem(h->outer_fd, &h->netns, &cur) != 0 || cur != h->map_id)
        bpf_map_update_elem(h->outer_fd, &h->netns, &h->map_fd, BPF_ANY);
    node_sweep_others(h->node_dir, h->set_dir);
    flock(h->set_fd, LOCK_UN);
    return removed;
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
    char path[SET_DIR_MAX + 32];
    __u32 cur = 0;

    if (!h)
        return;
    /* The last nextup of its namespace takes the namespace out of the set (and the set off the node
     * when it was the last one there). Another one of the same namespace (a hand-over) holds the ns
     * dir too: then nothing changes. The pod's map stays pinned, with its counters, for a restart. */
    if (h->live_fd >= 0 && h->set_fd >= 0 && lock_wait(h->set_fd) == 0) {
        if (flock(h->live_fd, LOCK_EX | LOCK_NB) == 0) {
            if (bpf_map_lookup_elem(h->outer_fd, &h->netns, &cur) == 0 && cur == h->map_id)
                bpf_map_delete_elem(h->outer_fd, &h->netns);
            snprintf(path, sizeof(path), "%s/ns/%llu", h->set_dir, (unsigned long long)h->netns);
            rmdir(path);
            if (set_remove_if_unused(h->set_dir, h->outer_fd))
                LOG_DEBUG("health_bpf: the last nextup on this node removed the program set %s", h->set_dir);
        }
        flock(h->set_fd, LOCK_UN);
    }
    health_bpf_drop_fds(h);
    free(h);
}

int health_bpf_map_fd(const struct health_bpf *h)
{
    return h ? h->map_fd : -EINVAL;
}
