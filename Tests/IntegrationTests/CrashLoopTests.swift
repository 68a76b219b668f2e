import FosCore
import FosFS
import FosFSClient
import Foundation
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Files whose data and name were made durable (fsync of the file, then of
/// its directory, both returned) before a crash; written by the workload task.
final class Durable: Sendable {
    let files = Mutex<[String: [UInt8]]>([:])
}

@Suite("whole-node crashes", .serialized)
struct CrashLoopTests {
    /// kill -9 of fosd (its members die with it: PR_SET_PDEATHSIG) at a random
    /// point of a write-, rename- and fsync-heavy workload on a fleet of two
    /// fs members, with renames between directories of both, again and again
    /// on the same disk. Each restart must serve every byte that an fsync covered;
    /// fsck must find the disk clean. FOS_CRASH_ITERATIONS overrides the count.
    @Test("kill -9 of the whole node at random points: fsck clean, every fsync'd byte present")
    func crashLoop() async throws {
        let iterations = ProcessInfo.processInfo.environment["FOS_CRASH_ITERATIONS"].flatMap(Int.init) ?? 50
        try await TestNode.with(members: 1, fsMembers: 2) { node in
            let disk = node.stateDir + "/disk.img"
            let durable = Durable()
            var crashesMidWork = 0
            for it in 0..<iterations {
                let fs = try await step("connect", it, node) { try await FSClient.connect(try node.runtime()) }
                // Everything made durable before earlier crashes is there, byte for byte.
                for (path, data) in durable.files.withLock({ $0 }) {
                    let got = try await step("read \(path)", it, node) { try await fs.readFile(path: path) }
                    #expect(got == data, "iteration \(it): \(path) lost or changed (\(got.count) of \(data.count) bytes)")
                }
                // Two top-level directories on different members (the fleet
                // places them by name): files move between them in
                // cross-member renames.
                let dir = try await step("mkdir", it, node) { try await fs.mkdir(path: "/it\(it)") }
                let otherName = topLevelNames(on: 1 - FileSystem.home(of: dir.ino, members: 2), of: 2, 1, prefix: "o\(it)-")[0]
                let other = try await step("mkdir", it, node) { try await fs.mkdir(path: "/" + otherName) }
                let work = Task {
                    var k = 0
                    while !Task.isCancelled {
                        // A scratch file renamed about (never made durable), and a durable one.
                        let scratch = "s\(k)"
                        _ = try await fs.create(parent: dir.ino, name: scratch)
                        let sf = try await fs.open(path: "/it\(it)/\(scratch)", flags: [.writeOnly])
                        _ = try await fs.write(ino: sf.ino, offset: 0, data: pattern(8192 + k * 512, seed: UInt8(k & 0xff)))
                        try await fs.rename(oldParent: dir.ino, oldName: scratch, newParent: dir.ino, newName: "r\(k)")
                        let name = "d\(k)"
                        let data = pattern(4096 * (1 + k % 5) + k, seed: UInt8(it & 0xff))
                        let f = try await fs.create(parent: dir.ino, name: name)
                        _ = try await fs.write(ino: f.ino, offset: 0, data: data)
                        try await fs.fsync(ino: f.ino)
                        try await fs.fsync(ino: dir.ino)
                        durable.files.withLock { $0["/it\(it)/\(name)"] = data }
                        if k % 3 == 2 {
                            // Neither name is certain until the rename and the fsync of its target return.
                            durable.files.withLock { $0["/it\(it)/\(name)"] = nil }
                            try await fs.rename(oldParent: dir.ino, oldName: name, newParent: other.ino, newName: name)
                            try await fs.fsync(ino: other.ino)
                            durable.files.withLock { $0["/\(otherName)/\(name)"] = data }
                        }
                        k += 1
                    }
                }
                // Crash somewhere in the first ~150 ms of work (seeded by the iteration).
                try await Task.sleep(for: .milliseconds(5 + (it * 37) % 150))
                await node.killHard()
                work.cancel()
                if case .failure = await work.result { crashesMidWork += 1 }
                if it % 10 == 9 || it == iterations - 1 {
                    // fsck replays the journal like a mount would, then checks everything.
                    let check = try await eventually("fsck after crash \(it)", timeout: .seconds(10)) { () -> CLIResult? in
                        let r = try await offline(node, ["fsck", "--disk", disk])
                        return r.stderr.contains("in use") ? nil : r
                    }
                    #expect(check.status == 0 && check.stdout == "clean\n", "iteration \(it): fsck: \(check.stdout) \(check.stderr)")
                }
                try await step("restart", it, node) {
                    try node.launch()
                    try await node.waitReady()
                }
            }
            // The crashes hit the workload, not an idle node.
            #expect(crashesMidWork >= iterations / 2, "only \(crashesMidWork) of \(iterations) crashes interrupted the workload")
            let fs = try await FSClient.connect(try node.runtime())
            for (path, data) in durable.files.withLock({ $0 }) {
                #expect(try await fs.readFile(path: path) == data, "at the end: \(path)")
            }
            #expect(durable.files.withLock { $0.count } >= iterations, "the workload made too little durable to test")
        }
    }

    /// A step of iteration `it`; its error comes back saying which step
    /// failed, with the end of fosd's log (a rare failure is then readable
    /// from CI's output alone).
    func step<T>(_ what: String, _ it: Int, _ node: TestNode, _ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch {
            throw TestFailure("iteration \(it), \(what): \(error); fosd's log ends:\n\(node.log.suffix(4000))")
        }
    }
}
