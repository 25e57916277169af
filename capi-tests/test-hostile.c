/* test-hostile: a helper's ERROR whose errno is no error number (0, a
 * negative, a huge one) fails the call with -1 and errno EPROTO: never
 * -1 with errno 0, which a caller would print as "Success". Also: a
 * listing past barge_set_list_limits fails with E2BIG, and so does a tree
 * copy that makes more directories than barge_set_max_tree_dirs allows.
 *
 * The helper is the scripted hostile peer, tests/hostile/peer.py, run by
 * python3; it is found beside this source file. */
#define _GNU_SOURCE
#include "common.h"

#include <libgen.h>
#include <sys/stat.h>

/* tests/hostile/peer.py, from this file's own path (cc is given it
 * absolute by tests/capi.rs). */
static const char *peer_py(void) {
    static char path[4096];
    char src[4096];
    snprintf(src, sizeof src, "%s", __FILE__);
    snprintf(path, sizeof path, "%s/../tests/hostile/peer.py", dirname(src));
    return path;
}

/* A handle whose helper runs `scenario` (Python, see peer.py). */
static barge_h *hostile_handle_with(const char *name, const char *features,
                                   const char *scenario) {
    char script[4096];
    snprintf(script, sizeof script, "%s", scratch(name));
    write_file(script, scenario, strlen(scenario));
    barge_h *h = barge_create();
    CHECK(h, "barge_create: %s", last_error());
    const char *argv[] = {"python3", peer_py(), features, script, NULL};
    OK(barge_set_helper(h, argv));
    OK(barge_set_cancel_timeout_ms(h, 500));
    return h;
}

static barge_h *hostile_handle(const char *name, const char *scenario) {
    return hostile_handle_with(name, "0", scenario);
}

int main(void) {
    const int bad[] = {0, -5, 100000};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char name[64], scenario[512];
        snprintf(name, sizeof name, "errno-%zu.py", i);
        snprintf(scenario, sizeof scenario,
                 "kind, serial, _ = until(STAT)\n"
                 "send(error(serial, %d, 'all is well'))\n"
                 "serve_shutdown()\n",
                 bad[i]);
        barge_h *h = hostile_handle(name, scenario);
        struct barge_stat st;
        FAILS_WITH(EPROTO, barge_stat(h, "/x", &st));
        CHECK(strstr(last_error(), "not an error number") != NULL, "errno %d: %s",
              bad[i], last_error());
        barge_close(h);
    }

    /* An endless listing, cut at 10 entries. */
    barge_h *h = hostile_handle(
        "list.py",
        "kind, serial, _ = until(LIST)\n"
        "one = dirents(serial, [('e%07d' % i, stat_record()) for i in range(1000)])\n"
        "while True:\n"
        "    send(one)\n");
    OK(barge_set_list_limits(h, 10, 1 << 20));
    struct barge_dirent *entries = (struct barge_dirent *) 0x1;
    size_t count = 7;
    FAILS_WITH(E2BIG, barge_list(h, "/big", &entries, &count));
    CHECK(entries == (struct barge_dirent *) 0x1 && count == 7, "out-params written on error");
    CHECK(strstr(last_error(), "/big") != NULL, "%s", last_error());
    FAILS_WITH(EINVAL, barge_set_list_limits(NULL, 1, 1));
    barge_close(h);

    /* A tree of endless distinct directories, cut at 5. */
    h = hostile_handle_with(
        "tree.py", "0x2",
        "kind, serial, _ = until(TREE_OUT)\n"
        "send(tree_dir(serial, 'top'))\n"
        "for i in range(100000):\n"
        "    send(tree_dir(serial, 'top/d%06d' % i))\n"
        "serve_shutdown()\n");
    OK(barge_set_max_tree_dirs(h, 5));
    const char *dest = scratch("tree-dest");
    CHECK(mkdir(dest, 0755) == 0 || errno == EEXIST, "mkdir %s", dest);
    FAILS_WITH(E2BIG, barge_copy_out(h, "/top", dest));
    CHECK(strstr(last_error(), "5") != NULL, "%s", last_error());
    FAILS_WITH(EINVAL, barge_set_max_tree_dirs(NULL, 1));
    barge_close(h);
    puts("test-hostile: ok");
    return 0;
}
