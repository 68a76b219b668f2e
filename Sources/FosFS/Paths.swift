// Path resolution and open(2) semantics on top of the inode operations.
// Symlinks are followed up to 40 times per resolution (ELOOP beyond, as on
// Linux); every directory walked through needs search (x) permission.
extension FileSystem {
    static let maxSymlinkFollows = 40

    struct Split {
        var components: [String]
        var absolute: Bool
        var trailingSlash: Bool
    }

    func split(_ path: String) throws -> Split {
        if path.isEmpty { throw FSError.ENOENT }
        if path.utf8.count >= Layout.maxPath { throw FSError.ENAMETOOLONG }
        let comps = path.split(separator: "/", omittingEmptySubsequences: true).map(String.init)
        for c in comps where c.utf8.count > Layout.maxName { throw FSError.ENAMETOOLONG }
        return Split(components: comps, absolute: path.hasPrefix("/"), trailingSlash: path.hasSuffix("/"))
    }

    /// Resolves `components` starting at `start`; follows a final symlink if
    /// `followLast`.
    func walk(_ comps: [String], from start: UInt64, followLast: Bool, cred: Credentials, links: inout Int) async throws -> UInt64 {
        var cur = start
        for (k, name) in comps.enumerated() {
            let dir = try await inode(cur)
            guard let next = try await lookupIno(dir, name, cred) else { throw FSError.ENOENT }
            let isLast = k == comps.count - 1
            let child = try await inode(next)
            if child.isSymlink, !isLast || followLast {
                links += 1
                if links > Self.maxSymlinkFollows { throw FSError.ELOOP }
                let target = String(decoding: try await symlinkTarget(child), as: UTF8.self)
                let s = try split(target)
                cur = try await walk(s.components, from: s.absolute ? Layout.rootIno : cur, followLast: true,
                                     cred: cred, links: &links)
                if s.trailingSlash, !(try await inode(cur).isDir) { throw FSError.ENOTDIR }
            } else {
                cur = next
            }
        }
        return cur
    }

    /// Resolves a path (relative paths start at `at`, default the root).
    public func resolve(path: String, cred: Credentials, followLast: Bool = true,
                        at: UInt64 = FileSystem.rootIno) async throws -> UInt64 {
        try await op {
            let s = try split(path)
            var links = 0
            let ino = try await walk(s.components, from: s.absolute ? Layout.rootIno : at,
                                     followLast: followLast || s.trailingSlash, cred: cred, links: &links)
            if s.trailingSlash, !(try await inode(ino).isDir) { throw FSError.ENOTDIR }
            return ino
        }
    }

    /// open(2) on a path: O_CREAT, O_EXCL, O_TRUNC, O_DIRECTORY, O_NOFOLLOW and
    /// the access mode are applied here; O_APPEND is a property of the open
    /// file description (use `append(ino:data:)`). Returns the opened inode.
    public func open(path: String, flags: OpenFlags, mode: UInt32 = 0o644, cred: Credentials,
                     at: UInt64 = FileSystem.rootIno) async throws -> FileAttributes {
        try await op {
            let s = try split(path)
            var links = 0
            let start = s.absolute ? Layout.rootIno : at
            guard let last = s.components.last else {
                let root = try await inode(start)
                return try await openExisting(root, flags: flags, cred, trailingSlash: true).attributes
            }
            let parent = try await walk(Array(s.components.dropLast()), from: start, followLast: true,
                                        cred: cred, links: &links)
            let dir = try await directory(parent)
            if s.trailingSlash, flags.contains(.create), (try await lookupIno(dir, last, cred)) == nil {
                throw FSError.EISDIR
            }
            return try await openIn(dir, last, flags: flags, mode: mode, cred, links: links,
                                    trailingSlash: s.trailingSlash).attributes
        }
    }

    func openIn(_ dir: Inode, _ name: String, flags: OpenFlags, mode: UInt32, _ cred: Credentials,
                links: Int, trailingSlash: Bool = false) async throws -> Inode {
        if let ino = try await lookupIno(dir, name, cred) {
            if flags.contains(.create), flags.contains(.exclusive) { throw FSError.EEXIST }
            var target = try await inode(ino)
            if target.isSymlink {
                if flags.contains(.noFollow) { throw FSError.ELOOP }
                var l = links + 1
                if l > Self.maxSymlinkFollows { throw FSError.ELOOP }
                let t = String(decoding: try await symlinkTarget(target), as: UTF8.self)
                let s = try split(t)
                target = try await inode(try await walk(s.components, from: s.absolute ? Layout.rootIno : dir.ino,
                                                        followLast: true, cred: cred, links: &l))
            }
            return try await openExisting(target, flags: flags, cred, trailingSlash: trailingSlash)
        }
        guard flags.contains(.create) else { throw FSError.ENOENT }
        if flags.contains(.directory) { throw FSError.EINVAL }
        return try await makeNode(dir, name, mode: M.reg | (mode & M.perm), cred)
    }

    func openExisting(_ i: Inode, flags: OpenFlags, _ cred: Credentials, trailingSlash: Bool) async throws -> Inode {
        if (flags.contains(.directory) || trailingSlash), !i.isDir { throw FSError.ENOTDIR }
        if i.isDir, flags.wantsWrite || flags.contains(.create) || flags.contains(.truncate) { throw FSError.EISDIR }
        if flags.wantsRead { try require(i, 4, cred) }
        if flags.wantsWrite { try require(i, 2, cred) }
        if flags.contains(.truncate), flags.wantsWrite, i.isReg, i.size > 0 {
            try await truncateData(i, to: 0)
        }
        return i
    }
}

extension FileSystem {
    /// The root directory's inode number.
    public static let rootIno: UInt64 = 1
}
