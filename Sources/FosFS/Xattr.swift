// Extended attributes: all of an inode's attributes in one 4 KiB block
// (journaled as metadata), allocated on the first set and freed when the last
// one is removed. Block: magic u32, count u32, then records of nameLen u8,
// valueLen u16, name (full, with namespace prefix), value. One block bounds an
// inode's attributes at ~4 KiB in all (ENOSPC beyond, like ext4 without
// ea_inode).
//
// Namespaces as on Linux: "user." needs read/write permission and exists only
// on regular files and directories; "trusted." is root-only (invisible to
// others); "security." is readable by all and settable by root; anything else
// is ENOTSUP.
extension FileSystem {
    static let xattrMagic: UInt32 = 0x5254_4158  // "XATR"

    func loadXattrs(_ i: Inode) async throws -> [(String, [UInt8])] {
        guard i.xattrBlock != 0 else { return [] }
        let d = try await cached(i.xattrBlock).data
        guard d.u32(0) == Self.xattrMagic else { throw FSError.corrupt("inode \(i.ino): bad xattr block") }
        var out: [(String, [UInt8])] = []
        var o = 8
        for _ in 0..<Int(d.u32(4)) {
            guard o + 3 <= 4096 else { throw FSError.corrupt("inode \(i.ino): bad xattr block") }
            let nl = Int(d[o]), vl = Int(d.u16(o + 1))
            guard o + 3 + nl + vl <= 4096 else { throw FSError.corrupt("inode \(i.ino): bad xattr block") }
            out.append((String(decoding: d[(o + 3)..<(o + 3 + nl)], as: UTF8.self), Array(d[(o + 3 + nl)..<(o + 3 + nl + vl)])))
            o += 3 + nl + vl
        }
        return out
    }

    static func xattrSize(_ attrs: [(String, [UInt8])]) -> Int {
        attrs.reduce(8) { $0 + 3 + $1.0.utf8.count + $1.1.count }
    }

    func storeXattrs(_ i: Inode, _ attrs: [(String, [UInt8])]) async throws {
        if attrs.isEmpty {
            if i.xattrBlock != 0 {
                try await freeBlocks(i.xattrBlock, 1)
                i.xattrBlock = 0
                i.blocks -= 1
            }
            return
        }
        if i.xattrBlock == 0 {
            let (b, _) = try await allocBlocks(count: 1, goal: nil, preferAG: i.ag, for: i)
            i.xattrBlock = b
            i.blocks += 1
        }
        var d = [UInt8].zeroBlock()
        d.put32(0, Self.xattrMagic)
        d.put32(4, UInt32(attrs.count))
        var o = 8
        for (n, v) in attrs {
            let nb = Array(n.utf8)
            d[o] = UInt8(nb.count)
            d.put16(o + 1, UInt16(v.count))
            d.putBytes(o + 3, nb)
            d.putBytes(o + 3 + nb.count, v)
            o += 3 + nb.count + v.count
        }
        let buf = try await metaForWrite(i.xattrBlock, fresh: true)
        buf.data = d
    }

    /// Checks access to attribute `name` on `i`; `write` for set/remove.
    func xattrAccess(_ i: Inode, _ name: String, write: Bool, _ cred: Credentials) throws {
        if name.utf8.count > Layout.maxName || name.isEmpty { throw FSError.ERANGE }
        if name.hasPrefix("user.") {
            if !i.isReg && !i.isDir { throw write ? FSError.EPERM : FSError.ENODATA }
            if write, i.isDir, i.mode & M.sticky != 0, !cred.isRoot, cred.uid != i.uid { throw FSError.EPERM }
            try require(i, write ? 2 : 4, cred)
        } else if name.hasPrefix("trusted.") {
            if !cred.isRoot { throw write ? FSError.EPERM : FSError.ENODATA }
        } else if name.hasPrefix("security.") {
            if write, !cred.isRoot { throw FSError.EPERM }
        } else {
            throw FSError.ENOTSUP
        }
    }

    public func getxattr(ino: UInt64, name: String, cred: Credentials) async throws -> [UInt8] {
        try await op {
            let i = try await inode(ino)
            try xattrAccess(i, name, write: false, cred)
            guard let v = try await loadXattrs(i).first(where: { NameKey($0.0) == NameKey(name) })?.1 else { throw FSError.ENODATA }
            return v
        }
    }

    public func setxattr(ino: UInt64, name: String, value: [UInt8], flags: XattrFlags = [],
                         cred: Credentials) async throws {
        try await op {
            let i = try await inode(ino)
            try xattrAccess(i, name, write: true, cred)
            if value.count > 65536 { throw FSError.E2BIG }
            var attrs = try await loadXattrs(i)
            let k = attrs.firstIndex { NameKey($0.0) == NameKey(name) }
            if flags.contains(.create), k != nil { throw FSError.EEXIST }
            if flags.contains(.replace), k == nil { throw FSError.ENODATA }
            if let k { attrs[k].1 = value } else { attrs.append((name, value)) }
            if Self.xattrSize(attrs) > 4096 { throw FSError.ENOSPC }
            try await storeXattrs(i, attrs)
            touch(i, m: false)
        }
    }

    public func listxattr(ino: UInt64, cred: Credentials) async throws -> [String] {
        try await op {
            let i = try await inode(ino)
            return try await loadXattrs(i).map(\.0).filter { cred.isRoot || !$0.hasPrefix("trusted.") }
        }
    }

    public func removexattr(ino: UInt64, name: String, cred: Credentials) async throws {
        try await op {
            let i = try await inode(ino)
            try xattrAccess(i, name, write: true, cred)
            var attrs = try await loadXattrs(i)
            guard let k = attrs.firstIndex(where: { NameKey($0.0) == NameKey(name) }) else { throw FSError.ENODATA }
            attrs.remove(at: k)
            try await storeXattrs(i, attrs)
            touch(i, m: false)
        }
    }
}
