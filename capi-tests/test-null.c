/* test-null: every call given a NULL handle or a NULL pointer argument
 * fails cleanly with -1 (or NULL) and EINVAL (NULL handle) or EFAULT (NULL
 * pointer argument), and records a message; nothing crashes. The void
 * calls accept NULL. */
#define _GNU_SOURCE
#include "common.h"

#include <sys/stat.h>

static void noop_callback(void *opaque, const struct barge_event *ev) {
    (void) opaque;
    (void) ev;
}

int main(void) {
    CHECK(barge_get_error() == NULL && barge_get_errno() == 0,
          "an error before any call");

    /* NULL handle. */
    const char *argv[] = {"barge-helper", NULL};
    struct barge_stat st;
    struct barge_dirent *ents;
    size_t count;
    FAILS_WITH(EINVAL, barge_set_helper(NULL, argv));
    CHECK(strstr(last_error(), "barge_set_helper") != NULL &&
              strstr(last_error(), "NULL") != NULL,
          "message: %s", last_error());
    FAILS_WITH(EINVAL, barge_set_root(NULL, "/"));
    FAILS_WITH(EINVAL, barge_set_pgroup(NULL, 1));
    FAILS_WITH(EINVAL, barge_set_fast_path(NULL, 1));
    FAILS_WITH(EINVAL, barge_uses_fast_path(NULL));
    FAILS_WITH(EINVAL, barge_set_chunk_size(NULL, 65536));
    FAILS_WITH(EINVAL, barge_set_shutdown_timeout_ms(NULL, 1));
    FAILS_WITH(EINVAL, barge_set_kill_timeout_ms(NULL, 1));
    FAILS_WITH(EINVAL, barge_set_cancel_timeout_ms(NULL, 1));
    FAILS_WITH(EINVAL, barge_set_launch_timeout_ms(NULL, 1));
    FAILS_WITH(EINVAL, barge_set_progress_interval_ms(NULL, 1));
    FAILS_WITH(EINVAL, barge_launch(NULL));
    FAILS_WITH(EINVAL, barge_shutdown(NULL));
    FAILS_WITH(EINVAL, barge_kill(NULL));
    FAILS_WITH(EINVAL, barge_helper_pid(NULL));
    FAILS_WITH(EINVAL, barge_upload(NULL, "/etc/hostname", "/x"));
    FAILS_WITH(EINVAL, barge_download(NULL, "/x", "/tmp/x"));
    FAILS_WITH(EINVAL, barge_upload_fd(NULL, 0, "/x"));
    FAILS_WITH(EINVAL, barge_download_fd(NULL, "/x", 1));
    FAILS_WITH(EINVAL, barge_stat(NULL, "/", &st));
    FAILS_WITH(EINVAL, barge_mkdir(NULL, "/d", 1));
    FAILS_WITH(EINVAL, barge_remove(NULL, "/d"));
    FAILS_WITH(EINVAL, barge_rename(NULL, "/a", "/b"));
    FAILS_WITH(EINVAL, barge_list(NULL, "/", &ents, &count));
    FAILS_WITH(EINVAL, barge_set_event_callback(NULL, noop_callback,
                                                BARGE_EVENT_ALL, NULL));
    FAILS_WITH(EINVAL, barge_delete_event_callback(NULL, 0));

    /* The void calls: NULL is fine. barge_user_cancel leaves errno and
     * the last error alone (it is async-signal-safe); barge_clear_cancel
     * records EINVAL. */
    errno = EDOM;
    barge_user_cancel(NULL);
    CHECK(errno == EDOM, "barge_user_cancel(NULL) changed errno to %d", errno);
    CHECK(barge_get_errno() == EINVAL, "barge_user_cancel changed the error");
    barge_clear_cancel(NULL);
    CHECK(barge_get_errno() == EINVAL, "clear_cancel(NULL): %d",
          barge_get_errno());
    barge_close(NULL);
    barge_free_dirents(NULL, 0);
    barge_free_dirents(NULL, 5);
    CHECK(barge_version() != NULL, "barge_version");

    /* NULL arguments on a real handle: EFAULT, and the handle still works
     * afterwards. No helper is needed for any of these. */
    barge_h *h = test_handle(scratch_dir());
    FAILS_WITH(EFAULT, barge_set_helper(h, NULL));
    const char *empty[] = {NULL};
    FAILS_WITH(EINVAL, barge_set_helper(h, empty));
    FAILS_WITH(EFAULT, barge_set_root(h, NULL));
    FAILS_WITH(EINVAL, barge_set_chunk_size(h, 1));
    FAILS_WITH(EFAULT, barge_upload(h, NULL, "/x"));
    FAILS_WITH(EFAULT, barge_upload(h, "/etc/hostname", NULL));
    FAILS_WITH(EFAULT, barge_download(h, NULL, "/tmp/x"));
    FAILS_WITH(EFAULT, barge_download(h, "/x", NULL));
    FAILS_WITH(EFAULT, barge_upload_fd(h, 0, NULL));
    FAILS_WITH(EBADF, barge_upload_fd(h, -1, "/x"));
    FAILS_WITH(EFAULT, barge_download_fd(h, NULL, 1));
    FAILS_WITH(EBADF, barge_download_fd(h, "/x", -1));
    FAILS_WITH(EFAULT, barge_stat(h, NULL, &st));
    FAILS_WITH(EFAULT, barge_stat(h, "/", NULL));
    FAILS_WITH(EFAULT, barge_mkdir(h, NULL, 0));
    FAILS_WITH(EFAULT, barge_remove(h, NULL));
    FAILS_WITH(EFAULT, barge_rename(h, NULL, "/b"));
    FAILS_WITH(EFAULT, barge_rename(h, "/a", NULL));
    FAILS_WITH(EFAULT, barge_list(h, NULL, &ents, &count));
    FAILS_WITH(EFAULT, barge_list(h, "/", NULL, &count));
    FAILS_WITH(EFAULT, barge_list(h, "/", &ents, NULL));
    FAILS_WITH(EFAULT, barge_set_event_callback(h, NULL, BARGE_EVENT_ALL, NULL));
    FAILS_WITH(EINVAL, barge_set_event_callback(h, noop_callback, 0, NULL));
    FAILS_WITH(EINVAL, barge_set_event_callback(h, noop_callback, 1u << 20, NULL));
    FAILS_WITH(ENOENT, barge_delete_event_callback(h, -1));
    FAILS_WITH(ENOENT, barge_delete_event_callback(h, 12345));
    CHECK(barge_helper_pid(h) == -1, "no NULL-argument call may launch");

    /* Argument errors start nothing and leave the handle usable. */
    OK(barge_stat(h, "/", &st));
    CHECK(S_ISDIR(st.mode), "stat / after errors");
    int id = barge_set_event_callback(h, noop_callback, BARGE_EVENT_ALL, NULL);
    CHECK(id >= 0, "register: %s", last_error());
    OK(barge_delete_event_callback(h, id));
    FAILS_WITH(ENOENT, barge_delete_event_callback(h, id));
    barge_close(h);

    printf("test-null: ok\n");
    return 0;
}
