@testable import FosFS
import Testing

@Suite struct EvictionTests {
    /// The selection that finds the buffer cache's eviction cut-off agrees
    /// with sorting, for every index, with and without repeated values.
    @Test func selectionAgreesWithSorting() {
        var rng = SystemRandomNumberGenerator()
        for n in [1, 2, 3, 7, 64, 301] {
            for spread in [UInt64(2), 1_000_000] {
                let values = (0..<n).map { _ in UInt64.random(in: 0..<spread, using: &rng) }
                let sorted = values.sorted()
                for k in 0..<n {
                    var a = values
                    #expect(a.selectSmallest(k) == sorted[k], "n \(n), spread \(spread), k \(k)")
                    #expect(a.sorted() == sorted)  // reordered, nothing lost
                }
            }
        }
        var ascending = Array(UInt64(0)..<5000)
        #expect(ascending.selectSmallest(1249) == 1249)
        var descending = Array((UInt64(0)..<5000).reversed())
        #expect(descending.selectSmallest(4999) == 4999)
    }

    /// Through a cache far smaller than what passes through it, a block in
    /// use stays and one written once goes; every byte survives a remount.
    @Test func evictionKeepsTheRecentlyUsed() async throws {
        let dev = MemoryBlockDevice(blockCount: 16384)
        try await FileSystem.mkfs(device: dev)
        let fs = try await FileSystem.mount(device: dev, options: MountOptions(cacheBlocks: 64))
        let hot = try await fs.create(parent: rootIno, name: "hot", mode: 0o644, cred: root)
        let cold = try await fs.create(parent: rootIno, name: "cold", mode: 0o644, cred: root)
        let big = try await fs.create(parent: rootIno, name: "big", mode: 0o644, cred: root)
        _ = try await fs.write(ino: hot.ino, offset: 0, data: [UInt8](repeating: 1, count: 4096))
        _ = try await fs.write(ino: cold.ino, offset: 0, data: [UInt8](repeating: 2, count: 4096))
        let hotBlock = try await fs.inode(hot.ino).extents[0].physical
        let coldBlock = try await fs.inode(cold.ino).extents[0].physical
        for k in 0..<400 {
            _ = try await fs.write(ino: big.ino, offset: UInt64(k) * 4096, data: [UInt8](repeating: UInt8(k & 0xFF), count: 4096))
            if k % 8 == 0 { _ = try await fs.write(ino: hot.ino, offset: 0, data: [UInt8(k & 0xFF)]) }
            #expect(fs.cache.count <= 64 + 64 / 2, "the cache grew to \(fs.cache.count) buffers")
        }
        #expect(fs.cache[hotBlock] != nil, "a block used every 8 writes was evicted")
        #expect(fs.cache[coldBlock] == nil, "a block written once, 400 blocks ago, is still cached")
        try await fs.unmount()

        let again = try await FileSystem.mount(device: dev)
        var want = [UInt8](repeating: 1, count: 4096)
        want[0] = UInt8(392 & 0xFF)
        #expect(try await again.read(ino: hot.ino, offset: 0, count: 4096) == want)
        #expect(try await again.read(ino: cold.ino, offset: 0, count: 4096) == [UInt8](repeating: 2, count: 4096))
        for k in stride(from: 0, to: 400, by: 37) {
            #expect(try await again.read(ino: big.ino, offset: UInt64(k) * 4096, count: 4096)
                    == [UInt8](repeating: UInt8(k & 0xFF), count: 4096), "block \(k) of the big file")
        }
        try await again.unmount()
        try await fsckClean(dev)
    }

    /// Making room does not flush while there are buffers to drop that do
    /// not await a checkpoint (a flush there stalled a request for 5-20 ms);
    /// when nearly all do, it flushes and drops them rather than grow.
    @Test func evictionSparesBuffersAwaitingCheckpoint() async throws {
        let dev = MemoryBlockDevice(blockCount: 1 << 16)
        try await FileSystem.mkfs(device: dev)
        let fs = try await FileSystem.mount(device: dev, options: MountOptions(cacheBlocks: 256))
        let d = try await fs.mkdir(parent: rootIno, name: "d", mode: 0o755, cred: root)
        for k in 0..<40 { _ = try await fs.create(parent: d.ino, name: "f\(k)", mode: 0o644, cred: root) }
        let waiting = fs.cache.values.filter { $0.needsCheckpoint }.count
        #expect(waiting > 0, "no metadata awaits a checkpoint: the test shows nothing")
        let big = try await fs.create(parent: rootIno, name: "big", mode: 0o644, cred: root)
        let before = dev.stats.flushes
        // Less than a block each: through the buffer cache (whole blocks of
        // a writer that never fsyncs go home past it).
        for k in 0..<600 {
            _ = try await fs.write(ino: big.ino, offset: UInt64(k) * 4096, data: [UInt8](repeating: UInt8(k & 0xFF), count: 4000),
                                   journalData: false)
            #expect(fs.cache.count <= 256 + 128)
        }
        #expect(dev.stats.flushes == before, "making room flushed \(dev.stats.flushes - before) times")
        try await fs.unmount()

        // A cache of 16 buffers: the metadata of 300 creates awaits its
        // checkpoint in more than that, and the cache stays bounded.
        let small = try await FileSystem.mount(device: dev, options: MountOptions(cacheBlocks: 16))
        for k in 0..<300 {
            _ = try await small.create(parent: d.ino, name: "g\(k)", mode: 0o644, cred: root)
            #expect(small.cache.count <= 16 + 8 + 8, "the cache grew to \(small.cache.count) buffers")
        }
        try await small.unmount()
        let again = try await FileSystem.mount(device: dev)
        #expect(try await again.read(ino: big.ino, offset: 599 * 4096, count: 4000) == [UInt8](repeating: UInt8(599 & 0xFF), count: 4000))
        #expect(try await again.read(ino: big.ino, offset: 4000, count: 96) == [UInt8](repeating: 0, count: 96))
        #expect(try await again.readdir(ino: d.ino, max: 1000).count >= 340)
        try await again.unmount()
        try await fsckClean(dev)
    }
}
