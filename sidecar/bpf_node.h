/* bpf_node: the node's one set of bpf/peer_stats.bpf.c's programs, shared by every nextup of a build on
 * the node, and the network namespaces registered in it (bpf/peer_stats.h has the layout).
 *
 * API:
 *   bpf_node_open()      lock this build's set dir under <node_dir> and decide on the set pinned there:
 *                        join it (no program loaded) or make it afresh
 *   bpf_node_create()    make the set, once the object is loaded: pin netns_maps and the programs,
 *                        attach them and pin their links
 *   bpf_node_register()  register the pod's map for this namespace, sweep, unlock the set
 *   bpf_node_sweep()     remove the entries no running nextup holds and other builds' unused sets
 *   bpf_node_close()     the last nextup of its namespace removes its entry (and the set, when it was
 *                        the last on the node)
 *   bpf_node_set_dir()   the set's directory, for the log
 * The caller (health_bpf) owns the BPF object and the pod's map; this module never calls back into it. */
#ifndef SIDECAR_BPF_NODE_H
#define SIDECAR_BPF_NODE_H

#include <stddef.h>
#include <linux/types.h>

struct bpf_node;
struct bpf_object;

/* At most that many programs in the object given to bpf_node_open (links kept per set). */
#define BPF_NODE_MAX_PROGS 8

/* Makes (on bpffs) and locks exclusively the set dir <node_dir>/v<layout>-<set_id>, then inspects the set
 * pinned there for the programs of <obj> (opened, not loaded) whose autoload flag is set. 1 with *out: the
 * set runs them, joined (load no program); 0 with *out: the set must be made, bpf_node_create once <obj>
 * is loaded; or a negative errno with <why>, *out NULL. The set stays locked until bpf_node_register. */
int bpf_node_open(const char *node_dir, __u64 set_id, __u64 netns, const struct bpf_object *obj,
                  struct bpf_node **out, char *why, size_t whylen);

/* For a set bpf_node_open found must be made: replaces what is pinned in the set dir with <obj>'s (loaded)
 * netns_maps, programs and their attached links. 0, or a negative errno with <why> and nothing left pinned.
 * <obj> may be destroyed after: the links stay attached, held by <node> and their pins. */
int bpf_node_create(struct bpf_node *node, struct bpf_object *obj, char *why, size_t whylen);

/* Registers <map_fd> (the pod's map, borrowed: open until bpf_node_close) for <node>'s namespace, holds the
 * namespace while this nextup runs, sweeps (at start) and unlocks the set. 0; -EBUSY with <why> (naming
 * NEXTUP_BPF_PIN_DIR=<pin_dir>) when another running nextup counts this namespace into another map;
 * another negative errno with <why>. On failure the set stays locked: bpf_node_close. */
int bpf_node_register(struct bpf_node *node, int map_fd, const char *pin_dir, char *why, size_t whylen);

/* A no-op (0) when another nextup holds the set's lock. Otherwise: follows the set should another nextup
 * have replaced it, removes the entries of namespaces no running nextup holds, puts back <node>'s own entry
 * if it went, and removes other builds' sets left without entries. How many entries of <node>'s set went,
 * or a negative errno. */
int bpf_node_sweep(struct bpf_node *node);

/* Frees <node> (NULL is fine) and its fds. After bpf_node_register: when no other running nextup has its
 * namespace, its entry goes from the set, and the set goes when no namespace is left in it (its programs
 * are detached). Before (an open given up): the set, still locked, goes when no namespace is in it. */
void bpf_node_close(struct bpf_node *node);

/* <node_dir>/v<layout>-<set_id>, owned by <node>. */
const char *bpf_node_set_dir(const struct bpf_node *node);

#endif
