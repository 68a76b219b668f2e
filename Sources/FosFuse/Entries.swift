import CFosFuse
import FosCore
import FosFS
import FosFSClient
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Names and attributes: each request is one fleet call, made as the caller.
extension Daemon {
    func lookup(_ r: Req, parent: UInt64, name: String) {
        serve(r) { r in
            do {
                if Orphans.hides(parent: parent, name: name) { throw FosError.remote(.noSuchFileOrDirectory) }
                self.replyEntry(r, try await self.fs.lookup(parent: parent, name: name))
            } catch FosError.remote(let e) where e == .noSuchFileOrDirectory {
                // A negative entry the kernel keeps as long as a positive one.
                var n = fosfuse_entry()
                n.entry_timeout = self.timeout
                fosfuse_reply_entry(r.raw, &n)
            }
        }
    }

    func getattr(_ r: Req, ino: UInt64) {
        serve(r, asCaller: false) { r in self.replyAttr(r, try await self.fs.getattr(ino: ino)) }
    }

    /// Through an open file (ftruncate, fchmod, futimens) the kernel checked
    /// the caller against the open file, as Linux does: the fleet must not
    /// check again against the inode's mode now, so that goes as root.
    func setattr(_ r: Req, ino: UInt64, _ s: fosfuse_setattr) {
        var c = AttributeChanges()
        if s.valid & FOSFUSE_SET_MODE != 0 { c.mode = s.mode & 0o7777 }
        if s.valid & FOSFUSE_SET_UID != 0 { c.uid = s.uid }
        if s.valid & FOSFUSE_SET_GID != 0 { c.gid = s.gid }
        if s.valid & FOSFUSE_SET_SIZE != 0 { c.size = s.size }
        if s.valid & FOSFUSE_SET_ATIME_NOW != 0 { c.atime = .now } else if s.valid & FOSFUSE_SET_ATIME != 0 { c.atime = .ns(s.atime_ns) }
        if s.valid & FOSFUSE_SET_MTIME_NOW != 0 { c.mtime = .now } else if s.valid & FOSFUSE_SET_MTIME != 0 { c.mtime = .ns(s.mtime_ns) }
        let change = c
        serve(r, asCaller: s.valid & FOSFUSE_SET_HAS_FH == 0) { r in
            do {
                self.replyAttr(r, try await self.fs.setattr(ino: ino, change))
            } catch FosError.remote(let e) where e == .notPermitted && change.mode != nil
                && change == AttributeChanges(mode: change.mode) {
                self.replyAttr(r, try await self.clearSetID(ino: ino, mode: change.mode!))
            }
        }
    }

    /// A write, or a truncate, by someone other than the owner clears the
    /// file's set-user-ID and set-group-ID bits: the kernel sends that as a
    /// chmod in the writer's name, which the fleet refuses (only the owner
    /// may chmod). With `default_permissions` the kernel refuses any other
    /// chmod by a non-owner itself, so a refused mode change that only
    /// takes set-id bits away is this one: made as root, checked to do
    /// nothing more.
    private func clearSetID(ino: UInt64, mode: UInt32) async throws -> FileAttributes {
        try await FSClient.$actingAs.withValue(nil) {
            let now = try await fs.getattr(ino: ino).mode & 0o7777
            let setID: UInt32 = 0o6000
            guard mode & ~setID == now & ~setID, mode & setID & ~now == 0, mode & setID != now & setID else {
                throw FosError.remote(.notPermitted)
            }
            return try await fs.setattr(ino: ino, AttributeChanges(mode: mode))
        }
    }

    func readlink(_ r: Req, ino: UInt64) {
        serve(r, asCaller: false) { r in
            let target = try await self.fs.readlink(ino: ino)
            fosfuse_reply_readlink(r.raw, target)
        }
    }

    func mknod(_ r: Req, parent: UInt64, name: String, mode: UInt32, rdev: UInt64) {
        serve(r) { r in self.replyEntry(r, try await self.fs.mknod(parent: parent, name: name, mode: mode, rdev: rdev)) }
    }

    func mkdir(_ r: Req, parent: UInt64, name: String, mode: UInt32) {
        serve(r) { r in self.replyEntry(r, try await self.fs.mkdir(parent: parent, name: name, mode: mode & 0o7777)) }
    }

    func symlink(_ r: Req, target: String, parent: UInt64, name: String) {
        serve(r) { r in self.replyEntry(r, try await self.fs.symlink(parent: parent, name: name, target: target)) }
    }

    func link(_ r: Req, ino: UInt64, newParent: UInt64, name: String) {
        serve(r) { r in self.replyEntry(r, try await self.fs.link(ino: ino, newParent: newParent, name: name)) }
    }

    func unlink(_ r: Req, parent: UInt64, name: String) {
        serve(r) { r in
            let kept = await self.orphans.keepIfOpen(parent: parent, name: name, openFiles: self.files)
            do {
                try await self.fs.unlink(parent: parent, name: name)
            } catch {
                if let kept { await self.orphans.released(kept) }
                throw error
            }
            self.replyOK(r)
        }
    }

    func rmdir(_ r: Req, parent: UInt64, name: String) {
        serve(r) { r in
            try await self.fs.rmdir(parent: parent, name: name)
            self.replyOK(r)
        }
    }

    func rename(_ r: Req, parent: UInt64, name: String, newParent: UInt64, newName: String, flags: UInt32) {
        let replaces = flags == 0
        serve(r) { r in
            let kept = replaces ? await self.orphans.keepIfOpen(parent: newParent, name: newName, openFiles: self.files) : nil
            do {
                try await self.fs.rename(oldParent: parent, oldName: name, newParent: newParent, newName: newName,
                                         flags: RenameFlags(rawValue: flags))
            } catch {
                if let kept { await self.orphans.released(kept) }
                throw error
            }
            self.replyOK(r)
        }
    }

    func statfs(_ r: Req) {
        serve(r, asCaller: false) { r in
            let s = try await self.fs.statfs().fs
            var v = fosfuse_statfs(bsize: UInt64(s.blockSize), frsize: UInt64(s.blockSize), blocks: s.totalBlocks,
                                   bfree: s.freeBlocks, bavail: s.availableBlocks, files: s.totalInodes,
                                   ffree: s.freeInodes, namemax: UInt64(s.nameMax))
            fosfuse_reply_statfs(r.raw, &v)
        }
    }

    // MARK: extended attributes

    /// getxattr(2) and listxattr(2) ask with size 0 for the size, and get
    /// ERANGE when their buffer is too small.
    private func replySized(_ r: Req, _ value: [UInt8], size: Int) {
        if size == 0 {
            fosfuse_reply_xattr(r.raw, value.count)
        } else if value.count > size {
            fosfuse_reply_err(r.raw, ERANGE)
        } else {
            value.withUnsafeBytes { _ = fosfuse_reply_buf(r.raw, $0.baseAddress, $0.count) }
        }
    }

    func getxattr(_ r: Req, ino: UInt64, name: String, size: Int) {
        let capability = name == NoCapabilities.name
        if capability && noCapabilities.contains(ino) { return replyErr(r, ENODATA) }
        serve(r) { r in
            do {
                self.replySized(r, try await self.fs.getxattr(ino: ino, name: name), size: size)
            } catch FosError.remote(let e) where capability && e == .noData {
                self.noCapabilities.insert(ino)
                throw FosError.remote(e)
            }
        }
    }

    func listxattr(_ r: Req, ino: UInt64, size: Int) {
        serve(r) { r in
            var out = [UInt8]()
            for n in try await self.fs.listxattr(ino: ino) { out += Array(n.utf8) + [0] }
            self.replySized(r, out, size: size)
        }
    }

    func setxattr(_ r: Req, ino: UInt64, name: String, value: [UInt8], flags: Int32) {
        noCapabilities.remove(ino)
        serve(r) { r in
            try await self.fs.setxattr(ino: ino, name: name, value: value, flags: XattrFlags(rawValue: flags))
            self.replyOK(r)
        }
    }

    func removexattr(_ r: Req, ino: UInt64, name: String) {
        noCapabilities.remove(ino)
        serve(r) { r in
            try await self.fs.removexattr(ino: ino, name: name)
            self.replyOK(r)
        }
    }
}

/// Inodes known to have no security.capability. The kernel asks for it
/// before every write (to drop capabilities the write must clear): answered
/// here, in the callback, instead of by the fleet. An inode leaves the set
/// when its attributes change through anyone (the fleet announces xattr
/// changes) and when the kernel forgets it.
final class NoCapabilities: Sendable {
    static let name = "security.capability"
    private let inodes = Mutex<Set<UInt64>>([])
    func contains(_ ino: UInt64) -> Bool { inodes.withLock { $0.contains(ino) } }
    func insert(_ ino: UInt64) { _ = inodes.withLock { $0.insert(ino) } }
    func remove(_ ino: UInt64) { _ = inodes.withLock { $0.remove(ino) } }
}
