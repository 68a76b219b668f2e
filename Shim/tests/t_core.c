/* A thread that keeps calling the fs member from the member's own core
 * moves to another core (the member spins there between requests), and
 * keeps the cores it may run on. Arguments: a fos directory and the core
 * fosd pinned the fs member to. Exits 77 (skipped) with fewer than two
 * cores to use or without the member's among them. */
#include "check.h"

#include <sched.h>

/* pwrites from the member's core until the thread is elsewhere (at most
 * 64); returns how many it took. */
static int calls_until_moved(int fd, int core, const cpu_set_t *all) {
    cpu_set_t set = *all;
    /* One call from another core: the shim's count of calls in a row on
     * the member's core starts again. */
    CPU_CLR(core, &set);
    CHECK(sched_setaffinity(0, sizeof set, &set) == 0);
    CHECK(pwrite(fd, "x", 1, 0) == 1);
    /* Onto the member's core, then free again: the scheduler leaves a
     * running thread where it is (mostly: see main). */
    CPU_ZERO(&set);
    CPU_SET(core, &set);
    CHECK(sched_setaffinity(0, sizeof set, &set) == 0);
    CHECK(sched_getcpu() == core);
    CHECK(sched_setaffinity(0, sizeof *all, all) == 0);
    int calls = 0;
    while (calls < 64 && sched_getcpu() == core) {
        CHECK(pwrite(fd, "x", 1, 0) == 1);
        calls++;
    }
    return calls;
}

/* Whether Seccomp: in /proc/self/status says a filter (the shim then
 * never moves a thread). */
static int filtered(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    int r = 0;
    while (f && fgets(line, sizeof line, f)) {
        if (strncmp(line, "Seccomp:", 8) == 0) r = atoi(line + 8) != 0;
    }
    if (f) fclose(f);
    return r;
}

int main(int argc, char **argv) {
    CHECK(argc == 3);
    int core = atoi(argv[2]);
    cpu_set_t all, after;
    CHECK(sched_getaffinity(0, sizeof all, &all) == 0);
    const char *off = getenv("FOS_LEAVE_CORE");
    if (!CPU_ISSET(core, &all) || CPU_COUNT(&all) < 2 || filtered() || (off && strcmp(off, "0") == 0)) {
        puts("skipped: fewer than two cores or not the member's, a seccomp filter, or FOS_LEAVE_CORE=0");
        return 77;
    }
    int fd = open(path_in(argv[1], "f"), O_CREAT | O_RDWR, 0644);
    CHECK(fd >= 0);
    /* The shim moves the thread on the 16th call in a row there. The
     * kernel's load balancer moves it too, mostly after 10-50 ms but
     * sometimes at once, and may move it back at once when the other core
     * is busy: such a try says nothing, and is made again (20 ms later: the
     * shim moves a process at most every 2 ms, and the machine's load may
     * pass). Without the shim's move a try takes all 64 calls — and so
     * does one whose move the kernel undid at once (seen in CI, both cores
     * busy): 64 is tried again too, and only a try that ends at 16 counts. */
    int calls = 0, early = 0, first = -1, same = 1;
    char seen[20 * 4] = "";
    for (int attempt = 0; attempt < 20 && calls != 16; attempt++) {
        calls = calls_until_moved(fd, core, &all);
        snprintf(seen + strlen(seen), sizeof seen - strlen(seen), " %d", calls);
        if (calls < 16) {
            early++;
            if (first < 0) first = calls;
            same = same && calls == first;
        }
        if (calls != 16) usleep(20000);
    }
    if (calls != 16) fprintf(stderr, "left the member's core after%s calls, never after 16\n", seen);
    /* Every try cut short by the kernel, at varying counts (a busy
     * machine pulling the thread away at once): nothing to judge here. A
     * shim that moved early would do it at the same count every time. */
    if (calls != 16 && early == 20 && !(same && first > 1)) {
        printf("skipped: the kernel moved the thread before its 16th call in every try:%s\n", seen);
        return 77;
    }
    CHECK(calls == 16);
    CHECK(sched_getcpu() != core);
    CHECK(sched_getaffinity(0, sizeof after, &after) == 0);
    CHECK(CPU_EQUAL(&after, &all));
    CHECK(close(fd) == 0);
    puts("ok");
    return 0;
}
