/* put: upload a local file with barge; ^C cancels the transfer cleanly.
 *
 *   cc put.c -o put $(pkg-config --cflags --libs barge)
 *   ./put LOCAL REMOTE
 *
 * The SIGINT handler only calls barge_user_cancel, the one barge call that
 * is async-signal-safe. The upload then returns -1 with errno ECANCELED,
 * and nothing partial is left at REMOTE. */
#define _POSIX_C_SOURCE 200809L
#include <barge.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

static barge_h *h;

static void on_sigint(int sig) {
    (void) sig;
    barge_user_cancel(h);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s LOCAL REMOTE\n", argv[0]);
        return 2;
    }
    h = barge_create();
    if (!h) {
        fprintf(stderr, "put: %s\n", barge_get_error());
        return 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);

    int status = 0;
    if (barge_upload(h, argv[1], argv[2]) == -1) {
        int err = barge_get_errno();
        fprintf(stderr, "put: %s\n", barge_get_error());
        status = err == ECANCELED ? 130 : 1;
    }
    /* Restore ^C's default before the (bounded) shutdown in barge_close. */
    signal(SIGINT, SIG_DFL);
    barge_close(h);
    return status;
}
