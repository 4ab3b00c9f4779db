/* config_services: internal to config*.c -- NEXTUP_SERVICES and NEXTUP_SERVICE_<NAME>_* -> cfg->services[].
 *
 * API, in the order config_from_env() calls it:
 *   config_services_list()        NEXTUP_SERVICES: the names and their variables' prefixes
 *   config_services_find_var()    whether a NEXTUP_* name is a listed service's (the unknown-variable check)
 *   config_services_nearest()     the nearest known name, the services' variables included
 *   config_services_read()        each service's variables over the globals' values; NEXTUP_DEFAULT_SERVICE
 *   config_services_resolve()     every service's upstreams, resolved, into cfg->upstreams
 *   config_services_print_help()  the per-service part of --help
 * A service's override of a global variable is parsed with config_parse_var() and the global's own
 * entry of the table config.c hands in (<globals>), so its checks and messages are the global's. */
#ifndef SIDECAR_CONFIG_SERVICES_H
#define SIDECAR_CONFIG_SERVICES_H

#include <stddef.h>
#include <stdio.h>

#include "config.h"

#define SERVICE_VAR_PREFIX "NEXTUP_SERVICE_"

struct var;
struct svc_var;

/* NEXTUP_SERVICES, when set: checks it against NEXTUP_UPSTREAMS, fills cfg->services[] names and
 * prefixes (syntax only) and sets cfg->services_listed. 0 (also when unset), or -EINVAL with <err>. */
int config_services_list(struct config *cfg, char *err, size_t errlen);

/* The service whose NEXTUP_SERVICE_<NAME>_<suffix> the <len> bytes at <name> are, and in <sv>
 * (when not NULL) its svc_vars[] entry; -1 when it is none of a listed service's. */
int config_services_find_var(const struct config *cfg, const char *name, size_t len, const struct svc_var **sv);

/* <best> (the nearest global name) or, when nearer to <name>, a listed service's variable written
 * into <buf> of <buflen> bytes; returns the one chosen. */
const char *config_services_nearest(const struct config *cfg, const char *name, const char *best,
                                    char *buf, size_t buflen);

/* After the globals: without NEXTUP_SERVICES, the one service "default" of <upstreams_name>; each
 * service's retry settings from the globals, then (listed services) its own variables, parsed with
 * the <globals> table's entries (<n_globals>), and their cross-check; NEXTUP_DEFAULT_SERVICE into
 * cfg->default_service. Upstreams are checked for syntax only. 0, or -EINVAL with <err>. */
int config_services_read(struct config *cfg, const char *upstreams_name, const struct var *globals,
                         size_t n_globals, char *err, size_t errlen);

/* Last: every service's upstreams resolved into cfg->upstreams, service after service (NEXTUP_UPSTREAMS
 * is <upstreams>, named <upstreams_name>, when no service is listed). 0, or -EINVAL with <err>. */
int config_services_resolve(struct config *cfg, const char *upstreams, const char *upstreams_name,
                            char *err, size_t errlen);

/* Writes the NEXTUP_SERVICE_<NAME>_* part of --help to <out>. */
void config_services_print_help(FILE *out);

#endif
