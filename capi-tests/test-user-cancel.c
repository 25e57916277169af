/* test-user-cancel: barge_user_cancel from a second thread at a random
 * position of a transfer, as libguestfs's test-user-cancel does, but with
 * assertions that can fail: every cancelled call returns -1 with
 * ECANCELED, leaves nothing partial, and the same handle (and the same
 * helper) then completes a full transfer.
 *
 * Upload: from a pipe that a feeder thread fills up to the position, then
 * cancels, and closes only after the call returned, so the upload cannot
 * have completed on its own. Download: into a pipe that a drainer thread
 * reads up to the position, then cancels, and reads on only after the call
 * returned; positions stop a pipe's capacity short of the end, so the
 * download cannot have completed on its own either.
 *
 * $BARGE_TEST_SEED replays a run; $BARGE_TEST_ROUNDS changes the count
 * (default 100 per direction). */
#define _GNU_SOURCE
#include "common.h"

#include <fcntl.h>
#include <pthread.h>
#include <semaphore.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define SIZE ((size_t) 1 << 20)
#define PIPE_SIZE 65536

static barge_h *h;
static unsigned char *data;

struct side {
    int fd;
    size_t cancel_at;    /* bytes before the cancel; SIZE: never cancel */
    sem_t call_returned; /* posted by main after the barge call */
    size_t moved;        /* bytes the thread moved in total */
    int prefix_ok;       /* download: what arrived is a prefix of data */
};

static void *feed(void *arg) {
    struct side *s = arg;
    CHECK(write_all(s->fd, data, s->cancel_at) == 0, "feed: %s",
          strerror(errno));
    s->moved = s->cancel_at;
    if (s->cancel_at < SIZE) {
        barge_user_cancel(h);
        while (sem_wait(&s->call_returned) != 0)
            ;
    }
    close(s->fd);
    return NULL;
}

static void *drain(void *arg) {
    struct side *s = arg;
    unsigned char *buf = malloc(SIZE + PIPE_SIZE);
    CHECK(buf, "malloc");
    size_t got = 0;
    int cancelled = s->cancel_at >= SIZE; /* never cancel: read it all */
    for (;;) {
        if (!cancelled && got == s->cancel_at) {
            barge_user_cancel(h);
            cancelled = 1;
            while (sem_wait(&s->call_returned) != 0)
                ;
        }
        size_t want = cancelled ? SIZE + PIPE_SIZE - got : s->cancel_at - got;
        if (!cancelled && want == 0)
            continue;
        ssize_t r = read(s->fd, buf + got, want);
        if (r < 0 && errno == EINTR)
            continue;
        CHECK(r >= 0, "drain: %s", strerror(errno));
        if (r == 0)
            break;
        got += (size_t) r;
    }
    s->moved = got;
    s->prefix_ok = got <= SIZE && memcmp(buf, data, got) == 0;
    free(buf);
    close(s->fd);
    return NULL;
}

static void make_pipe(int p[2]) {
    CHECK(pipe2(p, O_CLOEXEC) == 0, "pipe");
    CHECK(fcntl(p[0], F_SETPIPE_SZ, PIPE_SIZE) >= PIPE_SIZE, "F_SETPIPE_SZ");
}

/* Upload from a pipe, cancelled after `at` bytes (SIZE: not cancelled). */
static int upload_from_pipe(size_t at, int *err) {
    int p[2];
    make_pipe(p);
    struct side s = {.fd = p[1], .cancel_at = at};
    sem_init(&s.call_returned, 0, 0);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, feed, &s) == 0, "pthread_create");
    int r = barge_upload_fd(h, p[0], "/up.bin");
    *err = barge_get_errno();
    sem_post(&s.call_returned);
    pthread_join(t, NULL);
    close(p[0]);
    sem_destroy(&s.call_returned);
    return r;
}

/* Download into a pipe, cancelled after `at` bytes (SIZE: not cancelled). */
static int download_to_pipe(size_t at, int *err, size_t *moved, int *prefix_ok) {
    int p[2];
    make_pipe(p);
    struct side s = {.fd = p[0], .cancel_at = at};
    sem_init(&s.call_returned, 0, 0);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, drain, &s) == 0, "pthread_create");
    int r = barge_download_fd(h, "/src.bin", p[1]);
    *err = barge_get_errno();
    close(p[1]);
    sem_post(&s.call_returned);
    pthread_join(t, NULL);
    sem_destroy(&s.call_returned);
    *moved = s.moved;
    *prefix_ok = s.prefix_ok;
    return r;
}

int main(void) {
    uint64_t seed = (uint64_t) time(NULL) ^ (uint64_t) getpid();
    if (getenv("BARGE_TEST_SEED"))
        seed = strtoull(getenv("BARGE_TEST_SEED"), NULL, 0);
    int rounds = getenv("BARGE_TEST_ROUNDS") ? atoi(getenv("BARGE_TEST_ROUNDS")) : 100;
    printf("test-user-cancel: seed %llu, %d rounds per direction\n",
           (unsigned long long) seed, rounds);
    fflush(stdout);
    uint64_t rng = seed ? seed : 1;

    char *root = strdup(scratch("root"));
    CHECK(mkdir(root, 0755) == 0, "mkdir");
    data = random_bytes(SIZE, seed + 1);
    write_file(scratch("root/src.bin"), data, SIZE);
    h = test_handle(root);
    OK(barge_launch(h));
    int64_t pid = barge_helper_pid(h);
    int entries = count_entries(root);
    int err;
    struct barge_stat st;

    for (int i = 0; i < rounds; i++) {
        size_t at = (size_t) (rng_next(&rng) % SIZE);
        int r = upload_from_pipe(at, &err);
        CHECK(r == -1 && err == ECANCELED,
              "upload cancelled at %zu: r=%d errno=%d (%s)", at, r, err,
              last_error());
        FAILS_WITH(ENOENT, barge_stat(h, "/up.bin", &st));
        CHECK(count_entries(root) == entries, "a stray file after a cancel at %zu", at);
        CHECK(barge_helper_pid(h) == pid, "the helper changed (cancel at %zu)", at);

        /* The same handle then completes a full transfer. */
        r = upload_from_pipe(SIZE, &err);
        CHECK(r == 0, "full upload after a cancel at %zu: %s", at, last_error());
        CHECK(file_equals(scratch("root/up.bin"), data, SIZE),
              "full upload bytes differ (after a cancel at %zu)", at);
        OK(barge_remove(h, "/up.bin"));
    }

    for (int i = 0; i < rounds; i++) {
        size_t at = (size_t) (rng_next(&rng) % (SIZE - 2 * PIPE_SIZE));
        size_t moved;
        int prefix_ok;
        int r = download_to_pipe(at, &err, &moved, &prefix_ok);
        CHECK(r == -1 && err == ECANCELED,
              "download cancelled at %zu: r=%d errno=%d (%s)", at, r, err,
              last_error());
        CHECK(moved >= at && moved < SIZE && prefix_ok,
              "cancel at %zu: %zu bytes reached the pipe (prefix %d)", at,
              moved, prefix_ok);
        CHECK(file_equals(scratch("root/src.bin"), data, SIZE),
              "the source changed");
        CHECK(count_entries(root) == entries, "a stray file after a cancel at %zu", at);
        CHECK(barge_helper_pid(h) == pid, "the helper changed (cancel at %zu)", at);

        r = download_to_pipe(SIZE, &err, &moved, &prefix_ok);
        CHECK(r == 0, "full download after a cancel at %zu: %s", at, last_error());
        CHECK(moved == SIZE && prefix_ok, "full download: %zu bytes, prefix %d",
              moved, prefix_ok);
    }

    /* A download to a path, cancelled before it starts (a pending cancel
     * is never lost), leaves no local file. */
    barge_user_cancel(h);
    FAILS_WITH(ECANCELED, barge_download(h, "/src.bin", scratch("local.bin")));
    CHECK(access(scratch("local.bin"), F_OK) != 0, "a partial local file");
    OK(barge_download(h, "/src.bin", scratch("local.bin")));
    CHECK(file_equals(scratch("local.bin"), data, SIZE), "download bytes");

    barge_close(h);
    free(data);
    free(root);
    printf("test-user-cancel: ok\n");
    return 0;
}
