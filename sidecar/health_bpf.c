/* health_bpf: the user-space side of bpf/peer_stats.bpf.c.
 *
 * open -> set (map size, target_netns, which tcp_retransmit_skb variant) -> reuse pinned maps ->
 * load -> pin -> attach. The maps are pinned so that a restarted nextup (same pod, same network
 * namespace) keeps its counters; the programs are not pinned, they go away with the process. */
#include "health_bpf.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
_Static_assert(sizeof(struct peer_stats) == 13 * 8, "struct peer_stats must be 13 __u64");
_Static_assert(sizeof(struct peer_stats_meta) == 16, "struct peer_stats_meta must have no hidden padding");

#define HEALTH_BPF_DEFAULT_MAX_PEERS 4096
#define VMLINUX_BTF "/sys/kernel/btf/vmlinux"
/* NEXTUP_BPF_PIN_DIR is at most 255 bytes (struct config). */
#define PIN_DIR_MAX 256

struct health_bpf {
    struct peer_stats_bpf *skel;    /* owned */
    int map_fd;                     /* borrowed from skel */
    char map_path[PIN_DIR_MAX + 16];     /* <pin_dir>/peer_stats */
    char meta_path[PIN_DIR_MAX + 24];    /* <pin_dir>/peer_stats_meta */
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

/* Sets the skeleton's maps to reuse the maps pinned at h->map_path / h->meta_path when they were made
 * for this layout, size and namespace: 1. 0 when nothing usable is pinned (a mismatching pin is
 * unlinked, and that logged). A negative errno with <why> when a pin cannot be read. */
static int pins_reuse(struct health_bpf *h, __u32 max_entries, __u64 netns, char *why, size_t whylen)
{
    struct bpf_map_info info;
    struct peer_stats_meta meta;
    __u32 len, zero = 0;
    char reason[160] = "";
    int fd, mfd = -1, err = 0;

    fd = bpf_obj_get(h->map_path);
    if (fd < 0) {
        if (fd != -ENOENT) {
            snprintf(why, whylen, "cannot open pinned map %s: %s", h->map_path, strerror(-fd));
            return fd;
        }
        /* A meta without its map is left from an interrupted start. */
        unlink(h->meta_path);
        return 0;
    }

    memset(&info, 0, sizeof(info));
    len = sizeof(info);
    if (bpf_obj_get_info_by_fd(fd, &info, &len) != 0)
        snprintf(reason, sizeof(reason), "not a readable map");
    else if (info.type != BPF_MAP_TYPE_LRU_HASH)
        snprintf(reason, sizeof(reason), "map type %u, not LRU hash", info.type);
    else if (info.key_size != sizeof(struct peer_key) || info.value_size != sizeof(struct peer_stats))
        snprintf(reason, sizeof(reason), "key/value size %u/%u, expected %zu/%zu", info.key_size,
                 info.value_size, sizeof(struct peer_key), sizeof(struct peer_stats));
    else if (info.max_entries != max_entries)
        snprintf(reason, sizeof(reason), "max_entries %u, NEXTUP_BPF_MAX_PEERS is %u", info.max_entries,
                 max_entries);

    if (!reason[0]) {
        mfd = bpf_obj_get(h->meta_path);
        memset(&info, 0, sizeof(info));
        len = sizeof(info);
        if (mfd < 0)
            snprintf(reason, sizeof(reason), "no layout version (peer_stats_meta: %s)", strerror(-mfd));
        else if (bpf_obj_get_info_by_fd(mfd, &info, &len) != 0 || info.type != BPF_MAP_TYPE_ARRAY ||
                 info.key_size != sizeof(__u32) || info.value_size != sizeof(meta) ||
                 bpf_map_lookup_elem(mfd, &zero, &meta) != 0)
            snprintf(reason, sizeof(reason), "unreadable layout version (peer_stats_meta)");
        else if (meta.layout_version != PEER_STATS_LAYOUT_VERSION)
            snprintf(reason, sizeof(reason), "layout version %u, this nextup has %u", meta.layout_version,
                     PEER_STATS_LAYOUT_VERSION);
        else if (meta.netns_inum != netns)
            snprintf(reason, sizeof(reason), "counts network namespace %llu, this nextup %llu",
                     (unsigned long long)meta.netns_inum, (unsigned long long)netns);
    }

    if (!reason[0]) {
        /* reuse_fd dups the fds: ours are closed below either way. */
        err = bpf_map__reuse_fd(h->skel->maps.peer_stats, fd);
        if (!err)
            err = bpf_map__reuse_fd(h->skel->maps.peer_stats_meta, mfd);
        if (err)
            snprintf(why, whylen, "cannot reuse pinned map %s: %s", h->map_path, strerror(-err));
        else
            LOG_INFO("health_bpf: reusing pinned map %s (counters kept)", h->map_path);
    } else {
        LOG_INFO("health_bpf: replacing pinned map %s: %s", h->map_path, reason);
        unlink(h->map_path);
        unlink(h->meta_path);
    }
    close(fd);
    if (mfd >= 0)
        close(mfd);
    if (err)
        return err;
    return reason[0] ? 0 : 1;
}

/* Writes the meta record, then pins both maps; the map last, so that a map pin never exists without
 * the meta that vouches for it. 0, or a negative errno with <why>. */
static int pins_create(struct health_bpf *h, __u64 netns, char *why, size_t whylen)
{
    struct peer_stats_meta meta = { .layout_version = PEER_STATS_LAYOUT_VERSION, .netns_inum = netns };
    __u32 zero = 0;
    int err;

    err = bpf_map_update_elem(bpf_map__fd(h->skel->maps.peer_stats_meta), &zero, &meta, BPF_ANY);
    if (err) {
        snprintf(why, whylen, "cannot write the layout version: %s", strerror(-err));
        return err;
    }
    err = bpf_map__pin(h->skel->maps.peer_stats_meta, h->meta_path);
    if (!err)
        err = bpf_map__pin(h->skel->maps.peer_stats, h->map_path);
    if (err)
        snprintf(why, whylen, "cannot pin the map at %s: %s", h->map_path, strerror(-err));
    return err;
}

/* Loads and attaches everything for <o>; the reason of a failure goes to <why>, without the
 * NEXTUP_BPF= prefix the caller adds. */
static int health_bpf_load(const struct health_bpf_opts *o, struct health_bpf **out, char *why, size_t whylen)
{
    struct health_bpf *h = NULL;
    __u32 max_entries = o->max_peers > 0 ? (__u32)o->max_peers : HEALTH_BPF_DEFAULT_MAX_PEERS;
    __u64 netns = o->netns_inum;
    const char *pin_dir = o->pin_dir && o->pin_dir[0] ? o->pin_dir : "/sys/fs/bpf/nextup";
    struct stat st;
    int err, has_err, reused;

    if (access(VMLINUX_BTF, R_OK) != 0) {
        snprintf(why, whylen, "the kernel has no BTF (%s missing: needs CONFIG_DEBUG_INFO_BTF=y)", VMLINUX_BTF);
        return -EOPNOTSUPP;
    }
    if (!may_load_tracing()) {
        snprintf(why, whylen, "missing CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN): not root");
        return -EPERM;
    }
    if (!netns) {
        if (stat("/proc/self/ns/net", &st) != 0) {
            err = -errno;
            snprintf(why, whylen, "cannot read this process's network namespace (/proc/self/ns/net): %s",
                     strerror(-err));
            return err;
        }
        netns = (__u64)st.st_ino;
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
    snprintf(h->map_path, sizeof(h->map_path), "%s/peer_stats", pin_dir);
    snprintf(h->meta_path, sizeof(h->meta_path), "%s/peer_stats_meta", pin_dir);

    h->skel = peer_stats_bpf__open();
    if (!h->skel) {
        err = -errno;
        snprintf(why, whylen, "cannot open the BPF object: %s", strerror(-err));
        goto cleanup;
    }
    err = bpf_map__set_max_entries(h->skel->maps.peer_stats, max_entries);
    if (err) {
        snprintf(why, whylen, "cannot size the map to %u entries: %s", max_entries, strerror(-err));
        goto cleanup;
    }
    h->skel->rodata->target_netns = netns;
    bpf_program__set_autoload(h->skel->progs.handle_retransmit_skb, has_err);
    bpf_program__set_autoload(h->skel->progs.handle_retransmit_skb_noerr, !has_err);

    reused = pins_reuse(h, max_entries, netns, why, whylen);
    if (reused < 0) {
        err = reused;
        goto cleanup;
    }

    err = peer_stats_bpf__load(h->skel);
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
        err = pins_create(h, netns, why, whylen);
        if (err)
            goto cleanup;
    }
    err = peer_stats_bpf__attach(h->skel);
    if (err) {
        snprintf(why, whylen, "attaching the tp_btf programs failed: %s", strerror(-err));
        goto cleanup;
    }
    h->map_fd = bpf_map__fd(h->skel->maps.peer_stats);
    LOG_DEBUG("health_bpf: counting TCP peers of netns %llu in %s (max %u peers)", (unsigned long long)netns,
              h->map_path, max_entries);
    *out = h;
    return 0;

cleanup:
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
    /* Destroying the skeleton detaches the links and closes the fds; pins keep the maps alive. */
    peer_stats_bpf__destroy(h->skel);
    free(h);
}

int health_bpf_map_fd(const struct health_bpf *h)
{
    return h ? h->map_fd : -EINVAL;
}
