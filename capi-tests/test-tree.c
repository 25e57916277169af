/* test-tree: barge_copy_in and barge_copy_out round-trip a tree (files,
 * nested directories, a symlink, modes); tree PROGRESS events carry file
 * counts; keep-going collects per-path errors, read with
 * barge_get_tree_errors and freed with barge_free_path_errors; keep_partial
 * leaves a hidden partial file after a cancel and the next download
 * resumes; NULL arguments fail cleanly. */
#define _GNU_SOURCE
#include "common.h"

#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

struct progress {
    int64_t files_done, files_total;
    uint64_t done;
    int64_t total;
    uint64_t cancel_at;
    barge_h *h;
};

static void on_progress(void *opaque, const struct barge_event *ev) {
    struct progress *p = opaque;
    if (ev->kind != BARGE_EVENT_PROGRESS)
        return;
    p->files_done = ev->files_done;
    p->files_total = ev->files_total;
    p->done = ev->done;
    p->total = ev->total;
    if (ev->done >= p->cancel_at)
        barge_user_cancel(p->h);
}

static void make_file(const char *path, size_t n, uint64_t seed, mode_t mode) {
    unsigned char *d = random_bytes(n, seed);
    write_file(path, d, n);
    free(d);
    CHECK(chmod(path, mode) == 0, "chmod %s", path);
}

static int same_tree(const char *a, const char *b) {
    char cmd[8400];
    snprintf(cmd, sizeof cmd, "diff -r --no-dereference '%s' '%s' >&2", a, b);
    return system(cmd) == 0;
}

static mode_t mode_of(const char *p) {
    struct stat st;
    CHECK(lstat(p, &st) == 0, "lstat %s", p);
    return st.st_mode;
}

int main(void) {
    char *src = strdup(scratch("src"));
    char *root = strdup(scratch("root"));
    char *back = strdup(scratch("back"));
    CHECK(mkdir(src, 0755) == 0 && mkdir(root, 0755) == 0 && mkdir(back, 0755) == 0,
          "mkdir");
    char p[4096];
    snprintf(p, sizeof p, "%s/t", src);
    CHECK(mkdir(p, 0750) == 0, "mkdir %s", p);
    snprintf(p, sizeof p, "%s/t/sub", src);
    CHECK(mkdir(p, 0700) == 0, "mkdir %s", p);
    snprintf(p, sizeof p, "%s/t/a.bin", src);
    make_file(p, 100000, 1, 0640);
    snprintf(p, sizeof p, "%s/t/sub/b.txt", src);
    make_file(p, 300, 2, 0755);
    snprintf(p, sizeof p, "%s/t/sub/empty", src);
    make_file(p, 0, 3, 0600);
    snprintf(p, sizeof p, "%s/t/link", src);
    CHECK(symlink("sub/b.txt", p) == 0, "symlink");

    barge_h *h = test_handle(root);
    struct progress pr = {.cancel_at = UINT64_MAX, .h = h};
    OK(barge_set_event_callback(h, on_progress, BARGE_EVENT_PROGRESS, &pr));

    /* Round trip. */
    snprintf(p, sizeof p, "%s/t", src);
    OK(barge_copy_in(h, p, "/"));
    CHECK(pr.files_done == 3 && pr.files_total == 3, "files %lld of %lld",
          (long long) pr.files_done, (long long) pr.files_total);
    CHECK(pr.done == 100300 && pr.total == 100300, "bytes %llu of %lld",
          (unsigned long long) pr.done, (long long) pr.total);
    OK(barge_copy_out(h, "/t", back));
    char q[4096];
    snprintf(q, sizeof q, "%s/t", back);
    CHECK(same_tree(p, q), "the trees differ");
    snprintf(q, sizeof q, "%s/t/sub/b.txt", back);
    CHECK((mode_of(q) & 07777) == 0755, "mode %o", mode_of(q) & 07777);
    snprintf(q, sizeof q, "%s/t/link", back);
    CHECK(S_ISLNK(mode_of(q)), "the link was not copied as a link");

    struct barge_path_error *errs = (void *) 1;
    size_t n = 99;
    OK(barge_get_tree_errors(h, &errs, &n));
    CHECK(errs == NULL && n == 0, "errors after a clean copy: %zu", n);

    /* Keep going: a file stands where the tree has a directory. */
    snprintf(q, sizeof q, "%s/kg", root);
    CHECK(mkdir(q, 0755) == 0, "mkdir");
    snprintf(q, sizeof q, "%s/kg/t", root);
    CHECK(mkdir(q, 0755) == 0, "mkdir");
    snprintf(q, sizeof q, "%s/kg/t/sub", root);
    write_file(q, "in the way", 10);
    FAILS_WITH(EEXIST, barge_copy_in(h, p, "/kg"));
    OK(barge_set_keep_going(h, 1));
    FAILS_WITH(EEXIST, barge_copy_in(h, p, "/kg"));
    OK(barge_get_tree_errors(h, &errs, &n));
    CHECK(n >= 1 && errs != NULL, "no errors reported");
    CHECK(strcmp(errs[0].path, "/kg/t/sub") == 0 && errs[0].path_len == 9,
          "first error path %s", errs[0].path);
    CHECK(errs[0].err == EEXIST, "errno %d", errs[0].err);
    CHECK(strstr(errs[0].message, "t/sub") != NULL, "message %s", errs[0].message);
    barge_free_path_errors(errs, n);
    barge_free_path_errors(NULL, 0);
    snprintf(q, sizeof q, "%s/kg/t/a.bin", root);
    snprintf(p, sizeof p, "%s/t/a.bin", src);
    size_t len = 0;
    unsigned char *a = read_file(p, &len);
    CHECK(file_equals(q, a, len), "keep-going did not copy the rest");
    free(a);
    OK(barge_set_keep_going(h, 0));

    /* keep_partial: cancel a download, find the hidden partial file, then
     * resume. */
    OK(barge_set_chunk_size(h, 16384));
    OK(barge_set_progress_interval_ms(h, 0));
    OK(barge_set_keep_partial(h, 1));
    snprintf(p, sizeof p, "%s/big", root);
    make_file(p, 1 << 20, 7, 0644);
    snprintf(q, sizeof q, "%s/big", back);
    pr.cancel_at = 400000;
    FAILS_WITH(ECANCELED, barge_download(h, "/big", q));
    pr.cancel_at = UINT64_MAX;
    CHECK(access(q, F_OK) != 0, "partial data under the final name");
    char part[4096];
    snprintf(part, sizeof part, "%s/.big.barge-partial", back);
    size_t kept = 0;
    unsigned char *k = read_file(part, &kept);
    CHECK(k != NULL && kept >= 400000 - 16384, "partial file holds %zu", kept);
    free(k);
    OK(barge_download(h, "/big", q));
    CHECK(pr.done == (1 << 20) - kept, "resume moved %llu bytes, %zu were left",
          (unsigned long long) pr.done, (size_t) ((1 << 20) - kept));
    a = read_file(p, &len);
    CHECK(file_equals(q, a, len), "resumed download differs");
    free(a);
    CHECK(access(part, F_OK) != 0, "partial file left after success");

    /* NULLs. */
    FAILS_WITH(EINVAL, barge_copy_in(NULL, p, "/"));
    FAILS_WITH(EFAULT, barge_copy_in(h, NULL, "/"));
    FAILS_WITH(EFAULT, barge_copy_out(h, "/t", NULL));
    FAILS_WITH(EFAULT, barge_get_tree_errors(h, NULL, &n));
    FAILS_WITH(EINVAL, barge_set_keep_partial(NULL, 1));
    FAILS_WITH(EINVAL, barge_set_keep_going(NULL, 1));
    FAILS_WITH(EINVAL, barge_set_preserve_metadata(NULL, 1));

    barge_close(h);
    free(src);
    free(root);
    free(back);
    printf("test-tree: ok\n");
    return 0;
}
