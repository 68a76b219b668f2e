import FosCore
import FosFS
import FosFSClient
import Synchronization

/// Open files that lose their last name stay readable and writable until
/// closed, as POSIX wants. The fleet keeps no open state and frees an
/// inode with its last link, so the daemon keeps one more: before a name
/// of a file open through this mount goes (unlink, or rename over it), the
/// inode gets a hidden link in /.fos-fuse-orphans (root's, mode 0700, not
/// listed through the mount), removed at the last close. Its attributes
/// through the mount do not count that link. A daemon that dies leaves its
/// links behind; the next one on the node removes those of dead daemons.
///
/// That is for names removed through this mount. When another client
/// removes the last name of a file open here, the fleet keeps the file as
/// its orphan: the daemon holds it as a shim process would (Holds.swift).
final class Orphans: Sendable {
    static let dirName = ".fos-fuse-orphans"
    private let fs: FSClient
    private let prefix: String
    private struct State {
        var dir: UInt64?
        var hidden: [UInt64: String] = [:]
        var next = 0
    }
    private let state = Mutex(State())

    init(fs: FSClient, pid: Int32) {
        self.fs = fs
        prefix = "\(pid)-\(monotonicNanos())-"
    }

    /// Hidden from the mount's root directory.
    static func hides(parent: UInt64, name: String) -> Bool { parent == FSClient.rootIno && name == dirName }

    func isOrphan(_ ino: UInt64) -> Bool { state.withLock { $0.hidden[ino] != nil } }

    /// `a` as the mount shows it: without the hidden link.
    func shown(_ a: FileAttributes) -> FileAttributes {
        guard isOrphan(a.ino), a.nlink > 0 else { return a }
        var b = a
        b.nlink -= 1
        return b
    }

    /// Before `name` in `parent` goes: keeps its inode if it is an open
    /// regular file whose last name this is. Returns the inode kept (to
    /// release if the removal then fails). The daemon's own doing: as root.
    func keepIfOpen(parent: UInt64, name: String, openFiles: OpenFiles) async -> UInt64? {
        guard openFiles.count > 0 else { return nil }
        return await FSClient.$actingAs.withValue(nil) { () async -> UInt64? in
            guard let a = try? await fs.lookup(parent: parent, name: name), a.type == .regular, a.nlink == 1,
                  openFiles.isOpen(a.ino), !isOrphan(a.ino), let dir = await directory() else { return nil }
            let n = state.withLock { s -> String in
                s.next += 1
                return prefix + String(s.next)
            }
            guard (try? await fs.link(ino: a.ino, newParent: dir, name: n)) != nil else { return nil }
            state.withLock { $0.hidden[a.ino] = n }
            return a.ino
        }
    }

    /// The last close of `ino`: its hidden link goes.
    func released(_ ino: UInt64) async {
        guard let (dir, n) = state.withLock({ s -> (UInt64, String)? in
            guard let d = s.dir, let n = s.hidden.removeValue(forKey: ino) else { return nil }
            return (d, n)
        }) else { return }
        await FSClient.$actingAs.withValue(nil) { try? await fs.unlink(parent: dir, name: n) }
    }

    private func directory() async -> UInt64? {
        if let d = state.withLock({ $0.dir }) { return d }
        let a: FileAttributes
        do {
            a = try await fs.mkdir(parent: FSClient.rootIno, name: Orphans.dirName, mode: 0o700)
        } catch FosError.remote(let e) where e == .fileExists {
            guard let b = try? await fs.lookup(parent: FSClient.rootIno, name: Orphans.dirName), b.type == .directory
            else { return nil }
            a = b
        } catch {
            return nil
        }
        state.withLock { $0.dir = a.ino }
        return a.ino
    }

    /// Removes the hidden links of daemons that are gone (their pid is the
    /// first part of the name).
    func sweep(alive: (Int32) -> Bool) async {
        guard let dir = try? await fs.lookup(parent: FSClient.rootIno, name: Orphans.dirName).ino,
              let entries = try? await fs.readdirAll(ino: dir) else { return }
        for e in entries where e.name != "." && e.name != ".." {
            guard let pid = e.name.split(separator: "-").first.flatMap({ Int32($0) }), !alive(pid) else { continue }
            try? await fs.unlink(parent: dir, name: e.name)
        }
    }
}
