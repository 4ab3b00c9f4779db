#include "tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "config.h"
#include "log.h"
#include "metrics.h"
#include "peers.h"

/* What a file was the last time it was looked at: a Kubernetes Secret update
 * swaps a symlink, so the inode changes even when the time does not. */
struct file_id {
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
};

static const struct config *cfg;
static pthread_mutex_t ctx_lock = PTHREAD_MUTEX_INITIALIZER;
static SSL_CTX *client_ctx;   /* owned; swapped on reload */
static _Atomic unsigned client_generation; /* bumped at each swap: cached sessions of an older one are dropped */
static SSL_CTX *server_ctx;   /* owned; swapped on reload */
static struct file_id seen[6]; /* upstream cert, key, CA; listener cert, key, client CA: see files() */

static const unsigned char alpn_http11[] = { 8, 'h', 't', 't', 'p', '/', '1', '.', '1' };

/* OpenSSL's last error as text, then its queue emptied. */
static void ossl_reason(char *out, size_t outlen)
{
    unsigned long e = ERR_peek_last_error();

    if (e)
        ERR_error_string_n(e, out, outlen);
    else
        snprintf(out, outlen, "%s", strerror(errno ? errno : EINVAL));
    ERR_clear_error();
}

static int fail(char *err, size_t errlen, const char *var, const char *value, const char *what)
{
    char reason[256];

    /* OpenSSL's own word for a missing file is "system lib": say what the system said. */
    if (value[0] && access(value, R_OK) != 0) {
        snprintf(reason, sizeof(reason), "%s", strerror(errno));
        ERR_clear_error();
    } else {
        ossl_reason(reason, sizeof(reason));
    }
    snprintf(err, errlen, "%s=\"%s\": %s: %s", var, value, what, reason);
    return -EINVAL;
}

static SSL_CTX *make_client_ctx(char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

    if (!ctx) {
        fail(err, errlen, "NEXTUP_UPSTREAM_TLS", "on", "cannot create a TLS context");
        return NULL;
    }
    /* TLS 1.2 and 1.3 only, OpenSSL's default ciphers: nothing weaker can be configured. */
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_alpn_protos(ctx, alpn_http11, sizeof(alpn_http11));
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    if (cfg->upstream_tls_verify) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
        if (cfg->upstream_ca_file[0]) {
            if (SSL_CTX_load_verify_locations(ctx, cfg->upstream_ca_file, NULL) != 1) {
                fail(err, errlen, "NEXTUP_UPSTREAM_CA_FILE", cfg->upstream_ca_file, "cannot load the CA bundle");
                goto bad;
            }
        } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
            fail(err, errlen, "NEXTUP_UPSTREAM_CA_FILE", "", "cannot load the system CA store");
            goto bad;
        }
    }
    if (cfg->upstream_cert_file[0] || cfg->upstream_key_file[0]) {
        if (SSL_CTX_use_certificate_chain_file(ctx, cfg->upstream_cert_file) != 1) {
            fail(err, errlen, "NEXTUP_UPSTREAM_CERT_FILE", cfg->upstream_cert_file, "cannot load the certificate");
            goto bad;
        }
        if (SSL_CTX_use_PrivateKey_file(ctx, cfg->upstream_key_file, SSL_FILETYPE_PEM) != 1 ||
            SSL_CTX_check_private_key(ctx) != 1) {
            fail(err, errlen, "NEXTUP_UPSTREAM_KEY_FILE", cfg->upstream_key_file,
                 "cannot load the key, or it does not match NEXTUP_UPSTREAM_CERT_FILE");
            goto bad;
        }
    }
    return ctx;
bad:
    SSL_CTX_free(ctx);
    return NULL;
}

/* Offers http/1.1 to a client that speaks ALPN, and nothing else. */
static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                       unsigned int inlen, void *arg)
{
    unsigned char *o;

    (void)ssl;
    (void)arg;
    if (SSL_select_next_proto(&o, outlen, alpn_http11, sizeof(alpn_http11), in, inlen) != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = o;
    return SSL_TLSEXT_ERR_OK;
}

static SSL_CTX *make_server_ctx(char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());

    if (!ctx) {
        fail(err, errlen, "NEXTUP_TLS_CERT_FILE", cfg->tls_cert_file, "cannot create a TLS context");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
    if (SSL_CTX_use_certificate_chain_file(ctx, cfg->tls_cert_file) != 1) {
        fail(err, errlen, "NEXTUP_TLS_CERT_FILE", cfg->tls_cert_file, "cannot load the certificate");
        goto bad;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, cfg->tls_key_file, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
        fail(err, errlen, "NEXTUP_TLS_KEY_FILE", cfg->tls_key_file,
             "cannot load the key, or it does not match NEXTUP_TLS_CERT_FILE");
        goto bad;
    }
    if (cfg->tls_client_ca_file[0]) {
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(cfg->tls_client_ca_file);
        if (!names || SSL_CTX_load_verify_locations(ctx, cfg->tls_client_ca_file, NULL) != 1) {
            if (names)
                sk_X509_NAME_pop_free(names, X509_NAME_free);
            fail(err, errlen, "NEXTUP_TLS_CLIENT_CA_FILE", cfg->tls_client_ca_file, "cannot load the CA bundle");
            goto bad;
        }
        SSL_CTX_set_client_CA_list(ctx, names);
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    }
    return ctx;
bad:
    SSL_CTX_free(ctx);
    return NULL;
}

static const char *files(int i)
{
    switch (i) {
    case 0: return cfg->upstream_cert_file;
    case 1: return cfg->upstream_key_file;
    case 2: return cfg->upstream_ca_file;
    case 3: return cfg->tls_cert_file;
    case 4: return cfg->tls_key_file;
    default: return cfg->tls_client_ca_file;
    }
}

/* 1 if file <i> changed since last seen (and records what it is now). */
static int file_changed(int i)
{
    struct stat st;
    struct file_id now = { 0 };
    const char *path = files(i);
    int changed;

    if (!path[0] || (size_t)i >= sizeof(seen) / sizeof(seen[0]))
        return 0;
    if (stat(path, &st) == 0) {
        now.dev = st.st_dev;
        now.ino = st.st_ino;
        now.size = st.st_size;
        now.mtime = st.st_mtim;
    }
    changed = memcmp(&now, &seen[i], sizeof(now)) != 0;
    seen[i] = now;
    return changed;
}

int tls_setup(const struct config *c, char *err, size_t errlen)
{
    int i;

    cfg = c;
    if ((c->tls_cert_file[0] != 0) != (c->tls_key_file[0] != 0)) {
        snprintf(err, errlen, "%s is set but %s is not: TLS on the listener needs both",
                 c->tls_cert_file[0] ? "NEXTUP_TLS_CERT_FILE" : "NEXTUP_TLS_KEY_FILE",
                 c->tls_cert_file[0] ? "NEXTUP_TLS_KEY_FILE" : "NEXTUP_TLS_CERT_FILE");
        return -EINVAL;
    }
    if (c->tls_client_ca_file[0] && !c->tls_cert_file[0]) {
        snprintf(err, errlen, "NEXTUP_TLS_CLIENT_CA_FILE is set but the listener has no certificate "
                 "(NEXTUP_TLS_CERT_FILE, NEXTUP_TLS_KEY_FILE)");
        return -EINVAL;
    }
    if ((c->upstream_cert_file[0] != 0) != (c->upstream_key_file[0] != 0)) {
        snprintf(err, errlen, "%s is set but %s is not: a client certificate needs both",
                 c->upstream_cert_file[0] ? "NEXTUP_UPSTREAM_CERT_FILE" : "NEXTUP_UPSTREAM_KEY_FILE",
                 c->upstream_cert_file[0] ? "NEXTUP_UPSTREAM_KEY_FILE" : "NEXTUP_UPSTREAM_CERT_FILE");
        return -EINVAL;
    }
    for (i = 0; i < (int)(sizeof(seen) / sizeof(seen[0])); i++)
        file_changed(i);
    if (c->upstream_tls) {
        client_ctx = make_client_ctx(err, errlen);
        if (!client_ctx)
            return -EINVAL;
        if (!c->upstream_tls_verify)
            LOG_WARN("NEXTUP_UPSTREAM_TLS_VERIFY=off: upstream certificates are not checked; anyone on the "
                     "path can read and change the traffic");
    }
    if (c->tls_cert_file[0]) {
        server_ctx = make_server_ctx(err, errlen);
        if (!server_ctx)
            return -EINVAL;
    }
    return 0;
}

void tls_shutdown(void)
{
    SSL_CTX_free(client_ctx);
    SSL_CTX_free(server_ctx);
    client_ctx = server_ctx = NULL;
}

unsigned tls_client_generation(void)
{
    return atomic_load(&client_generation);
}

int tls_upstream_enabled(void)
{
    return client_ctx != NULL;
}

int tls_listener_enabled(void)
{
    return server_ctx != NULL;
}

/* Swaps in a new context under the lock; the old one lives on in the SSLs that hold it. */
static void swap_ctx(SSL_CTX **slot, SSL_CTX *fresh)
{
    SSL_CTX *old;

    pthread_mutex_lock(&ctx_lock);
    old = *slot;
    *slot = fresh;
    pthread_mutex_unlock(&ctx_lock);
    SSL_CTX_free(old);
}

void tls_reload_check(void)
{
    char err[512];
    int up = 0, down = 0, i;

    for (i = 0; i < 3; i++)
        up |= file_changed(i);
    for (i = 3; i < 6; i++)
        down |= file_changed(i);
    if (up && client_ctx) {
        SSL_CTX *fresh = make_client_ctx(err, sizeof(err));
        if (fresh) {
            swap_ctx(&client_ctx, fresh);
            /* A resumed session would keep the old client certificate: sessions start afresh. */
            atomic_fetch_add(&client_generation, 1);
            metrics_inc(M_TLS_RELOADS);
            LOG_INFO("tls: upstream certificate files changed: new connections use them");
        } else {
            metrics_inc(M_TLS_RELOAD_FAILURES);
            LOG_ERROR("tls: upstream certificate files changed but are refused (%s); the old ones stay", err);
        }
    }
    if (down && server_ctx) {
        SSL_CTX *fresh = make_server_ctx(err, sizeof(err));
        if (fresh) {
            swap_ctx(&server_ctx, fresh);
            metrics_inc(M_TLS_RELOADS);
            LOG_INFO("tls: listener certificate files changed: new handshakes use them");
        } else {
            metrics_inc(M_TLS_RELOAD_FAILURES);
            LOG_ERROR("tls: listener certificate files changed but are refused (%s); the old ones stay", err);
        }
    }
}

static SSL *new_ssl(SSL_CTX **slot)
{
    SSL *ssl = NULL;

    pthread_mutex_lock(&ctx_lock);
    if (*slot)
        ssl = SSL_new(*slot);
    pthread_mutex_unlock(&ctx_lock);
    return ssl;
}

SSL *tls_upstream_new(const struct peer *p, void **session_slot)
{
    SSL *ssl = new_ssl(&client_ctx);
    char host[256];
    const char *name = cfg->upstream_sni;
    struct in6_addr a6;
    struct in_addr a4;

    if (!ssl)
        return NULL;
    if (!name[0]) {
        /* The host of the NEXTUP_UPSTREAMS entry: "orders:8080" -> "orders", "[::1]:80" -> "::1". */
        const char *colon = strrchr(p->name, ':');
        size_t n = colon ? (size_t)(colon - p->name) : strlen(p->name);
        if (n >= sizeof(host))
            n = sizeof(host) - 1;
        memcpy(host, p->name, n);
        host[n] = '\0';
        if (host[0] == '[' && n > 1 && host[n - 1] == ']') {
            memmove(host, host + 1, n - 2);
            host[n - 2] = '\0';
        }
        name = host;
    }
    if (inet_pton(AF_INET, name, &a4) == 1 || inet_pton(AF_INET6, name, &a6) == 1) {
        /* An address: no SNI (RFC 6066 forbids it), the certificate must carry it as an IP SAN. */
        if (cfg->upstream_tls_verify)
            X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name);
    } else {
        SSL_set_tlsext_host_name(ssl, name);
        if (cfg->upstream_tls_verify)
            SSL_set1_host(ssl, name);
    }
    if (*session_slot)
        SSL_set_session(ssl, *session_slot);
    return ssl;
}

int tls_upstream_keep_session(SSL *ssl, void **session_slot)
{
    SSL_SESSION *live = SSL_get0_session(ssl);
    SSL_SESSION *s;

    /* TLS 1.3 tickets come after the handshake: nothing resumable yet is no news. */
    if (!live || !SSL_SESSION_is_resumable(live))
        return 0;
    /* A copy: OpenSSL marks the connection's own session unresumable when the
     * connection is freed without a close_notify, which is how pooled ones end. */
    s = SSL_SESSION_dup(live);
    if (!s)
        return 0;
    if (*session_slot)
        SSL_SESSION_free(*session_slot);
    *session_slot = s;
    return 1;
}

void tls_session_free(void *session)
{
    if (session)
        SSL_SESSION_free(session);
}

SSL *tls_listener_new(void)
{
    return new_ssl(&server_ctx);
}

const char *tls_upstream_failure(SSL *ssl, unsigned long ossl_err, char *why, size_t whylen)
{
    long v = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;

    if (v != X509_V_OK) {
        snprintf(why, whylen, "certificate refused: %s", X509_verify_cert_error_string(v));
        return "verify";
    }
    if (ossl_err)
        ERR_error_string_n(ossl_err, why, whylen);
    else
        snprintf(why, whylen, "connection closed during the handshake");
    return "handshake";
}
