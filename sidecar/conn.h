/* conn: one byte stream, plain TCP or TLS, behind one small interface.
 *
 * API:
 *   conn_plain_new() / conn_tls_new()   an accepted or connected socket (a TLS one mid-handshake)
 *   conn_plain_connect() / conn_tls_connect()   a new socket connecting to an address
 *   conn_free()                         closes the socket, frees the buffers
 *   conn_set_cbs()                      on_read / on_drained / on_event, one argument
 *   conn_input() / conn_output()        the buffers; the owner parses the input, queues output
 *   conn_flush()                        writes what is queued now; the rest on EV_WRITE
 *   conn_read()                         reads on or off; conn_set_read_limit() pauses above a size
 *   conn_set_timeouts()                 per direction, in ms (0: none)
 *   conn_shutdown_write()               FIN after the output (plain only)
 *
 * Both are nextup's own I/O on the same two events: plain does one readv into
 * space reserved in the input per readable event (no FIONREAD) and writev from
 * the output; TLS does a non-blocking SSL_do_handshake, then SSL_read into
 * reserved space (again while OpenSSL holds bytes, read ahead) and SSL_write of
 * the output's first 16 KiB, each direction waiting on whichever event OpenSSL
 * asks for. EV_WRITE is armed only while something waits for it. The events
 * carry no timeout: each direction's is a deadline that a restart only stores,
 * and one timer per conn, set at or before the earliest, checks them (so most
 * restarts cost no libevent call). Callbacks come only from the loop, never
 * from inside a verb: on_drained only when an armed write emptied the output (a
 * flush that writes everything at once reports through its return value
 * instead). A callback may free its conn.
 *
 * conn.c holds the libevent callbacks, the verbs and the plain path; conn_tls.c
 * the TLS path; conn_events.{c,h}, internal, the struct, its interest, its
 * deadlines and its reports to the owner. */
#ifndef SIDECAR_CONN_H
#define SIDECAR_CONN_H

#include <stddef.h>
#include <sys/socket.h>

struct conn;
struct event_base;
struct evbuffer;
struct ssl_st;

/* on_event's <what>: one of CONNECTED / EOF / ERROR / TIMEOUT, with READING or
 * WRITING for a timeout. <err> is the errno of an ERROR (or of a failed connect;
 * EPROTO for a TLS protocol error). TLS: CONNECTED once the handshake is done; EOF
 * on close_notify or on a TCP close without it (HTTP frames its own messages). */
enum {
    CONN_CONNECTED = 1,
    CONN_EOF = 2,
    CONN_ERROR = 4,
    CONN_TIMEOUT = 8,
    CONN_READING = 16,
    CONN_WRITING = 32,
};

typedef void (*conn_read_cb)(struct conn *c, void *arg);
typedef void (*conn_drained_cb)(struct conn *c, void *arg);
typedef void (*conn_event_cb)(struct conn *c, int what, int err, void *arg);

/* Takes <fd> (non-blocking, connected or accepted). NULL on allocation failure;
 * the caller then still owns <fd>. Reads and writes start off. */
struct conn *conn_plain_new(struct event_base *base, int fd);
/* Takes <fd> and <ssl> on success. <accepting>: the server side of the handshake.
 * CONNECTED is reported when the handshake is done. */
struct conn *conn_tls_new(struct event_base *base, int fd, struct ssl_st *ssl, int accepting);

/* A new non-blocking socket connecting to <sa>; CONNECTED (or ERROR / TIMEOUT
 * with WRITING) is reported from the loop; <timeout_ms> bounds the connect (and
 * the TLS handshake). NULL with errno set when the connect failed at once. */
struct conn *conn_plain_connect(struct event_base *base, const struct sockaddr *sa, socklen_t salen,
                                int timeout_ms);
/* Takes <ssl> on success. On failure <ssl> is still the caller's when errno is
 * ENOMEM, and was freed otherwise (a refused connect), as upstream.c expects. */
struct conn *conn_tls_connect(struct event_base *base, const struct sockaddr *sa, socklen_t salen,
                              struct ssl_st *ssl, int timeout_ms);

void conn_free(struct conn *c);

void conn_set_cbs(struct conn *c, conn_read_cb on_read, conn_drained_cb on_drained, conn_event_cb on_event,
                  void *arg);

struct evbuffer *conn_input(struct conn *c);
struct evbuffer *conn_output(struct conn *c);

/* Writes what the output holds now (plain: one writev); what the socket did not
 * take goes on EV_WRITE, and on_drained follows once it is all written. Returns
 * the bytes still queued (0: all written, nothing armed). An error is reported
 * through on_event from the loop. */
size_t conn_flush(struct conn *c);

/* Reading on (1) or off (0). While connecting, "on" takes effect once connected. */
void conn_read(struct conn *c, int on);
/* Reading pauses while the input holds <high> bytes or more (0: no limit), and
 * resumes by itself once the owner drained it below. */
void conn_set_read_limit(struct conn *c, size_t high);

/* Read timeout (restarted by every read, while reading is on) and write timeout
 * (while output is waiting), ms; 0 = none. A call restarts a running one at its
 * new value. A timeout is reported no earlier than its value after its last
 * restart, and a few ms (about two clock ticks) later at most, the loop willing. */
void conn_set_timeouts(struct conn *c, int read_ms, int write_ms);

/* Pooled connections' events (plain or TLS) run before others of the same loop
 * turn (0 = first, 1 = normal), so that what a pooled socket received is seen
 * before a request picks that connection. Needs event_base_priority_init(base, 2). */
void conn_set_priority(struct conn *c, int prio);

/* shutdown(SHUT_WR) when plain and the output is empty; TLS has no half-close. */
void conn_shutdown_write(struct conn *c);

int conn_fd(const struct conn *c);
int conn_is_tls(const struct conn *c);
/* The OpenSSL object of a TLS conn (NULL when plain), and the last OpenSSL error
 * code of its failure (0: none, or a close with no OpenSSL error). */
struct ssl_st *conn_ssl(const struct conn *c);
unsigned long conn_tls_error(struct conn *c);

#endif
