import FosFS
import Synchronization
import Testing

/// A disk whose large reads take a while: a streaming read (device I/O
/// outside the operation lock) is still at the disk while other operations
/// free, reuse and rewrite blocks.
final class SlowReadDevice: BlockDevice {
    let inner: MemoryBlockDevice
    init(_ inner: MemoryBlockDevice) { self.inner = inner }
    var blockSize: Int { inner.blockSize }
    var blockCount: UInt64 { inner.blockCount }
    func read(block: UInt64, count: Int) async throws -> [UInt8] {
        if count > 1 { try await Task.sleep(for: .milliseconds(2)) }
        return try await inner.read(block: block, count: count)
    }
    func write(block: UInt64, data: [UInt8]) async throws { try await inner.write(block: block, data: data) }
    func writeOutliving(block: UInt64, data: [UInt8], unchanged: Int) async throws {
        try await inner.writeOutliving(block: block, data: data, unchanged: unchanged)
    }
    func flush() async throws { try await inner.flush() }
    func discard(block: UInt64, count: Int) async throws { try await inner.discard(block: block, count: count) }
}

@Suite struct StreamingReadTests {
    /// Reads of a large file race its truncation, the reuse of its blocks by
    /// another file and checkpoints: a read returns the file's bytes or
    /// zeros, never another file's.
    @Test func readsNeverSeeAnotherFilesBlocks() async throws {
        let mem = MemoryBlockDevice(blockCount: 8192)
        try await FileSystem.mkfs(device: mem, options: MkfsOptions(journalBlocks: 64))
        let fs = try await FileSystem.mount(device: SlowReadDevice(mem), options: MountOptions(cacheBlocks: 64))
        // A full disk, then room for one 256 KiB file: each new file can only
        // get its blocks by reusing the last one's, which takes a checkpoint.
        let filler = try await fs.create(parent: rootIno, name: "filler", mode: 0o644, cred: root)
        var size: UInt64 = 0
        while true {
            let n = (try? await fs.write(ino: filler.ino, offset: size, data: [UInt8](repeating: 1, count: 1 << 20))) ?? 0
            size += UInt64(n)
            if n < 1 << 20 { break }
        }
        _ = try await fs.truncate(filler.ino, to: size - 300 * 1024)
        var reused = 0
        for round in 0..<12 {
            let f = try await fs.create(parent: rootIno, name: "a\(round)", mode: 0o644, cred: root)
            #expect(try await fs.write(ino: f.ino, offset: 0, data: [UInt8](repeating: 0xAA, count: 256 * 1024)) == 256 * 1024)
            try await fs.fsync(ino: f.ino)  // out of the cache's dirty set: reads go to the disk
            let readers = (0..<4).map { k in
                Task { try await fs.read(ino: f.ino, offset: UInt64(k) * 65536, count: 65536) }
            }
            try await Task.sleep(for: .milliseconds(1))  // the readers are at the disk now
            // Meanwhile the file is truncated and its blocks go to another
            // one, whose data reaches the disk.
            _ = try await fs.truncate(f.ino, to: 0)
            let g = try await fs.create(parent: rootIno, name: "b\(round)", mode: 0o644, cred: root)
            let wrote = try await fs.write(ino: g.ino, offset: 0, data: [UInt8](repeating: 0xBB, count: 256 * 1024))
            if wrote == 256 * 1024 { reused += 1 }
            try await fs.fsync(ino: g.ino)
            for r in readers {
                let got = (try? await r.value) ?? []
                let leaked = got.contains(0xBB), foreign = !got.allSatisfy { $0 == 0xAA || $0 == 0 }
                #expect(!leaked, "round \(round): a read of a returned b's bytes")
                #expect(!foreign, "round \(round): a read of a returned bytes a never held")
            }
            try await fs.unlink(parent: rootIno, name: "a\(round)", cred: root)
            try await fs.unlink(parent: rootIno, name: "b\(round)", cred: root)
        }
        #expect(reused >= 10, "the second file got the first one's blocks in \(reused) of 12 rounds")
        try await fs.unmount()
        try await fsckClean(mem)
    }
}
