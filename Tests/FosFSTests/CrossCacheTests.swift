@testable import FosFS
import Testing

/// A file of member 1 freed by member 0's cross-member rename: member 1
/// still has its blocks cached, and a new file there that gets them must
/// read zeros where it was not written, never the old file's bytes.
@Suite struct CrossCacheTests {
    @Test func blocksFreedByAPeerDoNotLeakOldBytes() async throws {
        let (dev, m0, m1, a, b) = try await CrossTests.twoMembers()
        let secret = [UInt8](repeating: 0xAB, count: 4 * 4096)
        let y = try await m1.create(parent: b.ino, name: "y", mode: 0o600, cred: root)
        _ = try await m1.write(ino: y.ino, offset: 0, data: secret)
        #expect(try await m1.read(ino: y.ino, offset: 0, count: secret.count) == secret)  // cached at member 1
        _ = try await m0.create(parent: a.ino, name: "x", mode: 0o644, cred: root)
        try await CrossTests.cross(m0, m1) {
            try await m0.rename(oldParent: a.ino, oldName: "x", newParent: b.ino, newName: "y", cred: root)
        }
        // Member 1 allocates from the start of its groups again: y's blocks come first.
        m1.agBlockHint = m1.agBlockHint.map { _ in 0 }
        var leaked = 0
        for k in 0..<8 {
            let z = try await m1.create(parent: b.ino, name: "z\(k)", mode: 0o644, cred: root)
            _ = try await m1.write(ino: z.ino, offset: 100, data: Array("fresh data".utf8))
            let got = try await m1.read(ino: z.ino, offset: 0, count: 110)
            if got.prefix(100).contains(where: { $0 != 0 }) { leaked += 1 }
        }
        #expect(leaked == 0, "\(leaked) new files showed a freed file's bytes")
        try await m0.unmount()
        try await m1.unmount()
        try await fsckClean(dev)
    }
}
