/*
 * Changes of credentials. fosd attested the process's uid and gid when it
 * connected, and the fs fleet read its groups at the channel's first
 * request; the fs checks permissions with those, never with message fields.
 * So after any successful change the next fos call connects afresh.
 * (A raw setuid syscall bypasses this, and so keeps the old credentials.)
 */
#include "shim.h"

#include <grp.h>
#include <sys/fsuid.h>

#define FOS_SHIM_CRED_WRAP(ret, name, params, args)                 \
    FOS_SHIM_EXPORT ret name params {                               \
        ret rv_ = FOS_REAL(name) args;                              \
        if (rv_ == 0) fos_shim_creds_changed();                     \
        return rv_;                                                 \
    }

FOS_SHIM_CRED_WRAP(int, setuid, (uid_t u), (u))
FOS_SHIM_CRED_WRAP(int, setgid, (gid_t g), (g))
FOS_SHIM_CRED_WRAP(int, seteuid, (uid_t u), (u))
FOS_SHIM_CRED_WRAP(int, setegid, (gid_t g), (g))
FOS_SHIM_CRED_WRAP(int, setreuid, (uid_t r, uid_t e), (r, e))
FOS_SHIM_CRED_WRAP(int, setregid, (gid_t r, gid_t e), (r, e))
FOS_SHIM_CRED_WRAP(int, setresuid, (uid_t r, uid_t e, uid_t s), (r, e, s))
FOS_SHIM_CRED_WRAP(int, setresgid, (gid_t r, gid_t e, gid_t s), (r, e, s))
FOS_SHIM_CRED_WRAP(int, setgroups, (size_t n, const gid_t *l), (n, l))
FOS_SHIM_CRED_WRAP(int, initgroups, (const char *user, gid_t g), (user, g))

/* setfsuid and setfsgid return the previous value, not a status. */
FOS_SHIM_EXPORT int setfsuid(uid_t u) {
    int r = FOS_REAL(setfsuid)(u);
    fos_shim_creds_changed();
    return r;
}

FOS_SHIM_EXPORT int setfsgid(gid_t g) {
    int r = FOS_REAL(setfsgid)(g);
    fos_shim_creds_changed();
    return r;
}
