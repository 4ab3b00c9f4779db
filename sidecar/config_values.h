/* config_values: internal to config*.c -- what a NEXTUP_* variable is, and how one value is parsed.
 *
 * API:
 *   struct var, enum var_kind    one variable: name, kind, default as text, range, field, help
 *   config_parse_var()           one value of a variable -> its field (globals and service overrides alike)
 *   config_scan_upstreams()      a host:port list -> cfg->upstreams (syntax only, or resolved)
 *   config_check_host()          one host or host:port (of _HOSTS, _UPSTREAM_HOST, NEXTUP_CLUSTER_DOMAIN)
 *   config_find_var()            a table's entry by name
 *   config_describe()            a variable as an error line names it: its value, or its default
 *   config_edit_distance()       for "the nearest known one is ..."
 *   config_set_err()             the one-line error text, control characters replaced
 *   config_copy_text()           a string into a fixed field, cut if longer
 * Every function that can fail returns 0 or -EINVAL with one line in <err>. */
#ifndef SIDECAR_CONFIG_VALUES_H
#define SIDECAR_CONFIG_VALUES_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"

#define UPSTREAMS_EXPECTED \
    "expected comma-separated host:port peers, e.g. 10.0.0.1:8080,[::1]:8080,orders:8080"

/* Longest variable name compared by config_edit_distance(). */
#define NAME_CMP_MAX 64

/* VAR_INT_CLAMPED: a VAR_INT whose values above <max> are taken as <max>, with a warning. */
enum var_kind { VAR_ADDR, VAR_UPSTREAMS, VAR_STRING, VAR_INT, VAR_INT_CLAMPED, VAR_LOG_LEVEL, VAR_RETRY_ON, VAR_METHODS, VAR_PATH, VAR_BPF_MODE, VAR_ONOFF,
                VAR_DEBUG_FROM, VAR_LOG_FORMAT };

struct var {
    const char *name;
    enum var_kind kind;
    const char *def;     /* default as text; NULL = required (upstreams) or computed (workers) */
    long min, max;       /* VAR_INT only */
    size_t off;          /* field in struct config */
    const char *help;
};

/* Parses <value> of <v> into <base> + v->off: <base> is <cfg> for the global variables, a
 * struct config_service for a service's override of one (the entry copied, its name changed).
 * A clamped value adds a line to cfg->warnings. 0, or -EINVAL naming v->name in <err>. */
int config_parse_var(struct config *cfg, void *base, const struct var *v, const char *value,
                     char *err, size_t errlen);

/* The comma-separated host:port list <value> of variable <name>. With <check_only>, the syntax
 * only (no DNS, nothing added); else every entry's addresses are appended to cfg->upstreams from
 * cfg->scan_first on (duplicates within it dropped), host names to cfg->upstream_names.
 * 0, or -EINVAL naming <name> and the entry in <err>. */
int config_scan_upstreams(struct config *cfg, const char *name, const char *value,
                          bool check_only, char *err, size_t errlen);

/* One host or host:port of <len> bytes at <h>: a name of letters, digits, '-', '.', '_', or an
 * [IPv6] literal; a port of 1..65535. 0, or -EINVAL with <why> set to a constant text. */
int config_check_host(const char *h, size_t len, const char **why);

/* The entry of <table> (<n> entries) named by the <len> bytes at <name>; NULL when none is. */
const struct var *config_find_var(const struct var *table, size_t n, const char *name, size_t len);

/* "NEXTUP_X=\"v\"" when set, "NEXTUP_X (default v)" from <table> when not (a contradiction may be
 * with a default). Writes into <buf> of <len> bytes and returns it. */
const char *config_describe(const struct var *table, size_t n, const char *name, char *buf, size_t len);

/* Optimal string alignment distance of <a> and <b>, each cut at NAME_CMP_MAX bytes. */
int config_edit_distance(const char *a, const char *b);

/* printf into <err> of <errlen> bytes (nothing when <err> is NULL); control characters become '?'
 * so that the message stays one line even when a value holds a newline. */
__attribute__((format(printf, 3, 4)))
void config_set_err(char *err, size_t errlen, const char *fmt, ...);

/* <src> into <dst> of <size> bytes, cut if longer. */
void config_copy_text(char *dst, size_t size, const char *src);

#endif
