import FosFS
import SystemPackage
import Testing

let root = Credentials.root
let alice = Credentials(uid: 1000, gid: 1000)
let bob = Credentials(uid: 1001, gid: 1001)
let rootIno = FileSystem.rootIno

/// A fresh file system on a sparse in-memory disk.
func makeFS(blocks: UInt64 = 16384, mkfs: MkfsOptions = MkfsOptions(), mount: MountOptions = MountOptions())
    async throws -> (MemoryBlockDevice, FileSystem)
{
    let dev = MemoryBlockDevice(blockCount: blocks)
    try await FileSystem.mkfs(device: dev, options: mkfs)
    let fs = try await FileSystem.mount(device: dev, options: mount)
    return (dev, fs)
}

/// Expects `body` to fail with `errno`.
func expectErrno(_ errno: Errno, _ what: String = "", sourceLocation: SourceLocation = #_sourceLocation,
                 _ body: () async throws -> Void) async {
    do {
        try await body()
        Issue.record("\(what): expected \(errno), succeeded", sourceLocation: sourceLocation)
    } catch let e as FSError {
        if e != .posix(errno) { Issue.record("\(what): expected \(errno), got \(e)", sourceLocation: sourceLocation) }
    } catch {
        Issue.record("\(what): expected \(errno), got \(error)", sourceLocation: sourceLocation)
    }
}

func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

func pattern(_ n: Int, seed: UInt64) -> [UInt8] {
    var r = SeededRandom(seed: seed)
    return (0..<n).map { _ in UInt8(truncatingIfNeeded: r.next()) }
}

func fsckClean(_ dev: any BlockDevice, sourceLocation: SourceLocation = #_sourceLocation) async throws {
    let problems = try await FileSystem.fsck(device: dev)
    #expect(problems.isEmpty, "fsck: \(problems.prefix(10))", sourceLocation: sourceLocation)
}
