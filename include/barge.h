/* barge: a file-transfer library over a helper process, with a
 * signal-safe cancel. C API conventions: README.md.
 *
 * Generated from src/ffi/ by cbindgen through build.rs. Do not edit. */

#ifndef BARGE_H
#define BARGE_H

#include <stddef.h>
#include <stdint.h>

/* The version of the header; barge_version() gives the library's. */
#define BARGE_VERSION_MAJOR 0
#define BARGE_VERSION_MINOR 1
#define BARGE_VERSION_PATCH 0
#define BARGE_VERSION_STRING "0.1.0"
/* MAJOR * 1000000 + MINOR * 1000 + PATCH, for #if comparisons. */
#define BARGE_VERSION_NUMBER \
    ((BARGE_VERSION_MAJOR * 1000000) + (BARGE_VERSION_MINOR * 1000) + \
     BARGE_VERSION_PATCH)

/* The handle is opaque; see struct barge_h below. */
typedef struct barge_h barge_h;

/**
 * A helper was started and completed the handshake. `pid` is set.
 */
#define BARGE_EVENT_LAUNCHED 1

/**
 * Bytes done in the running transfer: `done`, and `total` (-1 when the
 * size is unknown, as for a pipe). Sent at most once per progress
 * interval, and once when a transfer completes, with `done == total`.
 */
#define BARGE_EVENT_PROGRESS 2

/**
 * One line the helper wrote to its stderr: `line`, `line_len`.
 */
#define BARGE_EVENT_LOG 4

/**
 * The helper of a successful launch is gone: stopped, killed or crashed.
 * Exactly one per LAUNCHED. `pid`, `exit_status`, `term_signal` and
 * `graceful` are set. SHUTDOWN callbacks run in reverse registration order.
 */
#define BARGE_EVENT_SHUTDOWN 8

/**
 * Every event kind.
 */
#define BARGE_EVENT_ALL 15

/**
 * A barge handle: one connection to a helper process, and the operations
 * that run over it.
 *
 * Create it with `barge_create` and free it with `barge_close`. Calls on
 * one handle are serialized: a call made while another thread runs an
 * operation on the same handle waits for it. `barge_user_cancel`,
 * `barge_clear_cancel` and `barge_helper_pid` never wait. See
 * "C API conventions" in README.md for the threading and signal rules.
 */
struct barge_h;

/**
 * Metadata of a remote file.
 */
struct barge_stat {
    /**
     * Size in bytes.
     */
    uint64_t size;
    /**
     * File type and permission bits, as in `st_mode` (S_ISDIR etc. apply).
     */
    uint32_t mode;
    /**
     * Nanoseconds of the modification time, 0 to 999999999.
     */
    uint32_t mtime_nsec;
    /**
     * Modification time, seconds since the epoch.
     */
    int64_t mtime_sec;
    /**
     * Owner and group ids on the helper's side.
     */
    uint32_t uid;
    uint32_t gid;
    /**
     * Number of hard links.
     */
    uint64_t nlink;
};

/**
 * One entry of a remote directory listing, from `barge_list`.
 */
struct barge_dirent {
    /**
     * The entry's name (no directory part), NUL-terminated; not UTF-8 in
     * general. Owned by the array: freed by `barge_free_dirents`.
     */
    char *name;
    /**
     * The length of `name` in bytes.
     */
    size_t name_len;
    /**
     * The entry itself; a symlink is reported as a symlink.
     */
    struct barge_stat st;
};

/**
 * One entry that failed in a keep-going tree copy, from
 * `barge_get_tree_errors`.
 */
struct barge_path_error {
    /**
     * The entry's path, NUL-terminated (not UTF-8 in general): local for
     * a failure on this side, remote (as the helper sees it beneath the
     * root) for one on the helper's side. Owned by the array.
     */
    char *path;
    /**
     * The length of `path` in bytes.
     */
    size_t path_len;
    /**
     * The errno of the failure.
     */
    int err;
    /**
     * What failed, naming the path; NUL-terminated. Owned by the array.
     */
    char *message;
};

/**
 * One event, passed to a callback. Valid only during the callback: copy
 * what you need to keep.
 */
struct barge_event {
    /**
     * One of the BARGE_EVENT_* values.
     */
    uint64_t kind;
    /**
     * LAUNCHED and SHUTDOWN: the helper's pid. Otherwise -1.
     */
    int64_t pid;
    /**
     * PROGRESS: bytes done so far. Otherwise 0.
     */
    uint64_t done;
    /**
     * PROGRESS: the transfer's size, or -1 when unknown. Otherwise -1.
     */
    int64_t total;
    /**
     * LOG: the line, without its newline, NUL-terminated; it may contain
     * other NUL bytes, so `line_len` is its true length. Otherwise NULL.
     */
    const char *line;
    /**
     * LOG: the length of `line` in bytes. Otherwise 0.
     */
    size_t line_len;
    /**
     * SHUTDOWN: the exit status when the helper exited, else -1.
     */
    int exit_status;
    /**
     * SHUTDOWN: the signal that killed the helper, else 0. With
     * `exit_status == -1` too, its status is unknown: it could not be
     * reaped (stuck in the kernel), or another waiter of this process
     * collected it first (SIGCHLD set to SIG_IGN, for one; `graceful`
     * then still says whether it stopped when asked).
     */
    int term_signal;
    /**
     * SHUTDOWN: 1 when the helper stopped gracefully when asked, else 0.
     */
    int graceful;
    /**
     * PROGRESS of a tree copy (`barge_copy_in`, `barge_copy_out`): files
     * done so far; `done` and `total` then count the bytes of the whole
     * tree. -1 for other events and single-file transfers.
     */
    int64_t files_done;
    /**
     * PROGRESS of a tree copy: files in the tree. Otherwise -1.
     */
    int64_t files_total;
};

/**
 * An event callback. `opaque` is the pointer given at registration; `ev`
 * is valid only during the call. The callback runs on the thread that
 * called the operation, inside that call. It may call `barge_user_cancel`,
 * `barge_clear_cancel`, `barge_helper_pid`, `barge_get_error` and
 * `barge_get_errno` on the same handle; any other call on the same handle
 * fails with EDEADLK. It must not unwind (C++ exceptions, longjmp) through
 * barge.
 */
typedef void (*barge_event_callback)(void *opaque, const struct barge_event *ev);

#ifdef __cplusplus
extern "C" {
#endif // __cplusplus

/**
 * Create a handle with default settings. Starts no helper yet: the first
 * operation (or `barge_launch`) does. Returns NULL on error, with the
 * error in `barge_get_error` and `barge_get_errno`.
 */
struct barge_h *barge_create(void);

/**
 * Shut the helper down as `barge_shutdown` does (bounded by the shutdown
 * and kill timeouts), then free the handle. SHUTDOWN callbacks run during
 * this call. A pending cancel is dropped first, so the graceful step is
 * tried. NULL is allowed and does nothing.
 *
 * After this call `h` is invalid. Calling this while another thread uses
 * `h` (including `barge_user_cancel`) is the caller's bug. Called from an
 * event callback of `h`, it does nothing and records EDEADLK.
 */
void barge_close(struct barge_h *h);

/**
 * Set the command that starts the helper: a NULL-terminated argv, e.g.
 * `{"ssh", "-T", "host", "barge-helper", NULL}`. The strings are copied.
 * Default: the bundled helper, found with no configuration (see
 * "C API conventions" in README.md). Takes effect at the next launch.
 * EFAULT when `argv` is NULL, EINVAL when it is empty.
 */
int barge_set_helper(struct barge_h *h, const char *const *argv);

/**
 * Confine every remote path beneath `dir` on the helper's side; "" removes
 * the confinement. Takes effect at the next launch. EFAULT when `dir` is
 * NULL.
 */
int barge_set_root(struct barge_h *h, const char *dir);

/**
 * Start the helper in its own process group (nonzero, the default) or in
 * the caller's (0). In its own group, a terminal's ^C reaches only the
 * caller. Takes effect at the next launch.
 */
int barge_set_pgroup(struct barge_h *h, int enable);

/**
 * Offer the fast path (nonzero) or not (0): when the helper is this
 * process's own child on the same kernel, local files are passed to it as
 * fds and copied in the kernel instead of streamed. Default: offered to
 * the default helper only, unless `BARGE_FASTPATH=0` is set. It is never
 * used through ssh, sudo or a container, whatever this says; results and
 * guarantees are those of the stream path. Takes effect at the next
 * launch.
 */
int barge_set_fast_path(struct barge_h *h, int enable);

/**
 * 1 when the running helper uses the fast path, 0 when it does not or no
 * helper runs.
 */
int barge_uses_fast_path(struct barge_h *h);

/**
 * Bytes per data frame: 4 KiB to 4 MiB, default 256 KiB. EINVAL outside
 * that range.
 */
int barge_set_chunk_size(struct barge_h *h, uint32_t bytes);

/**
 * How much one `barge_list` may keep: at most `max_entries` entries and
 * `max_name_bytes` bytes of names. Defaults: 1000000 entries and 256 MiB
 * of names, which bound the memory a helper can make the caller use.
 * Past either, `barge_list` stops the listing and fails with `E2BIG`,
 * its message naming the path and the bound. A listing larger than
 * SIZE_MAX is impossible anyway, so any value is accepted.
 */
int barge_set_list_limits(struct barge_h *h,
                          size_t max_entries,
                          size_t max_name_bytes);

/**
 * How long `barge_shutdown` waits for the helper to exit after asking it
 * to, before SIGTERM. Default 3000 ms.
 */
int barge_set_shutdown_timeout_ms(struct barge_h *h, uint32_t ms);

/**
 * How long to wait after SIGTERM before SIGKILL. Default 5000 ms.
 */
int barge_set_kill_timeout_ms(struct barge_h *h, uint32_t ms);

/**
 * How long the helper may take to answer a cancel before it is killed
 * (the cancelled call still returns ECANCELED, and the next operation
 * starts a new helper). Default 2000 ms.
 */
int barge_set_cancel_timeout_ms(struct barge_h *h, uint32_t ms);

/**
 * How long the helper may take to start and complete the handshake.
 * Default 30000 ms.
 */
int barge_set_launch_timeout_ms(struct barge_h *h, uint32_t ms);

/**
 * Least time between two PROGRESS events of one transfer. Default 100 ms;
 * 0 sends one per data frame.
 */
int barge_set_progress_interval_ms(struct barge_h *h, uint32_t ms);

/**
 * Start the helper now, if none runs. Optional: every operation launches
 * when no helper runs. Cancellable.
 */
int barge_launch(struct barge_h *h);

/**
 * Stop the helper: ask it to exit and wait up to the shutdown timeout,
 * then SIGTERM (to its process group when it has its own) and wait up to
 * the kill timeout, then SIGKILL. `barge_user_cancel` cuts either wait
 * short. The helper is always reaped, unless it outlives SIGKILL by 2 s
 * (stuck in the kernel): the call then returns without it. Returns -1
 * (errno EIO, message "abnormal shutdown: ...") when the graceful step
 * failed, although the helper is gone then too. Returns 0 when no helper
 * runs. The next operation starts a new helper.
 */
int barge_shutdown(struct barge_h *h);

/**
 * Stop the helper at once with SIGKILL (to its process group when it has
 * its own) and reap it. Returns 0, also when no helper runs.
 */
int barge_kill(struct barge_h *h);

/**
 * The running helper's pid, or -1 when none runs (and -1 with EINVAL for
 * a NULL handle). Never waits for a running operation: during one it
 * reports the helper that operation uses.
 */
int64_t barge_helper_pid(struct barge_h *h);

/**
 * Cancel the running operation on `h`, or the next one if none runs. The
 * cancelled call returns -1 with errno ECANCELED, and the handle and its
 * helper stay usable.
 *
 * Async-signal-safe and thread-safe: one atomic store and one `write(2)`.
 * It takes no lock, allocates nothing, and leaves `errno` and the last
 * error unchanged. May be called at any time while `h` is open, from any
 * thread or signal handler, but never concurrently with or after
 * `barge_close(h)`. NULL does nothing.
 */
void barge_user_cancel(struct barge_h *h);

/**
 * Drop a pending cancel, so the next operation runs. A cancel that
 * arrives during this call may or may not be dropped. Never waits for a
 * running operation; called during one, it may drop that operation's
 * cancel. Not async-signal-safe. NULL records EINVAL.
 */
void barge_clear_cancel(struct barge_h *h);

/**
 * The library's version, "MAJOR.MINOR.PATCH", equal to
 * `BARGE_VERSION_STRING` of the header it was built with. Static: do not
 * free.
 */
const char *barge_version(void);

/**
 * Upload the local file `local_path` to `remote_path`. The local file may
 * be any readable file (regular, FIFO, character device), read to end of
 * file. The remote file appears only when complete: after a cancel or an
 * error nothing partial is left, and an existing file is untouched.
 */
int barge_upload(struct barge_h *h,
                 const char *local_path,
                 const char *remote_path);

/**
 * Download `remote_path` to the local file `local_path`. The local file
 * appears only when complete and verified: after a cancel or an error
 * nothing partial is left, and an existing file is untouched.
 */
int barge_download(struct barge_h *h,
                   const char *remote_path,
                   const char *local_path);

/**
 * Upload everything readable from `fd` (until end of file) to
 * `remote_path`. `fd` may be a pipe or socket; it is neither closed nor
 * changed (its flags stay as they are). The remote file appears only when
 * complete. EBADF for a negative fd.
 */
int barge_upload_fd(struct barge_h *h, int fd, const char *remote_path);

/**
 * Download `remote_path` into `fd`, which may be a pipe or socket. `fd`
 * is neither closed nor changed. Bytes reach `fd` as they arrive, so after
 * an error or a cancel it may hold a prefix of the file. EBADF for a
 * negative fd.
 */
int barge_download_fd(struct barge_h *h, const char *remote_path, int fd);

/**
 * Metadata of `path`, following symlinks. `*out` is written only on
 * success.
 */
int barge_stat(struct barge_h *h, const char *path, struct barge_stat *out);

/**
 * Create the remote directory `path` (mode 0777 less the helper's umask).
 * With `parents` nonzero, create missing parents too and accept an
 * existing directory.
 */
int barge_mkdir(struct barge_h *h, const char *path, int parents);

/**
 * Remove the remote file, symlink or empty directory `path`.
 */
int barge_remove(struct barge_h *h, const char *path);

/**
 * Rename the remote entry `from` to `to`, replacing `to` if it exists.
 */
int barge_rename(struct barge_h *h, const char *from, const char *to);

/**
 * List the remote directory `path`, without "." and "..", in no
 * particular order. On success `*entries` points to an array of `*count`
 * entries that the caller owns and frees with
 * `barge_free_dirents(*entries, *count)`; an empty directory gives
 * `*entries == NULL` and `*count == 0`. `*entries` and `*count` are
 * written only on success. A listing past `barge_set_list_limits` fails
 * with E2BIG; a name from the helper that is empty, "." or "..", or
 * holds '/', fails with EPROTO.
 */
int barge_list(struct barge_h *h,
               const char *path,
               struct barge_dirent **entries,
               size_t *count);

/**
 * Free an array from `barge_list`, with the count `barge_list` gave.
 * NULL is allowed and does nothing.
 */
void barge_free_dirents(struct barge_dirent *entries, size_t count);

/**
 * Copy the local file or directory `local_path` into the remote directory
 * `remote_dir`, recursively, as `remote_dir/NAME` (NAME: the last
 * component of `local_path`), like `cp -r local_path remote_dir/`.
 * Regular files, directories and symlinks are copied (symlinks as links,
 * never followed); special files are skipped, each with a LOG event.
 * Mode and mtime are kept unless `barge_set_preserve_metadata(h, 0)`.
 * Every entry is streamed in one request. PROGRESS events cover the
 * whole tree: `done`/`total` are bytes, `files_done`/`files_total` files.
 * Each file appears only when complete. A cancel returns -1 with
 * ECANCELED: files already copied stay, the file in flight is removed.
 * On an error the copy stops and reports it (the path in the message),
 * unless `barge_set_keep_going(h, 1)`: then it copies the rest and
 * returns -1 with the first failure's errno, and
 * `barge_get_tree_errors` lists every failed path.
 */
int barge_copy_in(struct barge_h *h,
                  const char *local_path,
                  const char *remote_dir);

/**
 * Copy the remote file or directory `remote_path` into the local
 * directory `local_dir`, recursively, as `local_dir/NAME`. The
 * counterpart of `barge_copy_in`, with the same rules; special files are
 * skipped by the helper, which logs each (a LOG event).
 */
int barge_copy_out(struct barge_h *h,
                   const char *remote_path,
                   const char *local_dir);

/**
 * Whether tree copies give entries the source's mode and mtime (1, the
 * default) or not (0: permission bits less the writer's umask, and the
 * time of the copy, as `cp -r` does).
 */
int barge_set_preserve_metadata(struct barge_h *h, int enable);

/**
 * Whether a tree copy goes on after an entry fails (1) and reports every
 * failure at the end through `barge_get_tree_errors`, or stops at the
 * first (0, the default).
 */
int barge_set_keep_going(struct barge_h *h, int enable);

/**
 * Whether tree copies keep the setuid, setgid and sticky bits of the
 * source's modes (1) or clear them (0, the default). When 0 the side that
 * writes clears them whatever `barge_set_preserve_metadata` says, so a
 * helper never makes a setuid file unless the caller asked for it. A
 * helper that runs as root keeps them only when its operator set
 * `BARGE_HELPER_ALLOW_SETID=1`; otherwise `barge_copy_in` fails with
 * `EPERM`.
 */
int barge_set_preserve_setid(struct barge_h *h, int enable);

/**
 * The most directories a `barge_copy_out` may create (default 1000000).
 * Each is recorded until the tree ends, for its mode and mtime, which
 * bounds the memory a helper can make the caller use. A tree that makes
 * more fails with `E2BIG`, its message naming the directory and the
 * bound. The helper applies its own bound to `barge_copy_in`.
 */
int barge_set_max_tree_dirs(struct barge_h *h, size_t dirs);

/**
 * Keep the data of an interrupted `barge_upload` or `barge_download` for
 * a later attempt (1), or leave nothing partial (0, the default). When on,
 * a cancelled or failed transfer keeps what it moved in
 * `.NAME.barge-partial` in the destination directory, never under NAME;
 * the next transfer to the same destination continues after it once the
 * helper has verified it against the source's prefix with a checksum,
 * and starts over when they differ. PROGRESS then counts the bytes this
 * call moves. Applies to path transfers of regular files only.
 */
int barge_set_keep_partial(struct barge_h *h, int enable);

/**
 * The entries that failed in the last `barge_copy_in` or `barge_copy_out`
 * on this handle (in keep-going mode; none when it succeeded or stopped
 * at an error). On success, `*errors` is an array of `*count` entries the
 * caller owns and frees with `barge_free_path_errors(*errors, *count)`;
 * no failures give `*errors == NULL, *count == 0`.
 */
int barge_get_tree_errors(struct barge_h *h,
                          struct barge_path_error **errors,
                          size_t *count);

/**
 * Free an array from `barge_get_tree_errors`, with the count it gave.
 * NULL does nothing.
 */
void barge_free_path_errors(struct barge_path_error *errors, size_t count);

/**
 * Register `cb` for the event kinds in `events` (BARGE_EVENT_* bits
 * or'ed together). Returns an id >= 0 for `barge_delete_event_callback`,
 * or -1: EFAULT when `cb` is NULL, EINVAL when `events` has no known bit
 * or an unknown one. `opaque` is passed to every call and never
 * dereferenced by barge; it must stay valid until the callback is deleted
 * or the handle closed (SHUTDOWN callbacks run inside `barge_close`).
 */
int barge_set_event_callback(struct barge_h *h,
                             barge_event_callback cb,
                             uint64_t events,
                             void *opaque);

/**
 * Remove the callback with this id. Returns 0, or -1 with ENOENT when no
 * callback has this id. The callback is not called after this returns.
 */
int barge_delete_event_callback(struct barge_h *h, int id);

/**
 * The message of the last error of a barge call on this thread, or NULL
 * when no barge call on this thread has failed yet.
 *
 * The string belongs to barge. It stays valid until the next barge call
 * on this thread (in practice until the next one that fails), and must not
 * be freed. This call does not change the last error.
 */
const char *barge_get_error(void);

/**
 * The errno of the last error of a barge call on this thread: for
 * example `ECANCELED` after `barge_user_cancel`, `EINVAL` for a NULL
 * handle, `EFAULT` for a NULL pointer argument. 0 when no barge call on
 * this thread has failed yet. This call does not change the last error.
 */
int barge_get_errno(void);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif  /* BARGE_H */
