/* bpf_node: the node's program set (bpf_node.h has the API; bpf/peer_stats.h the map layout).
 *
 *   <node_dir>/<set>/netns_maps, link_<program>,  the set: loaded and attached by the first nextup of
 *                    prog_<program>                this build on the node, reused by every later one
 *   <node_dir>/<set>/ns/<inum>                     one empty directory per registered namespace; each
 *                                                  nextup of it holds a shared flock on it while it runs
 * <set> is named after the layout version and a hash of the BPF object: another build gets another set,
 * and both run side by side while each is used (a pod's map is registered with one set only, so nothing
 * counts twice). A set whose namespaces are all gone is removed by the next nextup that sweeps: the sets
 * on a node are bounded by the builds running there.
 *
 * open: under the set dir's flock, inspect the set (each link_<prog> must run the prog_<prog> pinned
 * beside it on the pinned netns_maps); the caller loads the programs only when the set must be made (a
 * nextup joining a set loads no program) -> create -> register the pod's map -> sweep -> unlock.
 * close: the last nextup of a namespace removes its entry and its ns/<inum> dir.
 * sweep (from the health timer): entries whose ns/<inum> nobody holds (their nextups are gone, and with
 * them, for a pod, its namespace) are removed, and so are other sets left with no entry.
 *
 * Every decision that changes a set happens under an exclusive flock on its directory (bpffs.h); flocks
 * on ns/<inum> change only under it. The log lines still say "health_bpf:": operators and tests know
 * the kernel counters by that name. No skeleton here: the object comes from health_bpf.c, the one file
 * bpf/bpf.mk's variant build recompiles with another object. */
#include "bpf_node.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "bpffs.h"
#include "log.h"
#include "peer_stats.h"

#define SET_PREFIX "v"

struct bpf_node {
    int outer_fd;                   /* owned: the set's netns_maps */
    int set_fd;                     /* owned: the set dir, flocked (exclusively) only while changing it */
    int live_fd;                    /* owned: <set>/ns/<inum>, shared flock held while this nextup runs */
    int link_fd[BPF_NODE_MAX_PROGS]; /* owned: the set's links */
    int map_fd;                     /* borrowed: the pod's peer_stats, registered for <netns> */
    __u64 netns;
    __u32 map_id;
    char node_dir[PIN_DIR_MAX];
    char set_dir[SET_DIR_MAX];
    char reason[SET_DIR_MAX + 128]; /* why bpf_node_open found the set must be made */
};

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
static bool prog_attached_here(const struct bpf_object *obj, const char *name)
{
    struct bpf_program *prog;

    bpf_object__for_each_program(prog, obj)
        if (bpf_program__autoload(prog) && strcmp(bpf_program__name(prog), name) == 0)
            return true;
    return false;
}

/* Closes what <node> holds and marks it empty (its flocks go with the fds). */
static void node_drop_fds(struct bpf_node *node)
{
    int *fds[] = { &node->outer_fd, &node->set_fd, &node->live_fd };
    size_t i;

    for (i = 0; i < sizeof(fds) / sizeof(fds[0]); i++) {
        if (*fds[i] >= 0)
            close(*fds[i]);
        *fds[i] = -1;
    }
    for (i = 0; i < BPF_NODE_MAX_PROGS; i++) {
        if (node->link_fd[i] >= 0)
            close(node->link_fd[i]);
        node->link_fd[i] = -1;
    }
}

static __u32 fd_map_id(int fd)
{
    struct bpf_map_info info;
    __u32 len = sizeof(info);

    memset(&info, 0, sizeof(info));
    return bpf_obj_get_info_by_fd(fd, &info, &len) == 0 ? info.id : 0;
}

/* Creates and locks the set dir of <node>: the locked fd, or a negative errno with <why>. A set removed
 * by its last user while this one waited for its lock is made afresh (the lock of a removed directory
 * guards nothing). */
static int set_lock(struct bpf_node *node, char *why, size_t whylen)
{
    struct stat a, b;
    int fd, err, tries;

    for (tries = 0; tries < 5; tries++) {
        err = bpffs_dir_prepare(node->set_dir, why, whylen);
        if (err)
            return err;
        fd = bpffs_dir_lock(node->set_dir, "NEXTUP_BPF_NODE_DIR", why, whylen);
        if (fd < 0)
            return fd;
        if (fstat(fd, &a) == 0 && stat(node->set_dir, &b) == 0 && a.st_ino == b.st_ino && a.st_dev == b.st_dev)
            return fd;
        close(fd);
    }
    snprintf(why, whylen, "NEXTUP_BPF_NODE_DIR: %s keeps being removed while this nextup sets it up", node->set_dir);
    return -EAGAIN;
}

/* Decides on the program set pinned in <dir>, given the opened (not necessarily loaded) <obj>, whose
 * autoload flags say which programs this nextup attaches. 1: it is complete: a link per such program
 * running the program pinned beside it under its name, on the pinned netns_maps; <node> then holds fds on
 * that map and the links. 0: it must be made afresh (<reason> says why); <node> holds none of it. A negative
 * errno with <why> when it cannot be inspected. */
static int set_inspect(const char *dir, const struct bpf_object *obj, struct bpf_node *node, char *reason,
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
    node->outer_fd = fd;
    memset(&info, 0, sizeof(info));
    len = sizeof(info);
    if (bpf_obj_get_info_by_fd(fd, &info, &len) != 0 || info.type != BPF_MAP_TYPE_HASH_OF_MAPS ||
        info.key_size != sizeof(__u64) || info.value_size != sizeof(__u32) || info.max_entries != NETNS_MAPS_MAX) {
        snprintf(reason, reasonlen, "%s is not this build's map of namespaces", path);
        goto redo;
    }
    bpf_object__for_each_program(prog, obj) {
        if (!bpf_program__autoload(prog))
            continue;
        fd = link_check(dir, bpf_program__name(prog), info.id, reason, reasonlen);
        if (fd < 0)
            goto redo;
        node->link_fd[n++] = fd;
    }
    /* A link pinned for a program this nextup does not attach would count events a second time. */
    d = opendir(dir);
    while (d && (de = readdir(d)) && !reason[0])
        if (strncmp(de->d_name, LINK_PREFIX, strlen(LINK_PREFIX)) == 0 &&
            !prog_attached_here(obj, de->d_name + strlen(LINK_PREFIX)))
            snprintf(reason, reasonlen, "%s attaches a program this nextup does not", de->d_name);
    if (d)
        closedir(d);
    if (!reason[0])
        return 1;
redo:
    close(node->outer_fd);
    node->outer_fd = -1;
    for (i = 0; i < n; i++) {
        close(node->link_fd[i]);
        node->link_fd[i] = -1;
    }
    return 0;
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

/* Pins <obj>'s netns_maps in the emptied set <dir>, then pins, attaches each program and pins its link. 0 with
 * <node> holding fds on the map and the links; or a negative errno with <why>, and nothing left pinned. */
static int set_create(const char *dir, struct bpf_object *obj, struct bpf_node *node, char *why, size_t whylen)
{
    struct bpf_map *outer = bpf_object__find_map_by_name(obj, "netns_maps");
    char path[SET_DIR_MAX + 64];
    struct bpf_program *prog;
    struct bpf_link *link;
    size_t n = 0, i;
    int err;

    snprintf(path, sizeof(path), "%s/netns_maps", dir);
    err = outer ? bpf_map__pin(outer, path) : -ENOENT;
    if (err) {
        snprintf(why, whylen, "cannot pin the node's map at %s: %s", path, strerror(-err));
        return err;
    }
    node->outer_fd = fcntl(bpf_map__fd(outer), F_DUPFD_CLOEXEC, 0);
    if (node->outer_fd < 0) {
        err = -errno;
        snprintf(why, whylen, "cannot keep the node's map: %s", strerror(-err));
        goto undo;
    }
    bpf_object__for_each_program(prog, obj) {
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
        /* The fd moves to <node>: destroying the libbpf object then leaves the link attached. */
        node->link_fd[n++] = bpf_link__fd(link);
        bpf_link__disconnect(link);
        bpf_link__destroy(link);
    }
    return 0;

undo:
    bpffs_pins_clear(dir, "netns_maps", NULL);
    if (node->outer_fd >= 0)
        close(node->outer_fd);
    node->outer_fd = -1;
    for (i = 0; i < n; i++) {
        close(node->link_fd[i]);
        node->link_fd[i] = -1;
    }
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
    bpffs_pins_clear(set_dir, "netns_maps", NULL);
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

/* Registers node->map_fd as netns_maps[node->netns] in the set (locked by the caller) and keeps a shared flock
 * on <set>/ns/<netns> while this nextup runs. -EBUSY with <why> when another running nextup of this
 * namespace counts into another map (another pin dir). */
static int ns_register(struct bpf_node *node, const char *pin_dir, char *why, size_t whylen)
{
    char path[SET_DIR_MAX + 32];
    __u32 cur = 0;
    bool alone, have;
    int fd, err;

    snprintf(path, sizeof(path), "%s/ns", node->set_dir);
    if (mkdir(path, 0700) != 0 && errno != EEXIST)
        goto fs_err;
    snprintf(path, sizeof(path), "%s/ns/%llu", node->set_dir, (unsigned long long)node->netns);
    if (mkdir(path, 0700) != 0 && errno != EEXIST)
        goto fs_err;
    fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        goto fs_err;
    alone = flock(fd, LOCK_EX | LOCK_NB) == 0;
    have = bpf_map_lookup_elem(node->outer_fd, &node->netns, &cur) == 0;
    if (!alone && have && cur != node->map_id) {
        snprintf(why, whylen, "NEXTUP_BPF_PIN_DIR=%s: another running nextup counts network namespace %llu into "
                 "another map (id %u): the nextups of one pod must share one pin dir", pin_dir,
                 (unsigned long long)node->netns, cur);
        close(fd);
        return -EBUSY;
    }
    if (!have || cur != node->map_id) {
        err = bpf_map_update_elem(node->outer_fd, &node->netns, &node->map_fd, BPF_ANY);
        if (err) {
            snprintf(why, whylen, "cannot register network namespace %llu in %s/netns_maps: %s%s",
                     (unsigned long long)node->netns, node->set_dir, strerror(-err),
                     err == -E2BIG || err == -ENOSPC ? " (the node's set serves at most " "4096 namespaces)" : "");
            close(fd);
            return err;
        }
        if (have)
            LOG_INFO("health_bpf: network namespace %llu was registered with map id %u, left by a nextup gone "
                     "since: now %u", (unsigned long long)node->netns, cur, node->map_id);
    }
    /* From exclusive (alone) or nothing to shared; the set's lock keeps others from meddling meanwhile. */
    if (flock(fd, LOCK_SH) != 0) {
        err = -errno;
        snprintf(why, whylen, "cannot lock %s: %s", path, strerror(-err));
        close(fd);
        return err;
    }
    node->live_fd = fd;
    return 0;

fs_err:
    err = -errno;
    snprintf(why, whylen, "cannot make %s: %s", path, strerror(-err));
    return err;
}

/* When another nextup replaced the set <node> registered with (a damaged one: set_inspect), moves <node>
 * to the set now pinned there: its netns_maps, where the sweep then registers <node>'s map. */
static void set_follow(struct bpf_node *node)
{
    char path[SET_DIR_MAX + 32];
    size_t i;
    int fd;

    snprintf(path, sizeof(path), "%s/netns_maps", node->set_dir);
    fd = bpf_obj_get(path);
    if (fd < 0)
        return;
    if (fd_map_id(fd) == fd_map_id(node->outer_fd)) {
        close(fd);
        return;
    }
    LOG_INFO("health_bpf: the program set %s was replaced: registering with the new one", node->set_dir);
    close(node->outer_fd);
    node->outer_fd = fd;
    /* The old set's links: unpinned already, detached once their last holder lets go. */
    for (i = 0; i < BPF_NODE_MAX_PROGS; i++) {
        if (node->link_fd[i] >= 0)
            close(node->link_fd[i]);
        node->link_fd[i] = -1;
    }
}


int bpf_node_open(const char *node_dir, __u64 set_id, __u64 netns, const struct bpf_object *obj,
                  struct bpf_node **out, char *why, size_t whylen)
{
    struct bpf_node *node;
    size_t i;
    int err;

    *out = NULL;
    node = calloc(1, sizeof(*node));
    if (!node) {
        snprintf(why, whylen, "out of memory");
        return -ENOMEM;
    }
    node->outer_fd = node->set_fd = node->live_fd = node->map_fd = -1;
    for (i = 0; i < BPF_NODE_MAX_PROGS; i++)
        node->link_fd[i] = -1;
    node->netns = netns;
    snprintf(node->node_dir, sizeof(node->node_dir), "%s", node_dir);
    snprintf(node->set_dir, sizeof(node->set_dir), "%s/" SET_PREFIX "%u-%016llx", node_dir,
             PEER_STATS_LAYOUT_VERSION, (unsigned long long)set_id);

    err = set_lock(node, why, whylen);
    if (err < 0)
        goto fail;
    node->set_fd = err;
    err = set_inspect(node->set_dir, obj, node, node->reason, sizeof(node->reason), why, whylen);
    if (err < 0)
        goto fail;
    *out = node;
    return err;

fail:
    node_drop_fds(node);
    free(node);
    return err;
}

int bpf_node_create(struct bpf_node *node, struct bpf_object *obj, char *why, size_t whylen)
{
    int err;

    set_empty(node->set_dir);
    if (bpffs_pins_clear(node->set_dir, "netns_maps", NULL) > 0)
        LOG_INFO("health_bpf: replacing the program set %s: %s", node->set_dir, node->reason);
    err = set_create(node->set_dir, obj, node, why, whylen);
    if (err)
        return err;
    LOG_DEBUG("health_bpf: loaded and attached the node's program set %s", node->set_dir);
    return 0;
}

int bpf_node_register(struct bpf_node *node, int map_fd, const char *pin_dir, char *why, size_t whylen)
{
    int err;

    node->map_fd = map_fd;
    node->map_id = fd_map_id(map_fd);
    err = ns_register(node, pin_dir, why, whylen);
    if (err)
        return err;
    set_sweep(node->set_dir, node->outer_fd);
    node_sweep_others(node->node_dir, node->set_dir);
    flock(node->set_fd, LOCK_UN);
    return 0;
}

int bpf_node_sweep(struct bpf_node *node)
{
    __u32 cur = 0;
    int removed;

    if (!node)
        return -EINVAL;
    /* Busy: another nextup is setting up or sweeping this set; the next round will do. */
    if (flock(node->set_fd, LOCK_EX | LOCK_NB) != 0)
        return 0;
    set_follow(node);
    removed = set_sweep(node->set_dir, node->outer_fd);
    /* Our own entry, should anything have removed it: counting must not stop while we run. */
    if (bpf_map_lookup_elem(node->outer_fd, &node->netns, &cur) != 0 || cur != node->map_id)
        bpf_map_update_elem(node->outer_fd, &node->netns, &node->map_fd, BPF_ANY);
    node_sweep_others(node->node_dir, node->set_dir);
    flock(node->set_fd, LOCK_UN);
    return removed;
}

void bpf_node_close(struct bpf_node *node)
{
    char path[SET_DIR_MAX + 32];
    __u32 cur = 0;

    if (!node)
        return;
    if (node->live_fd < 0) {
        /* An open given up before its namespace was registered: the set is still locked by it, and
         * goes if nobody else's namespace is in it (a set this open made for nothing, say). */
        if (node->set_fd >= 0 && node->outer_fd >= 0)
            set_remove_if_unused(node->set_dir, node->outer_fd);
    } else if (node->set_fd >= 0 && bpffs_lock_wait(node->set_fd) == 0) {
        /* The last nextup of its namespace takes the namespace out of the set (and the set off the node
         * when it was the last one there). Another one of the same namespace (a hand-over) holds the ns
         * dir too: then nothing changes. */
        if (flock(node->live_fd, LOCK_EX | LOCK_NB) == 0) {
            if (bpf_map_lookup_elem(node->outer_fd, &node->netns, &cur) == 0 && cur == node->map_id)
                bpf_map_delete_elem(node->outer_fd, &node->netns);
            snprintf(path, sizeof(path), "%s/ns/%llu", node->set_dir, (unsigned long long)node->netns);
            rmdir(path);
            if (set_remove_if_unused(node->set_dir, node->outer_fd))
                LOG_DEBUG("health_bpf: the last nextup on this node removed the program set %s", node->set_dir);
        }
        flock(node->set_fd, LOCK_UN);
    }
    node_drop_fds(node);
    free(node);
}

const char *bpf_node_set_dir(const struct bpf_node *node)
{
    return node->set_dir;
}
