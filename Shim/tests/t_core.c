/* A thread that keeps calling the fs member from the member's own core
 * moves to another core (the member spins there between requests), and
 * keeps the cores it may run on. Arguments: a fos directory and the core
 * fosd pinned the fs member to. Needs two cores the thread may use. */
#include "check.h"

#include <sched.h>
#include <time.h>

int main(int argc, char **argv) {
    CHECK(argc == 3);
    int core = atoi(argv[2]);
    cpu_set_t all, only, after;
    CHECK(sched_getaffinity(0, sizeof all, &all) == 0);
    CHECK(CPU_ISSET(core, &all) && CPU_COUNT(&all) >= 2);
    int fd = open(path_in(argv[1], "f"), O_CREAT | O_RDWR, 0644);
    CHECK(fd >= 0);
    /* Onto the member's core, then free again: the scheduler leaves a
     * running thread where it is. */
    CPU_ZERO(&only);
    CPU_SET(core, &only);
    CHECK(sched_setaffinity(0, sizeof only, &only) == 0);
    CHECK(sched_getcpu() == core);
    CHECK(sched_setaffinity(0, sizeof all, &all) == 0);
    /* The shim leaves after 16 calls in a row there, at most every 2 ms
     * (the kernel may put the thread back when the other core is busy):
     * calls for up to 10 ms. Left to the kernel's load balancer, the
     * thread mostly stays for 10-50 ms, yielding to the member on every
     * call (and sometimes leaves at once). */
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    long calls = 0, ms = 0;
    while (sched_getcpu() == core && ms < 10) {
        CHECK(pwrite(fd, "x", 1, 0) == 1);
        calls++;
        clock_gettime(CLOCK_MONOTONIC, &t);
        ms = (t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000;
    }
    if (sched_getcpu() == core) fprintf(stderr, "still on core %d after %ld calls in %ld ms\n", core, calls, ms);
    CHECK(sched_getcpu() != core);
    CHECK(sched_getaffinity(0, sizeof after, &after) == 0);
    CHECK(CPU_EQUAL(&after, &all));
    CHECK(close(fd) == 0);
    puts("ok");
    return 0;
}
