/* health_bpf: the user-space side of bpf/peer_stats.bpf.c.
 *
 * One program set per node (bpf_node.c), one counters map per pod (bpf/peer_stats.h has the layout):
 *   <node_dir>/<set>/...                           the node's set, netns_maps[<inum>] -> a pod's map
 *   <pin_dir>/peer_stats, peer_stats_meta          the pod's own map, registered as netns_maps[<inum>]
 *
 * open: open the object -> under the set dir's flock: inspect the set (bpf_node_open) -> load (the
 * programs only when the set must be made: a nextup joining a set loads no program; the maps always, for
 * a fresh pod map sized by NEXTUP_BPF_MAX_PEERS) -> make the set if needed -> under the pin dir's flock:
 * reuse the pod's map (same layout, size, namespace and set) or replace it -> register it -> sweep ->
 * unlock. This file holds the BPF object (the skeleton): bpf_node gets it as a plain bpf_object, and the
 * object's hash names the set, so that a build with another object (bpf/bpf.mk's variant, which
 * recompiles only this file) gets another set. */
#include "health_bpf.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <linux/capability.h>

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>

#include "bpf_node.h"
#include "bpffs.h"
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
/* Programs in the object; at most that many are attached (the two retransmit variants exclude each other). */
#define MAX_PROGS (sizeof(((struct peer_stats_bpf *)0)->progs) / sizeof(struct bpf_program *))

_Static_assert(MAX_PROGS <= BPF_NODE_MAX_PROGS, "bpf_node keeps at most BPF_NODE_MAX_PROGS links");

struct health_bpf {
    int map_fd;                     /* owned: the pod's peer_stats */
    struct bpf_node *node;          /* owned: the node's set, this namespace registered in it */
    int64_t next_sweep_ms;
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
    err = bpffs_dir_prepare(pin_dir, why, whylen);
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

    reused = bpf_node_open(node_dir, ps.set_id, ps.netns, skel->obj, &h->node, why, whylen);
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
        err = bpf_node_create(h->node, skel->obj, why, whylen);
        if (err)
            goto cleanup;
    }

    lock = bpffs_dir_lock(pin_dir, "NEXTUP_BPF_PIN_DIR", why, whylen);
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
        if (bpffs_pins_clear(pin_dir, "peer_stats", "peer_stats_meta") > 0)
            LOG_INFO("health_bpf: replacing pinned map %s: %s", ps.map_path, reason);
        err = pod_create(&ps, skel, h, why, whylen);
        if (err)
            goto cleanup;
    }
    err = bpf_node_register(h->node, h->map_fd, pin_dir, why, whylen);
    if (err)
        goto cleanup;
    h->next_sweep_ms = clock_mono_ms() + HEALTH_BPF_SWEEP_MS;
    LOG_DEBUG("health_bpf: counting TCP peers of netns %llu in %s (max %u peers), program set %s",
              (unsigned long long)ps.netns, ps.map_path, ps.max_entries, bpf_node_set_dir(h->node));
    *out = h;
    h = NULL;

cleanup:
    if (lock >= 0)
        close(lock);
    /* What is kept is in <h>: the skeleton's own fds go, pins and <h> keep the objects alive. */
    peer_stats_bpf__destroy(skel);
    if (h) {
        /* Given up: the set goes if no namespace is in it (bpf_node_close). */
        bpf_node_close(h->node);
        if (h->map_fd >= 0)
            close(h->map_fd);
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

int health_bpf_sweep(struct health_bpf *h)
{
    int64_t now = clock_mono_ms();

    if (!h)
        return -EINVAL;
    if (now < h->next_sweep_ms)
        return 0;
    h->next_sweep_ms = now + HEALTH_BPF_SWEEP_MS;
    return bpf_node_sweep(h->node);
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
    /* The node's set drops this namespace if no other nextup of it runs (bpf_node_close). The pod's map
     * stays pinned, with its counters, for a restart. */
    bpf_node_close(h->node);
    if (h->map_fd >= 0)
        close(h->map_fd);
    free(h);
}

int health_bpf_map_fd(const struct health_bpf *h)
{
    return h ? h->map_fd : -EINVAL;
}
