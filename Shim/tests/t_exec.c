/* exec keeps a non-close-on-exec fos descriptor, at the offset it shares
 * with the parent, and drops the close-on-exec one; the virtual cwd goes
 * along too. Run as `t_exec DIR`; it execs itself as `t_exec DIR child FD CLOFD`. */
#include "check.h"

#include <sys/wait.h>

static int child(const char *d, int fd, int clofd) {
    char b[4];
    struct stat st;
    CHECK(fcntl(clofd, F_GETFD) == -1 && errno == EBADF);
    CHECK(fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size == 10);
    CHECK(lseek(fd, 0, SEEK_CUR) == 3);
    CHECK(read(fd, b, 4) == 4 && memcmp(b, "3456", 4) == 0);
    /* The cwd the parent chose in the fos tree. */
    char cwd[4096];
    CHECK(getcwd(cwd, sizeof cwd) && strcmp(cwd, d) == 0);
    int g = open("rel", O_CREAT | O_WRONLY, 0644);
    CHECK(g >= 0 && write(g, "r", 1) == 1 && close(g) == 0);
    puts("child ok");
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 5 && strcmp(argv[2], "child") == 0) return child(argv[1], atoi(argv[3]), atoi(argv[4]));
    CHECK(argc == 2 && mkdir(argv[1], 0755) == 0);
    const char *d = argv[1];
    int fd = open(path_in(d, "data"), O_CREAT | O_RDWR, 0644);
    write_all(fd, "0123456789", 10);
    CHECK(lseek(fd, 3, SEEK_SET) == 3);
    int clofd = open(path_in(d, "data"), O_RDONLY | O_CLOEXEC);
    CHECK(clofd >= 0);
    CHECK(chdir(d) == 0);
    char a[16], b[16];
    snprintf(a, sizeof a, "%d", fd);
    snprintf(b, sizeof b, "%d", clofd);
    pid_t p = fork();
    CHECK(p >= 0);
    if (p == 0) {
        char self[4096];
        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        if (n <= 0) _exit(9);
        self[n] = 0;
        /* An environment of our own making, as shells pass: the shim adds its variables. */
        char *env[] = {"PATH=/usr/bin:/bin", NULL};
        char *args[] = {argv[0], (char *)d, "child", a, b, NULL};
        execve(self, args, env);
        _exit(8);
    }
    int st;
    CHECK(waitpid(p, &st, 0) == p && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    /* The child read 4 bytes at our offset: ours moved with it. */
    CHECK(lseek(fd, 0, SEEK_CUR) == 7);
    struct stat s;
    CHECK(stat("rel", &s) == 0 && s.st_size == 1);
    puts("ok");
    return 0;
}
