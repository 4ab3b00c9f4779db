#include "upstream.h"

#include <errno.h>
#include <netinet/in.h>
#include <linux/tcp.h> /* struct tcp_info with tcpi_bytes_acked; glibc's copy is older */
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <openssl/ssl.h>

#include "clock.h"
#include "conn.h"
#include "log.h"
#include "metrics.h"
#include "peers.h"
#include "tls.h"

struct idle_list {
    struct upconn *head;
    int count;
};

struct upstream_pool {
    struct event_base *base;
    int n_peers;
    int max_idle;
    int connect_timeout_ms;
    int idle_timeout_ms;
    struct idle_list *idle;          /* owned, one per peer index */
    void **tls_sessions;             /* owned: the last TLS session per peer index, resumed next time */
    unsigned tls_generation;         /* tls_client_generation() the sessions belong to */
};

struct upstream_pool *upstream_pool_new(struct event_base *base, int n_peers, int max_idle, int connect_timeout_ms,
                                        int idle_timeout_ms)
{
    struct upstream_pool *pool = calloc(1, sizeof(*pool));

    if (!pool)
        return NULL;
    pool->idle = calloc((size_t)(n_peers > 0 ? n_peers : 1), sizeof(*pool->idle));
    pool->tls_sessions = calloc((size_t)(n_peers > 0 ? n_peers : 1), sizeof(*pool->tls_sessions));
    if (!pool->idle || !pool->tls_sessions) {
        free(pool->idle);
        free(pool->tls_sessions);
        free(pool);
        return NULL;
    }
    pool->base = base;
    pool->n_peers = n_peers;
    pool->max_idle = max_idle;
    pool->connect_timeout_ms = connect_timeout_ms;
    pool->idle_timeout_ms = idle_timeout_ms;
    return pool;
}

static void idle_unlink(struct upconn *c)
{
    struct idle_list *l = &c->pool->idle[c->peer->index];

    if (c->prev_idle)
        c->prev_idle->next_idle = c->next_idle;
    else
        l->head = c->next_idle;
    if (c->next_idle)
        c->next_idle->prev_idle = c->prev_idle;
    c->next_idle = c->prev_idle = NULL;
    l->count--;
}

void upstream_pool_close_idle(struct upstream_pool *pool)
{
    int i;

    for (i = 0; i < pool->n_peers; i++)
        while (pool->idle[i].head) {
            struct upconn *c = pool->idle[i].head;
            idle_unlink(c);
            upstream_close(c);
        }
}

void upstream_pool_free(struct upstream_pool *pool)
{
    if (!pool)
        return;
    upstream_pool_close_idle(pool);
    for (int i = 0; i < pool->n_peers; i++)
        tls_session_free(pool->tls_sessions[i]);
    free(pool->tls_sessions);
    free(pool->idle);
    free(pool);
}

void upstream_pool_close_inactive(struct upstream_pool *pool)
{
    int i;

    for (i = 0; i < pool->n_peers; i++)
        while (pool->idle[i].head && !peer_is_active(pool->idle[i].head->peer)) {
            struct upconn *c = pool->idle[i].head;
            idle_unlink(c);
            upstream_close(c);
        }
}

void upstream_close(struct upconn *c)
{
    if (!c)
        return;
    if (c->conn)
        metrics_upstream_conn_closed();
    conn_free(c->conn);
    free(c);
}

void upstream_distrust(struct peer *peer)
{
    int64_t now = clock_mono_ms();

    if (atomic_exchange(&peer->no_reuse_until_ms, now + UPSTREAM_DISTRUST_MS) <= now)
        LOG_WARN("%s sent bytes no request asked for: its connections are not reused for %d s", peer->addr_text,
                 UPSTREAM_DISTRUST_MS / 1000);
}

/* While pooled, any byte or event from the peer means the connection is no
 * longer usable: an idle HTTP/1.1 server has nothing to say. */
static void idle_read_cb(struct conn *conn, void *arg)
{
    struct upconn *c = arg;

    (void)conn;
    metrics_inc(M_PROTO_IDLE_BYTES);
    upstream_distrust(c->peer);
    idle_unlink(c);
    upstream_close(c);
}

/* The shortest idle time after which a peer has been seen closing keep-alive
 * connections is learned, so that the pool closes its own first and a request
 * never meets the peer's FIN on its way (the keep-alive race). A longer one
 * raises the estimate slowly: a drain that closed everything at once should not
 * keep it low for good. Closes right after a response (idle under 20 ms) say
 * nothing about an idle timeout. */
#define IDLE_LEARN_MIN_MS 20

static void learn_idle_close(struct upconn *c)
{
    int idle = (int)(clock_mono_ms() - c->idle_since_ms);
    int known = atomic_load_explicit(&c->peer->idle_close_ms, memory_order_relaxed);

    metrics_inc(M_POOL_CLOSED_BY_PEER);
    if (idle < IDLE_LEARN_MIN_MS)
        return;
    if (known == 0 || idle < known) {
        atomic_store_explicit(&c->peer->idle_close_ms, idle, memory_order_relaxed);
        if (known == 0 || idle < known * 3 / 4)
            LOG_INFO("%s closes keep-alive connections idle for %d ms: pooled ones are closed before that",
                     c->peer->addr_text, idle);
    } else {
        atomic_store_explicit(&c->peer->idle_close_ms, known + (idle - known) / 8, memory_order_relaxed);
    }
}

static void idle_event_cb(struct conn *conn, int what, int err, void *arg)
{
    struct upconn *c = arg;

    (void)conn;
    (void)err;
    LOG_DEBUG("pooled connection to %s %s while idle: closed", c->peer->addr_text,
              (what & CONN_TIMEOUT) ? "timed out" : "closed by the peer");
    if ((what & CONN_EOF) && !(what & CONN_TIMEOUT))
        learn_idle_close(c);
    idle_unlink(c);
    upstream_close(c);
}

/* Whether pooled <c> is still quiet. Its read watch runs at the loop's first
 * priority (upstream_release), so whatever reached the socket before the loop's
 * last poll was seen and closed it before any request could pick it; only bytes
 * already read and not yet looked at are left to check here, without a system call. */
static int idle_still_quiet(struct upconn *c)
{
    if (evbuffer_get_length(conn_input(c->conn)) == 0)
        return 1;
    metrics_inc(M_PROTO_IDLE_BYTES);
    upstream_distrust(c->peer);
    return 0;
}

struct upconn *upstream_acquire(struct upstream_pool *pool, struct peer *peer, int fresh)
{
    struct idle_list *l = &pool->idle[peer->index];
    struct upconn *c;
    int one = 1;

    while (!fresh && l->head) {
        c = l->head;
        idle_unlink(c);
        /* Its idle time is up (its timeout due in this loop turn), or the peer
         * sent bytes nobody asked for: either way it is not used again. */
        if (clock_mono_ms() - c->idle_since_ms >= c->idle_limit_ms - 1 || !idle_still_quiet(c)) {
            upstream_close(c);
            continue;
        }
        conn_set_cbs(c->conn, NULL, NULL, NULL, NULL);
        conn_set_timeouts(c->conn, 0, 0);
        conn_set_priority(c->conn, 1);
        c->reused = 1;
        metrics_inc(M_UPSTREAM_REUSED);
        return c;
    }
    c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->peer = peer;
    c->pool = pool;
    if (tls_upstream_enabled()) {
        /* The handshake runs right after the TCP connect; CONNECTED means both are done. */
        SSL *ssl;
        if (pool->tls_generation != tls_client_generation()) {
            for (int i = 0; i < pool->n_peers; i++) {
                tls_session_free(pool->tls_sessions[i]);
                pool->tls_sessions[i] = NULL;
            }
            pool->tls_generation = tls_client_generation();
        }
        ssl = tls_upstream_new(peer, &pool->tls_sessions[peer->index]);
        c->tls = 1;
        c->tls_generation = pool->tls_generation;
        if (!ssl)
            errno = ENOMEM;
        else if (!(c->conn = conn_tls_connect(pool->base, (struct sockaddr *)&peer->sa, peer->salen, ssl,
                                              pool->connect_timeout_ms)) && errno == ENOMEM)
            SSL_free(ssl);
    } else {
        c->conn = conn_plain_connect(pool->base, (struct sockaddr *)&peer->sa, peer->salen, pool->connect_timeout_ms);
    }
    if (!c->conn) {
        int err = errno;
        free(c);
        errno = err ? err : ENOMEM;
        return NULL;
    }
    setsockopt(conn_fd(c->conn), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    metrics_upstream_conn_opened();
    metrics_inc(M_UPSTREAM_CONNECTS);
    return c;
}

void upstream_release(struct upconn *c)
{
    struct upstream_pool *pool = c->pool;
    struct idle_list *l = &pool->idle[c->peer->index];
    int64_t now = clock_mono_ms();

    if (l->count >= pool->max_idle || !peer_is_active(c->peer) ||
        atomic_load_explicit(&c->peer->no_reuse_until_ms, memory_order_relaxed) > now ||
        evbuffer_get_length(conn_input(c->conn)) > 0 || evbuffer_get_length(conn_output(c->conn)) > 0) {
        upstream_close(c);
        return;
    }
    c->reused = 1;
    /* Newest first: the warmest connection is reused next, old ones idle out. */
    c->prev_idle = NULL;
    c->next_idle = l->head;
    if (l->head)
        l->head->prev_idle = c;
    l->head = c;
    l->count++;
    conn_set_cbs(c->conn, idle_read_cb, NULL, idle_event_cb, c);
    conn_set_read_limit(c->conn, 0);
    /* First in the loop turn: see upstream_acquire's idle_still_quiet(). */
    conn_set_priority(c->conn, 0);
    c->idle_since_ms = now;
    {
        /* Below the peer's own idle timeout, when known: three quarters of it. */
        int peer_ms = atomic_load_explicit(&c->peer->idle_close_ms, memory_order_relaxed) * 3 / 4;
        c->idle_limit_ms = peer_ms > 0 && peer_ms < pool->idle_timeout_ms ? peer_ms : pool->idle_timeout_ms;
        conn_set_timeouts(c->conn, c->idle_limit_ms, 0);
    }
    conn_read(c->conn, 1);
}

void upstream_tls_keep_session(struct upconn *c)
{
    SSL *ssl = c->tls ? conn_ssl(c->conn) : NULL;

    /* Once per connection: a copy of the session per response would be work on the
     * request path for nothing. A connection made before a certificate change must
     * not seed the new cache. */
    if (ssl && !c->tls_session_kept && c->tls_generation == c->pool->tls_generation)
        c->tls_session_kept = tls_upstream_keep_session(ssl, &c->pool->tls_sessions[c->peer->index]);
}

int64_t upstream_bytes_acked(const struct upconn *c)
{
    struct tcp_info ti;
    socklen_t len = sizeof(ti);
    int fd = conn_fd(c->conn);

    if (fd < 0 || getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0 ||
        len < offsetof(struct tcp_info, tcpi_bytes_acked) + sizeof(ti.tcpi_bytes_acked))
        return -1;
    return (int64_t)ti.tcpi_bytes_acked;
}
