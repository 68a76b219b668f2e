import CFosFuse
import FosCore
import FosFS
import FosFSClient
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Open files: the fleet keeps no open state, so a handle is the daemon's:
/// the inode, and the POSIX lock owners that took locks through it (their
/// locks go when the kernel flushes the file on close).
final class OpenFiles: Sendable {
    struct File {
        var ino: UInt64
        var flags: Int32
    }
    private struct State {
        var next: UInt64 = 1
        var open: [UInt64: File] = [:]
        var perInode: [UInt64: Int] = [:]
        var lockOwners: Set<LockKey> = []
    }
    struct LockKey: Hashable {
        var ino: UInt64
        var owner: UInt64
    }
    private let state = Mutex(State())

    func open(ino: UInt64, flags: Int32) -> UInt64 {
        state.withLock { s in
            let fh = s.next
            s.next += 1
            s.open[fh] = File(ino: ino, flags: flags)
            s.perInode[ino, default: 0] += 1
            return fh
        }
    }

    /// Forgets a handle; returns its inode if that was the inode's last one.
    func close(_ fh: UInt64) -> UInt64? {
        state.withLock { s in
            guard let f = s.open.removeValue(forKey: fh) else { return nil }
            let left = s.perInode[f.ino, default: 1] - 1
            if left > 0 {
                s.perInode[f.ino] = left
                return nil
            }
            s.perInode.removeValue(forKey: f.ino)
            return f.ino
        }
    }

    var count: Int { state.withLock { $0.open.count } }
    func isOpen(_ ino: UInt64) -> Bool { state.withLock { $0.perInode[ino] != nil } }

    func locked(ino: UInt64, owner: UInt64) { _ = state.withLock { $0.lockOwners.insert(LockKey(ino: ino, owner: owner)) } }

    /// Whether `owner` may hold POSIX locks on `ino` (then they must go).
    func takeLockOwner(ino: UInt64, owner: UInt64) -> Bool {
        state.withLock { $0.lockOwners.remove(LockKey(ino: ino, owner: owner)) != nil }
    }
}

extension Daemon {
    // MARK: open, create, close

    func openFile(_ r: Req, ino: UInt64, flags: Int32) {
        // The kernel checked the caller's access (default_permissions). With
        // atomic O_TRUNC the truncation is ours, made as the caller.
        let writes = flags & O_ACCMODE != O_RDONLY
        let truncate = flags & O_TRUNC != 0 && writes
        // A read-only open: nothing to ask the fleet, answered in the callback.
        guard writes else { return answerOpen(r, ino: ino, flags: flags) }
        serve(r) { r in
            // For writing, the file must still have a name (or be open
            // here): the kernel may open a name another client removed a
            // moment ago, before the change log says so, and what was
            // written to the removed file would be lost without a word.
            // ESTALE makes the kernel look the name up again.
            let a = truncate ? try await self.fs.truncate(ino: ino, size: 0) : try await self.fs.getattr(ino: ino)
            if a.nlink == 0 && !self.files.isOpen(ino) { throw FosError.remote(.staleNFSFileHandle) }
            self.answerOpen(r, ino: ino, flags: flags)
        }
    }

    private func answerOpen(_ r: Req, ino: UInt64, flags: Int32) {
        // The kernel opens only regular files through FUSE_OPEN.
        holds.opened(ino, mode: UInt32(S_IFREG))
        var o = openReply(files.open(ino: ino, flags: flags))
        if fosfuse_reply_open(r.raw, &o) != 0 { dropHandle(o.fh) }
    }

    func create(_ r: Req, parent: UInt64, name: String, mode: UInt32, flags: Int32) {
        serve(r) { r in
            let a = try await self.fs.create(parent: parent, name: name, mode: mode & 0o7777,
                                             flags: OpenFlags(rawValue: flags))
            var e = self.entry(a)
            self.holds.opened(a.ino, mode: a.mode)
            var o = self.openReply(self.files.open(ino: a.ino, flags: flags))
            self.nodes.looked(a.ino)
            if fosfuse_reply_create(r.raw, &e, &o) != 0 {
                self.nodes.forget(a.ino, 1)
                self.dropHandle(o.fh)
            }
        }
    }

    /// A handle the kernel never got (its answer failed: the caller was interrupted).
    func dropHandle(_ fh: UInt64) {
        guard let ino = files.close(fh) else { return }
        holds.closed(ino)
        guard orphans.isOrphan(ino) else { return }
        rt.loop.spawn { await self.orphans.released(ino) }
    }

    /// close(2) of one descriptor: POSIX locks of the closing process go.
    func flush(_ r: Req, ino: UInt64, owner: UInt64) {
        guard files.takeLockOwner(ino: ino, owner: owner) else { return replyOK(r) }
        serve(r, asCaller: false) { r in
            try await self.lockClient.setlk(ino: ino, owner: .processOwner(owner, pid: 1), type: .unlock)
            self.replyOK(r)
        }
    }

    /// The last close of an open file: its flock goes, and if it was the
    /// inode's last handle and the inode lost its names, the inode.
    func release(_ r: Req, fh: UInt64, ino: UInt64, owner: UInt64, flockRelease: Bool) {
        let last = files.close(fh)
        if let last { holds.closed(last) }
        let orphan = last.map { orphans.isOrphan($0) } ?? false
        guard flockRelease || orphan else { return replyOK(r) }
        serve(r, asCaller: false) { r in
            if flockRelease { try? await self.lockClient.flock(ino: ino, owner: owner, operation: .unlock, wait: false) }
            if orphan { await self.orphans.released(ino) }
            self.replyOK(r)
        }
    }

    func fsync(_ r: Req, ino: UInt64, dataOnly: Bool) {
        serve(r, asCaller: false) { r in
            try await self.fs.fsync(ino: ino, dataOnly: dataOnly)
            self.replyOK(r)
        }
    }

    // MARK: data

    /// Access was checked at open (by the kernel, as Linux does for a
    /// descriptor), so data moves as root: a later chmod does not stop a
    /// descriptor that is open. A request larger than one message becomes
    /// several, all in flight at once.
    func read(_ r: Req, ino: UInt64, size: Int, offset: Int64) {
        stats.read(size)
        serve(r, asCaller: false) { r in
            let chunks = try await self.readChunks(ino: ino, offset: UInt64(offset), size: size)
            var iov = [iovec]()
            iov.reserveCapacity(chunks.count)
            withExtendedLifetime(chunks) {
                for c in chunks where !c.isEmpty {
                    c.withUnsafeBytes { iov.append(iovec(iov_base: UnsafeMutableRawPointer(mutating: $0.baseAddress), iov_len: $0.count)) }
                }
                fosfuse_reply_iov(r.raw, iov, Int32(iov.count))
            }
        }
    }

    /// The chunks of a read up to the first short one (the end of the file).
    func readChunks(ino: UInt64, offset: UInt64, size: Int) async throws -> [[UInt8]] {
        let step = FSClient.maxIO
        let n = (size + step - 1) / step
        if n <= 1 { return [try await fs.read(ino: ino, offset: offset, count: size)] }
        let fs = self.fs
        let parts = try await inParallel(n) { i in
            try await fs.read(ino: ino, offset: offset + UInt64(i * step), count: min(step, size - i * step))
        }
        var out = [[UInt8]]()
        for (i, part) in parts.enumerated() {
            out.append(part)
            if part.count < min(step, size - i * step) { break }
        }
        return out
    }

    func write(_ r: Req, ino: UInt64, data: [[UInt8]], offset: Int64, flags: Int32) {
        let total = data.reduce(0) { $0 + $1.count }
        stats.wrote(total)
        serve(r, asCaller: false) { r in
            if flags & O_APPEND != 0 {
                // The fleet puts it at the end it knows, which is where other
                // clients' appends went too.
                let at = try await self.fs.append(ino: ino, data: data.flatMap { $0 })
                if at.offset != UInt64(offset) { self.staleData(ino) }
                fosfuse_reply_write(r.raw, at.count)
                return
            }
            let step = FSClient.maxIO
            let fs = self.fs
            let written = try await self.inParallel(data.count) { i in
                try await fs.write(ino: ino, offset: UInt64(offset) + UInt64(i * step), data: data[i])
            }
            // What reached the file without a gap (a full disk can stop a chunk short).
            var done = 0
            for (i, n) in written.enumerated() {
                done += n
                if n < data[i].count { break }
            }
            fosfuse_reply_write(r.raw, done)
        }
    }

    /// The kernel's pages and size of `ino` may be wrong (an append that
    /// landed elsewhere than it thought).
    func staleData(_ ino: UInt64) { invalidator?.drop(ino) }
}
