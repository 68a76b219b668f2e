/* Shared mappings of a fos file between processes, as on Linux: a store
 * through one process's mapping shows at once in another's and to read(2);
 * write(2) and truncation show in every mapping; past the end a page
 * faults; what a mapping wrote reaches the file without msync too. */
#include "check.h"

#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>

static int wait_for(volatile const char *p, const char *want) {
    size_t n = strlen(want);
    for (int i = 0; i < 5000; i++) {
        if (memcmp((const char *)p, want, n) == 0) return 1;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    return 0;
}

static sigjmp_buf fault;
static void on_bus(int sig) {
    (void)sig;
    siglongjmp(fault, 1);
}

int main(int argc, char **argv) {
    CHECK(argc == 2 && mkdir(argv[1], 0755) == 0);
    const char *path = path_in(argv[1], "s");
    int fd = open(path, O_CREAT | O_RDWR, 0644);
    CHECK(fd >= 0);
    char buf[10000];
    memset(buf, 'a', sizeof buf);
    write_all(fd, buf, sizeof buf);
    volatile char *p = mmap(NULL, 12288, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    CHECK(p != MAP_FAILED && p[0] == 'a' && p[9999] == 'a' && p[10000] == 0);

    /* A child that opens and maps the file itself. */
    pid_t child = fork();
    CHECK(child >= 0);
    if (child == 0) {
        int cfd = open(path, O_RDWR);
        CHECK(cfd >= 0);
        volatile char *q = mmap(NULL, 12288, PROT_READ | PROT_WRITE, MAP_SHARED, cfd, 0);
        CHECK(q != MAP_FAILED);
        memcpy((char *)q + 100, "CHILD", 5);
        CHECK(pwrite(cfd, "W", 1, 9000) == 1);
        CHECK(wait_for(q + 200, "PARENT"));
        CHECK(q[300] == 'R');
        _exit(0);
    }
    CHECK(wait_for(p + 100, "CHILD"));
    CHECK(wait_for(p + 9000, "W"));
    char b[8];
    CHECK(pread(fd, b, 5, 100) == 5 && memcmp(b, "CHILD", 5) == 0);
    /* write(2) first: the child checks for it once it sees the store. */
    CHECK(pwrite(fd, "R", 1, 300) == 1 && p[300] == 'R');
    memcpy((char *)p + 200, "PARENT", 6);
    int st = 0;
    CHECK(waitpid(child, &st, 0) == child && WIFEXITED(st) && WEXITSTATUS(st) == 0);

    /* Size changes: growing reads zeros; a store there reaches the file. */
    CHECK(ftruncate(fd, 20000) == 0);
    CHECK(p[10500] == 0);
    p[12000] = 'Z';
    CHECK(msync((void *)p, 12288, MS_SYNC) == 0);
    CHECK(pread(fd, b, 1, 12000) == 1 && b[0] == 'Z');
    /* Shrinking drops the pages past the end: touching one faults. */
    CHECK(ftruncate(fd, 4096) == 0);
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_bus;
    CHECK(sigaction(SIGBUS, &sa, &old) == 0);
    volatile int faulted = 0;
    if (sigsetjmp(fault, 1) == 0) {
        (void)p[5000];
    } else {
        faulted = 1;
    }
    CHECK(faulted);
    CHECK(sigaction(SIGBUS, &old, NULL) == 0);
    CHECK(p[100] == 'C');

    /* Without msync: a store shows in read(2) at once and stays in the
     * file after the mapping and the descriptor are gone. */
    memcpy((char *)p + 1000, "NOSYNC", 6);
    CHECK(munmap((void *)p, 12288) == 0);
    close(fd);
    fd = open(path, O_RDONLY);
    CHECK(fd >= 0 && pread(fd, b, 6, 1000) == 6 && memcmp(b, "NOSYNC", 6) == 0);
    struct stat s;
    CHECK(fstat(fd, &s) == 0 && s.st_size == 4096);
    /* A read-only mapping of a read-only descriptor sees the same pages. */
    volatile char *r = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0);
    CHECK(r != MAP_FAILED && r[1000] == 'N' && r[100] == 'C');
    CHECK(mprotect((void *)r, 4096, PROT_READ | PROT_WRITE) != 0 && errno == EACCES);
    CHECK(munmap((void *)r, 4096) == 0);
    close(fd);

    /* mremap moves a shared mapping; msync still reaches the file; many
     * mmap/mremap/munmap rounds leave nothing behind; MAP_FIXED replaces. */
    fd = open(path, O_RDWR);
    CHECK(fd >= 0);
    for (int i = 0; i < 1500; i++) {
        char *m = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        CHECK(m != MAP_FAILED);
        char *moved = mremap(m, 4096, 8192, MREMAP_MAYMOVE);
        CHECK(moved != MAP_FAILED);
        if (i == 0) {
            moved[2000] = 'M';
            CHECK(msync(moved, 4096, MS_SYNC) == 0);
            CHECK(pread(fd, b, 1, 2000) == 1 && b[0] == 'M');
        }
        CHECK(munmap(moved, 8192) == 0);
        char *f = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0);
        CHECK(f != MAP_FAILED);
        CHECK(mmap(f, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == f);
        CHECK(munmap(f, 4096) == 0);
    }
    close(fd);
    puts("ok");
    return 0;
}
