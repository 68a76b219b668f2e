import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// The fos FUSE mounts of a node: one record per mount point in the node's
/// runtime directory (`mounts/`), written by the daemon once the mount is
/// live and removed when it unmounts, and the kernel's own list
/// (/proc/self/mountinfo). A record whose daemon is gone, or a `fuse.fos`
/// mount without a live daemon, is stale: `fosctl status` reports it and
/// `fosctl umount` cleans it.
public enum FuseMounts {
    /// The file system type `mount` shows (subtype "fos").
    public static let fsType = "fuse.fos"
    /// The daemon's process name (/proc/PID/comm).
    public static let daemonName = "fos-fuse"

    /// The source `mount` shows for a mount of `node`: names the node, so
    /// that each node's `fosctl status` tells its own mounts from others'.
    public static func source(node: UInt64) -> String { "fos@" + String(node, radix: 16) }

    public static func directory(runtime: String) -> String { runtime + "/mounts" }

    /// The record of `mountpoint` (an absolute, normalised path): its bytes
    /// hex-encoded, so that any path makes one flat file name. fos-run and
    /// the shim look for it by the same rule, in C (fos_mountinfo.h).
    public static func recordPath(runtime: String, mountpoint: String) -> String {
        let name = mountpoint.utf8.map { String(format: "%02x", $0) }.joined()
        return directory(runtime: runtime) + "/" + String(name.prefix(240)) + ".mount"
    }

    public static func logPath(runtime: String, mountpoint: String) -> String {
        let p = recordPath(runtime: runtime, mountpoint: mountpoint)
        return String(p.dropLast(".mount".count)) + ".log"
    }

    public struct Record: Codable, Sendable, Equatable {
        public var pid: Int32
        public var mountpoint: String
        public var node: String
        public var maxWrite: UInt32
        public init(pid: Int32, mountpoint: String, node: String, maxWrite: UInt32) {
            self.pid = pid
            self.mountpoint = mountpoint
            self.node = node
            self.maxWrite = maxWrite
        }
    }

    /// Writes the record atomically (temporary file, fsync, rename).
    public static func write(_ r: Record, runtime: String) throws {
        let dir = directory(runtime: runtime)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o755])
        let path = recordPath(runtime: runtime, mountpoint: r.mountpoint)
        let data = try JSONEncoder().encode(r)
        let tmp = path + ".tmp.\(getpid())"
        guard FileManager.default.createFile(atPath: tmp, contents: data, attributes: [.posixPermissions: 0o644]) else {
            throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: tmp])
        }
        let fd = open(tmp, O_RDONLY)
        if fd >= 0 {
            fsync(fd)
            close(fd)
        }
        guard rename(tmp, path) == 0 else {
            unlink(tmp)
            throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: path])
        }
    }

    /// The record of a mount point; nil if none or unreadable. Its content
    /// came from a file anyone with access to the runtime directory could
    /// have written: callers check the pid before they signal it.
    public static func read(runtime: String, mountpoint: String) -> Record? {
        guard let d = FileManager.default.contents(atPath: recordPath(runtime: runtime, mountpoint: mountpoint)),
              d.count < 65536 else { return nil }
        return try? JSONDecoder().decode(Record.self, from: d)
    }

    public static func remove(runtime: String, mountpoint: String) {
        unlink(recordPath(runtime: runtime, mountpoint: mountpoint))
    }

    /// Every record of the node.
    public static func records(runtime: String) -> [Record] {
        let dir = directory(runtime: runtime)
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        return names.filter { $0.hasSuffix(".mount") }.sorted().compactMap { n in
            guard let d = FileManager.default.contents(atPath: dir + "/" + n), d.count < 65536 else { return nil }
            return try? JSONDecoder().decode(Record.self, from: d)
        }
    }

    /// Is `pid` a live fos-fuse daemon (not a zombie, not a recycled pid)?
    public static func daemonAlive(_ pid: Int32) -> Bool {
        guard pid > 0,
              let comm = try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8),
              comm.trimmingCharacters(in: .whitespacesAndNewlines) == daemonName,
              let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")")
        else { return false }
        let state = stat[stat.index(after: close)...].trimmingCharacters(in: .whitespaces).first
        return state != "Z" && state != "X"
    }

    // MARK: the kernel's mount table

    public struct Mounted: Sendable, Equatable {
        public var mountpoint: String
        public var fsType: String
        public var source: String
        /// major:minor of the mount (the bdi of a FUSE mount is named so).
        public var device: String
    }

    /// The mounts of `fsType` in /proc/self/mountinfo.
    public static func mounted(fsType: String = FuseMounts.fsType) -> [Mounted] {
        guard let text = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else { return [] }
        return text.split(separator: "\n").compactMap { parseMountinfo(String($0)) }.filter { $0.fsType == fsType }
    }

    /// One line of mountinfo: "id parent major:minor root mountpoint options
    /// [optional fields...] - fstype source superoptions".
    static func parseMountinfo(_ line: String) -> Mounted? {
        let f = line.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
        guard f.count >= 10, let dash = f.firstIndex(of: "-"), dash >= 6, dash + 2 < f.count else { return nil }
        return Mounted(mountpoint: unescape(f[4]), fsType: f[dash + 1], source: unescape(f[dash + 2]), device: f[2])
    }

    /// mountinfo writes space, tab, newline and backslash as \ooo.
    static func unescape(_ s: String) -> String {
        guard s.contains("\\") else { return s }
        var out = [UInt8]()
        let b = Array(s.utf8)
        var i = 0
        while i < b.count {
            if b[i] == 0x5C, i + 3 < b.count, b[(i + 1)...(i + 3)].allSatisfy({ (0x30...0x37).contains($0) }) {
                let v = b[(i + 1)...(i + 3)].reduce(0) { $0 * 8 + Int($1 - 0x30) }
                out.append(UInt8(truncatingIfNeeded: v))
                i += 4
            } else {
                out.append(b[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// An absolute path to `path` without touching what its last component
    /// names (a mount point whose daemon died answers ENOTCONN): the parent
    /// is resolved (symlinks too), and so is a last component that is a
    /// symbolic link (mount(2) follows it; lstat does not look through it).
    public static func normalize(_ path: String) -> String { normalize(path, links: 0) }

    private static func normalize(_ path: String, links: Int) -> String {
        let n = lexical(path)
        var st = stat()
        guard links < 40, lstat(n, &st) == 0, st.st_mode & S_IFMT == S_IFLNK else { return n }
        var buf = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let len = readlink(n, &buf, buf.count - 1)
        guard len > 0 else { return n }
        let target = String(decoding: buf.prefix(len).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let parent = n.hasSuffix("/") ? n : String(n[..<(n.lastIndex(of: "/") ?? n.startIndex)])
        return normalize(target.hasPrefix("/") ? target : parent + "/" + target, links: links + 1)
    }

    private static func lexical(_ path: String) -> String {
        var p = path
        if !p.hasPrefix("/") { p = FileManager.default.currentDirectoryPath + "/" + p }
        var parts: [Substring] = []
        for c in p.split(separator: "/") {
            if c == "." { continue }
            if c == ".." {
                _ = parts.popLast()
                continue
            }
            parts.append(c)
        }
        guard let last = parts.popLast() else { return "/" }
        let parent = "/" + parts.joined(separator: "/")
        var buf = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let resolved = realpath(parent, &buf) != nil
            ? String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) : parent
        return (resolved == "/" ? "" : resolved) + "/" + last
    }

    /// Is `mountpoint` a fos mount right now?
    public static func isMounted(_ mountpoint: String) -> Bool {
        mounted().contains { $0.mountpoint == mountpoint }
    }
}
