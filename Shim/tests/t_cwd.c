/* A cwd inside the fos tree: chdir, getcwd, relative paths and "..",
 * fchdir, *at with a fos directory descriptor, and back out to the host. */
#include "check.h"

#include <dirent.h>

int main(int argc, char **argv) {
    umask(022);
    CHECK(argc == 2 && mkdir(argv[1], 0755) == 0);
    const char *d = argv[1];
    char host[4096], cwd[4096];
    CHECK(getcwd(host, sizeof host) != NULL);
    CHECK(chdir(d) == 0);
    CHECK(getcwd(cwd, sizeof cwd) && strcmp(cwd, d) == 0);
    CHECK(getcwd(cwd, 2) == NULL && errno == ERANGE);
    char *dyn = getcwd(NULL, 0);
    CHECK(dyn && strcmp(dyn, d) == 0);
    free(dyn);
    CHECK(mkdir("a", 0755) == 0 && mkdir("a/b", 0755) == 0);
    int fd = open("a/b/f", O_CREAT | O_WRONLY, 0644);
    CHECK(fd >= 0 && write(fd, "x", 1) == 1 && close(fd) == 0);
    CHECK(chdir("a/b") == 0 && getcwd(cwd, sizeof cwd) && strcmp(cwd, path_in(d, "a/b")) == 0);
    struct stat st;
    CHECK(stat("f", &st) == 0 && st.st_size == 1);
    CHECK(stat("../b/./f", &st) == 0);
    CHECK(chdir("..") == 0 && stat("b/f", &st) == 0);
    CHECK_ERRNO(chdir("b/f"), ENOTDIR);
    CHECK_ERRNO(chdir("nope"), ENOENT);
    /* fchdir and *at through a fos directory descriptor. */
    int dfd = open(".", O_RDONLY | O_DIRECTORY);
    CHECK(dfd >= 0);
    CHECK(fstatat(dfd, "b/f", &st, 0) == 0 && st.st_size == 1);
    int g = openat(dfd, "b/g", O_CREAT | O_WRONLY, 0600);
    CHECK(g >= 0 && close(g) == 0);
    CHECK(mkdirat(dfd, "c", 0755) == 0 && unlinkat(dfd, "c", AT_REMOVEDIR) == 0);
    CHECK(renameat(dfd, "b/g", dfd, "b/h") == 0 && faccessat(dfd, "b/h", R_OK, 0) == 0);
    CHECK(unlinkat(dfd, "b/h", 0) == 0);
    CHECK(fstatat(dfd, "", &st, AT_EMPTY_PATH) == 0 && S_ISDIR(st.st_mode));
    CHECK(chdir("/") == 0 && getcwd(cwd, sizeof cwd) && strcmp(cwd, "/") == 0);
    CHECK(fchdir(dfd) == 0 && getcwd(cwd, sizeof cwd) && strcmp(cwd, path_in(d, "a")) == 0);
    close(dfd);
    /* ".." out of the fos tree lands on the host. */
    CHECK(chdir("/fos") == 0 && stat("..", &st) == 0 && !is_fos_dev(st.st_dev));
    CHECK(stat("../tmp", &st) == 0 && S_ISDIR(st.st_mode) && !is_fos_dev(st.st_dev));
    /* From a host cwd, relative paths reach the fos tree too. */
    CHECK(chdir("/") == 0 && stat("fos", &st) == 0 && st.st_ino == 1 && is_fos_dev(st.st_dev));
    CHECK(chdir("/tmp") == 0 && stat("../fos/.", &st) == 0 && st.st_ino == 1);
    CHECK(stat(".", &st) == 0 && !is_fos_dev(st.st_dev));
    /* And back to the host cwd the program started in. */
    CHECK(chdir(host) == 0 && getcwd(cwd, sizeof cwd) && strcmp(cwd, host) == 0);
    CHECK(stat(".", &st) == 0 && !is_fos_dev(st.st_dev));
    /* Directory streams. */
    DIR *dir = opendir(path_in(d, "a"));
    CHECK(dir != NULL);
    int seen = 0;
    struct dirent *e;
    while ((e = readdir(dir)) != NULL) {
        if (strcmp(e->d_name, "b") == 0) {
            seen |= 1;
            CHECK(e->d_type == DT_DIR);
        }
        if (strcmp(e->d_name, ".") == 0) seen |= 2;
        if (strcmp(e->d_name, "..") == 0) seen |= 4;
    }
    CHECK(seen == 7);
    rewinddir(dir);
    CHECK(readdir(dir) != NULL);
    CHECK(dirfd(dir) >= 0 && fstat(dirfd(dir), &st) == 0 && S_ISDIR(st.st_mode));
    CHECK(closedir(dir) == 0);
    CHECK(opendir(path_in(d, "a/b/f")) == NULL && errno == ENOTDIR);
    puts("ok");
    return 0;
}
