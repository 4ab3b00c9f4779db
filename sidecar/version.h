/* version: what this binary is, for --version, the first log line and nextup_build_info.
 * API: NEXTUP_VERSION, version_line(), version_libevent(), version_openssl(), version_libbpf(). */
#ifndef SIDECAR_VERSION_H
#define SIDECAR_VERSION_H

#include <stddef.h>

#define NEXTUP_VERSION "0.13.0"

/* "nextup 0.13.0 (libevent 2.1.12-stable, OpenSSL 3.0.11, libbpf v1.1)" into <buf>, the
 * libraries as loaded at run time (a shared library upgraded under the binary shows). */
void version_line(char *buf, size_t len);
/* Version strings of the loaded libraries; static storage, never NULL. */
const char *version_libevent(void);
const char *version_openssl(void);
const char *version_libbpf(void);

#endif
