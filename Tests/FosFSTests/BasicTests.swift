@testable import FosFS
import SystemPackage
import Testing

@Suite struct BasicTests {
    @Test func mkfsMountFsckClean() async throws {
        let (dev, fs) = try await makeFS(blocks: 65536)
        let st = try await fs.statfs()
        #expect(st.agCount == 4)
        #expect(st.freeBlocks > 0 && st.freeBlocks < st.totalBlocks)
        let r = try await fs.getattr(ino: rootIno)
        #expect(r.type == .directory && r.nlink == 2 && r.mode & 0o7777 == 0o755)
        try await fs.unmount()
        try await fsckClean(dev)
    }

    @Test func createWriteReadRemount() async throws {
        let (dev, fs) = try await makeFS()
        let f = try await fs.create(parent: rootIno, name: "hello", mode: 0o644, cred: root)
        let data = pattern(100_000, seed: 1)
        #expect(try await fs.write(ino: f.ino, offset: 0, data: data) == data.count)
        #expect(try await fs.read(ino: f.ino, offset: 0, count: 200_000) == data)
        #expect(try await fs.read(ino: f.ino, offset: 5000, count: 10) == Array(data[5000..<5010]))
        // pwrite in the middle, across a block boundary
        _ = try await fs.write(ino: f.ino, offset: 4090, data: bytes("0123456789ab"))
        var expect = data
        expect.replaceSubrange(4090..<4102, with: bytes("0123456789ab"))
        #expect(try await fs.read(ino: f.ino, offset: 0, count: 200_000) == expect)
        try await fs.unmount()
        try await fsckClean(dev)
        let fs2 = try await FileSystem.mount(device: dev)
        let g = try await fs2.lookup(parent: rootIno, name: "hello", cred: root)
        #expect(g.ino == f.ino && g.size == 100_000)
        #expect(try await fs2.read(ino: g.ino, offset: 0, count: 200_000) == expect)
        try await fs2.unmount()
    }

    @Test func remountWithoutUnmountReplaysJournal() async throws {
        let (dev, fs) = try await makeFS()
        let d = try await fs.mkdir(parent: rootIno, name: "d", mode: 0o755, cred: root)
        let f = try await fs.create(parent: d.ino, name: "f", mode: 0o600, cred: root)
        _ = try await fs.write(ino: f.ino, offset: 0, data: pattern(10000, seed: 2))
        try await fs.fsync(ino: f.ino)
        // No unmount: the journal holds the metadata; simulate losing every unflushed write.
        dev.simulatePowerLoss { _ in false }
        try await fsckClean(dev)
        let fs2 = try await FileSystem.mount(device: dev)
        let a = try await fs2.getattr(ino: try await fs2.resolve(path: "/d/f", cred: root))
        #expect(a.size == 10000 && a.mode & 0o777 == 0o600)
        #expect(try await fs2.read(ino: a.ino, offset: 0, count: 10000) == pattern(10000, seed: 2))
    }

    @Test func truncateAndSparse() async throws {
        let (dev, fs) = try await makeFS()
        let f = try await fs.create(parent: rootIno, name: "s", mode: 0o644, cred: root)
        _ = try await fs.write(ino: f.ino, offset: 10 * 4096 + 7, data: bytes("xyz"))
        var a = try await fs.getattr(ino: f.ino)
        #expect(a.size == 10 * 4096 + 10 && a.blocks == 8)
        #expect(try await fs.read(ino: f.ino, offset: 0, count: 5) == [0, 0, 0, 0, 0])
        _ = try await fs.write(ino: f.ino, offset: 0, data: pattern(8192, seed: 3))
        a = try await fs.setattr(ino: f.ino, AttributeChanges(size: 100), cred: root)
        #expect(a.size == 100 && a.blocks == 8)
        a = try await fs.setattr(ino: f.ino, AttributeChanges(size: 9000), cred: root)
        let r = try await fs.read(ino: f.ino, offset: 0, count: 9000)
        #expect(Array(r[0..<100]) == Array(pattern(8192, seed: 3)[0..<100]))
        #expect(r[100...].allSatisfy { $0 == 0 })
        try await fs.unmount()
        try await fsckClean(dev)
    }

    @Test func largeSparseFileAcross4GiB() async throws {
        let dev = MemoryBlockDevice(blockCount: 4 << 20)  // 16 GiB
        try await FileSystem.mkfs(device: dev)
        let fs = try await FileSystem.mount(device: dev)
        let f = try await fs.create(parent: rootIno, name: "big", mode: 0o644, cred: root)
        let five: UInt64 = 5 << 30
        let data = pattern(3 * 4096 + 100, seed: 9)
        #expect(try await fs.write(ino: f.ino, offset: five - 50, data: data) == data.count)
        _ = try await fs.write(ino: f.ino, offset: (4 << 30) - 2, data: bytes("abcd"))
        let a = try await fs.getattr(ino: f.ino)
        #expect(a.size == five - 50 + UInt64(data.count))
        #expect(try await fs.read(ino: f.ino, offset: five - 50, count: data.count) == data)
        #expect(try await fs.read(ino: f.ino, offset: (4 << 30) - 2, count: 4) == bytes("abcd"))
        let hole = try await fs.read(ino: f.ino, offset: 3 << 30, count: 65536)
        #expect(hole.count == 65536 && hole.allSatisfy { $0 == 0 })
        #expect(a.blocks <= 8 * 8)
        try await fs.unmount()
        // mkfs writes the journal slots whole (4 of them).
        #expect(dev.storedBlocks - 4 * Int(fs.sb.journalBlocks) < 2000)
        try await fsckClean(dev)
        let fs2 = try await FileSystem.mount(device: dev)
        #expect(try await fs2.read(ino: f.ino, offset: five - 50, count: data.count) == data)
    }
}
