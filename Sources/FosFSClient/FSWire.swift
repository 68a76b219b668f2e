import CFosWire
import FosCore
import FosFS

/// Encoding and decoding of the fs service's messages (fos_wire.h, "File
/// system service"), shared by the client and the server.
public enum FSWire {
    public static let maxIO = Int(FOS_FS_MAX_IO)
    public static let nameMax = Int(FOS_FS_NAME_MAX)
    public static let pathMax = Int(FOS_FS_PATH_MAX)
    public static let rootIno = UInt64(FOS_FS_ROOT_INO)

    public static func stat(_ a: FileAttributes) -> fos_fs_stat {
        fos_fs_stat(ino: a.ino, mode: a.mode, nlink: a.nlink, uid: a.uid, gid: a.gid, rdev: a.rdev, size: a.size,
                    blocks: a.blocks, blksize: a.blockSize, generation: a.generation, atime_ns: a.atime,
                    mtime_ns: a.mtime, ctime_ns: a.ctime, btime_ns: a.btime)
    }

    public static func attributes(_ s: fos_fs_stat) -> FileAttributes {
        FileAttributes.make(ino: s.ino, mode: s.mode, nlink: s.nlink, uid: s.uid, gid: s.gid, rdev: s.rdev, size: s.size,
                       blocks: s.blocks, blockSize: s.blksize, atime: s.atime_ns, mtime: s.mtime_ns,
                       ctime: s.ctime_ns, btime: s.btime_ns, generation: s.generation)
    }

    public static func encode(_ a: FileAttributes) -> [UInt8] {
        var out = [UInt8]()
        appendStruct(stat(a), to: &out)
        return out
    }

    public static func decodeAttributes(_ b: [UInt8]) throws -> FileAttributes {
        guard b.count == MemoryLayout<fos_fs_stat>.size, let s = b.withUnsafeBytes({ loadStruct(fos_fs_stat.self, from: $0) })
        else { throw FosError.badMessage("bad fs stat reply") }
        return attributes(s)
    }

    /// READDIR reply: as many of `entries` as fit in one message. Returns the
    /// payload and how many entries it holds.
    public static func encodeDirents(_ entries: [DirectoryEntry], limit: Int = Int(FOS_MAX_PAYLOAD)) -> ([UInt8], Int) {
        var body = [UInt8]()
        var n = 0
        let hdr = MemoryLayout<fos_fs_readdir_reply>.size
        for e in entries {
            let name = Array(e.name.utf8)
            let rec = (MemoryLayout<fos_fs_dirent>.size + name.count + 7) & ~7
            if hdr + body.count + rec > limit { break }
            var d = fos_fs_dirent()
            d.ino = e.ino
            d.next_cookie = e.nextCookie
            d.name_len = UInt16(name.count)
            d.type = e.type
            appendStruct(d, to: &body)
            body += name
            while body.count % 8 != 0 { body.append(0) }
            n += 1
        }
        var out = [UInt8]()
        appendStruct(fos_fs_readdir_reply(count: UInt32(n), reserved: 0), to: &out)
        return (out + body, n)
    }

    public static func decodeDirents(_ bytes: [UInt8]) throws -> [DirectoryEntry] {
        try bytes.withUnsafeBytes { b in
            guard let h = loadStruct(fos_fs_readdir_reply.self, from: b), h.count <= 65536 else {
                throw FosError.badMessage("bad readdir reply")
            }
            var off = MemoryLayout<fos_fs_readdir_reply>.size
            var out: [DirectoryEntry] = []
            for _ in 0..<h.count {
                guard let d = loadStruct(fos_fs_dirent.self, from: b, at: off) else { throw FosError.badMessage("bad readdir entry") }
                let start = off + MemoryLayout<fos_fs_dirent>.size
                let len = Int(d.name_len)
                guard len <= nameMax, start + len <= b.count else { throw FosError.badMessage("bad readdir entry") }
                let name = String(decoding: UnsafeRawBufferPointer(rebasing: b[start..<(start + len)]), as: UTF8.self)
                out.append(DirectoryEntry.make(name: name, ino: d.ino, type: d.type, nextCookie: d.next_cookie))
                off = (start + len + 7) & ~7
            }
            return out
        }
    }

    public static func encodeStats(_ s: FileSystemStats, member: Int, members: Int) -> [UInt8] {
        var w = fos_fs_statfs()
        w.total_blocks = s.totalBlocks
        w.free_blocks = s.freeBlocks
        w.avail_blocks = s.availableBlocks
        w.total_inodes = s.totalInodes
        w.free_inodes = s.freeInodes
        w.block_size = s.blockSize
        w.name_max = s.nameMax
        w.ag_count = UInt32(s.agCount)
        w.member = UInt16(member)
        w.members = UInt16(members)
        var out = [UInt8]()
        appendStruct(w, to: &out)
        return out
    }
}
