/*
 * The pod sandbox's first process for the test node (hack/testbed/node.py): it holds the pod's
 * namespaces open, reaps any child re-parented to it, and exits on SIGINT or SIGTERM. No registry
 * serves a pause image here, so the node builds this one (statically linked, FROM scratch).
 */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int signo) {
    (void)signo;
    _exit(0);
}

static void reap(int signo) {
    (void)signo;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

static void on(int signo, void (*handler)(int)) {
    struct sigaction action = {0};
    action.sa_handler = handler;
    action.sa_flags = SA_RESTART;
    sigemptyset(&action.sa_mask);
    sigaction(signo, &action, NULL);
}

int main(void) {
    on(SIGINT, stop);
    on(SIGTERM, stop);
    on(SIGCHLD, reap);
    for (;;) {
        pause();
    }
}
