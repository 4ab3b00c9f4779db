/* health: the health view. Two inputs, one output (DESIGN.md, invariant 5):
 *   - kernel counters per peer from the BPF map (health_bpf), read every
 *     NEXTUP_HEALTH_INTERVAL_MS on the main thread, as deltas per interval;
 *   - nextup's own outcomes, which workers report through peers_report();
 * and the state per peer (peers_observe / peer_state_now) that selection reads.
 *
 * API:
 *   health_new() / health_free()
 *   health_write_debug_json()   /debug/peers, grouped by service
 *   health_write_metrics()      per-peer gauges and counters for /metrics, labelled with the service */
#ifndef SIDECAR_HEALTH_H
#define SIDECAR_HEALTH_H

struct event_base;
struct evbuffer;
struct config;
struct peers;
struct health_bpf;
struct health;

/* Starts the periodic read on <base> for the <n_sets> peer sets <sets> (not owned), set i being
 * service i's (sets[i]->service == i) and named <names>[i] (borrowed; they label /debug/peers and
 * the per-peer metrics). <bpf> may be NULL (user-space signals only); it stays owned by the
 * caller: one map holds the peers of every set, looked up by address. NULL on allocation failure. */
struct health *health_new(struct event_base *base, const struct config *cfg, struct peers *const *sets,
                          const char *const *names, int n_sets, struct health_bpf *bpf);
void health_free(struct health *h);

/* Runs one read of the kernel counters now (tests, and the timer). */
void health_poll(struct health *h);

void health_write_debug_json(struct health *h, struct evbuffer *out);
void health_write_metrics(struct health *h, struct evbuffer *out);

#endif
