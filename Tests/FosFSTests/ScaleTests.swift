import FosFS
import SystemPackage
import Testing

#if canImport(Glibc)
import Glibc
#endif

func monotonicNs() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

@Suite struct ScaleTests {
    @Test func hundredThousandEntries() async throws {
        // 2 GiB sparse disk: 4 AGs of 512 MiB, 32768 inodes each.
        let (dev, fs) = try await makeFS(blocks: 1 << 19, mount: MountOptions(cacheBlocks: 16384))
        let d = try await fs.mkdir(parent: rootIno, name: "big", mode: 0o755, cred: root)
        let n = 100_000
        var inos: [UInt64] = []
        inos.reserveCapacity(n)
        for k in 0..<n {
            inos.append(try await fs.mknod(parent: d.ino, name: "entry-\(k)", mode: 0o100644, cred: root).ino)
        }
        // Lookups stay fast after creation.
        let t0 = monotonicNs()
        var r = SeededRandom(seed: 5)
        let lookups = 20_000
        for _ in 0..<lookups {
            let k = Int(r.next() % UInt64(n))
            let a = try await fs.lookup(parent: d.ino, name: "entry-\(k)", cred: root)
            #expect(a.ino == inos[k])
        }
        let avgUs = Double(monotonicNs() - t0) / Double(lookups) / 1000
        #expect(avgUs < 50, "average lookup \(avgUs) µs")
        await expectErrno(.noSuchFileOrDirectory) { _ = try await fs.lookup(parent: d.ino, name: "entry-\(n)", cred: root) }

        // readdir returns each exactly once.
        var seen = Set<String>()
        var cookie: UInt64 = 0
        while true {
            let batch = try await fs.readdir(ino: d.ino, cookie: cookie, max: 1000)
            if batch.isEmpty { break }
            for e in batch { #expect(seen.insert(e.name).inserted, "\(e.name) twice") }
            cookie = batch.last!.nextCookie
        }
        #expect(seen.count == n + 2)
        try await fs.unmount()
        // After a remount the index is rebuilt from disk.
        let fs2 = try await FileSystem.mount(device: dev)
        #expect(try await fs2.lookup(parent: d.ino, name: "entry-77777", cred: root).ino == inos[77777])
        try await fs2.unmount()
        try await fsckClean(dev)
    }

    @Test func readdirCookiesStableUnderChurn() async throws {
        let (dev, fs) = try await makeFS()
        let d = try await fs.mkdir(parent: rootIno, name: "d", mode: 0o755, cred: root)
        for k in 0..<2000 { _ = try await fs.mknod(parent: d.ino, name: "keep-\(k)", mode: 0o100644, cred: root) }
        for k in 0..<1000 { _ = try await fs.mknod(parent: d.ino, name: "churn-\(k)", mode: 0o100644, cred: root) }
        var seen: [String: Int] = [:]
        var cookie: UInt64 = 0
        var round = 0
        var r = SeededRandom(seed: 11)
        while true {
            let batch = try await fs.readdir(ino: d.ino, cookie: cookie, max: 37)
            if batch.isEmpty { break }
            for e in batch { seen[e.name, default: 0] += 1 }
            cookie = batch.last!.nextCookie
            // Between batches: delete some churn entries and add new ones.
            for _ in 0..<10 {
                let k = Int(r.next() % 1000)
                try? await fs.unlink(parent: d.ino, name: "churn-\(k)", cred: root)
            }
            for k in 0..<10 { _ = try await fs.mknod(parent: d.ino, name: "new-\(round)-\(k)", mode: 0o100644, cred: root) }
            round += 1
        }
        for k in 0..<2000 { #expect(seen["keep-\(k)"] == 1, "keep-\(k) seen \(seen["keep-\(k)"] ?? 0) times") }
        #expect(seen.values.allSatisfy { $0 == 1 })
        try await fs.unmount()
        try await fsckClean(dev)
    }

    @Test func enospcThenRecovery() async throws {
        let (dev, fs) = try await makeFS(blocks: 2048, mkfs: MkfsOptions(journalBlocks: 64))
        var files: [UInt64] = []
        var full = false
        let chunk = pattern(64 * 1024, seed: 4)
        outer: for k in 0..<1000 {
            let f = try await fs.create(parent: rootIno, name: "f\(k)", mode: 0o644, cred: root)
            files.append(f.ino)
            var off: UInt64 = 0
            while true {
                do {
                    let n = try await fs.write(ino: f.ino, offset: off, data: chunk)
                    off += UInt64(n)
                    if n < chunk.count { full = true; break outer }
                } catch FSError.posix(.noSpace) {
                    full = true
                    break outer
                }
                if off >= 1 << 20 { break }
            }
        }
        #expect(full)
        await expectErrno(.noSpace) {
            let f = files.last!
            let a = try await fs.getattr(ino: f)
            _ = try await fs.write(ino: f, offset: a.size + 8192, data: chunk)
        }
        // Delete everything, then the space is usable again.
        for k in 0..<files.count { try await fs.unlink(parent: rootIno, name: "f\(k)", cred: root) }
        let g = try await fs.create(parent: rootIno, name: "again", mode: 0o644, cred: root)
        for k in 0..<8 { #expect(try await fs.write(ino: g.ino, offset: UInt64(k) * 65536, data: chunk) == chunk.count) }
        try await fs.unmount()
        try await fsckClean(dev)
    }
}
