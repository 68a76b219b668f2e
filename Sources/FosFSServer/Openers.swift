import FosCore
import FosFS
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Who may hold which inode open, for the file system's orphans (FosFS
/// Orphans.swift: an inode whose last name goes stays while it is open).
///
/// A process under the shim holds an open fos file as a memfd named
/// "fos-<ino in hex>-..." (Shim/src/fdtable.c), so /proc says exactly which
/// processes hold an inode — through dup, fork and exec, and across a
/// restart of this member. The OPEN requests this member answered only
/// say which processes to look at first; a full look at /proc happens in
/// the background, for orphans alone.
///
/// Not seen: processes in another pid namespace or on another machine, opens
/// answered by another member (a path that crosses members), and opens
/// through a FUSE mount (its daemon keeps its own hidden links,
/// FosFuse/Orphans.swift). Their files are freed with their last name.
final class Openers: Sendable {
    private struct Opener {
        var pid: Int32
        var at: UInt64  // monotonic ns of the open
    }
    private let state = Mutex<[UInt64: [Opener]]>([:])
    /// Inodes remembered; beyond this, records of dead processes go, then all.
    static let limit = 65536
    /// A process answered this recently may not have made its placeholder yet.
    static let settleNs: UInt64 = 50_000_000

    /// An OPEN from `pid` answered with `ino`.
    func opened(_ ino: UInt64, by pid: Int32) {
        guard pid > 0 else { return }
        let now = monotonicNanos()
        state.withLock { s in
            if let k = s[ino]?.firstIndex(where: { $0.pid == pid }) {
                s[ino]![k].at = now
                return
            }
            s[ino, default: []].append(Opener(pid: pid, at: now))
            if s.count > Self.limit {
                s = s.filter { $0.value.contains { Self.exists($0.pid) } }
                if s.count > Self.limit / 2 { s = [:] }
            }
        }
    }

    /// Inside the file system's operation, so quick: whether `ino`, losing
    /// its last name, may still be open. Looks only at the processes that
    /// opened it through this member.
    func mayBeOpen(_ ino: UInt64) -> Bool {
        guard let list = state.withLock({ $0[ino] }) else { return false }
        let now = monotonicNanos()
        var alive: [Int32] = []
        for o in list where Self.exists(o.pid) {
            if now &- o.at < Self.settleNs { return true }
            alive.append(o.pid)
        }
        if alive.contains(where: { Self.holds(pid: $0, ino: ino) }) { return true }
        forget(ino)
        return false
    }

    func forget(_ ino: UInt64) { _ = state.withLock { $0.removeValue(forKey: ino) } }

    /// Frees the orphans nobody holds, every 200 ms while the member lives.
    /// `failed` gets errors other than POSIX ones (the file system is no
    /// longer usable).
    func reap(_ fs: FileSystem, failed: @escaping @Sendable (Error) -> Void) async {
        while true {
            try? await Task.sleep(for: .milliseconds(200))
            guard let list = try? await fs.orphanList(), !list.isEmpty else { continue }
            var seen = Seen()
            let free = list.filter { !held($0, &seen) }
            var k = 0
            while k < free.count {
                let batch = free[k..<min(k + 64, free.count)]
                do {
                    try await fs.releaseOrphans(batch)
                } catch FSError.posix(_) {
                } catch {
                    return failed(error)
                }
                for ino in batch { forget(ino) }
                k += 64
            }
        }
    }

    /// What one reaper pass has read from /proc: each process's fd table at
    /// most once, all of them at most once.
    private struct Seen {
        var byPid: [Int32: Set<UInt64>] = [:]
        var everyone: Set<UInt64>?
    }

    private func held(_ ino: UInt64, _ seen: inout Seen) -> Bool {
        let now = monotonicNanos()
        for o in state.withLock({ $0[ino] }) ?? [] where Self.exists(o.pid) {
            if now &- o.at < Self.settleNs { return true }
            if seen.byPid[o.pid] == nil {
                var s = Set<UInt64>()
                Self.scan(pid: o.pid, into: &s)
                seen.byPid[o.pid] = s
            }
            if seen.byPid[o.pid]!.contains(ino) { return true }
        }
        if seen.everyone == nil {
            var all = Set<UInt64>()
            Self.eachProcess { Self.scan(pid: $0, into: &all) }
            seen.everyone = all
        }
        return seen.everyone!.contains(ino)
    }

    static func exists(_ pid: Int32) -> Bool { kill(pid, 0) == 0 || errno == EPERM }

    static func holds(pid: Int32, ino: UInt64) -> Bool {
        var s = Set<UInt64>()
        scan(pid: pid, into: &s)
        return s.contains(ino)
    }

    static func eachProcess(_ body: (Int32) -> Void) {
        guard let d = opendir("/proc") else { return }
        defer { closedir(d) }
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if let pid = Int32(name) { body(pid) }
        }
    }

    /// Adds the inodes whose placeholders `pid` holds.
    static func scan(pid: Int32, into set: inout Set<UInt64>) {
        let fd = open("/proc/\(pid)/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0, let d = fdopendir(fd) else {
            if fd >= 0 { close(fd) }
            return
        }
        defer { closedir(d) }
        let prefix = Array("/memfd:fos-".utf8)
        var link = [UInt8](repeating: 0, count: 96)
        while let e = readdir(d) {
            let n = link.withUnsafeMutableBytes { b in
                withUnsafeBytes(of: e.pointee.d_name) { name in
                    readlinkat(dirfd(d), name.baseAddress!.assumingMemoryBound(to: CChar.self),
                               b.baseAddress!.assumingMemoryBound(to: CChar.self), b.count)
                }
            }
            guard n > prefix.count, link.starts(with: prefix) else { continue }
            var ino: UInt64 = 0
            var k = prefix.count
            while k < n, let v = hexValue(link[k]), ino >> 60 == 0 {
                ino = ino << 4 | UInt64(v)
                k += 1
            }
            if k < n, link[k] == UInt8(ascii: "-"), k > prefix.count { set.insert(ino) }
        }
    }

    private static func hexValue(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
        default: nil
        }
    }
}
