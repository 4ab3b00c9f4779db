#include "peer_state.h"

enum peer_state peer_state_at(const struct peer_health *h, int64_t now_ms)
{
    if ((h->state == PEER_EJECTED || h->state == PEER_DRAINING) && now_ms >= h->until_ms)
        return PEER_TRIAL;
    return h->state;
}

/* Time out for the <times>-th time in a row (0 first): base, doubled each time, up to max. */
static int64_t out_ms(const struct peer_state_policy *pol, int times)
{
    int64_t ms = pol->eject_base_ms;

    while (times-- > 0 && ms < pol->eject_max_ms)
        ms *= 2;
    return ms > pol->eject_max_ms ? pol->eject_max_ms : ms;
}

static int go(struct peer_health *h, enum peer_state to, enum peer_reason reason, int64_t until_ms)
{
    int changed = h->state != to || h->reason != reason;

    h->state = to;
    h->reason = reason;
    h->until_ms = until_ms;
    return changed;
}

/* Out for a while (EJECTED or DRAINING): the time doubles with each time in a row. */
static int go_out(struct peer_health *h, enum peer_state to, enum peer_reason reason,
                  const struct peer_state_policy *pol, int64_t now_ms)
{
    int64_t until = now_ms + out_ms(pol, h->ejections);

    h->ejections++;
    h->consecutive_failures = 0;
    go(h, to, reason, until);
    return 1;   /* a new time out is news even in the same state */
}

/* Evidence that counts at once: the kernel's comes already judged against its
 * own threshold (one interval's counts), and one failed TLS handshake is as
 * good as many. */
static int judged_once(enum peer_reason r)
{
    return r == REASON_KERNEL_CONNECT || r == REASON_KERNEL_SYN || r == REASON_KERNEL_RESETS || r == REASON_TLS;
}

/* The cap: soft evidence may take a peer out only while enough of the peers that
 * take connections stay in. Peers that are down or draining have no capacity to
 * protect, so they are neither counted out nor counted as takers. */
static int cap_allows(const struct peer_state_policy *pol, const struct peer_cap *cap)
{
    return (cap->soft_out + 1) * 100 <= (cap->takers + 1) * pol->max_eject_percent;
}

int peer_state_next(struct peer_health *h, enum peer_evidence ev, enum peer_reason reason,
                    const struct peer_state_policy *pol, const struct peer_cap *cap, int64_t now_ms)
{
    enum peer_state cur = peer_state_at(h, now_ms);

    switch (ev) {
    case EVIDENCE_OK:
        h->consecutive_failures = 0;
        if (cur == PEER_HEALTHY) {
            h->ejections = 0;
            return 0;
        }
        /* A trial that went well, or a response from a peer that was down: it serves. */
        if (cur == PEER_TRIAL || cur == PEER_DOWN) {
            h->ejections = 0;
            return go(h, PEER_HEALTHY, REASON_NONE, 0);
        }
        return 0;   /* out for a while: a request sent before that came back well */

    case EVIDENCE_PROBE_OK:
        if (cur != PEER_DOWN)
            return 0;   /* a connect proves nothing against 5xx, resets or a drain */
        h->consecutive_failures = 0;
        return go(h, PEER_HEALTHY, REASON_NONE, 0);

    case EVIDENCE_NO_CONNECT:
        h->consecutive_failures++;
        if (cur == PEER_DOWN)
            return 0;
        if (cur != PEER_TRIAL && !judged_once(reason) &&
            (pol->connect_failures_to_down <= 0 || h->consecutive_failures < pol->connect_failures_to_down))
            return 0;
        h->consecutive_failures = 0;
        return go(h, PEER_DOWN, reason, 0);

    case EVIDENCE_SOFT_FAILURE:
        h->consecutive_failures++;
        if (cur == PEER_TRIAL)
            return go_out(h, PEER_EJECTED, REASON_TRIAL_FAILED, pol, now_ms);
        if (cur != PEER_HEALTHY)
            return 0;
        if (!judged_once(reason) &&
            (pol->soft_failures_to_eject <= 0 || h->consecutive_failures < pol->soft_failures_to_eject))
            return 0;
        if (!cap_allows(pol, cap))
            return 0;
        return go_out(h, PEER_EJECTED, reason, pol, now_ms);

    case EVIDENCE_DRAINING:
        if (cur == PEER_DOWN || cur == PEER_DRAINING)
            return 0;
        /* With 5xx told never to take a peer out, a 503 that says goodbye does not either. */
        if (reason == REASON_DRAIN_503 && pol->soft_failures_to_eject <= 0)
            return 0;
        return go_out(h, PEER_DRAINING, reason, pol, now_ms);
    }
    return 0;
}

const char *peer_state_name(enum peer_state s)
{
    switch (s) {
    case PEER_HEALTHY: return "healthy";
    case PEER_DRAINING: return "draining";
    case PEER_DOWN: return "down";
    case PEER_EJECTED: return "ejected";
    case PEER_TRIAL: return "trial";
    case PEER_STATE_COUNT: break;
    }
    return "unknown";
}

const char *peer_reason_text(enum peer_reason r)
{
    switch (r) {
    case REASON_NONE: return "";
    case REASON_CONNECT_FAILURES: return "connect failures seen by nextup";
    case REASON_GATEWAY_ERRORS: return "consecutive gateway errors seen by nextup";
    case REASON_TLS: return "TLS handshakes failed";
    case REASON_KERNEL_CONNECT: return "kernel: connects refused, timed out or unreachable";
    case REASON_KERNEL_SYN: return "kernel: SYN retransmitted with no SYN-ACK";
    case REASON_KERNEL_RESETS: return "kernel: connections reset by the peer";
    case REASON_DRAIN_503: return "answered 503 with Connection: close";
    case REASON_DRAIN_CLOSES: return "closed connections in a burst (far above its habit)";
    case REASON_TRIAL_FAILED: return "the trial request failed";
    }
    return "unknown";
}
