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
/// "fos-<ino in hex>-..." (Shim/src/fdtable.c), as a FUSE daemon does for
/// the files open through its mount (FosFuse/Holds.swift), so /proc says
/// exactly which processes hold an inode — through dup, fork and exec.
/// That look is too slow for every unlink, so the member records the
/// processes it opened each of its inodes for (an OPEN answered here, or
/// one forwarded with the caller's pid; a HOLD), and at start every process
/// that holds one of its inodes. An inode losing its last name becomes an
/// orphan while any recorded process lives — but the unlinking process
/// itself when it says it holds no fos file and passed none to a child
/// (FOS_FS_UNLINK_HOLDS_NONE), or passed none and its descriptors do not
/// hold this one (…_SHARED_NONE) — and a background pass frees the orphans
/// that no process holds, by /proc.
///
/// Not seen: processes in another pid namespace or on another machine, or
/// whose /proc/PID/fd this member may not read (a node not run as root);
/// a process that got the file only from a recorded process that has
/// exited since. Their files are freed with the last name.
/// A placeholder names its node: another node's on this host is not ours.
final class Openers: Sendable {
    /// Our node: placeholders of another node on this host name its inodes.
    let node: UInt64
    init(node: UInt64) { self.node = node }

    private struct Opener {
        var pid: Int32
        var at: UInt64  // monotonic ns of the open
    }
    private struct State {
        var byIno: [UInt64: [Opener]] = [:]
        /// Past this many inodes, records that no longer matter go.
        var trimAt = Openers.limit
    }
    private let state = Mutex(State())
    static let limit = 65536

    /// An open of `ino` for `pid`.
    func opened(_ ino: UInt64, by pid: Int32) {
        guard pid > 0 else { return }
        let now = monotonicNanos()
        state.withLock { s in
            if let k = s.byIno[ino]?.firstIndex(where: { $0.pid == pid }) {
                s.byIno[ino]![k].at = now
                return
            }
            s.byIno[ino, default: []].append(Opener(pid: pid, at: now))
            if s.byIno.count > s.trimAt {
                Self.trim(&s.byIno, node: node)
                s.trimAt = max(Self.limit, s.byIno.count * 2)
            }
        }
    }

    /// Keeps the records that still matter: of processes that hold the
    /// inode now, or were answered too recently to tell. Each recorded
    /// process's descriptors are read once (a rare, amortised cost: the
    /// next trim is as many opens away as records are kept).
    private static func trim(_ s: inout [UInt64: [Opener]], node: UInt64) {
        let now = monotonicNanos()
        var held: [Int32: Set<UInt64>] = [:]
        for (ino, list) in s {
            let keep = list.filter { o in
                guard exists(o.pid) else { return false }
                if now &- o.at < settleNs { return true }
                if held[o.pid] == nil {
                    var h = Set<UInt64>()
                    scan(pid: o.pid, into: &h, node: node)
                    held[o.pid] = h
                }
                return held[o.pid]!.contains(ino)
            }
            s[ino] = keep.isEmpty ? nil : keep
        }
    }

    /// At start: the processes holding inodes of this member (a restarted
    /// member has no records, and its clients kept their files open).
    func seed(homedAt member: Int, of members: Int) {
        Self.eachProcess { pid in
            var held = Set<UInt64>()
            Self.scan(pid: pid, into: &held, node: node)
            for ino in held where FileSystem.home(of: ino, members: members) == member { opened(ino, by: pid) }
        }
    }

    /// Inside the file system's operation, so quick: whether `ino`, losing
    /// its last name (removed by `unlinker`, if it said), may still be open.
    func mayBeOpen(_ ino: UInt64, unlinker u: Unlinker?) -> Bool {
        guard let list = state.withLock({ $0.byIno[ino] }) else { return false }
        for o in list where Self.exists(o.pid) {
            if let u, u.pid == o.pid {
                // The unlinker's own open: it holds nothing, or it gave no
                // child its files and its descriptors (stable: it waits for
                // this answer) do not have this one.
                if u.holdsNone { continue }
                if let held = u.held {
                    if !held.contains(ino) { continue }
                } else if u.sharedNone {
                    var held = Set<UInt64>()
                    Self.scan(pid: o.pid, into: &held, node: node)
                    if !held.contains(ino) { continue }
                }
            }
            return true
        }
        forget(ino)
        return false
    }

    func forget(_ ino: UInt64) { _ = state.withLock { $0.byIno.removeValue(forKey: ino) } }

    /// A process answered this recently may not have made its placeholder yet.
    static let settleNs: UInt64 = 1_000_000_000

    /// Frees the orphans nobody holds, every 200 ms while the member lives.
    /// `failed` gets errors other than POSIX ones (the file system is no
    /// longer usable).
    /// `mapped`: whether a process maps the inode (SharedMaps), which keeps it.
    func reap(_ fs: FileSystem, mapped: @escaping @Sendable (UInt64) -> Bool,
              failed: @escaping @Sendable (Error) -> Void) async {
        while true {
            try? await Task.sleep(for: .milliseconds(200))
            guard let list = try? await fs.orphanList(), !list.isEmpty else { continue }
            var byPid: [Int32: Set<UInt64>] = [:]
            let unsure = list.filter { !mapped($0) && !heldByRecorded($0, &byPid) }
            guard !unsure.isEmpty else { continue }
            // Every process's descriptors: off the loop thread (about a
            // millisecond per few hundred processes).
            let node = self.node
            let everyone = await Task.detached { () -> Set<UInt64> in
                var all = Set<UInt64>()
                Self.eachProcess { Self.scan(pid: $0, into: &all, node: node) }
                return all
            }.value
            let free = unsure.filter { !everyone.contains($0) }
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

    /// Held by a recorded process: one that has its placeholder, or was
    /// answered so recently that it may not have made it yet.
    private func heldByRecorded(_ ino: UInt64, _ byPid: inout [Int32: Set<UInt64>]) -> Bool {
        let now = monotonicNanos()
        for o in state.withLock({ $0.byIno[ino] }) ?? [] where Self.exists(o.pid) {
            if now &- o.at < Self.settleNs { return true }
            if byPid[o.pid] == nil {
                var s = Set<UInt64>()
                Self.scan(pid: o.pid, into: &s, node: node)
                byPid[o.pid] = s
            }
            if byPid[o.pid]!.contains(ino) { return true }
        }
        return false
    }

    static func exists(_ pid: Int32) -> Bool { kill(pid, 0) == 0 || errno == EPERM }

    static func eachProcess(_ body: (Int32) -> Void) {
        guard let d = opendir("/proc") else { return }
        defer { closedir(d) }
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if let pid = Int32(name) { body(pid) }
        }
    }

    /// Adds the inodes whose placeholders `pid` holds for `node`
    /// ("fos-<ino>-<flags>-<mode>-<node>"; one without a node counts too).
    static func scan(pid: Int32, into set: inout Set<UInt64>, node: UInt64) {
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
            // Four hex fields after the prefix, each led by "-" but the first.
            var fields: [UInt64] = []
            var k = prefix.count
            while fields.count < 4 {
                var v: UInt64 = 0
                let start = k
                while k < n, let d = hexValue(link[k]), v >> 60 == 0 {
                    v = v << 4 | UInt64(d)
                    k += 1
                }
                guard k > start else { break }
                fields.append(v)
                guard k < n, link[k] == UInt8(ascii: "-") else { break }
                k += 1
            }
            guard fields.count >= 3 else { continue }
            if fields.count == 4, fields[3] != node { continue }
            set.insert(fields[0])
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
