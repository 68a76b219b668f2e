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
///   and when the member stops. Like the kernel's page cache: a member
///   killed before that loses what mappings wrote since (msync is what
///   makes it safe, as it is on Linux).
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
        }
        let state: Mutex<State>

        init(ino: UInt64, generation: UInt32, fd: CInt, content: [UInt8]) {
            self.ino = ino
            self.generation = generation
            self.fd = fd
            state = Mutex(State(shadow: content))
        }

        deinit { close(fd) }
    }

    private struct State {
        var files: [UInt64: MapFile] = [:]
        var bytes = 0
    }
    private let state = Mutex(State())

    /// A file larger than this is not kept in memory (EFBIG: the shim falls
    /// back to a private copy).
    static let maxFileBytes = 256 << 20
    /// All mapped files of the member together (twice this in memory, with
    /// the shadows): past it, ENOMEM.
    static let maxBytes = 1 << 30
    static let syncInterval: Duration = .seconds(2)
    /// A handed-out memfd not found mapped this long after is let go: the
    /// shim fetches and maps it right after the answer (a process stopped
    /// in between for longer would map a copy nobody else shares).
    static let settleNs: UInt64 = 3_000_000_000

    func file(_ ino: UInt64) -> MapFile? { state.withLock { $0.files[ino] } }
    func has(_ ino: UInt64) -> Bool { file(ino) != nil }

    // MARK: DataObserver (inside file system operations)

    func wrote(ino: UInt64, at offset: UInt64, _ bytes: ArraySlice<UInt8>, size: UInt64) {
        guard let f = file(ino) else { return }
        resize(f, to: size)
        f.state.withLock { s in
            let end = min(Int(offset) + bytes.count, s.shadow.count)
            guard Int(offset) < end else { return }
            let n = end - Int(offset)
            s.shadow.replaceSubrange(Int(offset)..<end, with: bytes.prefix(n))
            _ = bytes.withUnsafeBytes { pwriteAll(f.fd, $0.baseAddress!, n, off_t(offset)) }
        }
    }

    func resized(ino: UInt64, to size: UInt64) {
        guard let f = file(ino) else { return }
        resize(f, to: size)
    }

    private func resize(_ f: MapFile, to size: UInt64) {
        let delta = f.state.withLock { s -> Int in
            let old = s.shadow.count
            guard old != Int(size) else { return 0 }
            if Int(size) < old {
                s.shadow.removeSubrange(Int(size)...)
            } else {
                s.shadow += repeatElement(0, count: Int(size) - old)
            }
            // Shrinking drops the pages past the end (a mapping touching
            // them faults, as on Linux); growing reads as zeros.
            _ = ftruncate(f.fd, off_t(size))
            return Int(size) - old
        }
        if delta != 0 { state.withLock { $0.bytes += delta } }
    }

    // MARK: requests

    /// READ of a mapped file: from the memfd, which has what mappings wrote.
    func read(_ ino: UInt64, offset: UInt64, count: Int) -> [UInt8]? {
        guard let f = file(ino) else { return nil }
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
    func map(_ ino: UInt64, writable: Bool, pid: Int32, svc: FSService) async throws -> fos_fs_map_reply {
        guard pid > 0 else { throw FSError.posix(.noSuchProcess) }
        while true {
            let f: MapFile
            if let have = file(ino) { f = have } else { f = try await make(ino, svc: svc) }
            // The caller's own descriptor: read-only unless it may write.
            var give = f.fd
            if !writable {
                give = open("/proc/self/fd/\(f.fd)", O_RDONLY | O_CLOEXEC)
                guard give >= 0 else { throw FSError.posix(Errno(rawValue: errno)) }
            }
            defer { if give != f.fd { close(give) } }
            let tag: [UInt8]
            do {
                tag = try svc.rt.deposit(give, for: pid)
            } catch FosError.remote(let e) {
                throw FSError.posix(e)
            }
            let size = f.state.withLock { s -> Int in
                s.pids.insert(pid)
                s.given = monotonicNanos()
                if writable { s.writable = true }
                return s.shadow.count
            }
            // Let go of (release) while we handed it out: the caller would
            // map a copy nobody else shares. Again, with a new one.
            guard state.withLock({ $0.files[ino] === f }) else { continue }
            var r = fos_fs_map_reply()
            withUnsafeMutableBytes(of: &r.tag) { $0.copyBytes(from: tag) }
            r.size = UInt64(size)
            return r
        }
    }

    /// The memfd of `ino`, filled from the file inside one operation.
    private func make(_ ino: UInt64, svc: FSService) async throws -> MapFile {
        try await svc.fs.withContent(ino: ino, limit: UInt64(Self.maxFileBytes)) { content, generation in
            // Another MAP may have made it while we waited for the operation.
            if let have = file(ino) { return have }
            guard state.withLock({ $0.bytes }) + content.count <= Self.maxBytes else { throw FSError.posix(.noMemory) }
            let fd = fos_sys_memfd(String(name(ino).dropFirst("/memfd:".count)))
            guard fd >= 0 else { throw FSError.posix(Errno(rawValue: -fd)) }
            let made = MapFile(ino: ino, generation: generation, fd: fd, content: content)
            guard ftruncate(fd, off_t(content.count)) == 0,
                  content.withUnsafeBytes({ pwriteAll(fd, $0.baseAddress, content.count, 0) }) else {
                throw FSError.posix(.noMemory)
            }
            state.withLock {
                $0.files[ino] = made
                $0.bytes += content.count
            }
            return made
        }
    }

    // MARK: a restarted member

    /// At start: the memfds that processes still map from this member's
    /// previous life, taken back (through /proc/PID/map_files, which needs
    /// root), so that their mappings and everyone else's meet again and what
    /// they wrote since the last write-back reaches the file. A memfd not
    /// taken back stays a private copy of its mapper.
    func adopt(svc: FSService) async {
        var found: [UInt64: (pid: Int32, range: String)] = [:]
        let me = getpid()
        Openers.eachProcess { pid in
            guard pid != me, let text = procText("/proc/\(pid)/maps") else { return }
            for line in text.split(separator: "\n") {
                guard let r = line.range(of: prefix) else { continue }
                let hex = line[r.upperBound...].prefix { $0.isHexDigit }
                guard let ino = UInt64(hex, radix: 16), found[ino] == nil,
                      FileSystem.home(of: ino, members: svc.members) == svc.member,
                      let range = line.split(separator: " ").first else { continue }
                found[ino] = (pid, String(range))
            }
        }
        for (ino, at) in found {
            let fd = open("/proc/\(at.pid)/map_files/\(at.range)", O_RDWR | O_CLOEXEC)
            guard fd >= 0 else {
                say("member \(svc.member): cannot take back the mapping of inode \(ino) from pid \(at.pid): "
                    + String(cString: strerror(errno)))
                continue
            }
            var made = false
            do {
                try await svc.fs.withContent(ino: ino, limit: UInt64(Self.maxFileBytes)) { content, generation in
                    let f = MapFile(ino: ino, generation: generation, fd: fd, content: content)
                    made = true
                    // The file's size is the truth; what mappings wrote
                    // within it is found against the shadow and written back.
                    _ = ftruncate(fd, off_t(content.count))
                    f.state.withLock {
                        $0.pids = [at.pid]
                        $0.writable = true
                    }
                    state.withLock {
                        $0.files[ino] = f
                        $0.bytes += content.count
                    }
                }
                try await writeBack(ino, svc: svc)
            } catch {
                if !made { close(fd) }
                say("member \(svc.member): cannot take back the mapping of inode \(ino): \(error)")
            }
        }
    }

    // MARK: write-back

    /// Writes what mappings changed in `ino` to the file (nothing if it is
    /// not mapped). Errors are the file system's.
    func writeBack(_ ino: UInt64, svc: FSService) async throws {
        guard let f = file(ino), f.state.withLock({ $0.writable }) else { return }
        var changed: [(UInt64, [UInt8])] = []
        try await svc.fs.writeBack(ino: ino, generation: f.generation) {
            changed = Self.changes(f)
            return changed
        }
        for (offset, bytes) in changed {
            svc.watch.changed(ino: ino, offset: offset, length: UInt64(bytes.count))
        }
    }

    /// The runs of whole pages where the memfd differs from the shadow,
    /// which takes them on.
    private static func changes(_ f: MapFile) -> [(UInt64, [UInt8])] {
        f.state.withLock { s in
            let size = s.shadow.count
            guard size > 0 else { return [] }
            var now = [UInt8](repeating: 0, count: size)
            let got = now.withUnsafeMutableBytes { preadAll(f.fd, $0.baseAddress!, size, 0) }
            guard got else { return [] }
            var runs: [(UInt64, [UInt8])] = []
            let page = 4096
            var p = 0
            while p < size {
                let end = min(p + page, size)
                if now[p..<end] != s.shadow[p..<end] {
                    s.shadow.replaceSubrange(p..<end, with: now[p..<end])
                    if let last = runs.last, Int(last.0) + last.1.count == p {
                        runs[runs.count - 1].1 += now[p..<end]
                    } else {
                        runs.append((UInt64(p), Array(now[p..<end])))
                    }
                }
                p = end
            }
            return runs
        }
    }

    /// Every mapped file written back (the member is stopping).
    func writeBackAll(svc: FSService) async {
        for ino in state.withLock({ Array($0.files.keys) }) {
            do { try await writeBack(ino, svc: svc) } catch { say("member \(svc.member): write-back of mapped inode \(ino) failed: \(error)") }
        }
    }

    /// Every `syncInterval` while the member lives: writes back, and lets go
    /// of the files nobody maps any more.
    func run(svc: FSService) async {
        while true {
            try? await Task.sleep(for: Self.syncInterval)
            let files = state.withLock { Array($0.files.values) }
            guard !files.isEmpty else { continue }
            var unmapped: [MapFile] = []
            for f in files {
                do {
                    try await writeBack(f.ino, svc: svc)
                } catch FSError.posix(_) {
                } catch {
                    return svc.fatal("\(error)")
                }
                if !heldByRecorded(f) { unmapped.append(f) }
            }
            guard !unmapped.isEmpty else { continue }
            // A process that got a mapping by fork was never recorded: every
            // process's maps, off the loop thread.
            let names = Set(unmapped.map { name($0.ino) })
            let found = await Task.detached { Self.mappers(of: names) }.value
            for f in unmapped {
                if let pids = found[name(f.ino)] {
                    f.state.withLock { $0.pids.formUnion(pids) }
                    continue
                }
                await release(f, svc: svc)
            }
        }
    }

    /// The last write-back, then the memfd goes (with the last reference).
    private func release(_ f: MapFile, svc: FSService) async {
        do { try await writeBack(f.ino, svc: svc) } catch {}
        // Handed out again meanwhile: keep it.
        guard !f.state.withLock({ monotonicNanos() &- $0.given < Self.settleNs }) else { return }
        state.withLock { s in
            guard s.files[f.ino] === f else { return }
            s.files[f.ino] = nil
            s.bytes -= f.state.withLock { $0.shadow.count }
        }
    }

    /// Mapped by a recorded process, or handed out too recently to tell.
    private func heldByRecorded(_ f: MapFile) -> Bool {
        let (pids, given) = f.state.withLock { ($0.pids, $0.given) }
        if monotonicNanos() &- given < Self.settleNs { return true }
        let name = name(f.ino)
        var alive = Set<Int32>()
        var held = false
        for pid in pids where Openers.exists(pid) {
            alive.insert(pid)
            if !held, Self.maps(of: pid).contains(name) { held = true }
        }
        f.state.withLock { $0.pids = alive }
        return held
    }

    /// Our memfd of `ino` as /proc/PID/maps shows it.
    func name(_ ino: UInt64) -> String { prefix + String(ino, radix: 16) }

    /// The fos memfds `pid` maps (of any node), by /proc/PID/maps path ("/memfd:fosmap-…").
    static func maps(of pid: Int32) -> Set<String> {
        var out = Set<String>()
        guard let text = procText("/proc/\(pid)/maps") else { return out }
        for line in text.split(separator: "\n") {
            guard let r = line.range(of: "/memfd:fosmap-") else { continue }
            // "/memfd:fosmap-<node>-<ino> (deleted)"
            let path = line[r.lowerBound...].split(separator: " ").first.map(String.init) ?? ""
            out.insert(path)
        }
        return out
    }

    /// Which processes map each of `names`.
    static func mappers(of names: Set<String>) -> [String: Set<Int32>] {
        var found: [String: Set<Int32>] = [:]
        let me = getpid()
        Openers.eachProcess { pid in
            guard pid != me else { return }
            for n in maps(of: pid) where names.contains(n) { found[n, default: []].insert(pid) }
        }
        return found
    }
}

/// A /proc file's text (its size reads as 0: read to the end), or nil.
func procText(_ path: String) -> String? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var out = [UInt8]()
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 && errno == EINTR { continue }
        if n < 0 { return nil }
        if n == 0 { break }
        out += chunk[..<n]
    }
    return String(decoding: out, as: UTF8.self)
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
