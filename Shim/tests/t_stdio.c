/* stdio on fos files: fopen, fdopen and fileno; stdout pointed at a fos
 * file by dup2 (as a shell redirection does) and back. */
#include "check.h"

#include <dirent.h>

int main(int argc, char **argv) {
    umask(022);
    CHECK(argc == 2 && mkdir(argv[1], 0755) == 0);
    const char *d = argv[1];
    char path[8192], line[128];
    snprintf(path, sizeof path, "%s/text", d);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    CHECK(fprintf(f, "one %d\ntwo\n", 1) > 0);
    struct stat st;
    CHECK(fileno(f) >= 0 && fstat(fileno(f), &st) == 0 && S_ISREG(st.st_mode));
    CHECK(fclose(f) == 0);
    CHECK(stat(path, &st) == 0 && st.st_size == 10);
    f = fopen(path, "a+");
    CHECK(f && fputs("three\n", f) >= 0 && fflush(f) == 0);
    rewind(f);
    CHECK(fgets(line, sizeof line, f) && strcmp(line, "one 1\n") == 0);
    CHECK(fseek(f, -6, SEEK_END) == 0 && fgets(line, sizeof line, f) && strcmp(line, "three\n") == 0);
    CHECK(fclose(f) == 0);
    CHECK(fopen(path, "wx") == NULL && errno == EEXIST);
    int fd = open(path, O_RDONLY);
    f = fdopen(fd, "r");
    CHECK(f && fileno(f) == fd && fgets(line, sizeof line, f) && strcmp(line, "one 1\n") == 0);
    CHECK(fclose(f) == 0);
    CHECK_ERRNO(close(fd), EBADF);

    /* stdout onto a fos file and back, as a shell does around a builtin. */
    char out[4096];
    snprintf(out, sizeof out, "%s/stdout", d);
    fflush(stdout);
    int saved = dup(1);
    int o = open(out, O_CREAT | O_WRONLY | O_TRUNC, 0644);
    CHECK(saved >= 0 && o >= 0 && dup2(o, 1) == 1 && close(o) == 0);
    printf("to the fos file\n");
    fflush(stdout);
    CHECK(dup2(saved, 1) == 1 && close(saved) == 0);
    CHECK(stat(out, &st) == 0 && st.st_size == 16);

    /* Many entries: getdents64 in several batches, every name once. */
    char many[4096];
    snprintf(many, sizeof many, "%s/many", d);
    CHECK(mkdir(many, 0755) == 0);
    for (int i = 0; i < 300; i++) {
        snprintf(path, sizeof path, "%s/entry-with-a-longish-name-%03d", many, i);
        fd = open(path, O_CREAT | O_WRONLY, 0644);
        CHECK(fd >= 0 && close(fd) == 0);
    }
    DIR *dir = opendir(many);
    CHECK(dir);
    int count = 0, seen[300] = {0};
    struct dirent *e;
    while ((e = readdir(dir)) != NULL) {
        int i;
        if (sscanf(e->d_name, "entry-with-a-longish-name-%d", &i) == 1 && i >= 0 && i < 300 && !seen[i]++) count++;
    }
    CHECK(closedir(dir) == 0 && count == 300);
    puts("ok");
    return 0;
}
