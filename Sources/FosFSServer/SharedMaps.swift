import CFosSys
import CFosWire
import FosCore
import FosFS
import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Shared mappings of this member's files (FOS_OP_FS_MAP), coherent between
/// processes as on Linux, where every MAP_SHARED mapping, read(2) and
/// write(2) of a file meet in its one page cache.
///
/// Here the page cache of a mapped file is one memfd with the whole file,
/// kept by the inode's home member for as long as any process maps it:
/// - MAP fills it from the file (inside one file system operation), hands
///   it to the caller through fosd (read-only unless the caller may write
///   and asked to), and the caller maps it: every mapping of the file on
///   this machine shares its pages;
/// - READ is served from it; WRITE and size changes are applied to it
///   inside the operation that makes them (FosFS Mapped.swift);
/// - pages written through a mapping are found by comparing it with a
///   shadow copy of what the file holds, and written back at MSYNC, at
///   fsync of the file, every `syncInterval`, when the last mapping is gone
///   and when the member stops (SharedMapsWriteBack.swift). Like the
///   kernel's page cache: a member killed before that loses nothing only
///   if it comes back and takes the memfds back from their mappers (root).
///
/// The memfd is mode 0400 and sealed against further seals: a read-only
/// taker cannot reopen it writable through /proc, and no taker can seal it
/// against the member's own writes. Memory is charged to the user whose
/// MAP made it.
///
/// A process that maps the memory is found by /proc/PID/maps (the memfd is
/// named "fosmap-<node>-<ino>", in hex: another node on this host has the
/// same inode numbers; deliberately not the "fos-<hex>-" of the shim's
/// placeholders, which this member itself would then seem to hold).
/// A mapped file stays while it is mapped, also when its last name goes
/// (an orphan, see Openers).
final class SharedMaps: DataObserver, Sendable {
    /// "/memfd:fosmap-<node>-", the start of our memfds' paths in /proc.
    let prefix: String

    init(node: UInt64) {
        prefix = "/memfd:fosmap-\(String(node, radix: 16))-"
    }

    /// One mapped file.
    final class MapFile: Sendable {
        let ino: UInt64
        let generation: UInt32
        /// The memfd. Closed when the last reference goes: a reader that
        /// holds the object never reads a descriptor number used again.
        let fd: CInt
        /// The memfd's own inode: how a mapper names the memfd it maps.
        let memfdIno: UInt64
        /// Whose memory it is (ENOMEM past `maxBytesPerUser`).
        let uid: UInt32
        struct State {
            /// The file's bytes as the file system has them (its size is the
            /// file's size): where the memfd differs, a mapping wrote.
            var shadow: [UInt8]
            /// Processes it was handed to or found mapping it.
            var pids: Set<Int32> = []
            /// When it was last handed out (monotonic ns): the taker may
            /// not have mapped it yet.
            var given: UInt64 = 0
            var writable = false
            /// A background write-back that failed, for the next MSYNC or FSYNC.
            var error: Errno?
        }
        let state: Mutex<State>

        init(ino: UInt64, generation: UInt32, fd: CInt, uid: UInt32, content: [UInt8]) {
            self.ino = ino
            self.generation = generation
            self.fd = fd
            self.uid = uid
            var st = stat()
            memfdIno = fstat(fd, &st) == 0 ? UInt64(st.st_ino) : 0
            state = Mutex(State(shadow: content))
        }

        deinit { close(fd) }
    }

    private struct State {
        var files: [UInt64: MapFile] = [:]
        var bytesByUser: [UInt32: Int] = [:]
    }
    private let state = Mutex(State())

    /// A file larger than this is not kept in memory (EFBIG: the shim falls
    /// back to a private copy).
    static let maxFileBytes = 256 << 20
    /// Mapped files one user's MAPs made (twice this in memory, with the
    /// shadows): past it, ENOMEM.
    static let maxBytesPerUser = 1 << 30
    static let syncInterval: Duration = .seconds(2)
    /// A handed-out memfd not found mapped this long after is let go: the
    /// shim fetches and maps it right after the answer (a process stopped
    /// in between for longer would map a copy nobody else shares).
    static let settleNs: UInt64 = 3_000_000_000

    func file(_ ino: UInt64) -> MapFile? { state.withLock { $0.files[ino] } }
    func has(_ ino: UInt64) -> Bool { file(ino) != nil }
    /// No file is mapped shared from this member.
    var isEmpty: Bool { state.withLock { $0.files.isEmpty } }
    var files: [MapFile] { state.withLock { Array($0.files.values) } }

    /// `f` leaves the table (if still there; with `unlessGivenSince`, only if
    /// not handed out after that time): reads and writes of its file go to
    /// the file system alone from now on. Returns whether it left.
    @discardableResult
    func drop(_ f: MapFile, why: String? = nil, unlessGivenSince since: UInt64? = nil) -> Bool {
        let dropped = state.withLock { s -> Bool in
            guard s.files[f.ino] === f else { return false }
            if let since, f.state.withLock({ $0.given > since }) { return false }
            s.files[f.ino] = nil
            s.bytesByUser[f.uid, default: 0] -= f.state.withLock { $0.shadow.count }
            return true
        }
        if dropped, let why { say("shared mapping of inode \(f.ino) given up: \(why)") }
        return dropped
    }

    // MARK: DataObserver (inside file system operations)

    func wrote(ino: UInt64, at offset: UInt64, _ bytes: ArraySlice<UInt8>, size: UInt64) {
        guard let f = file(ino) else { return }
        guard resize(f, to: size) else { return }
        let ok = f.state.withLock { s -> Bool in
            let end = min(Int(offset) + bytes.count, s.shadow.count)
            guard Int(offset) < end else { return true }
            let n = end - Int(offset)
            s.shadow.replaceSubrange(Int(offset)..<end, with: bytes.prefix(n))
            return bytes.withUnsafeBytes { pwriteAll(f.fd, $0.baseAddress!, n, off_t(offset)) }
        }
        if !ok { drop(f, why: "write to the memfd failed: \(Errno(rawValue: errno))") }
    }

    func resized(ino: UInt64, to size: UInt64) {
        guard let f = file(ino) else { return }
        _ = resize(f, to: size)
    }

    func freed(ino: UInt64) {
        guard let f = file(ino) else { return }
        drop(f)
    }

    /// Makes memfd and shadow `size` bytes long; false (and `f` dropped) if
    /// the memfd refused.
    private func resize(_ f: MapFile, to size: UInt64) -> Bool {
        let (delta, ok) = f.state.withLock { s -> (Int, Bool) in
            let old = s.shadow.count
            guard old != Int(size) else { return (0, true) }
            // Shrinking drops the pages past the end (a mapping touching
            // them faults, as on Linux); growing reads as zeros.
            guard ftruncate(f.fd, off_t(size)) == 0 else { return (0, false) }
            if Int(size) < old {
                s.shadow.removeSubrange(Int(size)...)
            } else {
                s.shadow += repeatElement(0, count: Int(size) - old)
            }
            return (Int(size) - old, true)
        }
        if delta != 0 { state.withLock { $0.bytesByUser[f.uid, default: 0] += delta } }
        if !ok { drop(f, why: "resizing the memfd failed: \(Errno(rawValue: errno))") }
        return ok
    }

    // MARK: requests

    /// READ of a mapped file: from the memfd, which has what mappings wrote.
    /// Nil when the file is not mapped (`generation`: the file READ found).
    func read(_ ino: UInt64, generation: UInt32, offset: UInt64, count: Int) -> [UInt8]? {
        guard let f = file(ino) else { return nil }
        guard f.generation == generation else {
            drop(f, why: "its inode number names another file now")
            return nil
        }
        let size = UInt64(f.state.withLock { $0.shadow.count })
        guard offset < size else { return [] }
        let n = Int(min(UInt64(count), size - offset))
        var out = [UInt8](repeating: 0, count: n)
        // Short only if a writable mapper shrank the memfd: zeros, as the
        // file system will have after the next write-back.
        _ = out.withUnsafeMutableBytes { preadAll(f.fd, $0.baseAddress!, n, off_t(offset)) }
        return out
    }

    /// MAP: the caller's tag for the memfd (made if need be), and the size.
    func map(_ a: FileAttributes, writable: Bool, cred: Credentials, svc: FSService) async throws -> fos_fs_map_reply {
        guard cred.pid > 0 else { throw FSError.posix(.noSuchProcess) }
        for _ in 0..<3 {
            let f: MapFile
            if let have = file(a.ino), have.generation == a.generation {
                f = have
            } else {
                if let stale = file(a.ino) { drop(stale, why: "its inode number names another file now") }
                f = try await make(a.ino, uid: cred.uid, svc: svc)
            }
            // The caller's own descriptor: read-only unless it may write.
            var give = f.fd
            if !writable {
                give = open("/proc/self/fd/\(f.fd)", O_RDONLY | O_CLOEXEC)
                guard give >= 0 else { throw FSError.posix(Errno(rawValue: errno)) }
            }
            defer { if give != f.fd { close(give) } }
            let tag: [UInt8]
            do {
                tag = try svc.rt.deposit(give, for: cred.pid)
            } catch FosError.remote(let e) {
                throw FSError.posix(e)
            }
            // Marked as given and checked to be still ours in one step
            // (release checks and drops in one step too, under the same
            // lock): let go of meanwhile, the caller would map a copy nobody
            // else shares. Again, with a new one.
            let size = state.withLock { t -> Int? in
                guard t.files[a.ino] === f else { return nil }
                return f.state.withLock { s -> Int in
                    s.pids.insert(cred.pid)
                    s.given = monotonicNanos()
                    if writable { s.writable = true }
                    return s.shadow.count
                }
            }
            guard let size else { continue }
            var r = fos_fs_map_reply()
            withUnsafeMutableBytes(of: &r.tag) { $0.copyBytes(from: tag) }
            r.size = UInt64(size)
            return r
        }
        // Let go of three times over (its memfd refuses writes): not now.
        throw FSError.posix(.resourceTemporarilyUnavailable)
    }

    /// The memfd of `ino`, filled from the file inside one operation.
    private func make(_ ino: UInt64, uid: UInt32, svc: FSService) async throws -> MapFile {
        try await svc.fs.withContent(ino: ino, limit: UInt64(Self.maxFileBytes)) { content, generation in
            // Another MAP may have made it while we waited for the operation.
            if let have = file(ino), have.generation == generation { return have }
            guard state.withLock({ $0.bytesByUser[uid, default: 0] }) + content.count <= Self.maxBytesPerUser else {
                throw FSError.posix(.noMemory)
            }
            let fd = try Self.memfd(String(name(ino).dropFirst("/memfd:".count)))
            let made = MapFile(ino: ino, generation: generation, fd: fd, uid: uid, content: content)
            guard ftruncate(fd, off_t(content.count)) == 0,
                  content.withUnsafeBytes({ pwriteAll(fd, $0.baseAddress, content.count, 0) }) else {
                throw FSError.posix(.noMemory)
            }
            enter(made, bytes: content.count)
            return made
        }
    }

    /// Enters `f` in the table (replacing any other of its inode).
    func enter(_ f: MapFile, bytes: Int) {
        let old = state.withLock { s -> MapFile? in
            let old = s.files[f.ino]
            s.files[f.ino] = f
            s.bytesByUser[f.uid, default: 0] += bytes
            return old
        }
        if let old {
            state.withLock { $0.bytesByUser[old.uid, default: 0] -= old.state.withLock { $0.shadow.count } }
        }
    }

    /// A memfd that no taker can reopen through /proc (mode 0400: only its
    /// owner, the member, may, and only to read; root may anything), and
    /// that nobody can seal.
    static func memfd(_ name: String) throws -> CInt {
        let fd = fos_sys_memfd(name)
        guard fd >= 0 else { throw FSError.posix(Errno(rawValue: -fd)) }
        guard fchmod(fd, 0o400) == 0, fos_sys_seal_seals(fd) == 0 else {
            let e = errno
            close(fd)
            throw FSError.posix(Errno(rawValue: e))
        }
        return fd
    }

    /// Our memfd of `ino` as /proc/PID/maps shows it.
    func name(_ ino: UInt64) -> String { prefix + String(ino, radix: 16) }
}

/// pwrite(2) of all `n` bytes (EINTR and short writes retried).
@discardableResult
func pwriteAll(_ fd: CInt, _ p: UnsafeRawPointer?, _ n: Int, _ off: off_t) -> Bool {
    guard let p else { return n == 0 }
    var done = 0
    while done < n {
        let w = pwrite(fd, p + done, n - done, off + off_t(done))
        if w < 0 && errno == EINTR { continue }
        if w <= 0 { return false }
        done += w
    }
    return true
}

/// pread(2) of `n` bytes; what the file lacks stays as the caller had it.
@discardableResult
func preadAll(_ fd: CInt, _ p: UnsafeMutableRawPointer, _ n: Int, _ off: off_t) -> Bool {
    var done = 0
    while done < n {
        let r = pread(fd, p + done, n - done, off + off_t(done))
        if r < 0 && errno == EINTR { continue }
        if r < 0 { return false }
        if r == 0 { return true }
        done += r
    }
    return true
}
