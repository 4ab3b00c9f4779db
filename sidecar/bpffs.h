/* bpffs: the directories on a bpffs mount that nextup pins into, shared by the pod's side (health_bpf)
 * and the node's program sets (bpf_node).
 *
 * API:
 *   bpffs_dir_prepare()  mkdir -p, only on a bpffs mount
 *   bpffs_dir_lock()     an exclusive flock on a directory, waiting for another nextup setting it up
 *   bpffs_lock_wait()    the same on a directory already open
 *   bpffs_pins_clear()   unpins a directory's programs and links, and a map
 * bpffs holds no regular files, but a directory can be flocked; the lock is on the inode, so it holds
 * across containers that share the node's bpffs. */
#ifndef SIDECAR_BPFFS_H
#define SIDECAR_BPFFS_H

#include <stddef.h>

/* NEXTUP_BPF_PIN_DIR and NEXTUP_BPF_NODE_DIR are at most 255 bytes (struct config). */
#define PIN_DIR_MAX 256
#define SET_DIR_MAX (PIN_DIR_MAX + 32)
/* Pinned links and programs are named <prefix><program name>. */
#define LINK_PREFIX "link_"
#define PROG_PREFIX "prog_"

/* Makes <dir> exist (like mkdir -p) on a bpffs mount. The nearest existing path among <dir> and
 * its parents must be on bpffs: outside bpffs a pin would fail anyway, and creating directories
 * in sysfs or tmpfs first would only leave litter. 0, or a negative errno with <why> filled. */
int bpffs_dir_prepare(const char *dir, char *why, size_t whylen);

/* Takes an exclusive flock on the directory <dir>, waiting up to 10 s for another nextup setting it
 * up (<var> names the setting it came from, for <why>): the fd whose close releases it (the caller's),
 * or a negative errno with <why>. */
int bpffs_dir_lock(const char *dir, const char *var, char *why, size_t whylen);

/* Takes the exclusive flock on <fd>, waiting up to 10 s: 0, or a negative errno. */
int bpffs_lock_wait(int fd);

/* Unpins every link_* and prog_* in <dir> (the programs are detached once no running nextup holds
 * them), then <dir>/<map> and, when given, <dir>/<meta>. How many pins were removed. */
int bpffs_pins_clear(const char *dir, const char *map, const char *meta);

#endif
