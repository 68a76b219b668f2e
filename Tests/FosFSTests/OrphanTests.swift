import FosFS
import SystemPackage
import Testing

/// Files whose last name goes while they may be open (Orphans.swift).
@Suite struct OrphanTests {
    static func freeInodes(_ fs: FileSystem) async throws -> UInt64 { try await fs.statfs().freeInodes }

    @Test func anOpenFileOutlivesItsLastName() async throws {
        let (dev, fs) = try await makeFS()
        fs.mayBeOpen = { _, _ in true }
        let before = try await Self.freeInodes(fs)
        let f = try await fs.create(parent: rootIno, name: "tmp", mode: 0o600, cred: root)
        _ = try await fs.write(ino: f.ino, offset: 0, data: pattern(20000, seed: 1))
        try await fs.unlink(parent: rootIno, name: "tmp", cred: root)
        await expectErrno(.noSuchFileOrDirectory) { _ = try await fs.lookup(parent: rootIno, name: "tmp", cred: root) }
        // Still a file: nlink 0, readable, writable, its inode still taken.
        #expect(try await fs.getattr(ino: f.ino).nlink == 0)
        #expect(try await fs.read(ino: f.ino, offset: 0, count: 20000) == pattern(20000, seed: 1))
        _ = try await fs.write(ino: f.ino, offset: 20000, data: pattern(5000, seed: 2))
        #expect(try await fs.getattr(ino: f.ino).size == 25000)
        #expect(try await Self.freeInodes(fs) == before - 1)
        // No new name for it (Linux: ENOENT without O_TMPFILE).
        await expectErrno(.noSuchFileOrDirectory) {
            _ = try await fs.link(ino: f.ino, newParent: rootIno, name: "back", cred: root)
        }
        #expect(try await fs.orphanList() == [f.ino])
        try await fs.sync()
        try await fsckClean(dev)  // an orphan is in use, not a leak

        try await fs.releaseOrphan(f.ino)
        #expect(try await fs.orphanList().isEmpty)
        await expectErrno(.staleNFSFileHandle) { _ = try await fs.getattr(ino: f.ino) }
        #expect(try await Self.freeInodes(fs) == before)
        try await fs.unmount()
        try await fsckClean(dev)
    }

    @Test func aFileNobodyHoldsIsFreedAtOnce() async throws {
        let (dev, fs) = try await makeFS()
        fs.mayBeOpen = { _, _ in false }
        let f = try await fs.create(parent: rootIno, name: "x", mode: 0o600, cred: root)
        try await fs.unlink(parent: rootIno, name: "x", cred: root)
        await expectErrno(.staleNFSFileHandle) { _ = try await fs.getattr(ino: f.ino) }
        #expect(try await fs.orphanList().isEmpty)
        try await fs.unmount()
        try await fsckClean(dev)
    }

    /// Rename over an open file, several orphans on one list, released in
    /// any order; a member killed with orphans finds them at its next mount.
    @Test func listsSurviveAKillAndReleaseInAnyOrder() async throws {
        let (dev, fs) = try await makeFS()
        fs.mayBeOpen = { _, _ in true }
        var inos: [UInt64] = []
        for k in 0..<4 {
            let f = try await fs.create(parent: rootIno, name: "f\(k)", mode: 0o644, cred: root)
            _ = try await fs.write(ino: f.ino, offset: 0, data: pattern(9000, seed: UInt64(k)))
            inos.append(f.ino)
        }
        try await fs.unlink(parent: rootIno, name: "f0", cred: root)
        try await fs.unlink(parent: rootIno, name: "f1", cred: root)
        try await fs.rename(oldParent: rootIno, oldName: "f3", newParent: rootIno, newName: "f2", cred: root)
        #expect(Set(try await fs.orphanList()) == [inos[0], inos[1], inos[2]])
        try await fs.releaseOrphan(inos[1])  // the middle of the list

        // Killed: no unmount. Every acknowledged operation is in the journal.
        let again = try await FileSystem.mount(device: dev)
        #expect(Set(try await again.orphanList()) == [inos[0], inos[2]])
        #expect(try await again.read(ino: inos[2], offset: 0, count: 9000) == pattern(9000, seed: 2))
        #expect(try await again.read(ino: inos[3], offset: 0, count: 9000) == pattern(9000, seed: 3))
        try await again.sync()
        try await fsckClean(dev)
        for ino in [inos[2], inos[0]] { try await again.releaseOrphan(ino) }
        #expect(try await again.orphanList().isEmpty)
        try await again.releaseOrphan(inos[0])  // twice: nothing happens
        try await again.unmount()
        try await fsckClean(dev)
        let last = try await FileSystem.mount(device: dev)
        #expect(try await last.orphanList().isEmpty)
        try await last.unmount()
    }

    /// Many orphans coming and going, released in random order while new
    /// ones join at the head: the lists stay consistent on disk.
    @Test func manyOrphansInAnyOrder() async throws {
        let (dev, fs) = try await makeFS()
        fs.mayBeOpen = { _, _ in true }
        var r = SeededRandom(seed: 7)
        var live: [UInt64] = []
        for round in 0..<6 {
            for k in 0..<60 {
                let f = try await fs.create(parent: rootIno, name: "r\(round)-\(k)", mode: 0o644, cred: root)
                if k % 3 == 0 { _ = try await fs.write(ino: f.ino, offset: 0, data: pattern(5000, seed: UInt64(k))) }
                try await fs.unlink(parent: rootIno, name: "r\(round)-\(k)", cred: root)
                live.append(f.ino)
            }
            live.shuffle(using: &r)
            let gone = live.prefix(40 + Int(r.next() % 20))
            try await fs.releaseOrphans(gone)
            live.removeFirst(gone.count)
            #expect(Set(try await fs.orphanList()) == Set(live))
        }
        try await fs.sync()
        try await fsckClean(dev)
        let again = try await FileSystem.mount(device: dev)  // killed: no unmount
        #expect(Set(try await again.orphanList()) == Set(live))
        try await again.releaseOrphans(live.reversed())
        try await again.unmount()
        try await fsckClean(dev)
    }
}

/// Found in review: a batch of releases larger than a transaction may hold,
/// and a disk made again over one with orphans.
@Suite struct OrphanEdgeTests {
    @Test func aBatchLargerThanATransactionCommitsAsItGoes() async throws {
        let (dev, fs) = try await makeFS()  // 64-block journal slots: at most 61 blocks a transaction
        fs.mayBeOpen = { ino, _ in ino & 15 == 5 }  // one orphan per inode table block
        for k in 0..<1700 { _ = try await fs.create(parent: rootIno, name: "f\(k)", mode: 0o644, cred: root) }
        for k in 0..<1700 { try await fs.unlink(parent: rootIno, name: "f\(k)", cred: root) }
        #expect(try await fs.orphanList().count > 100)
        try await fs.releaseOrphans(try await fs.orphanList())
        #expect(try await fs.orphanList().isEmpty)
        let again = try await FileSystem.mount(device: dev)  // killed
        #expect(try await again.orphanList().isEmpty)
        try await again.unmount()
        try await fsckClean(dev)
    }

    @Test func mkfsClearsOldLists() async throws {
        let (dev, fs) = try await makeFS()
        fs.mayBeOpen = { _, _ in true }
        var held: [UInt64] = []
        for k in 0..<8 {  // directories are spread over the AGs: orphans in several
            let d = try await fs.mkdir(parent: rootIno, name: "d\(k)", mode: 0o755, cred: root)
            let f = try await fs.create(parent: d.ino, name: "x", mode: 0o644, cred: root)
            try await fs.unlink(parent: d.ino, name: "x", cred: root)
            held.append(f.ino)
        }
        #expect(Set(held.map { $0 >> 32 }).count > 1)
        try await fs.unmount()
        try await FileSystem.mkfs(device: dev)
        try await fsckClean(dev)
        let again = try await FileSystem.mount(device: dev)
        #expect(try await again.orphanList().isEmpty)
        try await again.unmount()
    }
}
