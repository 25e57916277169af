/* test-sigint: a SIGINT handler installed with sigaction calls
 * barge_user_cancel, as an interactive shell's would. SIGINT arrives in
 * the middle of a transfer, sent to the process (like a terminal's ^C)
 * by another thread or by a POSIX timer, with and without SA_RESTART, while
 * the transfer is blocked on an empty pipe (upload) or a full one
 * (download). Each time: the call returns -1 with ECANCELED within 100 ms
 * of the handler, the helper survived (same pid), and the next transfer
 * works. */
#define _GNU_SOURCE
#include "common.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define DELAY_MS 150
#define BOUND_MS 100.0

static barge_h *h;
static volatile sig_atomic_t handled;
static struct timespec handled_at;
static double sent_ms;

static void on_sigint(int sig) {
    (void) sig;
    clock_gettime(CLOCK_MONOTONIC, &handled_at); /* async-signal-safe */
    handled++;
    barge_user_cancel(h);
}

static double handled_ms(void) {
    return handled_at.tv_sec * 1e3 + handled_at.tv_nsec / 1e6;
}

static void install(int restart) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sa.sa_flags = restart ? SA_RESTART : 0;
    sigemptyset(&sa.sa_mask);
    CHECK(sigaction(SIGINT, &sa, NULL) == 0, "sigaction");
}

static void *interrupter(void *arg) {
    (void) arg;
    struct timespec d = {0, DELAY_MS * 1000000L};
    nanosleep(&d, NULL);
    sent_ms = now_ms();
    kill(getpid(), SIGINT); /* process-directed, like ^C */
    return NULL;
}

enum source { THREAD, TIMER };
static const char *source_name[] = {"thread", "timer"};

struct interrupt {
    enum source source;
    pthread_t thread;
    timer_t timer;
};

static void arm(struct interrupt *it) {
    handled = 0;
    sent_ms = 0;
    if (it->source == THREAD) {
        /* Only the main thread may take SIGINT: block it in the new one. */
        sigset_t set, old;
        sigemptyset(&set);
        sigaddset(&set, SIGINT);
        pthread_sigmask(SIG_BLOCK, &set, &old);
        CHECK(pthread_create(&it->thread, NULL, interrupter, NULL) == 0, "thread");
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    } else {
        struct sigevent sev;
        memset(&sev, 0, sizeof sev);
        sev.sigev_notify = SIGEV_SIGNAL;
        sev.sigev_signo = SIGINT;
        CHECK(timer_create(CLOCK_MONOTONIC, &sev, &it->timer) == 0, "timer_create");
        struct itimerspec when = {{0, 0}, {0, DELAY_MS * 1000000L}};
        sent_ms = now_ms() + DELAY_MS;
        CHECK(timer_settime(it->timer, 0, &when, NULL) == 0, "timer_settime");
    }
}

static void disarm(struct interrupt *it) {
    if (it->source == THREAD)
        pthread_join(it->thread, NULL);
    else
        timer_delete(it->timer);
}

static void check_cancelled(const char *what, int r, int err, double returned,
                            int64_t pid, struct interrupt *it, int restart) {
    const char *how = source_name[it->source];
    CHECK(handled == 1, "%s (%s, SA_RESTART=%d): handler ran %d times", what,
          how, restart, (int) handled);
    CHECK(r == -1 && err == ECANCELED,
          "%s (%s, SA_RESTART=%d): r=%d errno=%d: %s", what, how, restart, r,
          err, last_error());
    double latency = returned - handled_ms();
    CHECK(latency >= 0 && latency < BOUND_MS,
          "%s (%s, SA_RESTART=%d): returned %.1f ms after the handler", what,
          how, restart, latency);
    CHECK(barge_helper_pid(h) == pid, "%s: the helper was replaced", what);
    CHECK(pid_exists(pid), "%s: the helper is gone", what);
    printf("  %-8s %-6s SA_RESTART=%d: cancelled %.1f ms after the handler\n",
           what, how, restart, latency);
}

int main(void) {
    char *root = strdup(scratch("root"));
    CHECK(mkdir(root, 0755) == 0, "mkdir");
    size_t big = 4 << 20, small = 300000;
    unsigned char *data = random_bytes(big, 7);
    write_file(scratch("root/big.bin"), data, big);
    write_file(scratch("small.bin"), data, small);

    h = test_handle(root);
    OK(barge_launch(h));
    int64_t pid = barge_helper_pid(h);

    for (int restart = 0; restart <= 1; restart++) {
        install(restart);
        for (int source = THREAD; source <= TIMER; source++) {
            struct interrupt it = {.source = source};

            /* Upload blocked on an empty pipe whose writer stays open. */
            int p[2];
            CHECK(pipe2(p, O_CLOEXEC) == 0, "pipe");
            CHECK(write_all(p[1], data, 32768) == 0, "prime the pipe");
            arm(&it);
            int r = barge_upload_fd(h, p[0], "/up.bin");
            double returned = now_ms();
            int err = barge_get_errno();
            disarm(&it);
            close(p[0]);
            close(p[1]);
            check_cancelled("upload", r, err, returned, pid, &it, restart);
            CHECK(returned - sent_ms > -1, "returned before SIGINT was sent");
            struct barge_stat st;
            FAILS_WITH(ENOENT, barge_stat(h, "/up.bin", &st));

            /* Download blocked on a full pipe nobody reads. */
            CHECK(pipe2(p, O_CLOEXEC) == 0, "pipe");
            arm(&it);
            r = barge_download_fd(h, "/big.bin", p[1]);
            returned = now_ms();
            err = barge_get_errno();
            disarm(&it);
            close(p[0]);
            close(p[1]);
            check_cancelled("download", r, err, returned, pid, &it, restart);

            /* The next transfers work, on the same helper. */
            OK(barge_upload(h, scratch("small.bin"), "/next.bin"));
            CHECK(file_equals(scratch("root/next.bin"), data, small), "next upload");
            OK(barge_download(h, "/big.bin", scratch("big.copy")));
            CHECK(file_equals(scratch("big.copy"), data, big), "next download");
            CHECK(barge_helper_pid(h) == pid, "the helper was replaced");
        }
    }

    signal(SIGINT, SIG_DFL);
    barge_close(h);
    free(data);
    free(root);
    printf("test-sigint: ok\n");
    return 0;
}
