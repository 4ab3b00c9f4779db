/* retry: the retry decision, the retry budget and the backoff, all pure:
 * no I/O and no clock (callers pass the time in). Tests feed them structs.
 *
 * API:
 *   retry_parse_on() / retry_parse_methods()    NEXTUP_RETRY_ON / NEXTUP_RETRY_METHODS
 *   retry_status_matches()                       the built-in decision's status rule
 *   retry_decide()                               retry, or why not
 *   retry_budget_*()                             requests and retries over the last 10 s
 *   retry_backoff_ms()                           exponential backoff with full jitter */
#ifndef SIDECAR_RETRY_H
#define SIDECAR_RETRY_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* NEXTUP_RETRY_ON conditions. */
#define RETRY_ON_CONNECT_FAILURE (1u << 0)   /* connect timeout, unreachable, closed before a byte was acknowledged;
                                               * the word connect-failure sets RETRY_ON_REFUSED too */
#define RETRY_ON_REFUSED         (1u << 1)   /* ECONNREFUSED */
#define RETRY_ON_RESET           (1u << 2)   /* reset or closed after the request reached the peer, before the head */
#define RETRY_ON_TIMEOUT         (1u << 3)   /* NEXTUP_PER_TRY_TIMEOUT_MS passed without a head */
#define RETRY_ON_GATEWAY_ERROR   (1u << 4)   /* 502, 503, 504 */
#define RETRY_ON_5XX             (1u << 5)   /* any 5xx */

struct retry_policy {
    unsigned on;                      /* RETRY_ON_* bits */
    uint64_t on_status[10];           /* explicit status codes (100..599), one bit each */
    uint64_t methods;                 /* replayable methods: bit = llhttp method number */
    int max_retries;
    int budget_percent;               /* retries may add this % of the window's requests */
    int budget_min_per_sec;           /* ... plus this many per second of the window */
    int backoff_base_ms, backoff_max_ms;
};

/* Why an attempt ended without a forwarded response. */
enum retry_cause {
    CAUSE_REFUSED,          /* connection refused */
    CAUSE_CONNECT_FAILURE,  /* connect timeout or error; or closed with no byte of ours acknowledged */
    CAUSE_RESET,            /* reset or closed after the peer got request bytes, before the head */
    CAUSE_TIMEOUT,          /* per-try timeout */
    CAUSE_STATUS,           /* the decision hook aborted the response as retryable */
};

/* The facts of one failed attempt. */
struct attempt {
    enum retry_cause cause;
    int method;                       /* llhttp method number */
    int has_idempotency_key;          /* request carries Idempotency-Key */
    int buffer_whole;                 /* every byte of the request can be sent again */
    int retries_done;                 /* retries already made for this request */
    int budget_ok;                    /* the budget has room (see retry_budget_try_take) */
};

enum retry_verdict {
    RETRY_GO,
    RETRY_NO_POLICY,      /* the condition is not in NEXTUP_RETRY_ON */
    RETRY_NO_EXHAUSTED,   /* NEXTUP_MAX_RETRIES reached */
    RETRY_NO_METHOD,      /* the request reached a peer and its method is not replayable */
    RETRY_NO_BUFFER,      /* the body outgrew NEXTUP_RETRY_BUFFER_BYTES */
    RETRY_NO_BUDGET,      /* the retry budget is spent */
};

/* How one attempt to a peer failed: the one sorting of upstream failures.
 * The exchange says which; retry_classify() turns it into a cause. */
enum upstream_failure {
    UPF_REFUSED,          /* ECONNREFUSED */
    UPF_CONNECT_TIMEOUT,  /* no SYN-ACK within NEXTUP_CONNECT_TIMEOUT_MS */
    UPF_CONNECT_ERROR,    /* unreachable, no route, ... */
    UPF_CLOSED,           /* reset or closed after connect, before any response byte */
    UPF_BAD_RESPONSE,     /* malformed or truncated response */
    UPF_TRY_TIMEOUT,      /* no head within NEXTUP_PER_TRY_TIMEOUT_MS */
    UPF_TLS,              /* TCP connected, TLS handshake failed */
    UPF_COUNT
};

/* What is known of a failed attempt when it ends. */
struct failure_facts {
    enum upstream_failure kind;
    int reused;               /* the connection came from the keep-alive pool */
    int connected;            /* it was connected (and the request handed to it) */
    int response_started;     /* a byte of a response arrived */
    int nothing_acked;        /* the kernel's proof: the peer acknowledged no byte of this
                               * request, seen with its FIN (or never connected) */
    int after_head;           /* the head was already reported: the response broke off */
};

/* What a failure means for the request. */
struct failure_class {
    enum retry_cause cause;
    int resend_same_peer;     /* the keep-alive race: resend on a fresh connection to the
                               * same peer; not a retry, not the peer's fault */
    int never_retried;        /* a malformed response is answered, not retried */
    int proved_unsent;        /* a close turned into a connect failure by the kernel's proof */
};

/* Pure: sorts <f>. <replayable>: every byte of the request can be sent again;
 * <resent>: this request already had its keep-alive race resend. */
struct failure_class retry_classify(const struct failure_facts *f, int replayable, int resent);

/* Constant text of a failure for logs ("connection refused"), and the status
 * and reason nextup answers with when it is not retried. */
const char *upstream_failure_text(enum upstream_failure kind);
int upstream_failure_status(enum upstream_failure kind, const char **reason);

/* Parses a NEXTUP_RETRY_ON list into <pol> (on, on_status). 0, or -EINVAL with
 * the offending word in <bad> (at most badlen bytes). */
int retry_parse_on(struct retry_policy *pol, const char *list, char *bad, size_t badlen);
/* Parses a NEXTUP_RETRY_METHODS list ("GET,PUT"). 0, or -EINVAL with the word in <bad>. */
int retry_parse_methods(struct retry_policy *pol, const char *list, char *bad, size_t badlen);

/* 1 if the built-in decision retries a response with <status>. */
int retry_status_matches(const struct retry_policy *pol, int status);

/* Pure: whether the attempt described by <a> may be retried under <pol>. A
 * cause that never reached the peer (refused, connect failure) is allowed for
 * every method and costs no budget; the others need a replayable method or an
 * Idempotency-Key, and budget. CAUSE_STATUS is not checked against
 * NEXTUP_RETRY_ON: the decision hook already chose to retry. */
enum retry_verdict retry_decide(const struct retry_policy *pol, const struct attempt *a);
/* The retry buffer rule: a request stays replayable while every byte of it as
 * forwarded (head and framed body) fits in NEXTUP_RETRY_BUFFER_BYTES. 1 if
 * <kept> bytes plus <more> still fit in <limit>; once a request outgrows it,
 * it stays unreplayable (the caller drops what it kept). */
int retry_buffer_fits(uint64_t kept, uint64_t more, uint64_t limit);

/* Constant text for a verdict, for logs and metric labels. */
const char *retry_verdict_name(enum retry_verdict v);
/* 1 if <cause> reached a peer, so that it costs budget and needs a replayable method. */
int retry_cause_reached_peer(enum retry_cause cause);

#define RETRY_BUDGET_WINDOW 10        /* seconds */

/* Requests and retries per second over the last RETRY_BUDGET_WINDOW seconds,
 * shared by all workers (atomics; a bucket is reset when its second comes round). */
struct retry_budget {
    struct {
        _Atomic int64_t second;
        _Atomic uint64_t requests;
        _Atomic uint64_t retries;
    } bucket[RETRY_BUDGET_WINDOW];
};

void retry_budget_init(struct retry_budget *b);
/* Counts one request at time <now_s> (seconds, any monotonic origin). */
void retry_budget_note_request(struct retry_budget *b, int64_t now_s);
/* 1 and counts a retry if retries over the window stay within
 * percent x requests + min_per_sec x window; 0 otherwise. */
int retry_budget_try_take(struct retry_budget *b, const struct retry_policy *pol, int64_t now_s);

/* retry_decide(), then the budget for a retry it allows that reached a peer:
 * one call for the whole decision. <a>->budget_ok is set from the budget. */
struct retry_budget;
enum retry_verdict retry_decide_budgeted(const struct retry_policy *pol, struct attempt *a,
                                         struct retry_budget *b, int64_t now_s);

/* Delay before retry number <retry> (1-based) in ms: uniform in
 * [0, min(max, base * 2^(retry-1))], <rand> being any 64-bit random value. */
int retry_backoff_ms(const struct retry_policy *pol, int retry, uint64_t rand);

#endif
