/* Symlinks (absolute targets under the prefix and relative ones), hard
 * links, readlink, realpath, mkstemp and mkdtemp, statfs, on fos paths. */
#include "check.h"

#include <limits.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>

int main(int argc, char **argv) {
    umask(022);
    CHECK(argc == 2 && mkdir(argv[1], 0755) == 0);
    const char *d = argv[1];
    char file[4096], abs_link[4096], rel_link[4096], buf[4096], want[4096];
    snprintf(file, sizeof file, "%s/file", d);
    snprintf(abs_link, sizeof abs_link, "%s/abs", d);
    snprintf(rel_link, sizeof rel_link, "%s/rel", d);
    int fd = open(file, O_CREAT | O_WRONLY, 0644);
    write_all(fd, "target", 6);
    close(fd);

    /* An absolute target under the prefix reads back as written and is followed. */
    CHECK(symlink(file, abs_link) == 0);
    ssize_t n = readlink(abs_link, buf, sizeof buf);
    CHECK(n == (ssize_t)strlen(file) && memcmp(buf, file, (size_t)n) == 0);
    CHECK(readlink(abs_link, buf, 3) == 3);
    struct stat st, ls;
    CHECK(stat(abs_link, &st) == 0 && S_ISREG(st.st_mode) && st.st_size == 6);
    CHECK(lstat(abs_link, &ls) == 0 && S_ISLNK(ls.st_mode) && ls.st_size == (off_t)strlen(file));
    CHECK(symlink("file", rel_link) == 0);
    fd = open(rel_link, O_RDONLY);
    CHECK(fd >= 0 && read(fd, buf, 6) == 6 && memcmp(buf, "target", 6) == 0 && close(fd) == 0);
    CHECK_ERRNO(open(rel_link, O_RDONLY | O_NOFOLLOW), ELOOP);
    CHECK_ERRNO(symlink("x", rel_link), EEXIST);
    CHECK_ERRNO(readlink(file, buf, sizeof buf), EINVAL);

    /* realpath follows both kinds and resolves "." and "..". */
    char *rp = realpath(rel_link, NULL);
    CHECK(rp && strcmp(rp, file) == 0);
    free(rp);
    /* ".." is taken by name before any symlink is followed (the shim's
     * paths are lexical, as a shell's cd): abs/.. is d, not ENOTDIR. */
    snprintf(want, sizeof want, "%s/./abs/../file", d);
    CHECK(realpath(want, buf) && strcmp(buf, file) == 0);
    snprintf(want, sizeof want, "%s/../%s", d, strrchr(d, '/') + 1);
    CHECK(realpath(want, buf) && strcmp(buf, d) == 0);

    /* Hard links share the inode. */
    snprintf(want, sizeof want, "%s/hard", d);
    CHECK(link(file, want) == 0 && stat(want, &st) == 0 && st.st_nlink == 2);
    CHECK(unlink(want) == 0 && stat(file, &st) == 0 && st.st_nlink == 1);
    CHECK_ERRNO(link(file, "/tmp/fos-shim-cross-link"), EXDEV);

    /* Temporary names from templates. */
    snprintf(want, sizeof want, "%s/tmp.XXXXXX", d);
    fd = mkstemp(want);
    CHECK(fd >= 0 && strncmp(want, d, strlen(d)) == 0 && strstr(want, "XXXXXX") == NULL);
    CHECK(fstat(fd, &st) == 0 && (st.st_mode & 0777) == 0600 && close(fd) == 0 && unlink(want) == 0);
    snprintf(want, sizeof want, "%s/dir.XXXXXX", d);
    CHECK(mkdtemp(want) == want && stat(want, &st) == 0 && S_ISDIR(st.st_mode) && rmdir(want) == 0);
    snprintf(want, sizeof want, "%s/bad.XXXXX", d);
    CHECK_ERRNO(mkstemp(want), EINVAL);

    /* The file system's figures. */
    struct statfs sf;
    struct statvfs sv;
    CHECK(statfs(d, &sf) == 0 && sf.f_bsize == 4096 && sf.f_blocks > 0 && sf.f_bfree <= sf.f_blocks);
    CHECK(statvfs(file, &sv) == 0 && sv.f_blocks == (fsblkcnt_t)sf.f_blocks && sv.f_namemax == 255);
    CHECK_ERRNO(statfs("/fos/no/such", &sf), ENOENT);
    puts("ok");
    return 0;
}
