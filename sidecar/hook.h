/* hook: which upstream_response_decision runs: in-process hooks given to
 * nextup_main(), a plugin from NEXTUP_DECISION_PLUGIN, or the built-in policy.
 *
 * API: hook_setup() at startup, hook_active() on the request path. */
#ifndef SIDECAR_HOOK_H
#define SIDECAR_HOOK_H

#include <stddef.h>

#include "nextup.h"

struct config;

/* Chooses the hooks: <in_process> if not NULL, else the plugin named by
 * cfg->decision_plugin, else the built-in. 0, or -EINVAL with one line in <err>
 * naming NEXTUP_DECISION_PLUGIN (missing file, missing symbol, wrong ABI). */
int hook_setup(const struct config *cfg, const struct nextup_hooks *in_process, char *err, size_t errlen);

/* The hooks in force; never NULL after hook_setup(). */
const struct nextup_hooks *hook_active(void);

#endif
