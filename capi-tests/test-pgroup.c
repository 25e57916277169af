/* test-pgroup: by default the helper leads a process group of its own, so
 * a terminal's ^C reaches only the caller; with barge_set_pgroup(h, 0) it
 * stays in the caller's group. The setting applies at the next launch. */
#define _GNU_SOURCE
#include "common.h"

#include <unistd.h>

static pid_t helper_group(barge_h *h) {
    OK(barge_launch(h));
    int64_t pid = barge_helper_pid(h);
    CHECK(pid > 0, "no helper pid");
    pid_t pgid = getpgid((pid_t) pid);
    CHECK(pgid > 0, "getpgid(%lld): %s", (long long) pid, strerror(errno));
    return pgid;
}

int main(void) {
    pid_t mine = getpgrp();

    barge_h *h = test_handle(scratch_dir());
    pid_t g = helper_group(h);
    CHECK(g != mine, "default: the helper is in the caller's group %d", (int) g);
    CHECK(g == barge_helper_pid(h), "default: the helper does not lead group %d",
          (int) g);

    /* Off: takes effect at the next launch. */
    OK(barge_set_pgroup(h, 0));
    CHECK(getpgid((pid_t) barge_helper_pid(h)) == g, "changed a running helper");
    OK(barge_shutdown(h));
    g = helper_group(h);
    CHECK(g == mine, "pgroup 0: helper group %d, caller's %d", (int) g, (int) mine);

    /* And on again. */
    OK(barge_set_pgroup(h, 1));
    OK(barge_shutdown(h));
    g = helper_group(h);
    CHECK(g != mine && g == barge_helper_pid(h), "pgroup 1 again: group %d",
          (int) g);
    barge_close(h);

    /* A fresh handle with pgroup 0 from the start. */
    h = test_handle(scratch_dir());
    OK(barge_set_pgroup(h, 0));
    g = helper_group(h);
    CHECK(g == mine, "fresh handle, pgroup 0: group %d, caller's %d", (int) g,
          (int) mine);
    barge_close(h);

    printf("test-pgroup: ok\n");
    return 0;
}
