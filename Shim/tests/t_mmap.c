/* mmap of fos files: a private mapping shows the file and keeps its own
 * changes; a shared writable one reaches the file at msync and munmap. */
#include "check.h"

#include <sys/mman.h>

int main(int argc, char **argv) {
    CHECK(argc == 2 && mkdir(argv[1], 0755) == 0);
    char path[4096];
    snprintf(path, sizeof path, "%s/m", argv[1]);
    int fd = open(path, O_CREAT | O_RDWR, 0644);
    CHECK(fd >= 0);
    char page[8192];
    for (size_t i = 0; i < sizeof page; i++) page[i] = (char)('a' + i % 26);
    write_all(fd, page, 6000);
    char *p = mmap(NULL, 8192, PROT_READ, MAP_PRIVATE, fd, 0);
    CHECK(p != MAP_FAILED && memcmp(p, page, 6000) == 0 && p[6000] == 0 && p[8191] == 0);
    CHECK(munmap(p, 8192) == 0);
    p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 4096);
    CHECK(p != MAP_FAILED && memcmp(p, page + 4096, 1904) == 0);
    p[0] = '#';
    CHECK(munmap(p, 4096) == 0);
    char b[4];
    CHECK(pread(fd, b, 1, 4096) == 1 && b[0] == page[4096]);
    /* Shared and writable: written back. */
    p = mmap(NULL, 6000, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    CHECK(p != MAP_FAILED);
    memcpy(p + 10, "SHARED", 6);
    CHECK(msync(p, 6000, MS_SYNC) == 0);
    CHECK(pread(fd, b, 4, 10) == 4 && memcmp(b, "SHAR", 4) == 0);
    memcpy(p + 5000, "LATE", 4);
    CHECK(munmap(p, 6000) == 0);
    CHECK(pread(fd, b, 4, 5000) == 4 && memcmp(b, "LATE", 4) == 0);
    struct stat st;
    CHECK(fstat(fd, &st) == 0 && st.st_size == 6000);
    /* Access rules as for the kernel. */
    int ro = open(path, O_RDONLY);
    CHECK(mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, ro, 0) == MAP_FAILED && errno == EACCES);
    CHECK(mmap(NULL, 4096, PROT_READ, MAP_SHARED, ro, 1) == MAP_FAILED && errno == EINVAL);
    close(ro);
    close(fd);
    puts("ok");
    return 0;
}
