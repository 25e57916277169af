/* test-shutdown: a graceful barge_shutdown returns 0 and reaps the helper.
 * A helper that will not stop (it ignores SHUTDOWN and SIGTERM, a test
 * mode of barge-helper; or it is SIGSTOPped) makes barge_shutdown return
 * -1 with an abnormal-shutdown message, within the configured timeouts,
 * and its pid no longer exists afterwards: it was killed and reaped (a
 * zombie would still answer kill(pid, 0)). barge_kill works at once. */
#define _GNU_SOURCE
#include "common.h"

#include <signal.h>
#include <unistd.h>

static barge_h *stubborn_handle(void) {
    barge_h *h = test_handle(scratch_dir());
    const char *argv[] = {"/usr/bin/env",
                          "BARGE_HELPER_FAULT=ignore-shutdown,ignore-sigterm",
                          helper_path(), NULL};
    OK(barge_set_helper(h, argv));
    OK(barge_set_shutdown_timeout_ms(h, 200));
    OK(barge_set_kill_timeout_ms(h, 200));
    return h;
}

static void expect_abnormal(barge_h *h, int64_t pid, const char *what) {
    double t0 = now_ms();
    int r = barge_shutdown(h);
    double took = now_ms() - t0;
    int err = barge_get_errno();
    CHECK(r == -1, "%s: barge_shutdown returned %d", what, r);
    CHECK(err == EIO, "%s: errno %d: %s", what, err, last_error());
    CHECK(strstr(last_error(), "abnormal shutdown") != NULL, "%s: message: %s",
          what, last_error());
    CHECK(took >= 150 && took < 3000, "%s: took %.0f ms with 200+200 ms timeouts",
          what, took);
    CHECK(!pid_exists(pid), "%s: helper %lld still exists", what, (long long) pid);
    CHECK(barge_helper_pid(h) == -1, "%s: a pid after shutdown", what);
    printf("  %s: -1 after %.0f ms: %s\n", what, took, last_error());
}

int main(void) {
    /* Graceful. */
    barge_h *h = test_handle(scratch_dir());
    OK(barge_shutdown(h)); /* no helper yet: nothing to do */
    OK(barge_launch(h));
    int64_t pid = barge_helper_pid(h);
    double t0 = now_ms();
    OK(barge_shutdown(h));
    CHECK(now_ms() - t0 < 2000, "graceful shutdown took %.0f ms", now_ms() - t0);
    CHECK(!pid_exists(pid), "helper %lld still exists", (long long) pid);
    CHECK(barge_helper_pid(h) == -1, "a pid after shutdown");

    /* A stopped helper. */
    OK(barge_set_shutdown_timeout_ms(h, 200));
    OK(barge_set_kill_timeout_ms(h, 200));
    OK(barge_launch(h));
    pid = barge_helper_pid(h);
    CHECK(kill((pid_t) pid, SIGSTOP) == 0, "SIGSTOP");
    expect_abnormal(h, pid, "SIGSTOPped helper");
    /* The handle goes on with a new helper. */
    OK(barge_launch(h));
    CHECK(barge_helper_pid(h) > 0 && barge_helper_pid(h) != pid, "relaunch");
    barge_close(h);

    /* A helper that ignores SHUTDOWN and SIGTERM. */
    h = stubborn_handle();
    OK(barge_launch(h));
    pid = barge_helper_pid(h);
    expect_abnormal(h, pid, "helper ignoring SHUTDOWN and SIGTERM");

    /* barge_kill works at once, even on that helper. */
    OK(barge_launch(h));
    pid = barge_helper_pid(h);
    t0 = now_ms();
    OK(barge_kill(h));
    double took = now_ms() - t0;
    CHECK(took < 150, "barge_kill took %.0f ms", took);
    CHECK(!pid_exists(pid), "killed helper %lld still exists", (long long) pid);
    CHECK(barge_helper_pid(h) == -1, "a pid after kill");
    OK(barge_kill(h)); /* no helper: nothing to do */
    printf("  barge_kill: %.1f ms\n", took);

    /* barge_close on a stubborn helper is bounded by the timeouts too. */
    OK(barge_launch(h));
    pid = barge_helper_pid(h);
    t0 = now_ms();
    barge_close(h);
    took = now_ms() - t0;
    CHECK(took < 3000, "barge_close took %.0f ms", took);
    CHECK(!pid_exists(pid), "helper %lld outlived barge_close", (long long) pid);

    printf("test-shutdown: ok\n");
    return 0;
}
