#include "version.h"

#include <stdio.h>

#include <bpf/libbpf.h>
#include <event2/event.h>
#include <openssl/crypto.h>

const char *version_libevent(void)
{
    return event_get_version();
}

const char *version_openssl(void)
{
    return OpenSSL_version(OPENSSL_VERSION_STRING);
}

const char *version_libbpf(void)
{
    return libbpf_version_string();
}

void version_line(char *buf, size_t len)
{
    snprintf(buf, len, "nextup %s (libevent %s, OpenSSL %s, libbpf %s)", NEXTUP_VERSION, version_libevent(),
             version_openssl(), version_libbpf());
}
