/* test-basic: the life of a handle: create, launch, upload, download,
 * stat, mkdir, list, rename, remove, close; bytes compared at each step.
 * Also: non-UTF-8 paths, out-structs untouched on error, the version
 * macros against barge_version(). */
#define _GNU_SOURCE
#include "common.h"

#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

static void check_version(void) {
    char expect[64];
    snprintf(expect, sizeof expect, "%d.%d.%d", BARGE_VERSION_MAJOR,
             BARGE_VERSION_MINOR, BARGE_VERSION_PATCH);
    CHECK(strcmp(expect, BARGE_VERSION_STRING) == 0, "macros %s vs string %s",
          expect, BARGE_VERSION_STRING);
    CHECK(barge_version() && strcmp(barge_version(), BARGE_VERSION_STRING) == 0,
          "barge_version() %s, header %s", barge_version(), BARGE_VERSION_STRING);
    CHECK(BARGE_VERSION_NUMBER == BARGE_VERSION_MAJOR * 1000000 +
                                      BARGE_VERSION_MINOR * 1000 +
                                      BARGE_VERSION_PATCH,
          "BARGE_VERSION_NUMBER %d", BARGE_VERSION_NUMBER);
}

int main(void) {
    check_version();

    char *root = strdup(scratch("root"));
    CHECK(mkdir(root, 0755) == 0, "mkdir %s", root);
    barge_h *h = test_handle(root);

    CHECK(barge_helper_pid(h) == -1, "a pid before launch");
    OK(barge_launch(h));
    int64_t pid = barge_helper_pid(h);
    CHECK(pid > 0 && pid_exists(pid), "helper pid %lld", (long long) pid);
    OK(barge_launch(h)); /* already running: nothing happens */
    CHECK(barge_helper_pid(h) == pid, "launch twice started a new helper");

    /* Upload a file of several chunks, with an odd size. */
    size_t n = (1 << 20) + 12345;
    unsigned char *data = random_bytes(n, 42);
    const char *src = scratch("src.bin");
    write_file(src, data, n);
    OK(barge_mkdir(h, "/dir/sub", 1));
    OK(barge_mkdir(h, "/dir/sub", 1)); /* parents: an existing dir is fine */
    FAILS_WITH(EEXIST, barge_mkdir(h, "/dir/sub", 0));
    OK(barge_upload(h, src, "/dir/sub/a.bin"));
    CHECK(file_equals(scratch("root/dir/sub/a.bin"), data, n),
          "uploaded bytes differ");


    /* stat */
    struct barge_stat st;
    OK(barge_stat(h, "/dir/sub/a.bin", &st));
    CHECK(st.size == n, "size %llu", (unsigned long long) st.size);
    CHECK(S_ISREG(st.mode), "mode %o", st.mode);
    struct stat real;
    CHECK(stat(scratch("root/dir/sub/a.bin"), &real) == 0, "stat");
    CHECK(st.mtime_sec == real.st_mtim.tv_sec &&
              st.mtime_nsec == (uint32_t) real.st_mtim.tv_nsec,
          "mtime %lld.%u", (long long) st.mtime_sec, st.mtime_nsec);
    OK(barge_stat(h, "/dir", &st));
    CHECK(S_ISDIR(st.mode), "mode %o", st.mode);

    /* An error leaves the out-struct alone. */
    memset(&st, 0xa5, sizeof st);
    struct barge_stat before = st;
    FAILS_WITH(ENOENT, barge_stat(h, "/missing", &st));
    CHECK(memcmp(&st, &before, sizeof st) == 0, "out-struct written on error");
    CHECK(strstr(last_error(), "barge_stat") != NULL, "message: %s",
          last_error());

    /* Download to a path, and to an fd. */
    const char *dst = scratch("dst.bin");
    OK(barge_download(h, "/dir/sub/a.bin", dst));
    CHECK(file_equals(dst, data, n), "downloaded bytes differ");
    FILE *f = tmpfile();
    CHECK(f, "tmpfile");
    OK(barge_download_fd(h, "/dir/sub/a.bin", fileno(f)));
    CHECK(fflush(f) == 0 && fseek(f, 0, SEEK_SET) == 0, "rewind");
    unsigned char *back = malloc(n + 1);
    CHECK(fread(back, 1, n + 1, f) == n && memcmp(back, data, n) == 0,
          "download_fd bytes differ");
    fclose(f);

    /* upload_fd from a regular file. */
    FILE *in = fopen(src, "rb");
    CHECK(in, "fopen");
    OK(barge_upload_fd(h, fileno(in), "/dir/b.bin"));
    fclose(in);
    CHECK(file_equals(scratch("root/dir/b.bin"), data, n), "upload_fd bytes");

    /* list */
    struct barge_dirent *ents = (void *) 0x1;
    size_t count = 99;
    OK(barge_list(h, "/dir", &ents, &count));
    CHECK(count == 2, "count %zu", count);
    int seen_sub = 0, seen_b = 0;
    for (size_t i = 0; i < count; i++) {
        CHECK(strlen(ents[i].name) == ents[i].name_len, "name_len");
        if (strcmp(ents[i].name, "sub") == 0)
            seen_sub = S_ISDIR(ents[i].st.mode);
        if (strcmp(ents[i].name, "b.bin") == 0)
            seen_b = ents[i].st.size == n && S_ISREG(ents[i].st.mode);
    }
    CHECK(seen_sub && seen_b, "listing misses entries");
    barge_free_dirents(ents, count);
    OK(barge_mkdir(h, "/empty", 0));
    OK(barge_list(h, "/empty", &ents, &count));
    CHECK(count == 0 && ents == NULL, "empty dir: %zu %p", count, (void *) ents);
    barge_free_dirents(ents, count);
    ents = (void *) 0x1;
    count = 7;
    FAILS_WITH(ENOENT, barge_list(h, "/nope", &ents, &count));
    CHECK(ents == (void *) 0x1 && count == 7, "out-params written on error");

    /* rename, remove */
    OK(barge_rename(h, "/dir/b.bin", "/dir/c.bin"));
    FAILS_WITH(ENOENT, barge_stat(h, "/dir/b.bin", &st));
    OK(barge_stat(h, "/dir/c.bin", &st));
    OK(barge_remove(h, "/dir/c.bin"));
    FAILS_WITH(ENOENT, barge_stat(h, "/dir/c.bin", &st));
    FAILS_WITH(ENOTEMPTY, barge_remove(h, "/dir"));

    /* Non-UTF-8 names, both ways. */
    const char odd[] = "/dir/\xff\xfe-caf\xe9.bin";
    OK(barge_upload(h, src, odd));
    CHECK(file_equals(scratch("root/dir/\xff\xfe-caf\xe9.bin"), data, n),
          "non-UTF-8 remote path");
    const char *odd_local = scratch("\xc3\x28-local.bin");
    OK(barge_download(h, odd, odd_local));
    CHECK(file_equals(odd_local, data, n), "non-UTF-8 local path");
    OK(barge_list(h, "/dir", &ents, &count));
    int seen_odd = 0;
    for (size_t i = 0; i < count; i++)
        seen_odd |= strcmp(ents[i].name, odd + 5) == 0;
    CHECK(seen_odd, "non-UTF-8 name missing from the listing");
    barge_free_dirents(ents, count);

    /* The same helper served everything. */
    CHECK(barge_helper_pid(h) == pid, "the helper changed");
    OK(barge_shutdown(h));
    CHECK(barge_helper_pid(h) == -1, "a pid after shutdown");
    CHECK(!pid_exists(pid), "helper %lld still exists", (long long) pid);
    /* The next operation starts a new helper. */
    OK(barge_stat(h, "/dir", &st));
    CHECK(barge_helper_pid(h) > 0 && barge_helper_pid(h) != pid, "relaunch");

    /* The fast path: not offered to an explicit helper command by default;
     * offered, this helper (our own child) takes it; off again, it does
     * not. The bytes are the same either way. */
    CHECK(barge_uses_fast_path(h) == 0, "fast path used by default with an explicit helper");
    OK(barge_set_fast_path(h, 1));
    OK(barge_shutdown(h));
    OK(barge_launch(h));
    CHECK(barge_uses_fast_path(h) == 1, "fast path offered but not used");
    OK(barge_upload(h, src, "/dir/sub/fast.bin"));
    CHECK(file_equals(scratch("root/dir/sub/fast.bin"), data, n), "fast-path bytes differ");
    OK(barge_set_fast_path(h, 0));
    OK(barge_shutdown(h));
    OK(barge_launch(h));
    CHECK(barge_uses_fast_path(h) == 0, "fast path used after barge_set_fast_path(h, 0)");
    OK(barge_remove(h, "/dir/sub/fast.bin"));
    barge_close(h);

    free(back);
    free(data);
    free(root);
    printf("test-basic: ok\n");
    return 0;
}
