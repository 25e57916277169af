/* test-sigpipe: an upload on the stream path sends a regular file's
 * payloads with splice(2), which raises SIGPIPE when the helper has gone.
 * This program keeps SIGPIPE's default action (terminate): the helper is
 * killed in the middle of an upload, the call must fail without the
 * process dying, and no SIGPIPE may be left pending. */
#define _GNU_SOURCE
#include "common.h"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#define FILE_SIZE (32u << 20)
#define KILL_AT (4u << 20)

static int killed;

/* The helper's state letter from /proc, or 0 once it is gone. */
static char proc_state(long pid) {
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *close_paren = strrchr(buf, ')');
    return close_paren != NULL && close_paren[1] == ' ' ? close_paren[2] : 0;
}

/* Kill the helper once KILL_AT bytes are in, and wait until it is dead
 * (a zombie barge has not reaped yet), so the next payload meets a closed
 * channel. */
static void kill_helper_past(void *opaque, const struct barge_event *ev) {
    barge_h *h = opaque;
    if (killed || ev->kind != BARGE_EVENT_PROGRESS || ev->done < KILL_AT)
        return;
    long pid = (long) barge_helper_pid(h);
    CHECK(pid > 0, "no helper pid");
    CHECK(kill((pid_t) pid, SIGKILL) == 0, "kill: %s", strerror(errno));
    double deadline = now_ms() + 10000;
    while (proc_state(pid) != 'Z' && proc_state(pid) != 0)
        CHECK(now_ms() < deadline, "helper %ld did not die", pid);
    killed = 1;
}

int main(void) {
    struct sigaction sa;
    CHECK(sigaction(SIGPIPE, NULL, &sa) == 0, "sigaction");
    CHECK(sa.sa_handler == SIG_DFL, "SIGPIPE is not at its default action");

    const char *root = scratch("root");
    CHECK(mkdir(root, 0755) == 0, "mkdir");
    unsigned char *data = random_bytes(FILE_SIZE, 3);
    write_file(scratch("src.bin"), data, FILE_SIZE);
    free(data);

    barge_h *h = test_handle(root);
    OK(barge_set_fast_path(h, 0));
    OK(barge_set_progress_interval_ms(h, 0));
    OK(barge_set_event_callback(h, kill_helper_past, BARGE_EVENT_PROGRESS, h));
    int r = barge_upload(h, scratch("src.bin"), "/dst.bin");
    CHECK(killed, "the helper was never killed");
    CHECK(r == -1, "the upload returned %d", r);
    printf("  upload with its helper killed: -1, errno %d: %s\n", barge_get_errno(),
           last_error());

    sigset_t pending;
    sigemptyset(&pending);
    CHECK(sigpending(&pending) == 0, "sigpending");
    CHECK(!sigismember(&pending, SIGPIPE), "a SIGPIPE is left pending");
    CHECK(count_entries(root) == 0, "the cut upload left a file");
    barge_close(h);
    return 0;
}
