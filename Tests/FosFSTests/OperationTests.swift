@testable import FosFS
import SystemPackage
import Testing

@Suite struct OperationTests {
    @Test func namespaceErrnos() async throws {
        let (dev, fs) = try await makeFS()
        let d = try await fs.mkdir(parent: rootIno, name: "d", mode: 0o755, cred: root)
        #expect(try await fs.getattr(ino: rootIno).nlink == 3)
        let f = try await fs.create(parent: d.ino, name: "f", mode: 0o644, cred: root)
        await expectErrno(.fileExists, "create existing") { _ = try await fs.create(parent: d.ino, name: "f", mode: 0o644, cred: root) }
        await expectErrno(.fileExists, "mkdir existing") { _ = try await fs.mkdir(parent: d.ino, name: "f", mode: 0o755, cred: root) }
        await expectErrno(.notDirectory, "create under a file") { _ = try await fs.create(parent: f.ino, name: "x", mode: 0o644, cred: root) }
        await expectErrno(.noSuchFileOrDirectory, "lookup missing") { _ = try await fs.lookup(parent: d.ino, name: "nope", cred: root) }
        await expectErrno(.fileNameTooLong, "long name") {
            _ = try await fs.create(parent: d.ino, name: String(repeating: "a", count: 256), mode: 0o644, cred: root)
        }
        _ = try await fs.create(parent: d.ino, name: String(repeating: "b", count: 255), mode: 0o644, cred: root)
        await expectErrno(.isDirectory, "unlink dir") { try await fs.unlink(parent: rootIno, name: "d", cred: root) }
        await expectErrno(.notDirectory, "rmdir file") { try await fs.rmdir(parent: d.ino, name: "f", cred: root) }
        await expectErrno(.directoryNotEmpty, "rmdir non-empty") { try await fs.rmdir(parent: rootIno, name: "d", cred: root) }
        await expectErrno(.invalidArgument, "rmdir .") { try await fs.rmdir(parent: d.ino, name: ".", cred: root) }
        await expectErrno(.isDirectory, "read dir") { _ = try await fs.read(ino: d.ino, offset: 0, count: 1) }
        await expectErrno(.invalidArgument, "readlink file") { _ = try await fs.readlink(ino: f.ino) }
        await expectErrno(.notPermitted, "link dir") { _ = try await fs.link(ino: d.ino, newParent: rootIno, name: "dl", cred: root) }

        // link / unlink and nlink
        _ = try await fs.link(ino: f.ino, newParent: rootIno, name: "hard", cred: root)
        #expect(try await fs.getattr(ino: f.ino).nlink == 2)
        try await fs.unlink(parent: d.ino, name: "f", cred: root)
        #expect(try await fs.getattr(ino: f.ino).nlink == 1)
        #expect(try await fs.lookup(parent: rootIno, name: "hard", cred: root).ino == f.ino)

        // symlinks: inline and block-stored; loops; O_NOFOLLOW
        _ = try await fs.symlink(parent: rootIno, name: "s", target: "d", cred: root)
        let longTarget = String(repeating: "x/", count: 300) + "end"
        let ls = try await fs.symlink(parent: rootIno, name: "long", target: longTarget, cred: root)
        #expect(try await fs.readlink(ino: ls.ino) == longTarget)
        #expect(try await fs.resolve(path: "/s/" + String(repeating: "b", count: 255), cred: root) != 0)
        _ = try await fs.symlink(parent: rootIno, name: "loop1", target: "loop2", cred: root)
        _ = try await fs.symlink(parent: rootIno, name: "loop2", target: "/loop1", cred: root)
        await expectErrno(.tooManySymbolicLinkLevels, "loop") { _ = try await fs.resolve(path: "/loop1", cred: root) }
        await expectErrno(.tooManySymbolicLinkLevels, "O_NOFOLLOW") { _ = try await fs.open(path: "/s", flags: [.noFollow], cred: root) }
        #expect(try await fs.resolve(path: "/s", cred: root, followLast: false) != d.ino)
        #expect(try await fs.resolve(path: "/s/", cred: root, followLast: false) == d.ino)
        await expectErrno(.noSuchFileOrDirectory, "empty symlink") { _ = try await fs.symlink(parent: rootIno, name: "e", target: "", cred: root) }

        // mknod
        let fifo = try await fs.mknod(parent: rootIno, name: "fifo", mode: 0o010644, cred: root)
        #expect(fifo.type == .fifo)
        let dev0 = try await fs.mknod(parent: rootIno, name: "null", mode: 0o020666, rdev: 0x103, cred: root)
        #expect(dev0.type == .characterDevice && dev0.rdev == 0x103)
        await expectErrno(.notPermitted, "mknod dev as user") { _ = try await fs.mknod(parent: rootIno, name: "x", mode: 0o020666, cred: alice) }
        await expectErrno(.invalidArgument, "read fifo") { _ = try await fs.read(ino: fifo.ino, offset: 0, count: 1) }

        // readdir sees everything once
        let names = try await fs.readdir(ino: rootIno).map(\.name)
        #expect(Set(names) == [".", "..", "d", "hard", "s", "long", "loop1", "loop2", "fifo", "null"])
        await expectErrno(.noSuchFileOrDirectory, "rmdir missing") { try await fs.rmdir(parent: d.ino, name: "nonexistent", cred: root) }
        try await fs.unmount()
        try await fsckClean(dev)
    }

    /// A path splits at every '/' byte, as the kernel splits it, even one
    /// that a combining mark follows (one Character with it in Swift).
    @Test func pathSplitsAtEverySlash() async throws {
        #expect(pathComponents("//a/./\u{301}b//") == ["a", ".", "\u{301}b"])
        let (_, fs) = try await makeFS()
        let d = try await fs.mkdir(parent: rootIno, name: "a", mode: 0o755, cred: root)
        let f = try await fs.open(path: "/a/\u{301}b", flags: [.create, .exclusive, .writeOnly], cred: root)
        #expect(try await fs.lookup(parent: d.ino, name: "\u{301}b", cred: root).ino == f.ino)
        #expect(try await fs.resolve(path: "/a/\u{301}b", cred: root) == f.ino)
        // A last byte '/' that starts a Character of its own is still a
        // trailing slash, and a first one makes a symlink's target absolute.
        await expectErrno(.isDirectory, "O_CREAT of name/") {
            _ = try await fs.open(path: "/a/\u{600}/", flags: [.create, .writeOnly], cred: root)
        }
        _ = try await fs.create(parent: rootIno, name: "\u{301}x", mode: 0o644, cred: root)
        _ = try await fs.symlink(parent: d.ino, name: "s", target: "/\u{301}x", cred: root)
        #expect(try await fs.resolve(path: "/a/s", cred: root) == (try await fs.lookup(parent: rootIno, name: "\u{301}x", cred: root)).ino)
    }

    /// Names are bytes: two spellings of "é" (one code point, or "e" and a
    /// combining accent) are two names, as on Linux, not one.
    @Test func namesAreBytes() async throws {
        let (dev, fs) = try await makeFS()
        let a = try await fs.create(parent: rootIno, name: "\u{E9}", mode: 0o644, cred: root)
        let b = try await fs.create(parent: rootIno, name: "e\u{301}", mode: 0o644, cred: root)
        #expect(a.ino != b.ino)
        #expect(try await fs.lookup(parent: rootIno, name: "e\u{301}", cred: root).ino == b.ino)
        let names = try await fs.readdir(ino: rootIno).map { Array($0.name.utf8) }
        #expect(names.filter { $0 == Array("\u{E9}".utf8) || $0 == Array("e\u{301}".utf8) }.count == 2)
        try await fs.unlink(parent: rootIno, name: "\u{E9}", cred: root)
        #expect(try await fs.lookup(parent: rootIno, name: "e\u{301}", cred: root).ino == b.ino)
        // Extended attribute names too.
        try await fs.setxattr(ino: b.ino, name: "user.\u{E9}", value: [1], cred: root)
        try await fs.setxattr(ino: b.ino, name: "user.e\u{301}", value: [2], flags: .create, cred: root)
        #expect(try await fs.getxattr(ino: b.ino, name: "user.\u{E9}", cred: root) == [1])
        #expect(try await fs.getxattr(ino: b.ino, name: "user.e\u{301}", cred: root) == [2])
        try await fs.unmount()
        try await fsckClean(dev)
    }

    @Test func openFlags() async throws {
        let (_, fs) = try await makeFS()
        let a = try await fs.open(path: "/f", flags: [.create, .writeOnly], mode: 0o640, cred: root)
        _ = try await fs.write(ino: a.ino, offset: 0, data: bytes("hello"))
        await expectErrno(.fileExists, "O_EXCL") { _ = try await fs.open(path: "/f", flags: [.create, .exclusive, .writeOnly], cred: root) }
        let b = try await fs.open(path: "/f", flags: [.create, .readWrite], cred: root)
        #expect(b.ino == a.ino && b.size == 5)
        let c = try await fs.open(path: "/f", flags: [.readWrite, .truncate], cred: root)
        #expect(c.size == 0)
        await expectErrno(.notDirectory, "O_DIRECTORY") { _ = try await fs.open(path: "/f", flags: [.directory], cred: root) }
        await expectErrno(.isDirectory, "write dir") { _ = try await fs.open(path: "/", flags: [.writeOnly], cred: root) }
        await expectErrno(.noSuchFileOrDirectory, "missing") { _ = try await fs.open(path: "/nope", flags: [], cred: root) }
        await expectErrno(.notDirectory, "file/") { _ = try await fs.open(path: "/f/", flags: [], cred: root) }
        let r = try await fs.append(ino: a.ino, data: bytes("abc"))
        let r2 = try await fs.append(ino: a.ino, data: bytes("de"))
        #expect(r.offset == 0 && r2.offset == 3)
        #expect(try await fs.read(ino: a.ino, offset: 0, count: 10) == bytes("abcde"))
        // permissions through open
        await expectErrno(.permissionDenied, "alice reads 0640 root file") { _ = try await fs.open(path: "/f", flags: [], cred: alice) }
    }

    @Test func permissions() async throws {
        let (_, fs) = try await makeFS()
        let pub = try await fs.mkdir(parent: rootIno, name: "pub", mode: 0o777, cred: root)
        let priv = try await fs.mkdir(parent: rootIno, name: "priv", mode: 0o700, cred: root)
        await expectErrno(.permissionDenied, "search 0700 dir") { _ = try await fs.lookup(parent: priv.ino, name: "x", cred: alice) }
        await expectErrno(.permissionDenied, "create in 0755 root") { _ = try await fs.create(parent: rootIno, name: "x", mode: 0o644, cred: alice) }
        let af = try await fs.create(parent: pub.ino, name: "a", mode: 0o600, cred: alice)
        #expect(af.uid == 1000 && af.gid == 1000)
        await expectErrno(.permissionDenied, "bob truncates alice's file") {
            _ = try await fs.setattr(ino: af.ino, AttributeChanges(size: 0), cred: bob)
        }
        await expectErrno(.notPermitted, "bob chmods") { _ = try await fs.setattr(ino: af.ino, AttributeChanges(mode: 0o777), cred: bob) }
        await expectErrno(.notPermitted, "alice chowns to bob") { _ = try await fs.setattr(ino: af.ino, AttributeChanges(uid: 1001), cred: alice) }
        await expectErrno(.notPermitted, "alice chgrps to a foreign group") { _ = try await fs.setattr(ino: af.ino, AttributeChanges(gid: 50), cred: alice) }
        let alice50 = Credentials(uid: 1000, gid: 1000, groups: [50])
        #expect(try await fs.setattr(ino: af.ino, AttributeChanges(gid: 50), cred: alice50).gid == 50)
        // group permission via supplementary groups
        _ = try await fs.setattr(ino: af.ino, AttributeChanges(mode: 0o640), cred: alice)
        let carol = Credentials(uid: 1002, gid: 1002, groups: [50])
        _ = try await fs.open(path: "/pub/a", flags: [], cred: carol)
        await expectErrno(.permissionDenied, "group has no w") { _ = try await fs.open(path: "/pub/a", flags: [.writeOnly], cred: carol) }
        // a write names who writes: checked against the file's mode under the write's own lock
        await expectErrno(.permissionDenied, "carol writes without w") {
            _ = try await fs.write(ino: af.ino, offset: 0, data: [1], cred: carol)
        }
        await expectErrno(.permissionDenied, "carol appends without w") {
            _ = try await fs.append(ino: af.ino, data: [1], cred: carol)
        }
        #expect(try await fs.write(ino: af.ino, offset: 0, data: [1, 2], cred: alice) == 2)
        // The owner writes even without w (Linux checks at open: a file
        // created 0444, or made read-only while open); others may not.
        _ = try await fs.setattr(ino: af.ino, AttributeChanges(mode: 0o444), cred: alice)
        #expect(try await fs.write(ino: af.ino, offset: 0, data: [1, 2], cred: alice) == 2)
        await expectErrno(.permissionDenied, "carol writes a 0444 file") {
            _ = try await fs.write(ino: af.ino, offset: 0, data: [1], cred: carol)
        }
        _ = try await fs.setattr(ino: af.ino, AttributeChanges(mode: 0o640), cred: alice)
        #expect(try await fs.append(ino: af.ino, data: [3], cred: root).offset == 2)
        // a write by someone other than root drops setuid, and setgid where the group may execute
        _ = try await fs.setattr(ino: af.ino, AttributeChanges(mode: 0o6750), cred: alice50)
        _ = try await fs.write(ino: af.ino, offset: 0, data: [4], cred: root)
        #expect(try await fs.getattr(ino: af.ino).mode & 0o7777 == 0o6750)
        _ = try await fs.write(ino: af.ino, offset: 0, data: [5], cred: alice)
        #expect(try await fs.getattr(ino: af.ino).mode & 0o7777 == 0o750)
        // chown by root clears setuid
        _ = try await fs.setattr(ino: af.ino, AttributeChanges(mode: 0o4755), cred: alice)
        #expect(try await fs.setattr(ino: af.ino, AttributeChanges(uid: 1001), cred: root).mode & 0o7777 == 0o755)
        // utimens
        await expectErrno(.notPermitted, "explicit times by non-owner") {
            _ = try await fs.setattr(ino: af.ino, AttributeChanges(mtime: .ns(5)), cred: alice)
        }
        #expect(try await fs.setattr(ino: af.ino, AttributeChanges(atime: .ns(7), mtime: .ns(5)), cred: bob).mtime == 5)
        // root bypass, but exec needs an x bit
        _ = try await fs.lookup(parent: priv.ino, name: ".", cred: root)

        // sticky directory
        let tmp = try await fs.mkdir(parent: rootIno, name: "tmp", mode: 0o1777, cred: root)
        _ = try await fs.create(parent: tmp.ino, name: "alices", mode: 0o666, cred: alice)
        await expectErrno(.notPermitted, "sticky unlink") { try await fs.unlink(parent: tmp.ino, name: "alices", cred: bob) }
        await expectErrno(.notPermitted, "sticky rename") {
            try await fs.rename(oldParent: tmp.ino, oldName: "alices", newParent: tmp.ino, newName: "bobs", cred: bob)
        }
        try await fs.unlink(parent: tmp.ino, name: "alices", cred: alice)

        // setgid directory: group and bit inherited
        let sg = try await fs.mkdir(parent: rootIno, name: "sg", mode: 0o2777, cred: root)
        _ = try await fs.setattr(ino: sg.ino, AttributeChanges(gid: 77), cred: root)
        let inner = try await fs.mkdir(parent: sg.ino, name: "inner", mode: 0o755, cred: alice)
        #expect(inner.gid == 77 && inner.mode & 0o2000 != 0)
        let file = try await fs.create(parent: sg.ino, name: "file", mode: 0o2755, cred: alice)
        #expect(file.gid == 77 && file.mode & 0o2000 == 0)
    }

    @Test func renameFlags() async throws {
        let (dev, fs) = try await makeFS()
        let a = try await fs.mkdir(parent: rootIno, name: "a", mode: 0o755, cred: root)
        let b = try await fs.mkdir(parent: a.ino, name: "b", mode: 0o755, cred: root)
        let x = try await fs.create(parent: rootIno, name: "x", mode: 0o644, cred: root)
        let y = try await fs.create(parent: rootIno, name: "y", mode: 0o644, cred: root)
        await expectErrno(.invalidArgument, "dir into itself") {
            try await fs.rename(oldParent: rootIno, oldName: "a", newParent: b.ino, newName: "a2", cred: root)
        }
        await expectErrno(.fileExists, "NOREPLACE") {
            try await fs.rename(oldParent: rootIno, oldName: "x", newParent: rootIno, newName: "y", flags: .noReplace, cred: root)
        }
        await expectErrno(.noSuchFileOrDirectory, "EXCHANGE with missing") {
            try await fs.rename(oldParent: rootIno, oldName: "x", newParent: rootIno, newName: "zz", flags: .exchange, cred: root)
        }
        await expectErrno(.invalidArgument, "both flags") {
            try await fs.rename(oldParent: rootIno, oldName: "x", newParent: rootIno, newName: "y", flags: [.exchange, .noReplace], cred: root)
        }
        await expectErrno(.isDirectory, "file over dir") {
            try await fs.rename(oldParent: rootIno, oldName: "x", newParent: rootIno, newName: "a", cred: root)
        }
        await expectErrno(.notDirectory, "dir over file") {
            try await fs.rename(oldParent: rootIno, oldName: "a", newParent: rootIno, newName: "x", cred: root)
        }
        await expectErrno(.directoryNotEmpty, "over non-empty dir") {
            _ = try await fs.mkdir(parent: rootIno, name: "c", mode: 0o755, cred: root)
            try await fs.rename(oldParent: rootIno, oldName: "c", newParent: rootIno, newName: "a", cred: root)
        }
        // exchange a file and a directory across parents
        try await fs.rename(oldParent: rootIno, oldName: "x", newParent: a.ino, newName: "b", flags: .exchange, cred: root)
        #expect(try await fs.lookup(parent: rootIno, name: "x", cred: root).ino == b.ino)
        #expect(try await fs.lookup(parent: a.ino, name: "b", cred: root).ino == x.ino)
        #expect(try await fs.lookup(parent: b.ino, name: "..", cred: root).ino == rootIno)
        // replace: y over the file now at a/b
        try await fs.rename(oldParent: rootIno, oldName: "y", newParent: a.ino, newName: "b", cred: root)
        #expect(try await fs.lookup(parent: a.ino, name: "b", cred: root).ino == y.ino)
        await expectErrno(.staleNFSFileHandle, "replaced inode freed") { _ = try await fs.getattr(ino: x.ino) }
        // move a directory over an empty one
        try await fs.rename(oldParent: rootIno, oldName: "x", newParent: rootIno, newName: "c", cred: root)
        #expect(try await fs.getattr(ino: rootIno).nlink == 4)
        try await fs.unmount()
        try await fsckClean(dev)
    }

    @Test func xattrs() async throws {
        let (dev, fs) = try await makeFS()
        let f = try await fs.create(parent: rootIno, name: "f", mode: 0o644, cred: root)
        try await fs.setxattr(ino: f.ino, name: "user.color", value: bytes("blue"), cred: root)
        #expect(try await fs.getxattr(ino: f.ino, name: "user.color", cred: alice) == bytes("blue"))
        await expectErrno(.permissionDenied, "user xattr needs w") {
            try await fs.setxattr(ino: f.ino, name: "user.x", value: [1], cred: alice)
        }
        await expectErrno(.fileExists, "XATTR_CREATE") {
            try await fs.setxattr(ino: f.ino, name: "user.color", value: [1], flags: .create, cred: root)
        }
        await expectErrno(.noData, "XATTR_REPLACE") {
            try await fs.setxattr(ino: f.ino, name: "user.none", value: [1], flags: .replace, cred: root)
        }
        await expectErrno(.noData, "missing") { _ = try await fs.getxattr(ino: f.ino, name: "user.none", cred: root) }
        await expectErrno(.notPermitted, "trusted as user") { try await fs.setxattr(ino: f.ino, name: "trusted.t", value: [1], cred: alice) }
        await expectErrno(.notSupported, "bad namespace") { try await fs.setxattr(ino: f.ino, name: "bogus.t", value: [1], cred: root) }
        try await fs.setxattr(ino: f.ino, name: "trusted.t", value: [9], cred: root)
        #expect(try await fs.listxattr(ino: f.ino, cred: root).sorted() == ["trusted.t", "user.color"])
        #expect(try await fs.listxattr(ino: f.ino, cred: alice) == ["user.color"])
        await expectErrno(.noSpace, "too big for the block") {
            try await fs.setxattr(ino: f.ino, name: "user.big", value: [UInt8](repeating: 1, count: 5000), cred: root)
        }
        try await fs.removexattr(ino: f.ino, name: "user.color", cred: root)
        try await fs.removexattr(ino: f.ino, name: "trusted.t", cred: root)
        #expect(try await fs.listxattr(ino: f.ino, cred: root).isEmpty)
        try await fs.setxattr(ino: f.ino, name: "user.keep", value: bytes("v"), cred: root)
        try await fs.unmount()
        try await fsckClean(dev)
        let fs2 = try await FileSystem.mount(device: dev)
        #expect(try await fs2.getxattr(ino: f.ino, name: "user.keep", cred: root) == bytes("v"))
    }

    @Test func membersOwnTheirAGs() async throws {
        let dev = MemoryBlockDevice(blockCount: 65536)
        try await FileSystem.mkfs(device: dev)
        let m1 = try await FileSystem.mount(device: dev, member: 1, members: 2)
        await #expect(throws: FSError.notHome(ino: rootIno, member: 0)) { _ = try await m1.getattr(ino: rootIno) }
        await #expect(throws: FSError.posix(.invalidArgument)) { _ = try await FileSystem.mount(device: dev, member: 2, members: 2) }
        let m0 = try await FileSystem.mount(device: dev, member: 0, members: 2)
        // Top-level directories are spread by name: one placed on member 1
        // needs a cross-member transaction; one placed on 0 stays there, and
        // so does everything member 0 creates below it (even AGs).
        let names = (0..<20).map { "top\($0)" }
        let other = try #require(names.first { m0.placement(ofTopLevel: $0) == 1 })
        let mine = try #require(names.first { m0.placement(ofTopLevel: $0) == 0 })
        await #expect(throws: FSError.needsCoordination) {
            _ = try await m0.mkdir(parent: rootIno, name: other, mode: 0o755, cred: root)
        }
        let top = try await m0.mkdir(parent: rootIno, name: mine, mode: 0o755, cred: root)
        for k in 0..<20 {
            let a = try await m0.mkdir(parent: top.ino, name: "d\(k)", mode: 0o755, cred: root)
            #expect((a.ino >> 32) % 2 == 0)
        }
        try await m0.unmount()
        try await fsckClean(dev)
    }

    @Test func fsyncAndStatfs() async throws {
        let (dev, fs) = try await makeFS()
        let before = try await fs.statfs()
        let f = try await fs.create(parent: rootIno, name: "f", mode: 0o644, cred: root)
        _ = try await fs.write(ino: f.ino, offset: 0, data: pattern(40960, seed: 8))
        try await fs.fsync(ino: f.ino, dataOnly: true)
        let after = try await fs.statfs()
        #expect(before.freeBlocks - after.freeBlocks == 10)
        #expect(before.freeInodes - after.freeInodes == 1)
        // overwrite in place then fdatasync: no metadata commit needed, data durable
        _ = try await fs.write(ino: f.ino, offset: 0, data: bytes("ZZ"))
        try await fs.fsync(ino: f.ino, dataOnly: true)
        dev.simulatePowerLoss { _ in false }
        let fs2 = try await FileSystem.mount(device: dev)
        #expect(try await fs2.read(ino: f.ino, offset: 0, count: 2) == bytes("ZZ"))
        #expect(try await fs2.getattr(ino: f.ino).size == 40960)
        try await fsckClean(dev)
    }

    /// Every new inode gets a random generation (BufferedRandom): never 0,
    /// and a thousand files, past many refills of the pool, all differ.
    @Test func generationsDiffer() async throws {
        let (_, fs) = try await makeFS()
        var seen = Set<UInt32>()
        for k in 0..<1000 {
            let a = try await fs.create(parent: rootIno, name: "g\(k)", mode: 0o644, cred: root)
            #expect(a.generation != 0)
            seen.insert(a.generation)
        }
        #expect(seen.count >= 999, "only \(seen.count) distinct generations of 1000")
        var r = BufferedRandom()
        let draws = (0..<100).map { _ in r.next() }
        #expect(Set(draws).count == 100)
    }
}
