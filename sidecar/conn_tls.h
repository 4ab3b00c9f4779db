/* conn_tls (internal to conn): the TLS path of a conn, for conn.c. Included by
 * conn.c and conn_tls.c only. */
#ifndef SIDECAR_CONN_TLS_H
#define SIDECAR_CONN_TLS_H

#include <stddef.h>

struct conn;
struct ssl_st;

/* Gives <c> <ssl> on <c->fd>, each side's modes set. 0, or -ENOMEM (<ssl> untouched
 * but for its modes; still the caller's). */
int conn_tls_attach(struct conn *c, struct ssl_st *ssl, int accepting);
/* One step of the handshake; <dir> (CONN_READING / CONN_WRITING) is the direction
 * of the event that drove it, and of the ERROR reported if it fails. */
void conn_tls_handshake(struct conn *c, int dir);
/* A readable (or, for SSL_read's WANT_WRITE, writable) event's reads: the bytes,
 * then the end of the stream if any. May report; c->dead may be set on return. */
void conn_tls_read_and_report(struct conn *c);
/* A waiting output's turn: on_drained once it is written, ERROR on a failure.
 * May report; c->dead may be set on return. */
void conn_tls_write_and_report(struct conn *c);
/* conn_flush() for TLS: the bytes still queued; reports nothing (an error goes
 * to the loop through wr_err). */
size_t conn_tls_flush(struct conn *c);

#endif
