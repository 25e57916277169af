/* test-events: LAUNCHED and SHUTDOWN pair up, once each per launch, also
 * across a crash and barge_close; PROGRESS is monotonic and ends at the
 * total; SHUTDOWN callbacks run in reverse registration order, also when
 * the helper crashed; LOG carries the helper's stderr lines. Callbacks may
 * call barge_user_cancel and barge_helper_pid on their handle; any other
 * call on it fails with EDEADLK instead of deadlocking. */
#define _GNU_SOURCE
#include "common.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static barge_h *h;

/* Whether our child `pid` has exited and can be reaped, without reaping
 * it (WNOWAIT), so barge still collects its status. /proc's "Z" state is
 * not enough: a killed helper's main thread shows Z while its other threads
 * are still exiting, and waitpid cannot reap it yet. */
static int is_waitable(int64_t pid) {
    siginfo_t info;
    memset(&info, 0, sizeof info);
    if (waitid(P_PID, (id_t) pid, &info, WEXITED | WNOHANG | WNOWAIT) != 0)
        return 0;
    return info.si_pid == (pid_t) pid;
}

/* LAUNCHED/SHUTDOWN pairing. */
static int launched, shutdowns;
static int64_t running = -1; /* pid between LAUNCHED and its SHUTDOWN */
static int last_graceful, last_exit, last_signal;

static void on_lifecycle(void *opaque, const struct barge_event *ev) {
    CHECK(opaque == &launched, "opaque pointer %p", opaque);
    if (ev->kind == BARGE_EVENT_LAUNCHED) {
        CHECK(running == -1, "LAUNCHED %lld while %lld runs", (long long) ev->pid,
              (long long) running);
        CHECK(ev->pid > 0, "LAUNCHED pid %lld", (long long) ev->pid);
        CHECK(barge_helper_pid(h) == ev->pid, "barge_helper_pid in LAUNCHED: %lld",
              (long long) barge_helper_pid(h));
        running = ev->pid;
        launched++;
    } else {
        CHECK(ev->kind == BARGE_EVENT_SHUTDOWN, "kind %llu",
              (unsigned long long) ev->kind);
        CHECK(ev->pid == running, "SHUTDOWN %lld, LAUNCHED %lld",
              (long long) ev->pid, (long long) running);
        running = -1;
        shutdowns++;
        last_graceful = ev->graceful;
        last_exit = ev->exit_status;
        last_signal = ev->term_signal;
    }
}

/* SHUTDOWN order: each callback appends its letter. */
static char order[64];
static void on_shutdown(void *opaque, const struct barge_event *ev) {
    CHECK(ev->kind == BARGE_EVENT_SHUTDOWN, "kind %llu", (unsigned long long) ev->kind);
    size_t n = strlen(order);
    CHECK(n + 1 < sizeof order, "order overflow");
    order[n] = *(const char *) opaque;
}

/* Re-entry from a callback. */
static int reentry_checked;
static void on_launch_reenter(void *opaque, const struct barge_event *ev) {
    (void) opaque;
    (void) ev;
    struct barge_stat st;
    FAILS_WITH(EDEADLK, barge_stat(h, "/", &st));
    FAILS_WITH(EDEADLK, barge_set_chunk_size(h, 65536));
    FAILS_WITH(EDEADLK, barge_set_event_callback(h, on_shutdown, BARGE_EVENT_ALL, "x"));
    barge_close(h); /* refused: the handle stays open */
    CHECK(barge_get_errno() == EDEADLK, "barge_close in a callback: %d",
          barge_get_errno());
    reentry_checked++;
}

/* PROGRESS. */
static uint64_t last_done, events, final_done;
static int64_t final_total;
static uint64_t cancel_at = UINT64_MAX;
static int regress;
static void on_progress(void *opaque, const struct barge_event *ev) {
    (void) opaque;
    CHECK(ev->kind == BARGE_EVENT_PROGRESS, "kind %llu", (unsigned long long) ev->kind);
    if (ev->done < last_done)
        regress++;
    last_done = ev->done;
    final_done = ev->done;
    final_total = ev->total;
    events++;
    if (ev->done >= cancel_at)
        barge_user_cancel(h);
}

static void reset_progress(void) {
    last_done = events = final_done = 0;
    final_total = -2;
    regress = 0;
}

/* LOG. */
static int log_lines;
static void on_log(void *opaque, const struct barge_event *ev) {
    (void) opaque;
    CHECK(ev->kind == BARGE_EVENT_LOG, "kind %llu", (unsigned long long) ev->kind);
    CHECK(ev->line != NULL && ev->line[ev->line_len] == '\0', "LOG line");
    CHECK(ev->line_len == 0 || ev->line[ev->line_len - 1] != '\n', "newline kept");
    log_lines++;
}

int main(void) {
    char *root = strdup(scratch("root"));
    CHECK(mkdir(root, 0755) == 0, "mkdir");
    size_t size = (2 << 20) + 777;
    unsigned char *data = random_bytes(size, 5);
    char *src = strdup(scratch("src.bin"));
    write_file(src, data, size);

    h = test_handle(root);
    OK(barge_set_progress_interval_ms(h, 0));
    OK(barge_set_event_callback(h, on_lifecycle,
                                BARGE_EVENT_LAUNCHED | BARGE_EVENT_SHUTDOWN, &launched));
    int a = barge_set_event_callback(h, on_shutdown, BARGE_EVENT_SHUTDOWN, "A");
    int b = barge_set_event_callback(h, on_shutdown, BARGE_EVENT_SHUTDOWN, "B");
    int c = barge_set_event_callback(h, on_shutdown, BARGE_EVENT_SHUTDOWN, "C");
    CHECK(a >= 0 && b > a && c > b, "ids %d %d %d", a, b, c);
    int reenter = barge_set_event_callback(h, on_launch_reenter, BARGE_EVENT_LAUNCHED, NULL);
    OK(reenter);
    int progress = barge_set_event_callback(h, on_progress, BARGE_EVENT_PROGRESS, NULL);
    OK(progress);

    /* Launch: one LAUNCHED; re-entry refused; nothing else fired. */
    OK(barge_launch(h));
    CHECK(launched == 1 && shutdowns == 0, "launched %d shutdowns %d", launched, shutdowns);
    CHECK(reentry_checked == 1, "re-entry callback ran %d times", reentry_checked);
    OK(barge_delete_event_callback(h, reenter));
    OK(barge_launch(h)); /* already running: no event */
    CHECK(launched == 1, "a second LAUNCHED without a launch");

    /* Progress of an upload of known size. */
    reset_progress();
    OK(barge_upload(h, src, "/a.bin"));
    CHECK(events >= 2 && regress == 0, "%llu events, %d regressions",
          (unsigned long long) events, regress);
    CHECK(final_done == size && final_total == (int64_t) size,
          "upload ended at %llu of %lld", (unsigned long long) final_done,
          (long long) final_total);

    /* A download, and an upload from a pipe (size unknown until the end). */
    reset_progress();
    OK(barge_download(h, "/a.bin", scratch("a.copy")));
    CHECK(regress == 0 && final_done == size && final_total == (int64_t) size,
          "download ended at %llu of %lld", (unsigned long long) final_done,
          (long long) final_total);
    int p[2];
    CHECK(pipe(p) == 0, "pipe");
    CHECK(write_all(p[1], data, 40000) == 0, "write");
    close(p[1]);
    reset_progress();
    OK(barge_upload_fd(h, p[0], "/pipe.bin"));
    close(p[0]);
    CHECK(regress == 0 && final_done == 40000 && final_total == 40000,
          "pipe upload ended at %llu of %lld", (unsigned long long) final_done,
          (long long) final_total);

    /* barge_user_cancel from a PROGRESS callback cancels that transfer. */
    reset_progress();
    cancel_at = size / 2;
    FAILS_WITH(ECANCELED, barge_upload(h, src, "/b.bin"));
    cancel_at = UINT64_MAX;
    CHECK(final_done >= size / 2 && final_done < size, "cancelled at %llu",
          (unsigned long long) final_done);

    /* Graceful shutdown: one SHUTDOWN, callbacks in reverse order. */
    int64_t pid = barge_helper_pid(h);
    OK(barge_shutdown(h));
    CHECK(launched == 1 && shutdowns == 1, "launched %d shutdowns %d", launched, shutdowns);
    CHECK(strcmp(order, "CBA") == 0, "SHUTDOWN order %s, expected CBA", order);
    CHECK(last_graceful == 1 && last_exit == 0 && last_signal == 0,
          "graceful %d exit %d signal %d", last_graceful, last_exit, last_signal);
    CHECK(!pid_exists(pid), "helper survived");

    /* A crash: SHUTDOWN (reverse order again), then a new LAUNCHED. The
     * helper first outlives the 1 s crash window, so no back-off applies. */
    memset(order, 0, sizeof order);
    OK(barge_launch(h));
    CHECK(launched == 2, "launched %d", launched);
    pid = barge_helper_pid(h);
    struct timespec window = {1, 100000000};
    nanosleep(&window, NULL);
    CHECK(kill((pid_t) pid, SIGKILL) == 0, "kill");
    /* kill() returns before the process is dead; an operation that starts
     * before then fails with ECONNRESET (it met a dying helper) instead of
     * finding a dead one and relaunching. Wait until it can be reaped. */
    double deadline = now_ms() + 5000;
    while (!is_waitable(pid)) {
        CHECK(now_ms() < deadline, "helper %lld did not die", (long long) pid);
        struct timespec tick = {0, 1000000};
        nanosleep(&tick, NULL);
    }
    struct barge_stat st;
    OK(barge_stat(h, "/a.bin", &st));
    CHECK(shutdowns == 2 && launched == 3, "after the crash: launched %d shutdowns %d",
          launched, shutdowns);
    CHECK(strcmp(order, "CBA") == 0, "SHUTDOWN order after a crash: %s", order);
    CHECK(last_graceful == 0 && last_signal == SIGKILL && last_exit == -1,
          "crash: graceful %d exit %d signal %d", last_graceful, last_exit, last_signal);

    /* A deleted callback is not called. */
    memset(order, 0, sizeof order);
    OK(barge_delete_event_callback(h, b));
    FAILS_WITH(ENOENT, barge_delete_event_callback(h, b));
    OK(barge_kill(h));
    CHECK(shutdowns == 3 && strcmp(order, "CA") == 0, "after delete: %d %s",
          shutdowns, order);
    CHECK(last_graceful == 0, "barge_kill reported as graceful");

    /* barge_close sends the last SHUTDOWN. */
    memset(order, 0, sizeof order);
    OK(barge_launch(h));
    barge_close(h);
    CHECK(launched == 4 && shutdowns == 4, "after close: launched %d shutdowns %d",
          launched, shutdowns);
    CHECK(strcmp(order, "CA") == 0, "close order %s", order);

    /* LOG: a helper that logs every request. */
    h = test_handle(root);
    const char *argv[] = {"/usr/bin/env", "BARGE_HELPER_DEBUG=1", helper_path(), NULL};
    OK(barge_set_helper(h, argv));
    OK(barge_set_event_callback(h, on_log, BARGE_EVENT_LOG, NULL));
    OK(barge_stat(h, "/a.bin", &st));
    OK(barge_stat(h, "/pipe.bin", &st));
    barge_close(h);
    CHECK(log_lines > 0, "no LOG event from a helper in debug mode");

    free(data);
    free(src);
    free(root);
    printf("test-events: ok (%d LOG lines)\n", log_lines);
    return 0;
}
