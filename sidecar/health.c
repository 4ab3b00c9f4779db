#include "health.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "clock.h"
#include "config.h"
#include "health_bpf.h"
#include "log.h"
#include "peers.h"

/* The last kernel counters read for one peer (main thread only). */
struct peer_view {
    int have;                       /* the map has (had) an entry for this peer */
    struct peer_stats last;         /* zeros until one appears, so its first counts are news */
    uint32_t generation;            /* the slot's generation these counters belong to */
    struct event *probe;            /* owned: a connect in flight to an ejected peer, or NULL */
    /* L7 closes against the peer's own habit (nextup's responses from it). */
    uint64_t last_responses, last_closes;
    uint64_t habit_responses;       /* responses the habit was learned from */
    uint64_t window_responses, window_closes; /* since the last judgement */
    int relearn;                    /* its habit is to be learned anew (back in rotation, or a new address) */
    double close_habit;             /* share of its responses that close their connection (moving average) */
    /* Kernel: peer-first closes per interval, against the peer's own habit. */
    int fin_intervals;              /* intervals the habit was learned from */
    double fin_habit;               /* peer-first closes per interval (moving average) */
};

/* A drain seen in the kernel: in one interval at least DRAIN_FINS_MIN of the pod's
 * connections to a replica were closed by the replica first (its FIN before
 * ours), over DRAIN_FINS_FACTOR times its habit, learned over DRAIN_FIN_HABIT_MIN
 * intervals. A graceful shutdown closes every idle keep-alive connection at once,
 * the application's included; a server that closes on its idle timeout or after
 * each response does so steadily, and that is its habit. */
#define DRAIN_FINS_MIN 5
#define DRAIN_FINS_FACTOR 4
#define DRAIN_FIN_HABIT_MIN 8

/* One service's peers and what the health view keeps of them. */
struct health_set {
    struct peers *peers;            /* not owned */
    const char *name;               /* the service's, for /debug/peers and the metrics' service label */
    struct peer_view view[PEERS_MAX];
};

struct health {
    struct event_base *base;
    const struct config *cfg;
    struct health_bpf *bpf;         /* not owned; NULL without BPF; one map for every service's peers */
    struct event *timer;            /* owned */
    struct health_set *sets;        /* owned, n_sets: set i is service i's (peers->service == i) */
    int n_sets;
};

/* The set <p> belongs to: evidence about a peer is weighed against its own service's peers
 * (the ejection cap is a share of that set). */
static struct peers *set_of(const struct health *h, const struct peer *p)
{
    return h->sets[p->service].peers;
}

/* A drain seen in nextup's own responses: at least DRAIN_CLOSES_MIN responses of a
 * replica closed their connection, and of those since the last judgement a share
 * of at least half, and DRAIN_CLOSES_ABOVE_HABIT above the replica's habit (its
 * share, learned over DRAIN_HABIT_MIN responses and following slowly). Servers
 * that close after every response, or after N requests, never match: a drain is a
 * change. Responses are judged in windows of at least DRAIN_HABIT_MIN responses, or
 * sooner once enough of them closed, so that a change that starts late in a health
 * interval is not averaged away, and one the habit's first window caught still
 * stands out against it. */
#define DRAIN_CLOSES_MIN 5
#define DRAIN_HABIT_MIN 20
/* A replica that answered with keep-alive and then closed this many responses
 * in a row is leaving, whatever a window says: the habit's first window may
 * already hold the change (a drain that starts before the first health interval
 * is over would otherwise be learned as the habit). */
#define DRAIN_CLOSES_IN_A_ROW 20
#define DRAIN_CLOSES_ABOVE_HABIT 0.4

static void judge_closes(struct health *h, struct peer *p, struct peer_view *v, int64_t now)
{
    uint64_t responses = atomic_load(&p->responses) + atomic_load(&p->gateway_errors);
    uint64_t closes = atomic_load(&p->closing_responses);
    uint64_t n, c;
    char detail[96];

    if (responses < v->last_responses || closes < v->last_closes)
        v->last_responses = v->last_closes = 0, v->relearn = 1;   /* the slot holds another address now */
    v->window_responses += responses - v->last_responses;
    v->window_closes += closes - v->last_closes;
    v->last_responses = responses;
    v->last_closes = closes;
    if (peer_state_now(p, now) != PEER_HEALTHY) {
        /* Out of rotation: little to learn from. Back, its habit is learned anew, so
         * that a replica that now always closes makes that its new normal. */
        v->relearn = 1;
        v->window_responses = v->window_closes = 0;
        return;
    }
    if (v->relearn) {
        v->relearn = 0;
        v->habit_responses = 0;
        v->close_habit = 0;
        atomic_store(&p->kept_alive, 0);
    }
    if (atomic_load(&p->kept_alive) && atomic_load(&p->closes_in_a_row) >= DRAIN_CLOSES_IN_A_ROW) {
        snprintf(detail, sizeof(detail), "(kept connections alive, then closed %u responses in a row)",
                 (unsigned)atomic_load(&p->closes_in_a_row));
        peers_observe(set_of(h, p), p, EVIDENCE_DRAINING, REASON_DRAIN_CLOSES, detail, now);
        atomic_store(&p->closes_in_a_row, 0);
        v->window_responses = v->window_closes = 0;
        return;
    }
    n = v->window_responses;
    c = v->window_closes;
    if (c >= DRAIN_CLOSES_MIN && v->habit_responses >= DRAIN_HABIT_MIN &&
        (double)c >= (double)n * (v->close_habit + DRAIN_CLOSES_ABOVE_HABIT > 0.5 ? v->close_habit + DRAIN_CLOSES_ABOVE_HABIT
                                                                                : 0.5)) {
        snprintf(detail, sizeof(detail), "(%llu of its last %llu responses closed; its habit %.0f%%)",
                 (unsigned long long)c, (unsigned long long)n, v->close_habit * 100);
        peers_observe(set_of(h, p), p, EVIDENCE_DRAINING, REASON_DRAIN_CLOSES, detail, now);
        v->window_responses = v->window_closes = 0;
        return;
    }
    if (n < DRAIN_HABIT_MIN)
        return;     /* a window still too small to say anything */
    /* The habit follows slowly: a change shows against it for many windows. */
    v->close_habit = v->habit_responses == 0 ? (double)c / (double)n
                                             : v->close_habit * 0.95 + 0.05 * (double)c / (double)n;
    v->habit_responses += n;
    v->window_responses = v->window_closes = 0;
}

/* Arguments of one probe's callback. */
struct probe_arg {
    struct health *h;
    int set;                        /* in h->sets */
    int index;
    uint32_t generation;
    int fd;
    int http;                       /* a trial by NEXTUP_PROBE_PATH, not a connect */
    size_t got;
    char status_line[64];           /* the start of the answer */
};

/* Connect failures of every kind the kernel tells apart. */
static uint64_t kernel_connect_failures(const struct peer_stats *s)
{
    return s->refused + s->connect_timeouts + s->unreachable + s->connect_failures;
}

/* Growth of a counter; an entry the LRU evicted and made again starts from 0. */
static uint64_t delta(uint64_t cur, uint64_t prev)
{
    return cur >= prev ? cur - prev : cur;
}

/* Turns one interval's kernel deltas into a verdict. The most recent event must
 * be a failure (last_failure after last_success): a peer that failed and then
 * accepted a connection within the interval is not ejected for the old failure. */
/* <d_fins> peer-first closes and <d_new> connects established in one interval.
 * A server that closes each connection after its response closes about as many
 * as were opened: only the closes beyond the new connections (of connections
 * that had lived on) can be a drain. */
static void judge_fins(struct health *h, struct peer *p, struct peer_view *v, uint64_t d_fins, uint64_t d_new,
                       int64_t now)
{
    uint64_t beyond = d_fins > d_new ? d_fins - d_new : 0;
    char detail[160];

    if (v->fin_intervals >= DRAIN_FIN_HABIT_MIN && beyond >= DRAIN_FINS_MIN &&
        (double)beyond > DRAIN_FINS_FACTOR * v->fin_habit + 2 && peer_state_now(p, now) == PEER_HEALTHY) {
        snprintf(detail, sizeof(detail),
                 "(kernel, %d ms: %llu connections closed by it first, %llu opened; its habit %.1f)",
                 h->cfg->health_interval_ms, (unsigned long long)d_fins, (unsigned long long)d_new, v->fin_habit);
        peers_observe(set_of(h, p), p, EVIDENCE_DRAINING, REASON_DRAIN_CLOSES, detail, now);
    }
    v->fin_habit = v->fin_intervals == 0 ? (double)beyond : v->fin_habit * 0.9 + 0.1 * (double)beyond;
    v->fin_intervals++;
}

static void judge(struct health *h, struct peer *p, const struct peer_stats *prev, const struct peer_stats *cur,
                  int64_t now)
{
    uint64_t threshold = (uint64_t)h->cfg->eject_kernel_failures;
    uint64_t d_connect = delta(kernel_connect_failures(cur), kernel_connect_failures(prev));
    uint64_t d_syn = delta(cur->syn_retransmits, prev->syn_retransmits);
    uint64_t d_rst = delta(cur->resets_received, prev->resets_received);
    uint64_t d_ok = delta(cur->connects_established, prev->connects_established);
    int failing_last = cur->last_failure_ns > cur->last_success_ns;
    char detail[160];

    if (threshold == 0)
        return;
    snprintf(detail, sizeof(detail), "(kernel, %d ms: +%llu failed connects, +%llu SYN retransmits, +%llu resets)",
             h->cfg->health_interval_ms, (unsigned long long)d_connect, (unsigned long long)d_syn,
             (unsigned long long)d_rst);
    /* Refusals and unanswered SYNs: no capacity (down). Resets: soft evidence (ejected, capped). */
    if (d_connect >= threshold && failing_last)
        peers_observe(set_of(h, p), p, EVIDENCE_NO_CONNECT, REASON_KERNEL_CONNECT, detail, now);
    else if (d_syn >= threshold && d_ok == 0)
        peers_observe(set_of(h, p), p, EVIDENCE_NO_CONNECT, REASON_KERNEL_SYN, detail, now);
    else if (d_rst >= threshold && failing_last)
        peers_observe(set_of(h, p), p, EVIDENCE_SOFT_FAILURE, REASON_KERNEL_RESETS, detail, now);
}

/* Ends a probe with its evidence (<ok>: it connected, or for an HTTP probe, answered
 * 2xx/3xx; <refused>: the connect failed). */
static void probe_done(struct probe_arg *a, int ok, int refused)
{
    struct health *h = a->h;
    struct health_set *hs = &h->sets[a->set];
    struct peer *p = hs->peers->peer[a->index];
    char detail[352];

    if (atomic_load(&p->generation) == a->generation && peer_is_active(p)) {
        if (!a->http) {
            if (ok)
                peers_observe(set_of(h, p), p, EVIDENCE_PROBE_OK, REASON_NONE, NULL, clock_mono_ms());
        } else {
            char *eol = strpbrk(a->status_line, "\r\n");
            if (eol)
                *eol = '\0';
            snprintf(detail, sizeof(detail), "(probe GET %s: %s)", h->cfg->probe_path,
                     refused ? "connect failed" : a->got ? a->status_line : "no answer");
            peers_observe(set_of(h, p), p, ok ? EVIDENCE_OK : refused ? EVIDENCE_NO_CONNECT : EVIDENCE_SOFT_FAILURE,
                          refused ? REASON_CONNECT_FAILURES : REASON_TRIAL_FAILED, detail, clock_mono_ms());
        }
    }
    if (hs->view[a->index].probe)
        event_free(hs->view[a->index].probe);
    hs->view[a->index].probe = NULL;
    close(a->fd);
    free(a);
}

/* The status line of an HTTP probe's answer: 2xx or 3xx is a success. */
static void probe_read_cb(evutil_socket_t fd, short what, void *arg)
{
    struct probe_arg *a = arg;
    ssize_t n;

    if (!(what & EV_READ)) {
        probe_done(a, 0, 0);    /* no answer in time */
        return;
    }
    n = read(fd, a->status_line + a->got, sizeof(a->status_line) - 1 - a->got);
    if (n > 0)
        a->got += (size_t)n;
    a->status_line[a->got] = '\0';
    if (n > 0 && a->got < 12 && !strchr(a->status_line, '\n'))
        return;                 /* the status code is still to come */
    probe_done(a, a->got >= 12 && strncmp(a->status_line, "HTTP/1.", 7) == 0 &&
                      (a->status_line[9] == '2' || a->status_line[9] == '3'), 0);
}

static void probe_cb(evutil_socket_t fd, short what, void *arg)
{
    struct probe_arg *a = arg;
    struct health *h = a->h;
    struct health_set *hs = &h->sets[a->set];
    struct peer *p = hs->peers->peer[a->index];
    int soerr = 0;
    socklen_t len = sizeof(soerr);
    int connected = (what & EV_WRITE) && getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) == 0 && soerr == 0;
    char req[512];
    int n;
    struct timeval tv = { h->cfg->request_timeout_ms / 1000, (h->cfg->request_timeout_ms % 1000) * 1000 };

    if (!a->http || !connected) {
        probe_done(a, connected, !connected);
        return;
    }
    n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: nextup-probe\r\n"
                 "Connection: close\r\n\r\n", h->cfg->probe_path, p->name);
    /* A fresh socket's buffer takes a few hundred bytes at once. */
    if (n <= 0 || n >= (int)sizeof(req) || write(fd, req, (size_t)n) != n) {
        probe_done(a, 0, 0);
        return;
    }
    event_free(hs->view[a->index].probe);
    hs->view[a->index].probe = event_new(h->base, fd, EV_READ | EV_PERSIST, probe_read_cb, a);
    if (!hs->view[a->index].probe || event_add(hs->view[a->index].probe, &tv) < 0)
        probe_done(a, 0, 0);
}

/* A peer that is down (it refused connections, or SYNs went unanswered) comes
 * back on evidence: a TCP connect is tried every interval, and one that
 * succeeds ends it. Ejected and draining peers are judged by a trial request. */
static void probe_start(struct health *h, int set, int i, int http);

static void probe_down(struct health *h, int set, int i, int64_t now)
{
    struct health_set *hs = &h->sets[set];
    struct peer *p = hs->peers->peer[i];

    if (hs->view[i].probe || !peer_is_active(p))
        return;
    if (peer_state_now(p, now) == PEER_DOWN)
        probe_start(h, set, i, 0);
    /* With NEXTUP_PROBE_PATH, a peer whose time out is up is judged by a GET of it. */
    else if (h->cfg->probe_path[0] && peers_take_trial_of(p, now, h->cfg->connect_timeout_ms + h->cfg->request_timeout_ms))
        probe_start(h, set, i, 1);
}

static void probe_start(struct health *h, int set, int i, int http)
{
    struct health_set *hs = &h->sets[set];
    struct peer *p = hs->peers->peer[i];
    struct timeval tv = { h->cfg->connect_timeout_ms / 1000, (h->cfg->connect_timeout_ms % 1000) * 1000 };
    struct probe_arg *a;
    int fd;

    fd = socket(p->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return;
    a = calloc(1, sizeof(*a));
    if (!a) {
        close(fd);
        return;
    }
    a->http = http;
    a->h = h;
    a->set = set;
    a->index = i;
    a->generation = atomic_load(&p->generation);
    a->fd = fd;
    if (connect(fd, (const struct sockaddr *)&p->sa, p->salen) < 0 && errno != EINPROGRESS) {
        close(fd);
        free(a);
        return;
    }
    hs->view[i].probe = event_new(h->base, fd, EV_WRITE, probe_cb, a);
    if (!hs->view[i].probe || event_add(hs->view[i].probe, &tv) < 0) {
        if (hs->view[i].probe)
            event_free(hs->view[i].probe);
        hs->view[i].probe = NULL;
        close(fd);
        free(a);
    }
}

void health_poll(struct health *h)
{
    int64_t now = clock_mono_ms();
    int i;

    for (int k = 0; k < h->n_sets; k++) {
        struct health_set *hs = &h->sets[k];
        for (i = 0; i < hs->peers->n; i++) {
            probe_down(h, k, i, now);
            if (peer_is_active(hs->peers->peer[i]))
                judge_closes(h, hs->peers->peer[i], &hs->view[i], now);
        }
    }
    if (!h->bpf)
        return;
    health_bpf_sweep(h->bpf);
    /* One map for every service: a replica two services share has one entry, read for each. */
    for (int k = 0; k < h->n_sets; k++) {
        struct health_set *hs = &h->sets[k];
        for (i = 0; i < hs->peers->n; i++) {
            struct peer *p = hs->peers->peer[i];
            struct peer_view *v = &hs->view[i];
            struct peer_stats cur;
            uint32_t gen = atomic_load(&p->generation);

            if (v->generation != gen) {
                /* The slot now holds another address: its history is not this one's. */
                v->have = 0;
                memset(&v->last, 0, sizeof(v->last));
                v->fin_intervals = 0;
                v->fin_habit = 0;
                v->generation = gen;
            }
            if (health_bpf_lookup(h->bpf, (const struct sockaddr *)&p->sa, &cur) < 0)
                continue;
            if (peer_is_active(p)) {
                judge(h, p, &v->last, &cur, now);
                judge_fins(h, p, v, delta(cur.peer_fins, v->last.peer_fins),
                           delta(cur.connects_established, v->last.connects_established), now);
            }
            v->last = cur;
            v->have = 1;
        }
    }
}

/* What the map holds at start is history (a pinned map outlives nextup): the
 * baseline. A peer without an entry yet starts from zeros. */
static void take_baseline(struct health *h)
{
    int i;

    for (int k = 0; k < h->n_sets; k++)
        for (i = 0; i < h->sets[k].peers->n; i++)
            if (health_bpf_lookup(h->bpf, (const struct sockaddr *)&h->sets[k].peers->peer[i]->sa,
                                  &h->sets[k].view[i].last) == 0)
                h->sets[k].view[i].have = 1;
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    health_poll(arg);
}

struct health *health_new(struct event_base *base, const struct config *cfg, struct peers *const *sets,
                          const char *const *names, int n_sets, struct health_bpf *bpf)
{
    struct health *h = calloc(1, sizeof(*h));
    struct timeval tv = { cfg->health_interval_ms / 1000, (cfg->health_interval_ms % 1000) * 1000 };

    if (!h)
        return NULL;
    h->sets = calloc((size_t)(n_sets > 0 ? n_sets : 1), sizeof(*h->sets));
    if (!h->sets) {
        free(h);
        return NULL;
    }
    for (int k = 0; k < n_sets; k++) {
        h->sets[k].peers = sets[k];
        h->sets[k].name = names[k];
    }
    h->n_sets = n_sets;
    h->base = base;
    h->cfg = cfg;
    h->bpf = bpf;
    if (bpf)
        take_baseline(h);
    /* Without BPF the timer still runs: ejected peers are probed either way. */
    h->timer = event_new(base, -1, EV_PERSIST, timer_cb, h);
    if (!h->timer || event_add(h->timer, &tv) < 0) {
        health_free(h);
        return NULL;
    }
    return h;
}

void health_free(struct health *h)
{
    int i;

    if (!h)
        return;
    if (h->timer)
        event_free(h->timer);
    for (int k = 0; k < h->n_sets; k++)
        for (i = 0; i < PEERS_MAX; i++)
            if (h->sets[k].view[i].probe) {
                struct probe_arg *a = event_get_callback_arg(h->sets[k].view[i].probe);
                event_free(h->sets[k].view[i].probe);
                close(a->fd);
                free(a);
            }
    free(h->sets);
    free(h);
}

/* Peer names come from configuration (host:port); escaped anyway. */
static void json_string(struct evbuffer *out, const char *s)
{
    evbuffer_add(out, "\"", 1);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            evbuffer_add_printf(out, "\\%c", *s);
        else if ((unsigned char)*s < 0x20)
            evbuffer_add_printf(out, "\\u%04x", (unsigned char)*s);
        else
            evbuffer_add(out, s, 1);
    }
    evbuffer_add(out, "\"", 1);
}

#define U(x) ((unsigned long long)(x))

static void write_peer_json(struct evbuffer *out, const struct health_set *hs, int i, int64_t now)
{
    struct peer *p = hs->peers->peer[i];
    const struct peer_view *v = &hs->view[i];
    enum peer_state st = peer_state_now(p, now);
    int is_out = st != PEER_HEALTHY;
    int64_t until = atomic_load(&p->until_ms);
    int consecutive;

    pthread_mutex_lock(&p->lock);
    consecutive = p->health.consecutive_failures;
    pthread_mutex_unlock(&p->lock);

    evbuffer_add(out, "{\"service\": ", 12);
    json_string(out, hs->name);
    evbuffer_add(out, ", \"address\": ", 13);
    json_string(out, p->addr_text);
    evbuffer_add(out, ", \"name\": ", 10);
    json_string(out, p->name);
    /* verdict: healthy (takes requests), ejected (out of rotation, any state), removed. */
    evbuffer_add_printf(out, ", \"verdict\": \"%s\", \"state\": \"%s\", \"reason\": ",
                        !peer_is_active(p) ? "removed" : is_out ? "ejected" : "healthy", peer_state_name(st));
    json_string(out, is_out ? peer_reason_text((enum peer_reason)atomic_load(&p->reason)) : "");
    evbuffer_add_printf(out,
                        ", \"ejected_for_ms\": %lld, \"ejections\": %llu, \"outstanding\": %d,"
                        " \"l7\": {\"responses\": %llu, \"gateway_errors\": %llu, \"connect_failures\": %llu,"
                        " \"consecutive_failures\": %d, \"closing_responses\": %llu, \"close_habit\": %.3f}",
                        (long long)(is_out && until > now ? until - now : 0), U(atomic_load(&p->ejections_total)),
                        atomic_load(&p->outstanding), U(atomic_load(&p->responses)),
                        U(atomic_load(&p->gateway_errors)), U(atomic_load(&p->connect_failures)),
                        consecutive, U(atomic_load(&p->closing_responses)), v->close_habit);
    if (v->have)
        evbuffer_add_printf(out,
                            ", \"kernel\": {\"connect_attempts\": %llu, \"connects_established\": %llu,"
                            " \"connect_failures\": %llu, \"refused\": %llu, \"connect_timeouts\": %llu,"
                            " \"unreachable\": %llu, \"syn_retransmits\": %llu, \"resets_received\": %llu,"
                            " \"resets_sent\": %llu, \"data_retransmits\": %llu, \"srtt_us\": %llu,"
                            " \"peer_fins\": %llu}}",
                            U(v->last.connect_attempts), U(v->last.connects_established),
                            U(v->last.connect_failures), U(v->last.refused), U(v->last.connect_timeouts),
                            U(v->last.unreachable), U(v->last.syn_retransmits), U(v->last.resets_received),
                            U(v->last.resets_sent), U(v->last.data_retransmits), U(v->last.srtt_us),
                            U(v->last.peer_fins));
    else
        evbuffer_add(out, ", \"kernel\": null}", 17);
}

/* {"bpf": .., "services": [{"name", "active", "usable", "peers": [..]}, ..], "peers": [every service's]}:
 * "services" groups them; the flat "peers" (each with its "service") is there for tools that
 * read one list. */
void health_write_debug_json(struct health *h, struct evbuffer *out)
{
    int64_t now = clock_mono_ms();
    int first = 1;

    evbuffer_add_printf(out, "{\"bpf\": %s, \"services\": [", h->bpf ? "true" : "false");
    for (int k = 0; k < h->n_sets; k++) {
        const struct health_set *hs = &h->sets[k];
        evbuffer_add_printf(out, "%s\n  {\"name\": ", k ? "," : "");
        json_string(out, hs->name);
        evbuffer_add_printf(out, ", \"active\": %d, \"usable\": %d, \"peers\": [", peers_active_count(hs->peers),
                            peers_usable_count(hs->peers, now));
        for (int i = 0; i < hs->peers->n; i++) {
            evbuffer_add(out, i ? ",\n    " : "\n    ", i ? 6 : 5);
            write_peer_json(out, hs, i, now);
        }
        evbuffer_add(out, "]}", 2);
    }
    evbuffer_add(out, "\n], \"peers\": [", 14);
    for (int k = 0; k < h->n_sets; k++)
        for (int i = 0; i < h->sets[k].peers->n; i++) {
            evbuffer_add(out, first ? "\n  " : ",\n  ", first ? 3 : 4);
            first = 0;
            write_peer_json(out, &h->sets[k], i, now);
        }
    evbuffer_add(out, "\n]}\n", 4);
}

static void family(struct evbuffer *out, const char *name, const char *type, const char *help)
{
    evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* Every active peer of every service, as <p> with its labels "peer=\"..\",service=\"..\"". */
#define FOR_ACTIVE(h, hs, v, p, labels)                                                                      \
    for (int k_ = 0; k_ < (h)->n_sets; k_++)                                                               \
        for (int i_ = 0; i_ < (h)->sets[k_].peers->n; i_++)                                                \
            if ((hs = &(h)->sets[k_], p = hs->peers->peer[i_], v = &hs->view[i_], peer_is_active(p)) &&    \
                snprintf(labels, sizeof(labels), "peer=\"%s\",service=\"%s\"", p->addr_text, hs->name) > 0)

void health_write_metrics(struct health *h, struct evbuffer *out)
{
    int64_t now = clock_mono_ms();
    const struct health_set *hs;
    const struct peer_view *v;
    struct peer *p;
    char l[256];
    int active = 0;

    for (int k = 0; k < h->n_sets; k++)
        active += peers_active_count(h->sets[k].peers);
    family(out, "nextup_bpf_loaded", "gauge", "1 if the BPF programs feed the health view.");
    evbuffer_add_printf(out, "nextup_bpf_loaded %d\n", h->bpf ? 1 : 0);
    family(out, "nextup_peers_active", "gauge", "Peers taking new requests (discovery's current set), all services.");
    evbuffer_add_printf(out, "nextup_peers_active %d\n", active);
    family(out, "nextup_service_peers_usable", "gauge",
           "Peers of the service that take requests: known to discovery, not down or draining.");
    for (int k = 0; k < h->n_sets; k++)
        evbuffer_add_printf(out, "nextup_service_peers_usable{service=\"%s\"} %d\n", h->sets[k].name,
                            peers_usable_count(h->sets[k].peers, now));
    /* Only the peers discovery has now: a removed peer's series end at once (they stayed at 0
     * for as long as the slot was kept, 30 s and more, and alerts fired after every rollout). */
    family(out, "nextup_peer_healthy", "gauge", "1 if the peer takes first tries, 0 while out of rotation.");
    FOR_ACTIVE(h, hs, v, p, l)
        evbuffer_add_printf(out, "nextup_peer_healthy{%s} %d\n", l, !peer_is_out(p, now));
    family(out, "nextup_peer_state", "gauge",
           "1 for the state the peer is in (healthy, draining, down, ejected, trial), 0 for the others.");
    FOR_ACTIVE(h, hs, v, p, l) {
        enum peer_state st = peer_state_now(p, now);
        for (int s = 0; s < PEER_STATE_COUNT; s++)
            evbuffer_add_printf(out, "nextup_peer_state{%s,state=\"%s\"} %d\n", l,
                                peer_state_name((enum peer_state)s), (int)st == s);
    }
    family(out, "nextup_peer_ejections_total", "counter", "Times the peer was taken out of rotation (down, draining or ejected).");
    FOR_ACTIVE(h, hs, v, p, l)
        evbuffer_add_printf(out, "nextup_peer_ejections_total{%s} %llu\n", l, U(atomic_load(&p->ejections_total)));
    family(out, "nextup_peer_outstanding_requests", "gauge", "Requests in flight to the peer.");
    FOR_ACTIVE(h, hs, v, p, l)
        evbuffer_add_printf(out, "nextup_peer_outstanding_requests{%s} %d\n", l, atomic_load(&p->outstanding));
    if (!h->bpf)
        return;
    family(out, "nextup_peer_kernel_connect_failures_total", "counter",
           "Connects to the peer the kernel saw fail (refused, timed out, unreachable), from every socket of the pod.");
    FOR_ACTIVE(h, hs, v, p, l)
        if (v->have)
            evbuffer_add_printf(out, "nextup_peer_kernel_connect_failures_total{%s} %llu\n", l,
                                U(kernel_connect_failures(&v->last)));
    family(out, "nextup_peer_kernel_resets_received_total", "counter", "Resets the kernel received from the peer.");
    FOR_ACTIVE(h, hs, v, p, l)
        if (v->have)
            evbuffer_add_printf(out, "nextup_peer_kernel_resets_received_total{%s} %llu\n", l,
                                U(v->last.resets_received));
    family(out, "nextup_peer_kernel_syn_retransmits_total", "counter", "SYNs to the peer the kernel retransmitted.");
    FOR_ACTIVE(h, hs, v, p, l)
        if (v->have)
            evbuffer_add_printf(out, "nextup_peer_kernel_syn_retransmits_total{%s} %llu\n", l,
                                U(v->last.syn_retransmits));
    family(out, "nextup_peer_kernel_srtt_seconds", "gauge", "Last smoothed RTT the kernel measured to the peer.");
    FOR_ACTIVE(h, hs, v, p, l)
        if (v->have)
            evbuffer_add_printf(out, "nextup_peer_kernel_srtt_seconds{%s} %.6f\n", l, (double)v->last.srtt_us / 1e6);
}
