/* Shared support for the C API tests: checks that exit with a message,
 * a handle on the helper under test, a scratch directory, file helpers.
 *
 * Every test takes the helper's path from $BARGE_TEST_HELPER (set by
 * tests/capi.rs) and works beneath a fresh directory that it removes at
 * exit. */
#ifndef BARGE_TEST_COMMON_H
#define BARGE_TEST_COMMON_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "barge.h"

#define FAIL(...)                                                           \
    do {                                                                    \
        fprintf(stderr, "%s:%d: FAIL: ", __FILE__, __LINE__);               \
        fprintf(stderr, __VA_ARGS__);                                       \
        fprintf(stderr, "\n");                                              \
        exit(1);                                                            \
    } while (0)

#define CHECK(cond, ...)                                                    \
    do {                                                                    \
        if (!(cond)) {                                                      \
            fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, \
                    #cond);                                                 \
            fprintf(stderr, __VA_ARGS__);                                   \
            fprintf(stderr, "\n");                                          \
            exit(1);                                                        \
        }                                                                   \
    } while (0)

/* A barge call that must succeed (return 0 or an id >= 0). */
#define OK(call)                                                            \
    do {                                                                    \
        if ((call) < 0)                                                     \
            FAIL("%s: %s (errno %d)", #call, last_error(),                  \
                 barge_get_errno());                                        \
    } while (0)

/* A barge call that must fail with -1 and this errno. */
#define FAILS_WITH(err, call)                                               \
    do {                                                                    \
        errno = 0;                                                          \
        long r_ = (long) (call);                                            \
        int e_ = barge_get_errno();                                         \
        CHECK(r_ == -1, "%s returned %ld, expected -1", #call, r_);         \
        CHECK(e_ == (err), "%s: errno %d (%s), expected %d (%s); %s", #call, \
              e_, strerror(e_), (err), strerror(err), last_error());        \
        CHECK(errno == (err), "%s left C errno %d, expected %d", #call,     \
              errno, (err));                                                \
    } while (0)

/* barge_get_error(), or "(none)". */
const char *last_error(void);
/* The helper under test, from $BARGE_TEST_HELPER. */
const char *helper_path(void);
/* A fresh scratch directory, removed at exit. */
const char *scratch_dir(void);
/* scratch_dir()/name, in a static rotating buffer (8 slots). */
const char *scratch(const char *name);
/* A handle on the helper under test, confined to root (NULL: none). */
barge_h *test_handle(const char *root);
/* Milliseconds on the monotonic clock. */
double now_ms(void);
/* Deterministic pseudo-random numbers. */
uint64_t rng_next(uint64_t *state);
/* n pseudo-random bytes (malloc'ed). */
unsigned char *random_bytes(size_t n, uint64_t seed);
void write_file(const char *path, const void *data, size_t n);
/* The whole file (malloc'ed), its size in *n; NULL if it cannot be read. */
unsigned char *read_file(const char *path, size_t *n);
/* Whether path holds exactly data[0..n]. */
int file_equals(const char *path, const void *data, size_t n);
/* Write or read everything, retrying on EINTR and short counts. */
int write_all(int fd, const void *buf, size_t n);
/* Names in dir that are not "." or "..", counted. */
int count_entries(const char *dir);
/* Whether a process with this pid exists (a zombie counts). */
int pid_exists(long pid);

#endif
