@testable import FosFS
import SystemPackage
import Testing

/// Inode numbers set aside for a directory lease (FosFSServer/Leases.swift):
/// nobody else gets them, the holder's creates take them, and a create
/// replayed to a restarted file system takes the same number again.
@Suite struct ReservedInodeTests {
    @Test func reservedNumbersAreTheHoldersOnly() async throws {
        let (dev, fs) = try await makeFS()
        let d = try await fs.mkdir(parent: rootIno, name: "d", mode: 0o777, cred: root)
        let held = try await fs.reserveInodes(8, near: d.ino)
        #expect(held.count == 8 && Set(held).count == 8)
        // Others' new files never get one of them.
        var others: [UInt64] = []
        for i in 0..<20 { others.append(try await fs.create(parent: d.ino, name: "o\(i)", mode: 0o644, cred: root).ino) }
        #expect(Set(others).isDisjoint(with: held))
        // A number set aside is the holder's alone.
        await expectErrno(.fileExists, "another's reserved number") {
            _ = try await fs.create(parent: d.ino, name: "x", mode: 0o644,
                                    ino: WantedInode(number: held[0], reserved: false), cred: root)
        }
        let a = try await fs.create(parent: d.ino, name: "a", mode: 0o640,
                                    ino: WantedInode(number: held[0], reserved: true), cred: alice)
        #expect(a.ino == held[0] && a.mode == 0o100640 && a.uid == alice.uid && a.nlink == 1)
        #expect(try await fs.lookup(parent: d.ino, name: "a", cred: root).ino == held[0])
        // A number in use, or the name taken by another file: EEXIST.
        await expectErrno(.fileExists, "number in use") {
            _ = try await fs.create(parent: d.ino, name: "y", mode: 0o644,
                                    ino: WantedInode(number: others[0], reserved: false), cred: root)
        }
        await expectErrno(.fileExists, "name of another file") {
            _ = try await fs.create(parent: d.ino, name: "o1", mode: 0o644,
                                    ino: WantedInode(number: held[1], reserved: true), cred: root)
        }
        // The same create again (a replay): the file it made.
        #expect(try await fs.create(parent: d.ino, name: "a", mode: 0o640,
                                    ino: WantedInode(number: held[0], reserved: false), cred: alice).ino == held[0])
        // Given back: ordinary creates may take them again.
        await fs.releaseInodes(Array(held.dropFirst()))
        try await fs.unmount()
        // After a restart nothing is set aside: a replayed create takes its
        // number if it is still free.
        let fs2 = try await FileSystem.mount(device: dev)
        let b = try await fs2.create(parent: d.ino, name: "b", mode: 0o644,
                                     ino: WantedInode(number: held[2], reserved: false), cred: root)
        #expect(b.ino == held[2])
        try await fs2.unmount()
        try await fsckClean(dev)
    }
}
