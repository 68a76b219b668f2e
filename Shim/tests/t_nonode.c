/* With no node on FOS_RUNTIME: fos paths fail with EHOSTDOWN at once,
 * host paths work as ever. Run with LD_PRELOAD set, outside fos-run. */
#include "check.h"

int main(void) {
    struct stat st;
    CHECK_ERRNO(open("/fos/x", O_RDONLY), EHOSTDOWN);
    CHECK_ERRNO(stat("/fos", &st), EHOSTDOWN);
    CHECK_ERRNO(mkdir("/fos/d", 0755), EHOSTDOWN);
    CHECK(stat("/tmp", &st) == 0);
    puts("ok");
    return 0;
}
