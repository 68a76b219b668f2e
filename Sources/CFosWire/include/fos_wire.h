/*
 * fos wire format: the one source of truth for every byte that crosses a
 * process boundary. Swift imports these structs directly (module CFosWire);
 * the shim includes this header as plain C11.
 *
 * Two transports carry these layouts:
 *   - the control socket of fosd (SOCK_SEQPACKET, one datagram a message):
 *     struct fos_ctl_hdr followed by an op-specific payload;
 *   - channels (shared-memory rings, fos_ring.h): struct fos_msg_hdr followed
 *     by a service-specific payload.
 *
 * All integers are little-endian host order (every node of a cluster is
 * x86_64 or aarch64 Linux); the proxy re-validates everything it forwards.
 */
#ifndef FOS_WIRE_H
#define FOS_WIRE_H

#include <stdint.h>
#include <stddef.h>

#define FOS_WIRE_VERSION 1u

/* Largest message payload carried on a channel or the control socket. */
#define FOS_MAX_PAYLOAD (64u * 1024u)
#define FOS_KEY_BYTES 16u
#define FOS_MAX_NAME 255u

/* ------------------------------------------------------------------ */
/* Channel messages                                                    */
/* ------------------------------------------------------------------ */

/* flags of fos_msg_hdr */
#define FOS_MSG_REPLY 0x1u   /* this is a reply to request_id */
#define FOS_MSG_ONEWAY 0x2u  /* no reply expected */
/* A request whose sender goes on without waiting for its reply (it takes
 * the reply later, before its next ordinary request). A server that takes
 * it as such serves it before every request it takes after it from any
 * channel, so that whatever the sender does next (a message to another
 * process that then asks this server) finds it done; one that does not
 * serves it as an ordinary request. The fs fleet takes WRITEs at an
 * offset (FOS_FS_AHEAD_BYTES), SETATTRs but of the size, and CREATEs under
 * a directory lease (FOS_FS_CREATE_LEASED) so. */
#define FOS_MSG_AHEAD 0x4u
/* An AHEAD request's status field is its stamp: the sender's
 * CLOCK_MONOTONIC in units of 16 ns, low 32 bits, read before it was
 * published. A server takes the AHEAD requests waiting in other channels
 * with earlier stamps before it (compared by age on its own clock: right
 * for requests up to 68 s old, and only between processes in one time
 * namespace), so that one sent after hearing from another's sender comes
 * after it. */
#define FOS_MSG_AHEAD_STAMP_SHIFT 4u
/* In a reply: this server takes AHEAD requests from this channel now. */
#define FOS_MSG_AHEAD_OK 0x8u

typedef struct fos_msg_hdr {
    uint16_t version;     /* FOS_WIRE_VERSION */
    uint16_t opcode;      /* service-specific; 0 is invalid */
    uint32_t flags;       /* FOS_MSG_* */
    uint64_t request_id;  /* chosen by the requester, echoed by the reply */
    uint32_t payload_len; /* bytes after this header */
    int32_t status;       /* replies: 0 or a positive errno */
} fos_msg_hdr;

_Static_assert(sizeof(fos_msg_hdr) == 24, "fos_msg_hdr layout");

/* Opcodes shared by every service. Service opcodes start at 0x100. */
#define FOS_OP_PING 0x01u     /* reply echoes the payload */
#define FOS_OP_ERROR 0x02u    /* reply-only: request could not be parsed */

/* Name service (/sys/name), fos_name_* payloads. */
#define FOS_OP_NAME_REGISTER 0x100u
#define FOS_OP_NAME_UNREGISTER 0x101u
#define FOS_OP_NAME_LOOKUP 0x102u
#define FOS_OP_NAME_LIST 0x103u
#define FOS_OP_NAME_CHOOSE 0x104u /* name server -> a fleet's custom policy mailbox */

/* Example echo fleet (/app/echo). */
#define FOS_OP_ECHO 0x200u
#define FOS_OP_ECHO_SLOW 0x201u    /* u32 milliseconds, then echo: suspends only that handler */
#define FOS_OP_ECHO_RELAY 0x202u   /* forward to a fleet peer over the internal mailbox */
#define FOS_OP_ECHO_WHOAMI 0x203u  /* reply: fos_echo_whoami */

/* Block device server (/sys/blk/N). Blocks are 4096 bytes. */
#define FOS_BLK_BLOCK 4096u
#define FOS_OP_BLK_INFO 0x300u     /* -> fos_blk_info */
#define FOS_OP_BLK_READ 0x301u     /* fos_blk_io -> data (inline) or into the region */
#define FOS_OP_BLK_WRITE 0x302u    /* fos_blk_io + data (inline) or from the region */
#define FOS_OP_BLK_FLUSH 0x303u    /* -> empty, after every completed write is durable */
#define FOS_OP_BLK_DISCARD 0x304u  /* fos_blk_io (region fields ignored) */
/* Inline data only, written through the kernel's page cache: done when the
 * kernel has it, so it outlives the death of any fos process (not a power
 * loss: FLUSH makes it durable like any write). For journal writes. */
#define FOS_OP_BLK_WRITE_CACHED 0x307u
/* fos_blk_io (inline) -> data, read through the kernel's page cache, which
 * then keeps the blocks (and reads ahead) for the readers of the page cache
 * (fs members, FOS_OP_BLK_READ reads past it). On an image file only; on a
 * block device it reads like READ (the kernel does not drop a block
 * device's cached pages after an asynchronous direct write). */
#define FOS_OP_BLK_READ_CACHED 0x308u
/* Advisory locks on the disk, for the fleet that shares it (fs members use
 * one per journal slot, held for life, and one fleet-wide lock). A lock
 * belongs to a channel; it is released by UNLOCK or when the channel closes,
 * and then only after every I/O the channel started has completed, so a dead
 * holder's late writes cannot land after the next holder's. LOCK answers when
 * the lock is granted (FIFO), or EAGAIN at once with FOS_BLK_LOCK_TRY.
 * UNLOCK also cancels a LOCK still waiting (after a client-side timeout). */
#define FOS_OP_BLK_LOCK 0x305u     /* fos_blk_lock -> empty */
#define FOS_OP_BLK_UNLOCK 0x306u   /* fos_blk_lock (flags 0) -> empty; EPERM if neither held nor waited for */
#define FOS_BLK_LOCKS 64u          /* lock ids are 0...FOS_BLK_LOCKS-1 */
#define FOS_BLK_LOCK_TRY 0x1u

typedef struct fos_blk_lock {
    uint32_t id;
    uint32_t flags;   /* FOS_BLK_LOCK_* */
} fos_blk_lock;

#define FOS_BLK_INLINE 0xffffffffu /* fos_blk_io.slot: data travels in the message */
typedef struct fos_blk_io {
    uint64_t block;   /* first block */
    uint32_t count;   /* blocks */
    uint32_t slot;    /* attached region slot, or FOS_BLK_INLINE */
    uint64_t offset;  /* byte offset in the region, 4096-aligned */
} fos_blk_io;

typedef struct fos_blk_info {
    uint64_t blocks;      /* disk size in blocks */
    uint32_t block_size;  /* FOS_BLK_BLOCK */
    uint32_t queue_depth;
    uint32_t max_blocks;  /* largest count one request may name (region I/O) */
    uint32_t reserved;
} fos_blk_info;

/* ------------------------------------------------------------------ */
/* File system service (/sys/fs)                                       */
/* ------------------------------------------------------------------ */
/*
 * Requests name inodes by number (the root is 1) or, for OPEN and RESOLVE,
 * by absolute path. Names and paths travel as length + bytes (UTF-8, no
 * NUL) right after the fixed struct; a payload must be exactly the struct
 * plus the lengths it announces. Replies carry 0 or the errno Linux would
 * give (EINVAL/ENAMETOOLONG/EPROTO for malformed requests). The caller's
 * credentials are the kernel's (attested by fosd), never message fields.
 * There is no open-file state: READ and WRITE check access on every call
 * against the caller's credentials (like NFSv3).
 */
#define FOS_FS_NAME_MAX 255u
#define FOS_FS_PATH_MAX 4096u
#define FOS_FS_MAX_IO (60u * 1024u)        /* bytes of one READ or WRITE */
#define FOS_FS_MAX_GROUPS 64u
/* WRITEs sent AHEAD (FOS_MSG_AHEAD) and not yet answered: at most this
 * many bytes of data per channel. A member says AHEAD_OK only while it has
 * this much room for every channel it serves beyond a margin, so a write
 * sent ahead does not meet ENOSPC late. */
#define FOS_FS_AHEAD_BYTES (256u * 1024u)
#define FOS_FS_AHEAD_MAX 64u               /* ... and at most this many WRITEs */
/* Largest file (FosFS: 2^32 blocks of 4 KiB); a write past it is EFBIG. */
#define FOS_FS_MAX_FILE_SIZE (1ull << 44)
#define FOS_FS_ROOT_INO 1u

#define FOS_OP_FS_LOOKUP 0x400u      /* fos_fs_name_req + name -> fos_fs_stat */
#define FOS_OP_FS_GETATTR 0x401u     /* fos_fs_ino -> fos_fs_stat */
#define FOS_OP_FS_SETATTR 0x402u     /* fos_fs_setattr -> fos_fs_stat (chmod, chown, truncate, utimens) */
#define FOS_OP_FS_CREATE 0x403u      /* fos_fs_create + name -> fos_fs_stat (flags: open(2) O_EXCL etc.) */
#define FOS_OP_FS_MKDIR 0x404u       /* fos_fs_create + name -> fos_fs_stat */
#define FOS_OP_FS_MKNOD 0x405u       /* fos_fs_create + name -> fos_fs_stat (mode with S_IFMT, rdev) */
#define FOS_OP_FS_SYMLINK 0x406u     /* fos_fs_create + name + target -> fos_fs_stat */
#define FOS_OP_FS_LINK 0x407u        /* fos_fs_link + name -> fos_fs_stat */
#define FOS_OP_FS_UNLINK 0x408u      /* fos_fs_name_req + name [+ held list] -> empty */
#define FOS_OP_FS_RMDIR 0x409u       /* fos_fs_name_req + name -> empty */
#define FOS_OP_FS_RENAME 0x40au      /* fos_fs_rename + old name + new name -> empty */
#define FOS_OP_FS_READLINK 0x40bu    /* fos_fs_ino -> target bytes */
#define FOS_OP_FS_READ 0x40cu        /* fos_fs_io -> data (short at end of file) */
#define FOS_OP_FS_WRITE 0x40du       /* fos_fs_io + count bytes -> fos_fs_write_reply */
#define FOS_OP_FS_FSYNC 0x40eu       /* fos_fs_fsync -> empty */
#define FOS_OP_FS_READDIR 0x40fu     /* fos_fs_readdir -> fos_fs_readdir_reply + entries */
#define FOS_OP_FS_STATFS 0x410u      /* empty -> fos_fs_statfs */
#define FOS_OP_FS_GETXATTR 0x411u    /* fos_fs_xattr + name -> value */
#define FOS_OP_FS_SETXATTR 0x412u    /* fos_fs_xattr + name + value -> empty */
#define FOS_OP_FS_LISTXATTR 0x413u   /* fos_fs_ino -> names, each followed by a NUL */
#define FOS_OP_FS_REMOVEXATTR 0x414u /* fos_fs_xattr + name -> empty */
#define FOS_OP_FS_OPEN 0x415u        /* fos_fs_open + path -> fos_fs_stat of the opened inode */
#define FOS_OP_FS_RESOLVE 0x416u     /* fos_fs_open (flags: O_NOFOLLOW only) + path -> fos_fs_ino */
#define FOS_OP_FS_LOCK 0x417u        /* fos_fs_lock -> GET: fos_fs_lock_reply; SET, SETWAIT: empty */
/* A root client (attested uid 0; e.g. the FUSE daemon) acting for a user:
 * fos_fs_forward (hops 0) with the user's uid, gid and groups, then the
 * groups, then a request LOOKUP...RESOLVE; it is checked and owned as that
 * user's. Anyone else gets EPERM. */
#define FOS_OP_FS_AS 0x418u
/* Fleet-internal only (the internal mailbox, fleet members as attested by
 * fosd): a member hands a request for an inode homed on a peer to that peer,
 * with the original caller's credentials. Payload: fos_fs_forward, ngroups
 * u32 group ids, then the original payload; the reply is passed back as is. */
#define FOS_OP_FS_FORWARD 0x4ffu
/* Carried only inside FORWARD (never accepted on their own): a LOCK for an
 * inode homed elsewhere, with the client it came from (fos_fs_lock_origin +
 * fos_fs_lock); and the news that a client's channel closed, so that its
 * locks and waiters at the home member go too (fos_fs_lock_origin -> empty). */
#define FOS_OP_FS_LOCK_FORWARDED 0x4fdu
#define FOS_OP_FS_LOCK_DROP 0x4feu

/* Fleet-internal, member to member (see FosFSServer/Cross.swift):
 * LEND: quiesce for a cross-member transaction of the sender (commit,
 * checkpoint, keep every operation out) until RETURN, or until the sender's
 * channel closes. RETURN payload: u32 count, then count × (u32 ag, u32 pad,
 * i64 free-block delta, i64 free-inode delta), then u64 blocks the
 * transaction wrote (the lender drops them from its cache).
 * WALK, OPENAT, OPENINO: the legs of a path walk and an open(2) across
 * members, only inside FORWARD (layouts in FosFSServer/Distributed.swift). */
#define FOS_OP_FS_LEND 0x4f0u
#define FOS_OP_FS_RETURN 0x4f1u
#define FOS_OP_FS_WALK 0x4f2u
#define FOS_OP_FS_OPENAT 0x4f3u
#define FOS_OP_FS_OPENINO 0x4f4u
#define FOS_OP_FS_STATFS_PART 0x4f5u /* empty -> fos_fs_statfs of the AGs the member owns */

typedef struct fos_fs_stat {
    uint64_t ino;
    uint32_t mode;       /* S_IFMT | permission bits */
    uint32_t nlink;
    uint32_t uid;
    uint32_t gid;
    uint64_t rdev;
    uint64_t size;
    uint64_t blocks;     /* 512-byte units, like st_blocks */
    uint32_t blksize;
    uint32_t generation;
    int64_t atime_ns;    /* nanoseconds since the epoch */
    int64_t mtime_ns;
    int64_t ctime_ns;
    int64_t btime_ns;
} fos_fs_stat;

_Static_assert(sizeof(fos_fs_stat) == 88, "fos_fs_stat layout");

typedef struct fos_fs_ino {
    uint64_t ino;
} fos_fs_ino;

typedef struct fos_fs_name_req {
    uint64_t dir;
    uint32_t name_len;   /* 1...FOS_FS_NAME_MAX, bytes follow */
    uint32_t flags;      /* UNLINK: FOS_FS_UNLINK_*; otherwise 0 */
} fos_fs_name_req;

/* UNLINK: the caller holds no open fos file, and no child it started may
 * hold one it passed on: its own opens of the file do not keep it. */
#define FOS_FS_UNLINK_HOLDS_NONE 0x1u
/* UNLINK: no child the caller started may hold a fos file it passed on
 * (it may hold some itself): whether its own opens keep the file is what
 * its descriptors say. */
#define FOS_FS_UNLINK_SHARED_NONE 0x2u
/* UNLINK: as SHARED_NONE, and the caller's open fos files (directories
 * aside) are exactly the listed inodes: after the name, a uint32 count
 * (at most FOS_FS_UNLINK_LIST_MAX) and that many uint64 inode numbers, in
 * host byte order, unaligned. Its own opens keep the file only if it is
 * listed (nothing for the fs to read in /proc). */
#define FOS_FS_UNLINK_HOLDS_LISTED 0x4u
#define FOS_FS_UNLINK_LIST_MAX 32u

typedef struct fos_fs_create {
    uint64_t dir;
    uint64_t rdev;       /* MKNOD of a device */
    uint32_t mode;
    uint32_t flags;      /* CREATE: open(2) flags (O_EXCL, O_TRUNC, access mode) */
    uint32_t name_len;
    uint32_t target_len; /* SYMLINK: target bytes after the name; otherwise 0 */
} fos_fs_create;

_Static_assert(sizeof(fos_fs_create) == 32, "fos_fs_create layout");

/*
 * Directory leases: creates that do not wait (fos_fs_lease).
 *
 * A MKDIR whose flags hold FOS_FS_MKDIR_LEASE asks for a lease on the new
 * directory. A member of a fleet of one may grant it, while no other
 * channel is busy with it: the reply is then a fos_fs_stat followed by a
 * fos_fs_lease and its inode numbers. Until it expires the holder knows
 * the directory holds only the names it put there itself, and may create
 * a regular file in it without waiting: a CREATE sent AHEAD with
 * FOS_FS_CREATE_LEASED in its flags and one of the lease's inode numbers
 * in rdev, published before the expiry (the sender reads its clock after
 * publishing it; if it is too late, it waits for the answer as for any
 * request). If such a create fails, the sender must send nothing more for
 * that inode number: after a restart another file may have it.
 *
 * The member serves nothing of another channel while a lease it granted
 * may still be used: such a request waits until the lease expires, then
 * until every CREATE the holder published by then has been served. So
 * whoever sees the directory later sees those files, and no name the
 * holder was told it created can be someone else's. A CREATE whose inode
 * number the member did not reserve for the sender is served only if that
 * number is free (a replay to a restarted member): otherwise EEXIST, or
 * the existing file, if the name is already that very inode.
 */
#define FOS_FS_MKDIR_LEASE 0x1u
#define FOS_FS_CREATE_LEASED 0x80000000u
#define FOS_FS_LEASE_MAX_INOS 32u

typedef struct fos_fs_lease {
    uint64_t expires_ns;  /* the member's clock */
    uint32_t count;       /* uint64 inode numbers follow, 1...FOS_FS_LEASE_MAX_INOS */
    uint32_t lifetime_us; /* what was left of it as the reply went: a client
                           * counts it from when it sent the MKDIR (its clock
                           * may be in another time namespace) */
} fos_fs_lease;

_Static_assert(sizeof(fos_fs_lease) == 16, "fos_fs_lease layout");

typedef struct fos_fs_link {
    uint64_t ino;        /* existing file */
    uint64_t dir;        /* directory of the new name */
    uint32_t name_len;
    uint32_t reserved;
} fos_fs_link;

typedef struct fos_fs_rename {
    uint64_t old_dir;
    uint64_t new_dir;
    uint32_t flags;      /* RENAME_NOREPLACE 1, RENAME_EXCHANGE 2 */
    uint16_t old_len;
    uint16_t new_len;
} fos_fs_rename;

/* Between directories homed on different members a RENAME or LINK replies
 * EXDEV (no cross-member transactions yet). */

#define FOS_FS_SET_MODE 0x01u
#define FOS_FS_SET_UID 0x02u
#define FOS_FS_SET_GID 0x04u
#define FOS_FS_SET_SIZE 0x08u
#define FOS_FS_SET_ATIME 0x10u      /* to atime_ns */
#define FOS_FS_SET_MTIME 0x20u      /* to mtime_ns */
#define FOS_FS_SET_ATIME_NOW 0x40u
#define FOS_FS_SET_MTIME_NOW 0x80u
#define FOS_FS_SET_ALL 0xffu

typedef struct fos_fs_setattr {
    uint64_t ino;
    uint32_t valid;      /* FOS_FS_SET_* */
    uint32_t mode;
    uint32_t uid;
    uint32_t gid;
    uint64_t size;
    int64_t atime_ns;
    int64_t mtime_ns;
} fos_fs_setattr;

_Static_assert(sizeof(fos_fs_setattr) == 48, "fos_fs_setattr layout");

#define FOS_FS_IO_APPEND 0x1u       /* WRITE at the end of the file (offset ignored) */

typedef struct fos_fs_io {
    uint64_t ino;
    uint64_t offset;
    uint32_t count;      /* READ: at most FOS_FS_MAX_IO; WRITE: bytes that follow */
    uint32_t flags;      /* FOS_FS_IO_* */
} fos_fs_io;

typedef struct fos_fs_write_reply {
    uint64_t offset;     /* where the data went (APPEND) */
    uint32_t count;
    uint32_t reserved;
} fos_fs_write_reply;

typedef struct fos_fs_fsync {
    uint64_t ino;
    uint32_t datasync;   /* 1: fdatasync */
    uint32_t reserved;
} fos_fs_fsync;

typedef struct fos_fs_readdir {
    uint64_t ino;
    uint64_t cookie;     /* 0 = start, else next_cookie of the last entry seen */
    uint32_t max;        /* entries wanted, 1...1024; the reply may hold fewer */
    uint32_t reserved;
} fos_fs_readdir;

/* READDIR reply: fos_fs_readdir_reply, then count × (fos_fs_dirent + name,
 * padded to 8 bytes). count 0: end of directory. */
typedef struct fos_fs_readdir_reply {
    uint32_t count;
    uint32_t reserved;
} fos_fs_readdir_reply;

typedef struct fos_fs_dirent {
    uint64_t ino;
    uint64_t next_cookie;
    uint16_t name_len;
    uint8_t type;        /* d_type */
    uint8_t reserved[5];
} fos_fs_dirent;

_Static_assert(sizeof(fos_fs_dirent) == 24, "fos_fs_dirent layout");

typedef struct fos_fs_statfs {
    uint64_t total_blocks;
    uint64_t free_blocks;
    uint64_t avail_blocks;
    uint64_t total_inodes;
    uint64_t free_inodes;
    uint32_t block_size;
    uint32_t name_max;
    uint32_t ag_count;
    uint16_t member;     /* the member that answered */
    uint16_t members;    /* members of the fleet */
} fos_fs_statfs;

_Static_assert(sizeof(fos_fs_statfs) == 56, "fos_fs_statfs layout");

typedef struct fos_fs_xattr {
    uint64_t ino;
    uint32_t flags;      /* SETXATTR: XATTR_CREATE 1, XATTR_REPLACE 2 */
    uint16_t name_len;
    uint16_t reserved;
    uint32_t value_len;  /* SETXATTR: value bytes after the name; otherwise 0 */
    uint32_t reserved2;
} fos_fs_xattr;

typedef struct fos_fs_open {
    uint32_t flags;      /* open(2) flags (Linux values) */
    uint32_t mode;       /* for O_CREAT */
    uint32_t path_len;   /* 1...FOS_FS_PATH_MAX-1, bytes follow */
    uint32_t reserved;
} fos_fs_open;

typedef struct fos_fs_forward {
    uint16_t opcode;     /* of the original request */
    uint16_t ngroups;    /* supplementary groups that follow, at most FOS_FS_MAX_GROUPS */
    uint32_t uid;        /* the original caller's, as fosd attested them */
    uint32_t gid;
    uint32_t hops;       /* 0: a forwarded request is never forwarded again */
    int32_t pid;         /* FORWARD: the original caller's, as fosd attested it; AS: 0 (ignored) */
} fos_fs_forward;

_Static_assert(sizeof(fos_fs_forward) == 20, "fos_fs_forward layout");

/*
 * Advisory locks (FOS_OP_FS_LOCK), kept in memory at the inode's home member
 * as Linux keeps them: record locks (fcntl F_GETLK/F_SETLK/F_SETLKW and the
 * F_OFD_* forms) and flock(2), which never conflict with each other. A lock
 * belongs to the channel it was taken on (the server's identity for the
 * client, never a message field) plus `owner`; it goes when that channel
 * closes, and when the home member restarts (no lock recovery, like NFS
 * without lockd). With no open-file state, SET of a read lock needs read
 * permission on the inode and of a write lock write permission (Linux asks
 * for an fd open for reading or writing); GET, unlock and flock need none.
 *
 * Errors: EAGAIN a conflict (SET); EDEADLK a POSIX process lock that would
 * wait for itself (across the inodes of one member); ETIMEDOUT a SETWAIT
 * not granted within wait_ms (send it again to keep waiting: a repeated
 * request of the same owner is harmless); ENOLCK a client holding too many;
 * EINVAL bad type, kind, command, pid or range (negative start or one
 * reaching before byte 0), EOVERFLOW a range past INT64_MAX; EPROTO a
 * payload that is not exactly the struct.
 */
#define FOS_FS_LOCK_READ 0u        /* F_RDLCK; flock: LOCK_SH */
#define FOS_FS_LOCK_WRITE 1u       /* F_WRLCK; flock: LOCK_EX */
#define FOS_FS_LOCK_UNLOCK 2u      /* F_UNLCK; flock: LOCK_UN */

#define FOS_FS_LOCK_POSIX 1u       /* owned by a process: owner = its pid, pid > 0 */
#define FOS_FS_LOCK_OFD 2u         /* owned by an open file description: owner = its id, pid 0 */
#define FOS_FS_LOCK_FLOCK 3u       /* flock(2): owner = the open file's id, pid, start and len 0 */

#define FOS_FS_LOCK_GET 1u         /* F_GETLK: the first lock that would conflict */
#define FOS_FS_LOCK_SET 2u         /* F_SETLK, flock with LOCK_NB */
#define FOS_FS_LOCK_SETWAIT 3u     /* F_SETLKW, flock: wait up to wait_ms */
#define FOS_FS_LOCK_MAX_WAIT_MS 10000u /* a longer wait_ms counts as this (below every call timeout) */

typedef struct fos_fs_lock {
    uint64_t ino;
    int64_t start;       /* absolute: the client resolves SEEK_CUR and SEEK_END */
    int64_t len;         /* 0: to the end of file and beyond; < 0: the -len bytes before start */
    uint64_t owner;
    int32_t pid;         /* what GET tells others about a POSIX lock */
    uint16_t type;       /* FOS_FS_LOCK_READ/WRITE/UNLOCK (not UNLOCK for GET) */
    uint8_t kind;        /* FOS_FS_LOCK_POSIX/OFD/FLOCK (not FLOCK for GET) */
    uint8_t command;     /* FOS_FS_LOCK_GET/SET/SETWAIT */
    uint32_t wait_ms;    /* SETWAIT only; otherwise 0 */
    uint32_t reserved;
} fos_fs_lock;

_Static_assert(sizeof(fos_fs_lock) == 48, "fos_fs_lock layout");

typedef struct fos_fs_lock_reply {
    int64_t start;       /* the conflicting lock's range, as start + len (0: to EOF) */
    int64_t len;
    int32_t pid;         /* its pid; -1 for an OFD lock */
    uint16_t type;       /* its type; FOS_FS_LOCK_UNLOCK: nothing conflicts */
    uint16_t reserved;
} fos_fs_lock_reply;

_Static_assert(sizeof(fos_fs_lock_reply) == 24, "fos_fs_lock_reply layout");

typedef struct fos_fs_lock_origin {
    uint64_t client;      /* the client's channel id at the forwarding member (unique on the node);
                             DROP: 0 only announces `incarnation` */
    uint64_t incarnation; /* when the forwarding member started: a newer one means every client
                             of the older one is gone */
    uint32_t member;      /* the forwarding member's index */
    uint32_t reserved;
} fos_fs_lock_origin;

_Static_assert(sizeof(fos_fs_lock_origin) == 24, "fos_fs_lock_origin layout");

/*
 * Change notifications (FOS_OP_FS_WATCH), for clients that cache: the FUSE
 * daemon drops the kernel's caches when another client changes something.
 * Each member keeps a bounded log of the changes it was asked to make
 * (by whom: the sender's pid); a watcher long-polls every member: WATCH
 * with the cursor it has returns the events after it as soon as there are
 * any, or none after wait_ms. Cursor 0 asks for the current cursor alone.
 * FOS_FS_WATCH_LOST: events between the cursor and the reply's first one
 * are gone (the log overflowed, or the member restarted: `epoch` changed);
 * the watcher must drop everything it caches. Root clients only (events
 * name files of every user); others get EPERM.
 */
#define FOS_OP_FS_WATCH 0x419u       /* fos_fs_watch -> fos_fs_watch_reply + events */
/* fos_fs_ino -> empty: the sender holds the regular file open (by a
 * placeholder memfd "fos-<ino>-0-0-<node>", as a FUSE daemon does for the
 * files open through its mount), so that losing its last name makes it an
 * orphan, kept while the placeholder lives (FosFSServer/Openers.swift). */
#define FOS_OP_FS_HOLD 0x41cu
#define FOS_FS_WATCH_MAX_WAIT_MS 10000u
#define FOS_FS_WATCH_LOST 0x1u

/*
 * Shared mappings (FOS_OP_FS_MAP): the inode's home member keeps one memfd
 * with the whole file for as long as any process maps it, and serves READ
 * from it and applies WRITE and size changes to it, so mappings, read and
 * write agree between processes as they do on Linux. MAP checks access
 * (read; with FOS_FS_MAP_WRITE also write), deposits the memfd with fosd for
 * the caller's pid (read-only unless MAP_WRITE) and answers its tag; the
 * caller FETCHes it (FOS_CTL_FETCH) and maps it. Pages written through a
 * mapping reach the file at MSYNC, at fsync of the inode, when the last
 * mapping is gone, and by themselves within seconds. EXDEV: the inode's
 * home is not on the caller's machine (no shared memory with it);
 * EFBIG: the file is too large to be kept in memory this way; ENOMEM: the
 * caller's user has too much mapped at this member.
 */
#define FOS_OP_FS_MAP 0x41au         /* fos_fs_map -> fos_fs_map_reply */
#define FOS_OP_FS_MSYNC 0x41bu       /* fos_fs_msync -> empty */
#define FOS_FS_MAP_WRITE 0x1u
#define FOS_FS_MSYNC_FLUSH 0x1u     /* and make it durable (msync MS_SYNC) */

typedef struct fos_fs_map {
    uint64_t ino;
    uint32_t flags;      /* FOS_FS_MAP_WRITE */
    uint32_t reserved;
} fos_fs_map;

typedef struct fos_fs_map_reply {
    uint8_t tag[FOS_KEY_BYTES]; /* FOS_CTL_FETCH it */
    uint64_t size;       /* the file's size now */
} fos_fs_map_reply;

_Static_assert(sizeof(fos_fs_map_reply) == 24, "fos_fs_map_reply layout");

/* MSYNC: memfd_ino is the inode (st_ino) of the memfd the caller maps;
 * EIO if it is not the member's (a member that restarted and could not
 * take it back: what was stored through it since cannot reach the file).
 * A write-back that failed since the last MSYNC or FSYNC is reported once. */
typedef struct fos_fs_msync {
    uint64_t ino;
    uint64_t memfd_ino;
    uint32_t flags;      /* FOS_FS_MSYNC_* */
    uint32_t reserved;
} fos_fs_msync;

_Static_assert(sizeof(fos_fs_msync) == 24, "fos_fs_msync layout");

/* An inode's attributes changed, and its data in [offset, offset+length)
 * (length 0: none; UINT64_MAX: all of it). */
#define FOS_FS_EVENT_INODE 1u
/* The name `name` in directory `parent` now names something else, or nothing. */
#define FOS_FS_EVENT_ENTRY 2u

typedef struct fos_fs_watch {
    uint64_t cursor;
    uint32_t wait_ms;    /* at most FOS_FS_WATCH_MAX_WAIT_MS */
    uint32_t max;        /* events at most, 1...1024 */
} fos_fs_watch;

typedef struct fos_fs_watch_reply {
    uint64_t cursor;     /* of the last event in the reply (or the current one) */
    uint64_t epoch;      /* the member's start; changes when it restarts */
    uint32_t count;
    uint32_t flags;      /* FOS_FS_WATCH_LOST */
} fos_fs_watch_reply;

typedef struct fos_fs_event {
    uint64_t ino;        /* INODE: the inode; ENTRY: 0 */
    uint64_t parent;     /* ENTRY: the directory; INODE: 0 */
    uint64_t offset;
    uint64_t length;
    int32_t origin_pid;  /* the process that asked for the change */
    uint8_t kind;        /* FOS_FS_EVENT_* */
    uint8_t reserved;
    uint16_t name_len;   /* ENTRY: bytes of the name that follow, padded to 8 */
} fos_fs_event;

_Static_assert(sizeof(fos_fs_event) == 40, "fos_fs_event layout");

/* ------------------------------------------------------------------ */
/* Spawn service (/sys/spawn)                                          */
/* ------------------------------------------------------------------ */
/*
 * SPAWN starts a program as the caller (uid, gid and groups as fosd and
 * the kernel attest them) in its own session. Payload: fos_spawn_req, then
 * path_len bytes of path (absolute), cwd_len bytes of cwd (absolute; empty:
 * /), node_len bytes of node hint, argc NUL-terminated arguments, envc
 * NUL-terminated NAME=VALUE entries, then nfds × fos_spawn_fd: descriptor `from` of the caller
 * becomes `to` in the child (the server copies it with pidfd_getfd, so it
 * shares the open file description, offsets included). Hints: `cpu` pins the
 * child (-1: anywhere); `node` names the node to run on (empty: here; only
 * this node today, another one is EHOSTUNREACH).
 * With FOS_SPAWN_F_EXT in `flags`, a fos_spawn_ext follows the descriptor
 * map: the child can exec a descriptor of the caller instead of `path`
 * (which then only names the program: a program stored in the fos file
 * system, materialised by the shim into a sealed memfd, since the kernel
 * cannot reach it by path), starts with what exec would keep of the
 * caller: its signal mask and ignored signals, its umask, its resource
 * limits (read from the caller's process), and can be tied to the caller:
 * killed (SIGKILL) if the caller ends while it still runs (the shim's
 * stand-in for an exec'd program ends first only when it was killed so).
 * Global process ids: the high 32 bits name the node (a hash of its id),
 * the low 32 count its spawns.
 */
#define FOS_OP_SPAWN 0x500u      /* fos_spawn_req + … -> fos_spawn_reply */
#define FOS_OP_SPAWN_WAIT 0x501u /* fos_spawn_wait -> fos_spawn_status (ETIMEDOUT if still running) */
#define FOS_OP_SPAWN_KILL 0x502u /* fos_spawn_kill -> empty */
#define FOS_OP_SPAWN_LIST 0x503u /* empty -> JSON: the node's processes */
#define FOS_SPAWN_MAX_ARGS 4096u
#define FOS_SPAWN_MAX_FDS 256u
#define FOS_SPAWN_FD_LIMIT 65536u /* a descriptor's number in the child is below this */
#define FOS_SPAWN_MAX_WAIT_MS 10000u

typedef struct fos_spawn_req {
    uint32_t path_len;
    uint32_t cwd_len;
    uint32_t argc;
    uint32_t envc;
    uint32_t nfds;
    int32_t cpu;
    uint32_t node_len;  /* node hint bytes follow the cwd */
    uint32_t flags;     /* FOS_SPAWN_F_*; other bits must be 0 */
} fos_spawn_req;

#define FOS_SPAWN_F_EXT 1u

typedef struct fos_spawn_ext {
    int32_t exec_fd;    /* >= 0: the caller's descriptor the child executes (execveat
                           AT_EMPTY_PATH); -1: path */
    uint32_t flags;     /* FOS_SPAWN_X_*; other bits must be 0 */
    uint64_t sigmask;   /* signals blocked in the child: bit n-1 for signal n */
    uint64_t sigign;    /* signals the child starts ignoring (SIGKILL, SIGSTOP never) */
    uint32_t umask;     /* with FOS_SPAWN_X_UMASK: the child's umask (at most 0777) */
    uint32_t reserved;
} fos_spawn_ext;

_Static_assert(sizeof(fos_spawn_ext) == 32, "fos_spawn_ext layout");

#define FOS_SPAWN_X_TIED 1u     /* killed if the caller ends first */
#define FOS_SPAWN_X_UMASK 2u    /* umask is set */
#define FOS_SPAWN_X_RLIMITS 4u  /* the caller's resource limits */
#define FOS_SPAWN_X_ALL 7u

typedef struct fos_spawn_fd {
    int32_t from;
    int32_t to;
} fos_spawn_fd;

typedef struct fos_spawn_reply {
    uint64_t gpid;
    int32_t pid;     /* the child's pid on its node */
    uint32_t reserved;
} fos_spawn_reply;

typedef struct fos_spawn_wait {
    uint64_t gpid;
    uint32_t wait_ms;  /* 0: just look; at most FOS_SPAWN_MAX_WAIT_MS */
    uint32_t reserved;
} fos_spawn_wait;

#define FOS_SPAWN_RUNNING 0u
#define FOS_SPAWN_EXITED 1u
#define FOS_SPAWN_SIGNALED 2u

typedef struct fos_spawn_status {
    uint32_t state;  /* FOS_SPAWN_* */
    int32_t code;    /* exit code or signal number */
} fos_spawn_status;

typedef struct fos_spawn_kill {
    uint64_t gpid;
    int32_t signal;
    uint32_t reserved;
} fos_spawn_kill;

/* Name policies */
#define FOS_POLICY_ROUND_ROBIN 1u
#define FOS_POLICY_LEAST_LOADED 2u
#define FOS_POLICY_NEAREST 3u
#define FOS_POLICY_STICKY 4u
#define FOS_POLICY_CUSTOM 5u

/* fos_name_entry.flags */
#define FOS_NAME_INTERNAL 0x1u /* fleet-internal mailbox: lookups never return its key */
#define FOS_NAME_POLICY 0x2u   /* the fleet's custom-policy chooser mailbox */

typedef struct fos_mailbox_addr {
    uint64_t node;    /* node id; 0 never names a node */
    uint64_t mailbox; /* mailbox id on that node; 0 is invalid */
} fos_mailbox_addr;

typedef struct fos_name_entry {
    fos_mailbox_addr addr;
    uint8_t key[FOS_KEY_BYTES]; /* capability; zero when withheld */
    uint32_t policy;            /* FOS_POLICY_* of the name */
    uint32_t flags;             /* FOS_NAME_* */
    int32_t pid;                /* registrant, as attested by fosd */
    int32_t core;               /* core the registrant runs on, -1 unknown */
    uint64_t queue_len;         /* live queue length (least-loaded) */
    uint64_t handled;           /* messages handled */
    uint16_t name_len;
    uint16_t reserved0;
    uint32_t reserved1;
    /* followed by name_len bytes of name (no NUL) */
} fos_name_entry;

_Static_assert(sizeof(fos_name_entry) == 72, "fos_name_entry layout");

/* REGISTER payload: one fos_name_entry + name. The addr.node, pid and load
 * fields are ignored: the name server fills them from what fosd attests. */

/* LOOKUP payload */
typedef struct fos_name_lookup {
    uint64_t client_key; /* sticky policy input */
    int32_t client_core; /* nearest policy input, -1 unknown */
    uint32_t flags;      /* FOS_NAME_INTERNAL: look up the fleet-internal mailboxes */
    uint32_t exclude_count; /* addresses the client found dead, follow the name */
    uint16_t name_len;
    uint16_t reserved;
    /* followed by exclude_count fos_mailbox_addr, then name_len bytes */
} fos_name_lookup;

_Static_assert(sizeof(fos_name_lookup) == 24, "fos_name_lookup layout");

/* LIST payload: a prefix (bytes, may be empty). Reply: u32 count, then
 * count × (fos_name_entry + name, padded to 8 bytes). Keys are withheld. */

/* CHOOSE payload (custom policy): fos_name_lookup header fields, then
 * u32 count then count fos_name_entry (no names). Reply: u32 index. */

typedef struct fos_echo_whoami {
    int32_t pid;
    int32_t core;
    uint64_t mailbox;
} fos_echo_whoami;

/* ------------------------------------------------------------------ */
/* fosd control socket                                                 */
/* ------------------------------------------------------------------ */

#define FOS_CTL_SOCKET "fosd.sock"
#define FOS_CTL_MAX_DATAGRAM (FOS_MAX_PAYLOAD + 64u)

typedef struct fos_ctl_hdr {
    uint16_t version;   /* FOS_WIRE_VERSION */
    uint16_t op;        /* FOS_CTL_* */
    uint32_t len;       /* whole datagram, header included */
    uint64_t request_id;/* echoed in the reply; 0 for notifications */
    int32_t status;     /* replies: 0 or positive errno */
    uint32_t reserved;
} fos_ctl_hdr;

_Static_assert(sizeof(fos_ctl_hdr) == 24, "fos_ctl_hdr layout");

enum {
    /* process -> fosd, each answered by a reply with the same op */
    FOS_CTL_HELLO = 1,          /* -> fos_ctl_hello_reply + fd: stats page */
    FOS_CTL_MAILBOX_CREATE = 2, /* fos_ctl_mailbox_create -> fos_ctl_mailbox_reply */
    FOS_CTL_MAILBOX_DESTROY = 3,/* fos_ctl_mailbox_reply (mailbox) -> empty */
    FOS_CTL_CONNECT = 4,        /* fos_ctl_connect -> fos_ctl_channel + fds */
    FOS_CTL_CHANNEL_CLOSE = 5,  /* fos_ctl_channel_close -> empty (also a notification) */
    FOS_CTL_STATUS = 6,         /* -> JSON text */
    FOS_CTL_FLEETS = 7,         /* -> JSON text */
    FOS_CTL_KILL = 8,           /* member spec text -> JSON text */
    FOS_CTL_NAME_SERVICE = 9,   /* -> fos_mailbox_addr of /sys/name (public) */
    FOS_CTL_ATTACH = 10,        /* fos_ctl_attach + fd: a bulk region for a channel -> empty */
    FOS_CTL_DEPOSIT = 11,       /* fos_ctl_deposit + fd: held for one process -> empty */
    FOS_CTL_FETCH = 12,         /* fos_ctl_fetch -> empty + the deposited fd */
    /* fosd -> process, unsolicited (request_id 0) */
    FOS_CTL_NEW_CHANNEL = 32,   /* fos_ctl_channel + fds */
    FOS_CTL_SHUTDOWN = 33,      /* the node is stopping */
    FOS_CTL_ATTACHED = 34       /* fos_ctl_attach + fd, to the server side of the channel */
};

/* fos_ctl_mailbox_create.flags */
#define FOS_MBOX_PUBLIC 0x1u        /* any local process may connect, no key */
#define FOS_MBOX_FLEET_INTERNAL 0x2u/* only members of the owner's fleet may connect */
#define FOS_MBOX_SAME_UID 0x4u      /* only processes of the owner's uid (or root) */
#define FOS_MBOX_NAME_SERVICE 0x8u  /* the node's name service; members of /sys/name only */

typedef struct fos_ctl_hello_reply {
    uint64_t node;          /* this node's id */
    int32_t core;           /* core fosd pinned the caller to, -1 if not a member */
    uint32_t member_index;  /* index within its fleet, or UINT32_MAX */
    uint32_t ring_bytes;    /* capacity of each ring of a channel */
    uint32_t fleet_len;     /* followed by the caller's fleet name, if a member */
    uint8_t fleet_key[FOS_KEY_BYTES]; /* key of the fleet's internal mailboxes, members only */
} fos_ctl_hello_reply;

_Static_assert(sizeof(fos_ctl_hello_reply) == 40, "hello reply layout");

typedef struct fos_ctl_mailbox_create {
    uint8_t key[FOS_KEY_BYTES]; /* capability the owner chose (ignored if PUBLIC) */
    uint32_t flags;             /* FOS_MBOX_* */
    uint32_t reserved;
} fos_ctl_mailbox_create;

typedef struct fos_ctl_mailbox_reply {
    uint64_t mailbox;
} fos_ctl_mailbox_reply;

typedef struct fos_ctl_connect {
    fos_mailbox_addr addr;
    uint8_t key[FOS_KEY_BYTES];
} fos_ctl_connect;

/* Both ends of a channel get this with three descriptors (SCM_RIGHTS):
 * [0] memfd holding struct fos_chan_shm and both rings,
 * [1] eventfd the server side sleeps on, [2] eventfd the client side sleeps on.
 * NEW_CHANNEL to the owner of /sys/name carries a fourth: the sender's
 * stats page, read-only. */
typedef struct fos_ctl_channel {
    uint64_t channel;     /* channel id, unique on the node */
    uint64_t mailbox;     /* the mailbox it reaches */
    uint32_t ring_bytes;  /* capacity of each ring */
    int32_t pid;          /* sender's credentials, from SO_PEERCRED */
    uint32_t uid;
    uint32_t gid;
    int32_t sender_core;  /* core the sender is pinned to, -1 if not a member */
    uint32_t fleet_len;   /* followed by the sender's fleet name, if a member */
} fos_ctl_channel;

typedef struct fos_ctl_channel_close {
    uint64_t channel;
} fos_ctl_channel_close;

/* A bulk region shared by the two ends of a channel: a memfd whose size is
 * sealed, sent by the client; fosd checks it and passes it to the server.
 * Messages then name (slot, offset, length) in it instead of carrying bytes
 * (the blk server reads and writes disk blocks straight into it). */
#define FOS_MAX_ATTACH_BYTES (1ull << 30)
#define FOS_MAX_ATTACH_SLOTS 8u
typedef struct fos_ctl_attach {
    uint64_t channel;
    uint64_t bytes;   /* multiple of 4096, at most FOS_MAX_ATTACH_BYTES */
    uint32_t slot;    /* 0 ... FOS_MAX_ATTACH_SLOTS-1, chosen by the client */
    uint32_t reserved;
} fos_ctl_attach;

/* A descriptor handed from one process to another through fosd: the
 * giver (a fleet member, root or the node's owner; others get EPERM)
 * DEPOSITs it for a pid under a tag it chose at random (and tells the
 * taker the tag some other way, e.g. in a reply); the process with that pid
 * (SO_PEERCRED) FETCHes it once. Deposits not fetched within
 * FOS_DEPOSIT_TTL_MS are closed; at most FOS_DEPOSIT_MAX_PER_PID wait for
 * one taker, and FOS_DEPOSIT_MAX_PER_CONN come from one giver. */
#define FOS_DEPOSIT_TTL_MS 10000u
#define FOS_DEPOSIT_MAX_PER_PID 64u
#define FOS_DEPOSIT_MAX_PER_CONN 4096u
typedef struct fos_ctl_deposit {
    uint8_t tag[FOS_KEY_BYTES];
    int32_t pid;      /* the only process that may fetch it */
    uint32_t reserved;
} fos_ctl_deposit;

_Static_assert(sizeof(fos_ctl_deposit) == 24, "fos_ctl_deposit layout");

typedef struct fos_ctl_fetch {
    uint8_t tag[FOS_KEY_BYTES];
} fos_ctl_fetch;

/* Per-process statistics page, shared with fosd (and read-only with the
 * name server). Everything here is written by the process and therefore
 * untrusted for its readers: numbers to show and compare, never indexes. */
#define FOS_STATS_MAGIC 0x666f7373u /* "foss" */
typedef struct fos_stats_page {
    uint32_t magic;
    uint32_t version;
    uint64_t queue_len;   /* requests received and not yet answered */
    uint64_t handled;     /* requests answered */
    uint64_t received;    /* messages received */
    uint64_t rejected;    /* malformed messages answered with an error */
    uint64_t channels;    /* open channels */
} fos_stats_page;

/* ------------------------------------------------------------------ */
/* Validation helpers (fos_wire.c), shared with the shim               */
/* ------------------------------------------------------------------ */

/* 0 if buf[0..len) holds a well-formed message whose header agrees with
 * len; otherwise a positive errno (EPROTO, EMSGSIZE, EBADMSG). */
int fos_msg_validate(const void *buf, size_t len);

/* Same for a control datagram. */
int fos_ctl_validate(const void *buf, size_t len);

/* Name syntax: absolute, '/'-separated, no empty, "." or ".." components,
 * printable ASCII, at most FOS_MAX_NAME bytes. 0 or EINVAL. */
int fos_name_validate(const char *name, size_t len);

#endif
