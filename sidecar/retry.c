#include "retry.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <llhttp.h>

/* Calls <fn> on each trimmed, non-empty word of a comma list; stops at the first error. */
static int each_word(const char *list, int (*fn)(struct retry_policy *, const char *, size_t),
                     struct retry_policy *pol, char *bad, size_t badlen)
{
    const char *p = list;

    while (*p) {
        const char *start, *end;
        while (*p == ' ' || *p == '\t')
            p++;
        start = p;
        while (*p && *p != ',')
            p++;
        end = p;
        while (end > start && (end[-1] == ' ' || end[-1] == '\t'))
            end--;
        if (end == start || fn(pol, start, (size_t)(end - start)) < 0) {
            snprintf(bad, badlen, "%.*s", (int)(end - start), start);
            return -EINVAL;
        }
        if (*p == ',')
            p++;
        if (*p == '\0' && p > list && p[-1] == ',') {
            snprintf(bad, badlen, "%s", "");
            return -EINVAL;
        }
    }
    return 0;
}

static int word_is(const char *w, size_t n, const char *want)
{
    return strlen(want) == n && strncasecmp(w, want, n) == 0;
}

static int add_condition(struct retry_policy *pol, const char *w, size_t n)
{
    static const struct { const char *word; unsigned bit; } words[] = {
        /* A refused connect is a connect failure (Envoy's connect-failure includes it);
         * "refused" alone names just that one. */
        { "connect-failure", RETRY_ON_CONNECT_FAILURE | RETRY_ON_REFUSED }, { "refused", RETRY_ON_REFUSED },
        { "reset", RETRY_ON_RESET }, { "timeout", RETRY_ON_TIMEOUT },
        { "gateway-error", RETRY_ON_GATEWAY_ERROR }, { "5xx", RETRY_ON_5XX },
    };
    size_t i;
    int code = 0;

    for (i = 0; i < sizeof(words) / sizeof(words[0]); i++)
        if (word_is(w, n, words[i].word)) {
            pol->on |= words[i].bit;
            return 0;
        }
    if (n != 3)
        return -EINVAL;
    for (i = 0; i < 3; i++) {
        if (w[i] < '0' || w[i] > '9')
            return -EINVAL;
        code = code * 10 + (w[i] - '0');
    }
    if (code < 100 || code > 599)
        return -EINVAL;
    pol->on_status[code / 64] |= (uint64_t)1 << (code % 64);
    return 0;
}

int retry_parse_on(struct retry_policy *pol, const char *list, char *bad, size_t badlen)
{
    pol->on = 0;
    memset(pol->on_status, 0, sizeof(pol->on_status));
    return each_word(list, add_condition, pol, bad, badlen);
}

static int add_method(struct retry_policy *pol, const char *w, size_t n)
{
    /* llhttp_method_name() aborts on numbers it does not know: walk its map instead. */
#define METHOD_ENTRY(num, name, string) { num, #string },
    static const struct { int num; const char *name; } methods[] = { HTTP_METHOD_MAP(METHOD_ENTRY) };
#undef METHOD_ENTRY
    size_t i;

    for (i = 0; i < sizeof(methods) / sizeof(methods[0]); i++)
        if (methods[i].num < 64 && strlen(methods[i].name) == n && strncmp(methods[i].name, w, n) == 0) {
            pol->methods |= (uint64_t)1 << methods[i].num;
            return 0;
        }
    return -EINVAL;
}

int retry_parse_methods(struct retry_policy *pol, const char *list, char *bad, size_t badlen)
{
    pol->methods = 0;
    return each_word(list, add_method, pol, bad, badlen);
}

int retry_status_matches(const struct retry_policy *pol, int status)
{
    if (status < 100 || status > 599)
        return 0;
    if ((pol->on & RETRY_ON_5XX) && status >= 500)
        return 1;
    if ((pol->on & RETRY_ON_GATEWAY_ERROR) && (status == 502 || status == 503 || status == 504))
        return 1;
    return (pol->on_status[status / 64] >> (status % 64)) & 1;
}

int retry_cause_reached_peer(enum retry_cause cause)
{
    return cause == CAUSE_RESET || cause == CAUSE_TIMEOUT || cause == CAUSE_STATUS;
}

enum retry_verdict retry_decide(const struct retry_policy *pol, const struct attempt *a)
{
    unsigned need;

    switch (a->cause) {
    case CAUSE_REFUSED: need = RETRY_ON_REFUSED; break;
    case CAUSE_CONNECT_FAILURE: need = RETRY_ON_CONNECT_FAILURE; break;
    case CAUSE_RESET: need = RETRY_ON_RESET; break;
    case CAUSE_TIMEOUT: need = RETRY_ON_TIMEOUT; break;
    default: need = 0; break;   /* status: the decision hook already chose */
    }
    if (need && !(pol->on & need))
        return RETRY_NO_POLICY;
    if (a->retries_done >= pol->max_retries)
        return RETRY_NO_EXHAUSTED;
    if (retry_cause_reached_peer(a->cause) && !a->has_idempotency_key &&
        !(a->method >= 0 && a->method < 64 && ((pol->methods >> a->method) & 1)))
        return RETRY_NO_METHOD;
    if (!a->buffer_whole)
        return RETRY_NO_BUFFER;
    /* Budget last: it is only consulted when everything else allows the retry. */
    if (retry_cause_reached_peer(a->cause) && !a->budget_ok)
        return RETRY_NO_BUDGET;
    return RETRY_GO;
}

int retry_buffer_fits(uint64_t kept, uint64_t more, uint64_t limit)
{
    return kept <= limit && more <= limit - kept;
}

const char *retry_verdict_name(enum retry_verdict v)
{
    switch (v) {
    case RETRY_GO: return "retry";
    case RETRY_NO_POLICY: return "policy";
    case RETRY_NO_EXHAUSTED: return "exhausted";
    case RETRY_NO_METHOD: return "method";
    case RETRY_NO_BUFFER: return "buffer";
    case RETRY_NO_BUDGET: return "budget";
    }
    return "unknown";
}

void retry_budget_init(struct retry_budget *b)
{
    int i;

    for (i = 0; i < RETRY_BUDGET_WINDOW; i++) {
        atomic_init(&b->bucket[i].second, -1);
        atomic_init(&b->bucket[i].requests, 0);
        atomic_init(&b->bucket[i].retries, 0);
    }
}

/* The bucket for <now_s>, emptied first if it still holds an older second. */
static int bucket_for(struct retry_budget *b, int64_t now_s)
{
    int i = (int)(((now_s % RETRY_BUDGET_WINDOW) + RETRY_BUDGET_WINDOW) % RETRY_BUDGET_WINDOW);
    int64_t seen = atomic_load(&b->bucket[i].second);

    if (seen != now_s && atomic_compare_exchange_strong(&b->bucket[i].second, &seen, now_s)) {
        /* A count racing with this reset may be lost: the budget is an estimate. */
        atomic_store(&b->bucket[i].requests, 0);
        atomic_store(&b->bucket[i].retries, 0);
    }
    return i;
}

void retry_budget_note_request(struct retry_budget *b, int64_t now_s)
{
    atomic_fetch_add(&b->bucket[bucket_for(b, now_s)].requests, 1);
}

int retry_budget_try_take(struct retry_budget *b, const struct retry_policy *pol, int64_t now_s)
{
    uint64_t requests = 0, retries = 0, allowed;
    int i, cur = bucket_for(b, now_s);

    for (i = 0; i < RETRY_BUDGET_WINDOW; i++) {
        int64_t s = atomic_load(&b->bucket[i].second);
        if (s > now_s - RETRY_BUDGET_WINDOW && s <= now_s) {
            requests += atomic_load(&b->bucket[i].requests);
            retries += atomic_load(&b->bucket[i].retries);
        }
    }
    allowed = requests * (uint64_t)pol->budget_percent / 100 +
              (uint64_t)pol->budget_min_per_sec * RETRY_BUDGET_WINDOW;
    if (retries >= allowed)
        return 0;
    atomic_fetch_add(&b->bucket[cur].retries, 1);
    return 1;
}

int retry_backoff_ms(const struct retry_policy *pol, int retry, uint64_t rand)
{
    int64_t cap = pol->backoff_base_ms;
    int i;

    if (cap <= 0 || pol->backoff_max_ms <= 0)
        return 0;
    for (i = 1; i < retry && cap < pol->backoff_max_ms; i++)
        cap *= 2;
    if (cap > pol->backoff_max_ms)
        cap = pol->backoff_max_ms;
    return (int)(rand % (uint64_t)(cap + 1));
}

struct failure_class retry_classify(const struct failure_facts *f, int replayable, int resent)
{
    struct failure_class c = { CAUSE_RESET, 0, 0, 0 };

    switch (f->kind) {
    case UPF_REFUSED:
        c.cause = CAUSE_REFUSED;
        break;
    case UPF_CONNECT_TIMEOUT:
    case UPF_CONNECT_ERROR:
    case UPF_TLS:
        c.cause = CAUSE_CONNECT_FAILURE;
        break;
    case UPF_CLOSED:
        /* The keep-alive race: the peer closed the pooled connection as it was
         * reused and acknowledged none of the request. Resent once, same peer. */
        if (f->reused && !f->response_started && !resent && replayable && f->nothing_acked) {
            c.resend_same_peer = 1;
            c.cause = CAUSE_CONNECT_FAILURE;
            break;
        }
        /* Nothing acknowledged: as safe to replay as a connect failure, whatever the method. */
        c.cause = f->nothing_acked && !f->response_started ? CAUSE_CONNECT_FAILURE : CAUSE_RESET;
        c.proved_unsent = c.cause == CAUSE_CONNECT_FAILURE && f->connected;
        break;
    case UPF_TRY_TIMEOUT:
        c.cause = CAUSE_TIMEOUT;
        break;
    case UPF_BAD_RESPONSE:
    default:
        c.cause = CAUSE_RESET;
        c.never_retried = 1;
        break;
    }
    return c;
}

const char *upstream_failure_text(enum upstream_failure kind)
{
    switch (kind) {
    case UPF_REFUSED: return "connection refused";
    case UPF_CONNECT_TIMEOUT: return "connect timed out";
    case UPF_CONNECT_ERROR: return "connect failed";
    case UPF_CLOSED: return "connection closed before a response";
    case UPF_BAD_RESPONSE: return "malformed response";
    case UPF_TRY_TIMEOUT: return "no response head within NEXTUP_PER_TRY_TIMEOUT_MS";
    case UPF_TLS: return "TLS handshake failed";
    default: return "failed";
    }
}

int upstream_failure_status(enum upstream_failure kind, const char **reason)
{
    switch (kind) {
    case UPF_CONNECT_TIMEOUT: *reason = "upstream connect timed out"; return 504;
    case UPF_TRY_TIMEOUT: *reason = "upstream did not answer within NEXTUP_PER_TRY_TIMEOUT_MS"; return 504;
    case UPF_REFUSED: *reason = "upstream refused the connection"; return 502;
    case UPF_CONNECT_ERROR: *reason = "upstream unreachable"; return 502;
    case UPF_CLOSED: *reason = "upstream closed the connection before responding"; return 502;
    case UPF_TLS: *reason = "upstream TLS handshake failed"; return 502;
    case UPF_BAD_RESPONSE:
    default: *reason = "upstream sent a malformed response"; return 502;
    }
}

enum retry_verdict retry_decide_budgeted(const struct retry_policy *pol, struct attempt *a,
                                         struct retry_budget *b, int64_t now_s)
{
    enum retry_verdict v;

    a->budget_ok = 1;
    v = retry_decide(pol, a);
    /* The budget is only spent on retries that are otherwise allowed. */
    if (v == RETRY_GO && retry_cause_reached_peer(a->cause) && !retry_budget_try_take(b, pol, now_s)) {
        a->budget_ok = 0;
        v = retry_decide(pol, a);
    }
    return v;
}
