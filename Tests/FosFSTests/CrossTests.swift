import FosFS
import SystemPackage
import Testing

/// Cross-member transactions between two members sharing one disk, driven
/// the way the fs fleet drives them (lend, crossMember, absorb, resume).
@Suite struct CrossTests {
    /// Runs `body` on `coordinator` while `lender` is lent to it.
    static func cross<T: Sendable>(_ coordinator: FileSystem, _ lender: FileSystem,
                                   _ body: () async throws -> T) async throws -> T {
        try await lender.lend()
        let (outcome, changes) = try await coordinator.crossMember(body)
        try await lender.absorb(changes)
        lender.resume()
        return try outcome.get()
    }

    static func names(_ fs: FileSystem, on member: Int, _ count: Int) -> [String] {
        (0..<1000).map { "top\($0)" }.filter { fs.placement(ofTopLevel: $0) == member }.prefix(count).map { $0 }
    }

    /// Two members on one fresh disk, and a top-level directory on each:
    /// `a` on member 0, `b` on member 1 (made by member 0).
    static func twoMembers() async throws -> (dev: MemoryBlockDevice, m0: FileSystem, m1: FileSystem,
                                             a: FileAttributes, b: FileAttributes) {
        let dev = MemoryBlockDevice(blockCount: 65536)
        try await FileSystem.mkfs(device: dev)
        let m0 = try await FileSystem.mount(device: dev, member: 0, members: 2)
        let m1 = try await FileSystem.mount(device: dev, member: 1, members: 2)
        let n1 = Self.names(m0, on: 1, 1)[0], n0 = Self.names(m0, on: 0, 1)[0]
        let b = try await Self.cross(m0, m1) { try await m0.mkdir(parent: rootIno, name: n1, mode: 0o755, cred: root) }
        let a = try await m0.mkdir(parent: rootIno, name: n0, mode: 0o755, cred: root)
        return (dev, m0, m1, a, b)
    }

    @Test func renameLinkAndPlacementAcrossMembers() async throws {
        // A top-level directory placed on member 1, made by member 0.
        let (dev, m0, m1, a, b) = try await Self.twoMembers()
        #expect(m0.home(of: b.ino) == 1)
        #expect(m0.home(of: a.ino) == 0)
        // Member 1 serves it now; member 0 does not.
        let f = try await m1.create(parent: b.ino, name: "f", mode: 0o644, cred: root)
        _ = try await m1.write(ino: f.ino, offset: 0, data: pattern(10000, seed: 1))
        await #expect(throws: FSError.notHome(ino: b.ino, member: 1)) { _ = try await m0.getattr(ino: b.ino) }
        let g = try await m0.create(parent: a.ino, name: "g", mode: 0o644, cred: root)
        _ = try await m0.write(ino: g.ino, offset: 0, data: pattern(5000, seed: 2))

        // Rename between the members' directories, both ways, and a link.
        try await Self.cross(m0, m1) {
            try await m0.rename(oldParent: b.ino, oldName: "f", newParent: a.ino, newName: "f-moved", cred: root)
        }
        #expect(try await m0.lookupChild(parent: a.ino, name: "f-moved", cred: root) == f.ino)
        await #expect(throws: FSError.posix(.noSuchFileOrDirectory)) { _ = try await m1.lookup(parent: b.ino, name: "f", cred: root) }
        #expect(try await m1.read(ino: f.ino, offset: 0, count: 20000) == pattern(10000, seed: 1))
        _ = try await Self.cross(m1, m0) { try await m1.link(ino: g.ino, newParent: b.ino, name: "g-link", cred: root) }
        #expect(try await m0.getattr(ino: g.ino).nlink == 2)

        // RENAME_NOREPLACE and RENAME_EXCHANGE across members; errors leave everything as it was.
        await #expect(throws: FSError.posix(.fileExists)) {
            try await Self.cross(m1, m0) {
                try await m1.rename(oldParent: b.ino, oldName: "g-link", newParent: a.ino, newName: "f-moved",
                                    flags: .noReplace, cred: root)
            }
        }
        let sub = try await m1.mkdir(parent: b.ino, name: "sub", mode: 0o755, cred: root)
        try await Self.cross(m0, m1) {
            try await m0.rename(oldParent: a.ino, oldName: "f-moved", newParent: b.ino, newName: "sub",
                                flags: .exchange, cred: root)
        }
        #expect(try await m0.lookupChild(parent: a.ino, name: "f-moved", cred: root) == sub.ino)
        #expect(try await m1.lookupChild(parent: b.ino, name: "sub", cred: root) == f.ino)
        #expect(try await m1.getattr(ino: b.ino).nlink == 2)
        #expect(try await m0.getattr(ino: a.ino).nlink == 3)

        // Replacing a file of the other member frees it there.
        let before = try await m1.statfs()
        try await Self.cross(m0, m1) {
            try await m0.unlink(parent: b.ino, name: "g-link", cred: root)
            try await m0.rename(oldParent: a.ino, oldName: "g", newParent: b.ino, newName: "sub", cred: root)
        }
        await #expect(throws: FSError.posix(.staleNFSFileHandle)) { _ = try await m1.getattr(ino: f.ino) }
        #expect(try await m0.read(ino: g.ino, offset: 0, count: 9000) == pattern(5000, seed: 2))
        #expect(try await m0.getattr(ino: g.ino).nlink == 1)
        _ = before

        // Both members keep working on their own AGs afterwards.
        for k in 0..<10 {
            _ = try await m1.create(parent: b.ino, name: "after\(k)", mode: 0o644, cred: root)
            _ = try await m0.create(parent: a.ino, name: "after\(k)", mode: 0o644, cred: root)
        }
        try await m0.unmount()
        try await m1.unmount()
        try await fsckClean(dev)
    }

    /// The coordinator loses power at a random write or flush of a stream of
    /// cross-member renames; replaying its slot (what a lender or a mounting
    /// member does) gives a clean file system where the file has exactly one
    /// name and its contents.
    @Test(arguments: 0..<24) func coordinatorCrash(_ seed: UInt64) async throws {
        let base = MemoryBlockDevice(blockCount: 65536)
        try await FileSystem.mkfs(device: base)
        var r = SeededRandom(seed: seed)
        let setup0 = try await FileSystem.mount(device: base, member: 0, members: 2)
        let m1 = try await FileSystem.mount(device: base, member: 1, members: 2)
        let n1 = Self.names(setup0, on: 1, 1)[0], n0 = Self.names(setup0, on: 0, 1)[0]
        let b = try await Self.cross(setup0, m1) { try await setup0.mkdir(parent: rootIno, name: n1, mode: 0o755, cred: root) }
        let a = try await setup0.mkdir(parent: rootIno, name: n0, mode: 0o755, cred: root)
        let f = try await setup0.create(parent: a.ino, name: "f", mode: 0o644, cred: root)
        _ = try await setup0.write(ino: f.ino, offset: 0, data: pattern(7000, seed: seed))
        try await setup0.unmount()

        let dev = CrashingBlockDevice(wrapping: base, crashAfter: Int(r.next() % 60), seed: seed)
        var inA = true
        var lent = false
        do {
            // (Mounting writes too: the slot's superblock, a fresh start.)
            let m0 = try await FileSystem.mount(device: dev, member: 0, members: 2)
            for _ in 0..<20 {
                try await m1.lend()
                lent = true
                let (outcome, changes) = try await m0.crossMember {
                    if inA {
                        try await m0.rename(oldParent: a.ino, oldName: "f", newParent: b.ino, newName: "f", cred: root)
                    } else {
                        try await m0.rename(oldParent: b.ino, oldName: "f", newParent: a.ino, newName: "f", cred: root)
                    }
                }
                try outcome.get()
                inA.toggle()
                try await m1.absorb(changes)
                m1.resume()
                lent = false
            }
        } catch {
            // The coordinator died (with member 1 lent, unless in its mount): what member 1 does.
            #expect(dev.hasCrashed, "\(error)")
            _ = try await FileSystem.replaySlot(device: base, slot: 0)
            if lent {
                try await m1.absorb(nil)
                m1.resume()
            }
        }
        let m0b = try await FileSystem.mount(device: base, member: 0, members: 2)
        let inANow = (try? await m0b.lookupChild(parent: a.ino, name: "f", cred: root)) == f.ino
        let inBNow = (try? await m1.lookupChild(parent: b.ino, name: "f", cred: root)) == f.ino
        #expect(inANow != inBNow, "exactly one name: in a \(inANow), in b \(inBNow) (seed \(seed))")
        // An acknowledged cross-member rename is durable (committed and checkpointed).
        if !dev.hasCrashed { #expect(inANow == inA) }
        #expect(try await m0b.read(ino: f.ino, offset: 0, count: 8000) == pattern(7000, seed: seed))
        try await m0b.unmount()
        try await m1.unmount()
        try await fsckClean(base)
    }
}

/// A member whose AGs are full spills file data into another member's AGs
/// in a cross-member transaction; freeing that data takes one too.
@Suite struct SpillTests {
    @Test func dataSpillsIntoPeerAGsAndIsFreedByCrossTransactions() async throws {
        let dev = MemoryBlockDevice(blockCount: 8192)  // 32 MiB: 4 small AGs, two per member
        try await FileSystem.mkfs(device: dev)
        let m0 = try await FileSystem.mount(device: dev, member: 0, members: 2)
        let m1 = try await FileSystem.mount(device: dev, member: 1, members: 2)
        let f = try await m0.create(parent: rootIno, name: "big", mode: 0o644, cred: root)
        let chunk = pattern(60 * 1024, seed: 4)
        var size: UInt64 = 0
        while true {
            do {
                let n = try await m0.write(ino: f.ino, offset: size, data: chunk)
                size += UInt64(n)
                if n < chunk.count { break }
            } catch FSError.posix(.noSpace) {
                break
            }
        }
        let own = try await m0.statfs(of: 0)
        #expect(own.availableBlocks < 16, "member 0's AGs are full: \(own.availableBlocks) left")
        let peerFree = try await m1.statfs(of: 1).freeBlocks
        // The same write in a cross-member transaction goes through.
        let spilled = try await CrossTests.cross(m0, m1) { try await m0.write(ino: f.ino, offset: size, data: chunk) }
        #expect(spilled == chunk.count)
        #expect(try await m1.statfs(of: 1).freeBlocks <= peerFree - 15, "member 1 saw its blocks go")
        #expect(try await m0.read(ino: f.ino, offset: size, count: chunk.count) == chunk)
        // Freeing it: not alone, but in a cross-member transaction.
        await #expect(throws: FSError.needsCoordination) { try await m0.unlink(parent: rootIno, name: "big", cred: root) }
        await #expect(throws: FSError.needsCoordination) { _ = try await m0.truncate(f.ino, to: 0) }
        try await CrossTests.cross(m0, m1) { try await m0.unlink(parent: rootIno, name: "big", cred: root) }
        #expect(try await m1.statfs(of: 1).freeBlocks == peerFree, "member 1 has its blocks back")
        // Both members allocate again, and everything is consistent.
        _ = try await m1.statfs()
        try await m0.unmount()
        try await m1.unmount()
        try await fsckClean(dev)
    }
}

extension FileSystem {
    func truncate(_ ino: UInt64, to size: UInt64) async throws -> FileAttributes {
        var c = AttributeChanges()
        c.size = size
        return try await setattr(ino: ino, c, cred: .root)
    }
}
