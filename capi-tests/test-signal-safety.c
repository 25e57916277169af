/* test-signal-safety: proves that barge_user_cancel is async-signal-safe.
 *
 * This program defines malloc, calloc, realloc, free, the memalign family
 * and pthread_mutex_lock itself, so every call to them in the process,
 * from libbarge (shared or static) included, comes here first (link-time
 * interposition; the real ones are glibc's __libc_* entry points and
 * dlsym(RTLD_NEXT)). While
 * a signal handler runs on a thread, they abort. The handler calls
 * barge_user_cancel a few times per signal, and another thread sends
 * thousands of signals to the main thread while it runs transfers on the
 * handle, holding the handle's lock: a barge_user_cancel that took that
 * lock would deadlock, one that allocated would abort. The handler also
 * checks that errno is unchanged across barge_user_cancel.
 *
 * Self-checks first show that the interposer would catch an allocation or
 * a lock, inside libbarge too. */
#define _GNU_SOURCE
#include "common.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- the interposer ---- */

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void __libc_free(void *);
extern void *__libc_memalign(size_t, size_t);
typedef int (*mutex_lock_fn)(pthread_mutex_t *);
static mutex_lock_fn real_mutex_lock;

/* Resolved before main, and so outside any handler. */
__attribute__((constructor)) static void resolve_real_mutex_lock(void) {
    real_mutex_lock = (mutex_lock_fn) dlsym(RTLD_NEXT, "pthread_mutex_lock");
}

static _Thread_local volatile sig_atomic_t in_handler;

static void forbidden(const char *what) {
    static const char pre[] = "test-signal-safety: ";
    static const char post[] = " called inside a signal handler\n";
    (void) !write(2, pre, sizeof pre - 1);
    (void) !write(2, what, strlen(what));
    (void) !write(2, post, sizeof post - 1);
    abort();
}

void *malloc(size_t n) {
    if (in_handler)
        forbidden("malloc");
    return __libc_malloc(n);
}

void *calloc(size_t n, size_t size) {
    if (in_handler)
        forbidden("calloc");
    return __libc_calloc(n, size);
}

void *realloc(void *p, size_t n) {
    if (in_handler)
        forbidden("realloc");
    return __libc_realloc(p, n);
}

void free(void *p) {
    if (in_handler)
        forbidden("free");
    __libc_free(p);
}

void *memalign(size_t align, size_t n) {
    if (in_handler)
        forbidden("memalign");
    return __libc_memalign(align, n);
}

void *aligned_alloc(size_t align, size_t n) {
    if (in_handler)
        forbidden("aligned_alloc");
    return __libc_memalign(align, n);
}

int posix_memalign(void **out, size_t align, size_t n) {
    if (in_handler)
        forbidden("posix_memalign");
    void *p = __libc_memalign(align, n);
    if (!p)
        return ENOMEM;
    *out = p;
    return 0;
}

int pthread_mutex_lock(pthread_mutex_t *m) {
    if (in_handler)
        forbidden("pthread_mutex_lock");
    if (!real_mutex_lock)
        resolve_real_mutex_lock();
    return real_mutex_lock(m);
}

/* ---- the test ---- */

#define CALLS_PER_SIGNAL 8
#define MIN_SIGNALS 5000
#define ERRNO_MARK 12345

static barge_h *h;
static pthread_t main_thread;
static atomic_int signals_handled;
static atomic_int errno_changed;
static atomic_int stop_hammer;

static void on_signal(int sig) {
    (void) sig;
    in_handler = 1;
    int saved = errno;
    errno = ERRNO_MARK;
    for (int i = 0; i < CALLS_PER_SIGNAL; i++) {
        barge_user_cancel(h);
        if (errno != ERRNO_MARK)
            atomic_fetch_add(&errno_changed, 1);
    }
    errno = saved;
    atomic_fetch_add(&signals_handled, 1);
    in_handler = 0;
}

static void *hammer(void *arg) {
    (void) arg;
    /* Bursts of 50 signals 20 us apart, then a 1 ms pause, so cancels
     * land at the start of transfers and in their middle. */
    struct timespec gap = {0, 20000}, pause = {0, 1000000};
    while (!atomic_load(&stop_hammer)) {
        for (int i = 0; i < 50; i++) {
            pthread_kill(main_thread, SIGUSR1);
            nanosleep(&gap, NULL);
        }
        nanosleep(&pause, NULL);
    }
    return NULL;
}

/* Run `body` in a child with the in-handler flag set; it must abort. */
static void expect_abort(const char *what, void (*body)(void)) {
    fflush(NULL);
    pid_t pid = fork();
    CHECK(pid >= 0, "fork");
    if (pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 2);
        in_handler = 1;
        body();
        _exit(0);
    }
    int status;
    CHECK(waitpid(pid, &status, 0) == pid, "waitpid");
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT,
          "the interposer did not catch %s (status %#x)", what, status);
}

static void do_malloc(void) {
    void *volatile p = malloc(32);
    (void) p;
}
static void do_lock(void) {
    static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
    pthread_mutex_lock(&m);
}
static void do_barge_create(void) {
    barge_create(); /* allocates inside libbarge */
}
static void do_barge_error(void) {
    barge_launch(NULL); /* records an error: allocates inside libbarge */
}

int main(void) {
    expect_abort("malloc", do_malloc);
    expect_abort("pthread_mutex_lock", do_lock);
    expect_abort("an allocation inside barge_create", do_barge_create);
    expect_abort("an allocation recording an error", do_barge_error);

    char *root = strdup(scratch("root"));
    CHECK(mkdir(root, 0755) == 0, "mkdir");
    size_t size = 512 << 10;
    unsigned char *data = random_bytes(size, 99);
    char *src = strdup(scratch("src.bin"));
    write_file(src, data, size);
    write_file(scratch("root/down.bin"), data, size);

    h = test_handle(root);
    OK(barge_launch(h));
    int64_t pid = barge_helper_pid(h);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    CHECK(sigaction(SIGUSR1, &sa, NULL) == 0, "sigaction");

    main_thread = pthread_self();
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &set, &old);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, hammer, NULL) == 0, "pthread_create");
    pthread_sigmask(SIG_SETMASK, &old, NULL);

    int transfers = 0, cancelled = 0;
    double deadline = now_ms() + 60000;
    while (atomic_load(&signals_handled) < MIN_SIGNALS || transfers < 50) {
        CHECK(now_ms() < deadline, "only %d signals in 60 s",
              atomic_load(&signals_handled));
        int r = transfers % 2 ? barge_upload(h, src, "/up.bin")
                              : barge_download(h, "/down.bin", scratch("down.bin"));
        int err = barge_get_errno();
        transfers++;
        if (r == -1) {
            CHECK(err == ECANCELED, "transfer %d: %s", transfers, last_error());
            cancelled++;
        }
    }
    atomic_store(&stop_hammer, 1);
    pthread_join(t, NULL);

    CHECK(atomic_load(&errno_changed) == 0,
          "errno changed across barge_user_cancel %d times",
          atomic_load(&errno_changed));
    CHECK(cancelled > 0, "no transfer was cancelled");
    printf("test-signal-safety: %d signals, %d barge_user_cancel calls in a "
           "handler, %d transfers, %d cancelled\n",
           atomic_load(&signals_handled),
           atomic_load(&signals_handled) * CALLS_PER_SIGNAL, transfers,
           cancelled);

    /* The handle and helper survived; a full transfer works. */
    barge_clear_cancel(h);
    CHECK(barge_helper_pid(h) == pid, "the helper was replaced");
    OK(barge_upload(h, src, "/final.bin"));
    CHECK(file_equals(scratch("root/final.bin"), data, size), "final upload");

    barge_close(h);
    free(data);
    free(src);
    free(root);
    printf("test-signal-safety: ok\n");
    return 0;
}
