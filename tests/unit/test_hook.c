/* Unit tests for sidecar/hook.c: which decision hook is in force after
 * hook_setup(): the built-in, a NEXTUP_DECISION_PLUGIN shared object, or
 * in-process hooks; and the one-line errors for a missing file, a missing
 * symbol and a wrong ABI. Plugins with defects are compiled at run time into a
 * temporary directory; the example plugin comes from `make examples`.
 * Run from the repository root (as `make unit` does). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "hook.h"
#include "nextup.h"

#define EXAMPLE_PLUGIN "retry_gateway_plugin.so"
#define NO_SYMBOL_SYSTEM_SO "/lib/x86_64-linux-gnu/libz.so.1"

/* struct config is ~100 KB: keep it off the test stack. */
static struct config cfg;
static char err[1024];
static char tmpdir[] = "/tmp/nextup-test-hook-XXXXXX";
static char include_dir[PATH_MAX];

/* ---- plugins built at run time ---- */

static const char abi_plugin_src[] =
    "#include \"nextup.h\"\n"
    "static const struct nextup_error *decide(struct nextup_session *s, const struct nextup_response *r, void **c)\n"
    "{ (void)s; (void)r; (void)c; return 0; }\n"
    "const struct nextup_hooks nextup_plugin_hooks = { NEXTUP_ABI_VERSION + 1, decide, 0 };\n";

static const char abi_zero_plugin_src[] =
    "#include \"nextup.h\"\n"
    "const struct nextup_hooks nextup_plugin_hooks;\n";

static const char misnamed_plugin_src[] =
    "#include \"nextup.h\"\n"
    "const struct nextup_hooks nextup_plugin_hook = { NEXTUP_ABI_VERSION, 0, 0 };\n";

static const char null_decision_plugin_src[] =
    "#include \"nextup.h\"\n"
    "void plugin_done(void *ctx);\n"
    "void plugin_done(void *ctx) { (void)ctx; }\n"
    "const struct nextup_hooks nextup_plugin_hooks = { NEXTUP_ABI_VERSION, 0, plugin_done };\n";

static const char custom_plugin_src[] =
    "#include \"nextup.h\"\n"
    "const struct nextup_error *plugin_decide(struct nextup_session *s, const struct nextup_response *r, void **c);\n"
    "const struct nextup_error *plugin_decide(struct nextup_session *s, const struct nextup_response *r, void **c)\n"
    "{ (void)s; (void)r; (void)c; return 0; }\n"
    "const struct nextup_hooks nextup_plugin_hooks = { NEXTUP_ABI_VERSION, plugin_decide, 0 };\n";

/* Stands in for the accessor that the nextup binary exports with -rdynamic:
 * here a response is just a pointer to its status. */
static const char accessor_stub_src[] =
    "#include \"nextup.h\"\n"
    "int nextup_response_status(const struct nextup_response *response)\n"
    "{ return *(const int *)(const void *)response; }\n";

/* Writes <src> to <tmpdir>/<name>.c and compiles it to <tmpdir>/<name>.so; the path goes to <out>. */
static void build_so(const char *name, const char *src, char *out, size_t outlen)
{
    char c_path[PATH_MAX], cmd[3 * PATH_MAX];
    const char *cc = getenv("CC");
    FILE *f;
    int rc;

    snprintf(c_path, sizeof(c_path), "%s/%s.c", tmpdir, name);
    snprintf(out, outlen, "%s/%s.so", tmpdir, name);
    f = fopen(c_path, "w");
    assert_non_null(f);
    assert_int_equal(fputs(src, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
    snprintf(cmd, sizeof(cmd), "%s -std=c11 -shared -fPIC -I'%s' -o '%s' '%s'",
             cc && cc[0] ? cc : "cc", include_dir, out, c_path);
    rc = system(cmd);
    if (rc != 0)
        print_error("`%s` failed: %d\n", cmd, rc);
    assert_int_equal(rc, 0);
}

static int group_setup(void **state)
{
    (void)state;
    if (!realpath("sidecar", include_dir) || access("sidecar/nextup.h", R_OK) != 0) {
        print_error("sidecar/nextup.h not found: run from the repository root\n");
        return -1;
    }
    if (!mkdtemp(tmpdir)) {
        print_error("mkdtemp: %s\n", strerror(errno));
        return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    char cmd[PATH_MAX + 16];
    (void)state;
    /* <tmpdir> came from mkdtemp above: quoting it is enough. */
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static int setup(void **state)
{
    (void)state;
    memset(&cfg, 0, sizeof(cfg));
    memset(err, 'X', sizeof(err) - 1);
    err[sizeof(err) - 1] = '\0';
    return 0;
}

static void set_plugin(const char *path)
{
    assert_true(strlen(path) < sizeof(cfg.decision_plugin));
    snprintf(cfg.decision_plugin, sizeof(cfg.decision_plugin), "%s", path);
}

/* Back to the built-in, so each test starts from a known state. */
static void reset_to_builtin(void)
{
    static struct config empty;   /* zero: no plugin */
    char e[64];

    assert_int_equal(hook_setup(&empty, NULL, e, sizeof(e)), 0);
    assert_ptr_equal(hook_active()->upstream_response_decision, nextup_builtin_decision);
}

static void assert_err_has(const char *s)
{
    if (!strstr(err, s))
        print_error("err \"%s\" lacks \"%s\"\n", err, s);
    assert_non_null(strstr(err, s));
}

/* -EINVAL, one line in err naming NEXTUP_DECISION_PLUGIN, the path and <what>; the hooks in force unchanged. */
static void expect_plugin_error(const char *what)
{
    const struct nextup_hooks before = *hook_active();
    int rc = hook_setup(&cfg, NULL, err, sizeof(err));

    if (rc != -EINVAL)
        print_error("hook_setup(\"%s\"): %d, want -EINVAL (err \"%s\")\n", cfg.decision_plugin, rc, err);
    assert_int_equal(rc, -EINVAL);
    assert_true(err[0] != '\0');
    assert_null(strchr(err, '\n'));
    assert_err_has("NEXTUP_DECISION_PLUGIN");
    assert_err_has(cfg.decision_plugin);
    if (what)
        assert_err_has(what);
    assert_non_null(hook_active());
    assert_ptr_equal(hook_active()->upstream_response_decision, before.upstream_response_decision);
    assert_ptr_equal(hook_active()->request_done, before.request_done);
    assert_int_equal(hook_active()->abi_version, NEXTUP_ABI_VERSION);
}

static void expect_setup_ok(const struct nextup_hooks *in_process)
{
    int rc = hook_setup(&cfg, in_process, err, sizeof(err));
    if (rc != 0)
        print_error("hook_setup(\"%s\", %p): %d: %s\n", cfg.decision_plugin, (const void *)in_process, rc, err);
    assert_int_equal(rc, 0);
    assert_non_null(hook_active());
    assert_non_null(hook_active()->upstream_response_decision);
    assert_int_equal(hook_active()->abi_version, NEXTUP_ABI_VERSION);
}

/* ---- in-process hooks for the precedence tests ---- */

static const struct nextup_error my_error = { 1, 0, "test" };

static const struct nextup_error *my_decide(struct nextup_session *session, const struct nextup_response *response,
                                            void **ctx)
{
    (void)session;
    (void)response;
    (void)ctx;
    return &my_error;
}

static void my_done(void *ctx)
{
    (void)ctx;
}

/* ---- tests ---- */

static void test_empty_path_is_builtin(void **state)
{
    static const struct nextup_hooks mine = { NEXTUP_ABI_VERSION, my_decide, my_done };
    (void)state;

    expect_setup_ok(NULL);
    assert_ptr_equal(hook_active()->upstream_response_decision, nextup_builtin_decision);
    assert_null(hook_active()->request_done);

    /* a later setup with no plugin drops earlier hooks, request_done included */
    expect_setup_ok(&mine);
    assert_ptr_equal(hook_active()->upstream_response_decision, my_decide);
    expect_setup_ok(NULL);
    assert_ptr_equal(hook_active()->upstream_response_decision, nextup_builtin_decision);
    assert_null(hook_active()->request_done);
}

static void test_missing_file(void **state)
{
    char path[PATH_MAX];
    (void)state;

    reset_to_builtin();
    snprintf(path, sizeof(path), "%s/does-not-exist.so", tmpdir);
    set_plugin(path);
    expect_plugin_error(NULL);

    /* a directory is no plugin either */
    set_plugin(tmpdir);
    expect_plugin_error(NULL);
}

static void test_missing_file_small_err(void **state)
{
    char small[24];
    (void)state;

    reset_to_builtin();
    set_plugin("/nonexistent/dir/plugin.so");
    memset(small, 'X', sizeof(small));
    assert_int_equal(hook_setup(&cfg, NULL, small, 16), -EINVAL);
    assert_int_equal(strlen(small), 15);
    assert_int_equal(small[16], 'X');
}

static void test_no_symbol(void **state)
{
    char path[PATH_MAX];
    (void)state;

    reset_to_builtin();
    if (access(NO_SYMBOL_SYSTEM_SO, R_OK) == 0) {
        set_plugin(NO_SYMBOL_SYSTEM_SO);
        expect_plugin_error("nextup_plugin_hooks");
    } else {
        print_message("%s not present: only the built plugin is tried\n", NO_SYMBOL_SYSTEM_SO);
    }

    /* the likely mistake: the symbol spelled differently */
    build_so("misnamed", misnamed_plugin_src, path, sizeof(path));
    set_plugin(path);
    expect_plugin_error("nextup_plugin_hooks");
}

static void test_wrong_abi(void **state)
{
    char path[PATH_MAX], want[64];
    (void)state;

    reset_to_builtin();
    build_so("abi_plus_one", abi_plugin_src, path, sizeof(path));
    set_plugin(path);
    expect_plugin_error("abi_version");
    snprintf(want, sizeof(want), "%d", NEXTUP_ABI_VERSION + 1);
    assert_err_has(want);

    /* an all-zero struct (abi_version 0) is refused as well */
    build_so("abi_zero", abi_zero_plugin_src, path, sizeof(path));
    set_plugin(path);
    expect_plugin_error("abi_version");
}

static void test_plugin_custom_decision(void **state)
{
    char path[PATH_MAX];
    void *so, *fn;
    (void)state;

    reset_to_builtin();
    build_so("custom", custom_plugin_src, path, sizeof(path));
    set_plugin(path);
    expect_setup_ok(NULL);
    so = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    assert_non_null(so);
    fn = dlsym(so, "plugin_decide");
    assert_non_null(fn);
    assert_ptr_equal((void *)hook_active()->upstream_response_decision, fn);
    assert_null(hook_active()->request_done);
    dlclose(so);   /* drops only the NOLOAD reference */
}

static void test_plugin_null_decision_is_builtin(void **state)
{
    char path[PATH_MAX];
    void *so, *fn;
    (void)state;

    reset_to_builtin();
    build_so("null_decision", null_decision_plugin_src, path, sizeof(path));
    set_plugin(path);
    expect_setup_ok(NULL);
    assert_ptr_equal(hook_active()->upstream_response_decision, nextup_builtin_decision);
    so = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    assert_non_null(so);
    fn = dlsym(so, "plugin_done");
    assert_non_null(fn);
    assert_ptr_equal((void *)hook_active()->request_done, fn);
    dlclose(so);
}

/* The example plugin calls nextup_response_status(), which the nextup binary
 * exports (-rdynamic). Test binaries are not linked that way; when the accessor
 * is not visible, the load must fail with a clear error, and after a stand-in
 * accessor is loaded globally (as -rdynamic would provide) it must succeed. */
static void test_example_plugin(void **state)
{
    const char *dir = getenv("NEXTUP_EXAMPLES");
    char path[PATH_MAX], stub[PATH_MAX];
    const struct nextup_hooks *plugin;
    const struct nextup_error *e;
    void *so, *stub_so = NULL, *ctx = NULL;
    int status;
    (void)state;

    snprintf(path, sizeof(path), "%s/%s", dir && dir[0] ? dir : "build/examples", EXAMPLE_PLUGIN);
    if (access(path, R_OK) != 0)
        fail_msg("%s is missing: build it first with `make examples` (from the repository root)", path);

    reset_to_builtin();
    set_plugin(path);
    if (!dlsym(RTLD_DEFAULT, "nextup_response_status")) {
        print_message("nextup_response_status is not exported by this test binary (no -rdynamic): "
                      "expecting the plugin load to fail, then loading a stand-in accessor\n");
        expect_plugin_error("nextup_response_status");
        build_so("accessor_stub", accessor_stub_src, stub, sizeof(stub));
        stub_so = dlopen(stub, RTLD_NOW | RTLD_GLOBAL);
        if (!stub_so)
            fail_msg("dlopen(%s): %s", stub, dlerror());
    }

    expect_setup_ok(NULL);
    so = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    assert_non_null(so);
    plugin = dlsym(so, NEXTUP_PLUGIN_SYMBOL);
    assert_non_null(plugin);
    assert_ptr_not_equal(hook_active()->upstream_response_decision, nextup_builtin_decision);
    assert_ptr_equal(hook_active()->upstream_response_decision, plugin->upstream_response_decision);
    assert_non_null(hook_active()->request_done);
    assert_ptr_equal(hook_active()->request_done, plugin->request_done);
    dlclose(so);

    /* With the stand-in accessor a response is a pointer to its status: the
     * active hook is the plugin's (retry 502..504 while fewer than 3 seen). */
    if (stub_so) {
        nextup_decision_fn decide = hook_active()->upstream_response_decision;

        status = 503;
        e = decide(NULL, (const struct nextup_response *)(const void *)&status, &ctx);
        assert_non_null(e);
        assert_int_equal(e->retryable, 1);
        assert_non_null(ctx);
        status = 502;
        assert_non_null(decide(NULL, (const struct nextup_response *)(const void *)&status, &ctx));
        status = 504;
        assert_null(decide(NULL, (const struct nextup_response *)(const void *)&status, &ctx));
        hook_active()->request_done(ctx);

        ctx = NULL;
        status = 200;
        assert_null(decide(NULL, (const struct nextup_response *)(const void *)&status, &ctx));
        hook_active()->request_done(ctx);
    }
}

static void test_in_process_beats_plugin(void **state)
{
    static const struct nextup_hooks mine = { NEXTUP_ABI_VERSION, my_decide, my_done };
    char path[PATH_MAX];
    (void)state;

    /* a path that cannot load: hook_setup must not even try */
    reset_to_builtin();
    set_plugin("/nonexistent/plugin.so");
    expect_setup_ok(&mine);
    assert_ptr_equal(hook_active()->upstream_response_decision, my_decide);
    assert_ptr_equal(hook_active()->request_done, my_done);

    /* a loadable plugin loses too */
    reset_to_builtin();
    build_so("custom_for_precedence", custom_plugin_src, path, sizeof(path));
    set_plugin(path);
    expect_setup_ok(&mine);
    assert_ptr_equal(hook_active()->upstream_response_decision, my_decide);
    assert_ptr_equal(hook_active()->request_done, my_done);
    /* hook_active() is a copy: the caller's struct may go away */
    assert_ptr_not_equal(hook_active(), &mine);
}

static void test_in_process_null_decision_is_builtin(void **state)
{
    static const struct nextup_hooks mine = { NEXTUP_ABI_VERSION, NULL, my_done };
    (void)state;

    reset_to_builtin();
    expect_setup_ok(&mine);
    assert_ptr_equal(hook_active()->upstream_response_decision, nextup_builtin_decision);
    assert_ptr_equal(hook_active()->request_done, my_done);

    set_plugin("/nonexistent/plugin.so");
    expect_setup_ok(&mine);
    assert_ptr_equal(hook_active()->upstream_response_decision, nextup_builtin_decision);
}

static void test_in_process_wrong_abi(void **state)
{
    static const struct nextup_hooks mine = { NEXTUP_ABI_VERSION + 1, my_decide, my_done };
    (void)state;

    reset_to_builtin();
    assert_int_equal(hook_setup(&cfg, &mine, err, sizeof(err)), -EINVAL);
    assert_null(strchr(err, '\n'));
    assert_err_has("abi_version");
    assert_ptr_equal(hook_active()->upstream_response_decision, nextup_builtin_decision);
    assert_null(hook_active()->request_done);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_empty_path_is_builtin, setup),
        cmocka_unit_test_setup(test_missing_file, setup),
        cmocka_unit_test_setup(test_missing_file_small_err, setup),
        cmocka_unit_test_setup(test_no_symbol, setup),
        cmocka_unit_test_setup(test_wrong_abi, setup),
        cmocka_unit_test_setup(test_plugin_custom_decision, setup),
        cmocka_unit_test_setup(test_plugin_null_decision_is_builtin, setup),
        cmocka_unit_test_setup(test_example_plugin, setup),
        cmocka_unit_test_setup(test_in_process_beats_plugin, setup),
        cmocka_unit_test_setup(test_in_process_null_decision_is_builtin, setup),
        cmocka_unit_test_setup(test_in_process_wrong_abi, setup),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
