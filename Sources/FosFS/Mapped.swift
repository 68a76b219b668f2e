// Copies of file data kept outside the file system that must follow every
// change, as the kernel's page cache follows a file: the server's shared
// mappings (FosFSServer/SharedMaps.swift). The observer is told inside the
// operation that makes the change, so no other operation sees the file and
// the copy disagree; its own write-back goes through `writeBack`, which
// does not echo the bytes to it (a mapping may have changed them again
// meanwhile).

/// Told of every change to regular files' data and sizes, inside the
/// operation (so quick: no waiting).
public protocol DataObserver: AnyObject, Sendable {
    /// `bytes` now stand at `offset`; the file is `size` bytes long.
    func wrote(ino: UInt64, at offset: UInt64, _ bytes: ArraySlice<UInt8>, size: UInt64)
    /// The file is now `size` bytes long (bytes past it are gone; bytes
    /// added read as zeros).
    func resized(ino: UInt64, to size: UInt64)
    /// The inode is gone (its number may name another file later).
    func freed(ino: UInt64)
}

extension FileSystem {
    func observeWrite(_ i: Inode, offset: UInt64, _ data: ArraySlice<UInt8>) {
        guard !data.isEmpty, !observerMuted, let o = dataObserver else { return }
        o.wrote(ino: i.ino, at: offset, data, size: i.size)
    }

    func observeResize(_ i: Inode) {
        guard !observerMuted, let o = dataObserver else { return }
        o.resized(ino: i.ino, to: i.size)
    }

    func observeFree(_ ino: UInt64) { dataObserver?.freed(ino: ino) }

    /// The whole content of regular file `ino` and its generation, handed to
    /// `body` inside one operation: no write lands between the read and what
    /// `body` does. Files larger than `limit` bytes throw EFBIG before
    /// anything is read.
    public func withContent<T>(ino: UInt64, limit: UInt64, _ body: ([UInt8], UInt32) throws -> T) async throws -> T {
        try await op {
            let i = try await inode(ino)
            if i.isDir { throw FSError.EISDIR }
            if !i.isReg { throw FSError.EINVAL }
            if i.size > limit { throw FSError.EFBIG }
            let plan = try await planRead(i, offset: 0, count: Int(i.size))
            return try body(try await execute(plan), i.generation)
        }
    }

    /// Writes back what changed in a copy (a shared mapping): `changes`,
    /// called inside the operation, returns (offset, bytes) runs; each is
    /// cut to the file's size now (bytes past the end were truncated away
    /// and stay so), written without telling the observer, and reported to
    /// `wrote` once the file system has all of it (or the part it took
    /// before the disk filled, and then ENOSPC is thrown). Nothing is
    /// written unless `ino` is still the file of `generation` (a number
    /// freed and used again names another file).
    public func writeBack(ino: UInt64, generation: UInt32, _ changes: () -> [(UInt64, [UInt8])],
                          wrote: (UInt64, ArraySlice<UInt8>) -> Void) async throws {
        try await op {
            let i = try await inode(ino)
            guard i.isReg, i.generation == generation, i.nlink > 0 || orphans[ino] != nil else { return }
            observerMuted = true
            defer { observerMuted = false }
            for (offset, bytes) in changes() where offset < i.size {
                let n = Int(min(UInt64(bytes.count), i.size - offset))
                let put = try await writeData(i, offset: offset, data: Array(bytes.prefix(n)))
                if put > 0 { wrote(offset, bytes[..<put]) }
                if put < n { throw FSError.ENOSPC }
            }
        }
    }
}
