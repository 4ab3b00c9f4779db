#include "hook.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>

#include "config.h"

static const struct nextup_hooks builtin_hooks = {
    .abi_version = NEXTUP_ABI_VERSION,
    .upstream_response_decision = nextup_builtin_decision,
    .request_done = NULL,
};

static struct nextup_hooks active = {
    .abi_version = NEXTUP_ABI_VERSION,
    .upstream_response_decision = nextup_builtin_decision,
};

const struct nextup_hooks *hook_active(void)
{
    return &active;
}

static int take(const struct nextup_hooks *h, const char *what, char *err, size_t errlen)
{
    if (h->abi_version != NEXTUP_ABI_VERSION) {
        snprintf(err, errlen, "%s: abi_version %d, expected %d (rebuild against this nextup.h)", what,
                 h->abi_version, NEXTUP_ABI_VERSION);
        return -EINVAL;
    }
    active = *h;
    if (!active.upstream_response_decision)
        active.upstream_response_decision = nextup_builtin_decision;
    return 0;
}

int hook_setup(const struct config *cfg, const struct nextup_hooks *in_process, char *err, size_t errlen)
{
    char what[600];
    void *so;
    const struct nextup_hooks *h;

    if (in_process)
        return take(in_process, "nextup_main() hooks", err, errlen);
    if (!cfg->decision_plugin[0]) {
        active = builtin_hooks;
        return 0;
    }
    /* The plugin is loaded for the life of the process: never dlclose'd. */
    so = dlopen(cfg->decision_plugin, RTLD_NOW | RTLD_LOCAL);
    if (!so) {
        snprintf(err, errlen, "NEXTUP_DECISION_PLUGIN=\"%s\": cannot load: %s", cfg->decision_plugin, dlerror());
        return -EINVAL;
    }
    h = dlsym(so, NEXTUP_PLUGIN_SYMBOL);
    if (!h) {
        snprintf(err, errlen, "NEXTUP_DECISION_PLUGIN=\"%s\": no symbol %s: expected `const struct nextup_hooks "
                 "%s` exported", cfg->decision_plugin, NEXTUP_PLUGIN_SYMBOL, NEXTUP_PLUGIN_SYMBOL);
        return -EINVAL;
    }
    snprintf(what, sizeof(what), "NEXTUP_DECISION_PLUGIN=\"%s\"", cfg->decision_plugin);
    return take(h, what, err, errlen);
}
