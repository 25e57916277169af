/* test-fork: a cancelled download's unnamed file is closed on barge's
 * discard thread, which blocks every signal. A child forked after that
 * thread started (the thread does not exist in the child) still cancels a
 * download and closes its handle without waiting for a thread that is not
 * there; an alarm fails it if it hangs. */
#define _GNU_SOURCE
#include "common.h"

#include <dirent.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define FILE_SIZE (16u << 20)
#define CANCEL_AT (4u << 20)

static void cancel_past(void *opaque, const struct barge_event *ev) {
    barge_h *h = opaque;
    if (ev->kind == BARGE_EVENT_PROGRESS && ev->done >= CANCEL_AT)
        barge_user_cancel(h);
}

/* Download big.bin into `dst`, cancelled once CANCEL_AT bytes are in, on
 * the stream path (the data passes through this process). */
static void cancelled_download(const char *dst) {
    barge_h *h = test_handle(scratch("root"));
    OK(barge_set_fast_path(h, 0));
    OK(barge_set_progress_interval_ms(h, 0));
    OK(barge_set_event_callback(h, cancel_past, BARGE_EVENT_PROGRESS, h));
    FAILS_WITH(ECANCELED, barge_download(h, "/big.bin", dst));
    CHECK(access(dst, F_OK) == -1 && errno == ENOENT, "%s exists", dst);
    CHECK(count_entries(scratch("local")) == 0, "a file was left in local/");
    barge_close(h);
}

/* The SigBlk mask of this process's thread named `name`, or 0 if none. */
static unsigned long long blocked_signals_of(const char *name) {
    DIR *d = opendir("/proc/self/task");
    CHECK(d != NULL, "opendir: %s", strerror(errno));
    unsigned long long mask = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char path[300], line[256];
        snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
        FILE *f = fopen(path, "r");
        if (f == NULL)
            continue;
        int match = fgets(line, sizeof line, f) != NULL &&
                    strncmp(line, name, strlen(name)) == 0;
        fclose(f);
        if (!match)
            continue;
        snprintf(path, sizeof path, "/proc/self/task/%s/status", e->d_name);
        f = fopen(path, "r");
        CHECK(f != NULL, "%s: %s", path, strerror(errno));
        while (fgets(line, sizeof line, f) != NULL)
            if (sscanf(line, "SigBlk: %llx", &mask) == 1)
                break;
        fclose(f);
    }
    closedir(d);
    return mask;
}

int main(void) {
    const char *root = scratch("root");
    const char *local = scratch("local");
    CHECK(mkdir(root, 0755) == 0 && mkdir(local, 0755) == 0, "mkdir");
    unsigned char *data = random_bytes(FILE_SIZE, 7);
    write_file(scratch("root/big.bin"), data, FILE_SIZE);
    free(data);

    cancelled_download(scratch("local/d.bin"));
    unsigned long long blocked = blocked_signals_of("barge-discard");
    CHECK(blocked != 0, "no barge-discard thread, or it blocks nothing");
    int sigs[] = {SIGHUP, SIGINT, SIGQUIT, SIGUSR1, SIGPIPE, SIGALRM, SIGTERM,
                  SIGCHLD, SIGWINCH, SIGRTMIN + 2, SIGRTMAX};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
        CHECK(blocked & (1ull << (sigs[i] - 1)), "signal %d not blocked (SigBlk %llx)",
              sigs[i], blocked);
    printf("  barge-discard thread: SigBlk %016llx\n", blocked);

    pid_t child = fork();
    CHECK(child >= 0, "fork: %s", strerror(errno));
    if (child == 0) {
        alarm(20);
        cancelled_download(scratch("local/child.bin"));
        _exit(0);
    }
    int status;
    CHECK(waitpid(child, &status, 0) == child, "waitpid: %s", strerror(errno));
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "child: %s %d", WIFSIGNALED(status) ? "killed by signal" : "exit status",
          WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
    printf("  forked child cancelled a download and closed its handle\n");

    /* The parent's thread still works after the fork. */
    cancelled_download(scratch("local/d2.bin"));
    return 0;
}
