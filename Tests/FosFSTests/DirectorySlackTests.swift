@testable import FosFS
import Testing

/// The directory index keeps each block's largest free slot (its slack),
/// which inserts update from the parse they make anyway: after every
/// insert and remove it must equal a fresh parse of the block.
@Suite struct DirectorySlackTests {
    @Test func slackMatchesTheBlocksAfterEveryInsertAndRemove() async throws {
        let (dev, fs) = try await makeFS()
        let d = try await fs.mkdir(parent: rootIno, name: "d", mode: 0o755, cred: root)
        var r = SeededRandom(seed: 7)
        var names: [String] = []
        for k in 0..<700 {
            if !names.isEmpty, r.next() % 3 == 0 {
                let n = names.remove(at: Int(r.next() % UInt64(names.count)))
                try await fs.unlink(parent: d.ino, name: n, cred: root)
            } else {
                // Names of 1 to 255 bytes: records of every size, so that
                // inserts split records and fill slots left by removes.
                let n = "\(k)-" + String(repeating: "x", count: Int(r.next() % 250))
                _ = try await fs.create(parent: d.ino, name: n, mode: 0o644, cred: root)
                names.append(n)
            }
            try await fs.op {
                let dir = try await fs.inode(d.ino)
                let idx = try await fs.dirIndex(dir)
                for l in 0..<idx.slack.count {
                    let data = try await fs.cached(try fs.dirBlockPhysical(dir, l)).data
                    let fresh = FileSystem.slack(try fs.parseBlock(data, dir: d.ino, block: l))
                    #expect(idx.slack[l] == fresh, "step \(k), block \(l)")
                }
            }
        }
        try await fs.unmount()
        try await fsckClean(dev)
    }
}
