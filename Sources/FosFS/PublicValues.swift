// Public constructors of the value types, for code outside FosFS that
// rebuilds them (the fs service's client decodes them from messages). Their
// memberwise initialisers are internal, hence factories.
extension FileAttributes {
    public static func make(ino: UInt64, mode: UInt32, nlink: UInt32, uid: UInt32, gid: UInt32, rdev: UInt64, size: UInt64,
                            blocks: UInt64, blockSize: UInt32, atime: Int64, mtime: Int64, ctime: Int64, btime: Int64,
                            generation: UInt32) -> FileAttributes {
        FileAttributes(ino: ino, mode: mode, nlink: nlink, uid: uid, gid: gid, rdev: rdev, size: size, blocks: blocks,
                       blockSize: blockSize, atime: atime, mtime: mtime, ctime: ctime, btime: btime, generation: generation)
    }
}

extension DirectoryEntry {
    public static func make(name: String, ino: UInt64, type: UInt8, nextCookie: UInt64) -> DirectoryEntry {
        DirectoryEntry(name: name, ino: ino, type: type, nextCookie: nextCookie)
    }
}

extension FileSystemStats {
    public static func make(blockSize: UInt32, totalBlocks: UInt64, freeBlocks: UInt64, availableBlocks: UInt64,
                            totalInodes: UInt64, freeInodes: UInt64, nameMax: UInt32, agCount: Int) -> FileSystemStats {
        FileSystemStats(blockSize: blockSize, totalBlocks: totalBlocks, freeBlocks: freeBlocks, availableBlocks: availableBlocks,
                        totalInodes: totalInodes, freeInodes: freeInodes, nameMax: nameMax, agCount: agCount)
    }
}
