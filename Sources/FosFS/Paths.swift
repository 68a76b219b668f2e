// Path resolution and open(2) semantics on top of the inode operations.
// Symlinks are followed up to 40 times per resolution (ELOOP beyond, as on
// Linux); every directory walked through needs search (x) permission.

/// A path's names between slashes, empty ones dropped. Split at the byte
/// '/', as the kernel does: String's own split goes by Character, which
/// keeps a '/' followed by a combining mark inside one name, and was 1.6%
/// of an fs member's time in an untar.
public func pathComponents(_ path: String) -> [String] {
    path.utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: true)
        .map { String(decoding: $0, as: UTF8.self) }
}

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
        let comps = pathComponents(path)
        for c in comps where c.utf8.count > Layout.maxName { throw FSError.ENAMETOOLONG }
        return Split(components: comps, absolute: path.utf8.first == UInt8(ascii: "/"),
                     trailingSlash: path.utf8.last == UInt8(ascii: "/"))
    }

    /// Resolves `components` starting at `start`; follows a final symlink if
    /// `followLast`.
    func walk(_ comps: [String], from start: UInt64, followLast: Bool, cred: Credentials, links: inout Int) async throws -> UInt64 {
        var s = WalkState(at: start, components: comps, followLast: followLast, links: links)
        let ino = try await step(&s, cred)
        links = s.links
        return ino
    }

    /// Runs a walk as far as this member can take it. An inode homed on a
    /// peer throws `notHome` with `s` ready to be continued there.
    func step(_ s: inout WalkState, _ cred: Credentials) async throws -> UInt64 {
        while true {
            if s.pending != 0 {
                let isLast = s.components.isEmpty
                let child = try await inode(s.pending)
                if child.isSymlink, !isLast || s.followLast {
                    s.links += 1
                    if s.links > Self.maxSymlinkFollows { throw FSError.ELOOP }
                    let t = try split(String(decoding: try await symlinkTarget(child), as: UTF8.self))
                    if isLast, t.trailingSlash { s.mustBeDir = true }
                    s.components = t.components + s.components
                    if t.absolute { s.dir = Layout.rootIno }
                } else {
                    s.dir = s.pending
                }
                s.pending = 0
                continue
            }
            guard let name = s.components.first else {
                if s.mustBeDir, !(try await inode(s.dir).isDir) { throw FSError.ENOTDIR }
                return s.dir
            }
            let dir = try await inode(s.dir)
            guard let next = try await lookupIno(dir, name, cred) else { throw FSError.ENOENT }
            s.components.removeFirst()
            s.pending = next
        }
    }

    /// Continues a walk (see WalkState) on this member.
    public func walk(_ s: inout WalkState, cred: Credentials) async throws -> UInt64 {
        try await op { try await step(&s, cred) }
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
        try await openNoting(path: path, flags: flags, mode: mode, cred: cred, at: at).attributes
    }

    /// open(2), also saying the directory its last component was looked up
    /// in (nil for a path of no components): where an O_CREAT may have
    /// made a name, for change notifications, without walking the path
    /// again.
    public func openNoting(path: String, flags: OpenFlags, mode: UInt32 = 0o644, cred: Credentials,
                           at: UInt64 = FileSystem.rootIno) async throws -> (attributes: FileAttributes, parent: UInt64?) {
        try await op {
            let s = try split(path)
            var links = 0
            let start = s.absolute ? Layout.rootIno : at
            guard let last = s.components.last else {
                let root = try await inode(start)
                return (try await openExisting(root, flags: flags, cred, trailingSlash: true).attributes, nil)
            }
            let parent = try await walk(Array(s.components.dropLast()), from: start, followLast: true,
                                        cred: cred, links: &links)
            let dir = try await directory(parent)
            if s.trailingSlash, flags.contains(.create), (try await lookupIno(dir, last, cred)) == nil {
                throw FSError.EISDIR
            }
            let opened = try await openIn(dir, last, flags: flags, mode: mode, cred, links: links,
                                          trailingSlash: s.trailingSlash)
            return (opened.attributes, parent)
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
        if i.isSymlink { throw FSError.ELOOP }  // only reached unfollowed: O_NOFOLLOW
        if (flags.contains(.directory) || trailingSlash), !i.isDir { throw FSError.ENOTDIR }
        if i.isDir, flags.wantsWrite || flags.contains(.create) || flags.contains(.truncate) { throw FSError.EISDIR }
        if flags.wantsRead { try require(i, 4, cred) }
        if flags.wantsWrite { try require(i, 2, cred) }
        if flags.contains(.truncate), flags.wantsWrite, i.isReg {
            if i.size > 0 {
                try requireLocalBlocks(i)
                try await truncateData(i, to: 0)
            }
            if !cred.isRoot { dropSetID(i) }
        }
        return i
    }
}

/// A path walk in progress, which can move from member to member: in
/// directory `dir`, with `pending` (if not 0) the inode just looked up
/// there and not yet examined (it may be a symlink to follow), and
/// `components` still to look up.
public struct WalkState: Sendable, Equatable {
    public var dir: UInt64
    public var pending: UInt64 = 0
    public var components: [String]
    public var followLast: Bool
    /// The result must be a directory (a trailing slash).
    public var mustBeDir = false
    public var links = 0

    public init(at dir: UInt64, components: [String], followLast: Bool, mustBeDir: Bool = false, links: Int = 0) {
        self.dir = dir
        self.components = components
        self.followLast = followLast
        self.mustBeDir = mustBeDir
        self.links = links
    }

    /// The inode the walk needs next (its home member continues it).
    public var next: UInt64 { pending != 0 ? pending : dir }
}

/// Where an open of a name in a directory got to (see `openAt`).
public enum OpenStep: Sendable {
    case opened(FileAttributes)
    /// The name exists; its inode is homed elsewhere or is a symlink: finish
    /// the walk, then `openExisting` the result at its home.
    case follow(WalkState)
}

// The pieces of open(2) and lookup a fleet runs on different members when
// the directories and inodes involved are homed on several.
extension FileSystem {
    /// open(2) of `name` in directory `parent` (homed here): creates it, or
    /// opens it if it is here and not a symlink, or says where to go on.
    public func openAt(parent: UInt64, name: String, flags: OpenFlags, mode: UInt32, cred: Credentials,
                       links: Int = 0, trailingSlash: Bool = false) async throws -> OpenStep {
        try await op {
            let dir = try await directory(parent)
            if let ino = try await lookupIno(dir, name, cred) {
                if flags.contains(.create), flags.contains(.exclusive) { throw FSError.EEXIST }
                if owns(ag: Int(ino >> 32)) {
                    let child = try await inode(ino)
                    if !child.isSymlink {
                        return .opened(try await openExisting(child, flags: flags, cred, trailingSlash: trailingSlash).attributes)
                    }
                }
                var s = WalkState(at: parent, components: [], followLast: !flags.contains(.noFollow),
                                  mustBeDir: trailingSlash, links: links)
                s.pending = ino
                return .follow(s)
            }
            if trailingSlash, flags.contains(.create) { throw FSError.EISDIR }
            guard flags.contains(.create) else { throw FSError.ENOENT }
            if flags.contains(.directory) { throw FSError.EINVAL }
            try checkName(name)
            return .opened(try await makeNode(dir, name, mode: M.reg | (mode & M.perm), cred).attributes)
        }
    }

    /// The open(2) checks and O_TRUNC on an inode homed here.
    public func openExisting(ino: UInt64, flags: OpenFlags, cred: Credentials, trailingSlash: Bool = false) async throws -> FileAttributes {
        try await op { try await openExisting(try await inode(ino), flags: flags, cred, trailingSlash: trailingSlash).attributes }
    }

    /// The inode `name` names in directory `parent` (homed here).
    public func lookupChild(parent: UInt64, name: String, cred: Credentials) async throws -> UInt64 {
        try await op {
            guard let ino = try await lookupIno(try await inode(parent), name, cred) else { throw FSError.ENOENT }
            return ino
        }
    }

    /// The member inode `ino` is homed on.
    public func home(of ino: UInt64) -> Int { homeMember(of: ino) }
}

extension FileSystem {
    /// The root directory's inode number.
    public static let rootIno: UInt64 = 1
}
