import CFosFuse
import FosCore
import FosFS
import FosFSClient
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A FUSE request on its way from libfuse's callback to the task that answers it.
struct Req: @unchecked Sendable {
    // `@unchecked Sendable`: a fuse_req_t has one owner at a time. The callback
    // that received it hands it to exactly one task and never touches it
    // again; that task answers it exactly once. libfuse's reply functions are
    // safe on any thread (one writev on the session's descriptor; the request
    // is freed under libfuse's own lock).
    let raw: fosfuse_req
}

/// The daemon: one FSClient to the fs fleet and what the kernel knows.
///
/// Threads. The fos event loop reads requests from /dev/fuse itself
/// (fosfuse_poll, between its rings, spinning first and then sleeping in
/// epoll on the device too) and libfuse calls the entry points in
/// Callbacks.swift on that thread. An entry point copies its arguments,
/// takes the caller's credentials, starts a task on the loop and returns at
/// once; the task — whose fleet calls are ring messages sent from the loop
/// itself — answers the request when its reply comes. Nothing waits for the
/// fleet, so a lock wait or a slow member holds up no other request, and a
/// request costs no hand-off between threads (libfuse's worker threads cost
/// one wake-up each: a quarter of a create or an unlink through the mount).
final class Daemon: Sendable {
    let rt: FosRuntime
    let fs: FSClient
    /// Locks live in the fleet per client channel: every lock request and
    /// every release goes through this one client. Its short timeout bounds
    /// each wait (half of it), so an interrupted F_SETLKW ends within a second.
    let lockClient: FSClient
    /// Running as root, the daemon acts for each caller (FOS_OP_FS_AS): the
    /// fleet checks permissions and sets owners as for them.
    let actsForCallers: Bool
    let ownGid: UInt32
    /// Entry and attribute timeouts, seconds.
    let timeout: Double
    let nodes = NodeTable()
    let files = OpenFiles()
    let orphans: Orphans
    /// Drops the kernel's caches when others change things (root only:
    /// the fleet's change log is not for everyone). Without it, open files
    /// keep no pages from one open to the next.
    let invalidator: Invalidator?
    let groupCache = GroupCache()
    let noCapabilities = NoCapabilities()
    let holds: Holds
    let waits = Interruptible()
    let stats = Stats()
    /// Called on the loop as it handles the kernel's INIT, before the answer.
    let onInit: @Sendable (fosfuse_conn) -> Void

    init(rt: FosRuntime, fs: FSClient, lockClient: FSClient, timeout: Double,
         onInit: @escaping @Sendable (fosfuse_conn) -> Void) {
        self.onInit = onInit
        self.orphans = Orphans(fs: fs, pid: getpid())
        self.holds = Holds(rt: rt, fs: fs)
        self.invalidator = geteuid() == 0 ? Invalidator(rt: rt, nodes: nodes, noCapabilities: noCapabilities) : nil
        self.rt = rt
        self.fs = fs
        self.lockClient = lockClient
        self.actsForCallers = geteuid() == 0
        self.ownGid = getegid()
        self.timeout = timeout
    }

    // MARK: serving a request

    /// Answers `r` from a task on the fos loop: `body` replies on success;
    /// an error it throws is answered with its errno. With `asCaller`, the
    /// fleet sees the request's sender (uid, gid, groups) instead of root.
    func serve(_ r: Req, asCaller: Bool = true, _ body: @escaping @Sendable (Req) async throws -> Void) {
        let who = asCaller ? caller(r) : nil
        rt.loop.spawn {
            do {
                if let who {
                    try await FSClient.$actingAs.withValue(who) { try await body(r) }
                } else {
                    try await body(r)
                }
            } catch {
                fosfuse_reply_err(r.raw, Daemon.errno(of: error))
            }
        }
    }

    /// `body(0..<n)` at once, each in a task of its own on the loop (acting
    /// for the same caller), the results in order; the first error is
    /// thrown once all have ended. Not a task group: with one, a child's
    /// result now and then arrived as garbage under load on this toolchain
    /// (an index that was a pointer), and the daemon died.
    func inParallel<T: Sendable>(_ n: Int, _ body: @escaping @Sendable (Int) async throws -> T) async throws -> [T] {
        if n == 1 { return [try await body(0)] }
        let who = FSClient.actingAs
        let tasks = (0..<n).map { i in
            Task(executorPreference: rt.loop) { try await FSClient.$actingAs.withValue(who) { try await body(i) } }
        }
        var out: [T] = []
        out.reserveCapacity(n)
        var failure: Error?
        for t in tasks {
            do {
                out.append(try await t.value)
            } catch {
                failure = failure ?? error
            }
        }
        if let failure { throw failure }
        return out
    }

    /// The sender as the fleet should see it; nil when that is the daemon
    /// itself (root with our gid: no envelope needed).
    func caller(_ r: Req) -> Credentials? {
        guard actsForCallers else { return nil }
        var c = fosfuse_ctx()
        fosfuse_req_ctx(r.raw, &c)
        if c.uid == 0 && c.gid == ownGid { return nil }
        // Root passes every permission check: its groups change nothing.
        if c.uid == 0 { return Credentials(uid: 0, gid: c.gid) }
        let groups = groupCache.groups(pid: c.pid, uid: c.uid, gid: c.gid) {
            var g = [UInt32](repeating: 0, count: 64)
            let n = fosfuse_req_groups(r.raw, &g, Int32(g.count))
            return n < 0 ? [] : Array(g.prefix(Int(n)))
        }
        return Credentials(uid: c.uid, gid: c.gid, groups: groups)
    }

    static func errno(of e: Error) -> Int32 {
        switch e {
        case FosError.remote(let x): return x.rawValue
        case FosError.timeout: return ETIMEDOUT
        case is CancellationError: return EINTR
        // The fleet or the node is gone, or a reply broke the wire format.
        default: return EIO
        }
    }

    // MARK: what the kernel caches

    func attr(_ a: FileAttributes) -> fosfuse_attr {
        fosfuse_attr(ino: a.ino, size: a.size, blocks: a.blocks, rdev: a.rdev, mode: a.mode, nlink: a.nlink, uid: a.uid,
                     gid: a.gid, blksize: a.blockSize, reserved: 0, atime_ns: a.atime, mtime_ns: a.mtime,
                     ctime_ns: a.ctime)
    }

    func entry(_ a: FileAttributes) -> fosfuse_entry {
        fosfuse_entry(ino: a.ino, generation: UInt64(a.generation), attr: attr(a), attr_timeout: timeout,
                      entry_timeout: timeout)
    }

    /// Answers with an entry, counting the kernel's new reference first (a
    /// FORGET may follow the answer at once); undone if the answer did not
    /// reach the kernel.
    func replyEntry(_ r: Req, _ a: FileAttributes) {
        var e = entry(a)
        nodes.looked(a.ino)
        if fosfuse_reply_entry(r.raw, &e) != 0 { nodes.forget(a.ino, 1) }
    }

    func replyAttr(_ r: Req, _ a: FileAttributes) {
        var x = attr(orphans.shown(a))
        fosfuse_reply_attr(r.raw, &x, timeout)
    }

    func replyOK(_ r: Req) { fosfuse_reply_err(r.raw, 0) }

    /// How an open is answered: the kernel keeps a file's pages from one
    /// open to the next while every change by others is announced.
    func openReply(_ fh: UInt64) -> fosfuse_open {
        var o = fosfuse_open()
        o.fh = fh
        o.keep_cache = invalidator?.active.load(ordering: .relaxed) == true ? 1 : 0
        return o
    }
    func replyErr(_ r: Req, _ e: Int32) { fosfuse_reply_err(r.raw, e) }
}

/// The kernel's lookup count of each inode it holds (node ids are fos inode
/// numbers; FUSE_ROOT_ID 1 is the fos root). An inode leaves the table when
/// the kernel forgets it: invalidations go only to inodes in the table.
final class NodeTable: Sendable {
    private let counts = Mutex<[UInt64: UInt64]>([:])

    func looked(_ ino: UInt64) { counts.withLock { $0[ino, default: 0] += 1 } }

    /// Returns whether the kernel let go of the inode.
    @discardableResult
    func forget(_ ino: UInt64, _ n: UInt64) -> Bool {
        counts.withLock { c in
            guard let have = c[ino] else { return true }
            if have <= n {
                c.removeValue(forKey: ino)
                return true
            }
            c[ino] = have - n
            return false
        }
    }

    func known(_ ino: UInt64) -> Bool { ino == 1 || counts.withLock { $0[ino] != nil } }
    func all() -> [UInt64] { [1] + counts.withLock { Array($0.keys) }.filter { $0 != 1 } }
    var count: Int { counts.withLock { $0.count } }
}

/// Supplementary groups per process, read from /proc by libfuse (a file
/// read per request otherwise). Kept for as long as the kernel keeps
/// attributes: a process that changes its groups is seen with the new ones
/// within the same second, like a permission change through the fleet.
final class GroupCache: Sendable {
    private struct Entry {
        var uid: UInt32
        var gid: UInt32
        var groups: [UInt32]
        var expires: UInt64
    }
    private let entries = Mutex<[Int32: Entry]>([:])
    private let ttl: UInt64 = 1_000_000_000

    func groups(pid: Int32, uid: UInt32, gid: UInt32, read: () -> [UInt32]) -> [UInt32] {
        let now = monotonicNanos()
        if let e = entries.withLock({ $0[pid] }), e.uid == uid, e.gid == gid, e.expires > now { return e.groups }
        let g = read()
        entries.withLock { m in
            if m.count > 4096 { m = m.filter { $0.value.expires > now } }
            m[pid] = Entry(uid: uid, gid: gid, groups: g, expires: now + ttl)
        }
        return g
    }
}

/// Counters for the log and the tests.
final class Stats: Sendable {
    let largestWrite = Atomic<Int>(0)
    let largestRead = Atomic<Int>(0)
    let requests = Atomic<Int>(0)

    func wrote(_ n: Int) { largestWrite.max(n) }
    func read(_ n: Int) { largestRead.max(n) }
}

extension Atomic where Value == Int {
    func max(_ v: Int) {
        var cur = load(ordering: .relaxed)
        while v > cur {
            let (done, now) = compareExchange(expected: cur, desired: v, ordering: .relaxed)
            if done { return }
            cur = now
        }
    }
}
