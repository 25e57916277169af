#define _GNU_SOURCE
#include "common.h"

#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static char scratch_path[4096];

const char *last_error(void) {
    const char *e = barge_get_error();
    return e ? e : "(none)";
}

const char *helper_path(void) {
    const char *h = getenv("BARGE_TEST_HELPER");
    if (!h || !*h)
        FAIL("set BARGE_TEST_HELPER to the barge-helper under test");
    return h;
}

static int remove_one(const char *path, const struct stat *st, int flag,
                      struct FTW *ftw) {
    (void) st;
    (void) flag;
    (void) ftw;
    remove(path);
    return 0;
}

static void remove_scratch(void) {
    if (scratch_path[0] && !getenv("BARGE_TEST_KEEP"))
        nftw(scratch_path, remove_one, 16, FTW_DEPTH | FTW_PHYS);
}

const char *scratch_dir(void) {
    if (!scratch_path[0]) {
        const char *tmp = getenv("TMPDIR");
        snprintf(scratch_path, sizeof scratch_path, "%s/barge-capi-XXXXXX",
                 tmp && *tmp ? tmp : "/tmp");
        if (!mkdtemp(scratch_path))
            FAIL("mkdtemp %s: %s", scratch_path, strerror(errno));
        atexit(remove_scratch);
    }
    return scratch_path;
}

const char *scratch(const char *name) {
    static char bufs[8][4096];
    static int next;
    char *b = bufs[next++ % 8];
    snprintf(b, 4096, "%s/%s", scratch_dir(), name);
    return b;
}

barge_h *test_handle(const char *root) {
    barge_h *h = barge_create();
    if (!h)
        FAIL("barge_create: %s", last_error());
    const char *argv[] = {helper_path(), NULL};
    OK(barge_set_helper(h, argv));
    if (root)
        OK(barge_set_root(h, root));
    OK(barge_set_chunk_size(h, 16 << 10));
    return h;
}

double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

uint64_t rng_next(uint64_t *s) {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545F4914F6CDD1DULL;
}

unsigned char *random_bytes(size_t n, uint64_t seed) {
    unsigned char *p = malloc(n ? n : 1);
    CHECK(p, "malloc %zu", n);
    uint64_t s = seed ? seed : 1;
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char) rng_next(&s);
    return p;
}

int write_all(int fd, const void *buf, size_t n) {
    const char *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t) w;
    }
    return 0;
}

void write_file(const char *path, const void *data, size_t n) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    CHECK(fd >= 0, "open %s: %s", path, strerror(errno));
    CHECK(write_all(fd, data, n) == 0, "write %s: %s", path, strerror(errno));
    close(fd);
}

unsigned char *read_file(const char *path, size_t *n) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    size_t cap = 1 << 16, len = 0;
    unsigned char *buf = malloc(cap);
    CHECK(buf, "malloc");
    for (;;) {
        if (len == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
            CHECK(buf, "realloc");
        }
        ssize_t r = read(fd, buf + len, cap - len);
        if (r < 0 && errno == EINTR)
            continue;
        CHECK(r >= 0, "read %s: %s", path, strerror(errno));
        if (r == 0)
            break;
        len += (size_t) r;
    }
    close(fd);
    *n = len;
    return buf;
}

int file_equals(const char *path, const void *data, size_t n) {
    size_t got;
    unsigned char *buf = read_file(path, &got);
    int same = buf && got == n && memcmp(buf, data, n) == 0;
    free(buf);
    return same;
}

int count_entries(const char *dir) {
    DIR *d = opendir(dir);
    CHECK(d, "opendir %s: %s", dir, strerror(errno));
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            n++;
    closedir(d);
    return n;
}

int pid_exists(long pid) {
    return pid > 0 && (kill((pid_t) pid, 0) == 0 || errno == EPERM);
}
