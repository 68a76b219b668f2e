import FosCore
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The conformance suite (Tests/FuseC/fuse_conformance.c) against the mount,
/// as root and as nobody, with the host's own file system as the reference
/// in the same run: every case the host passes, the mount must pass.
@Suite("FUSE conformance", .serialized)
struct FuseConformanceTests {
    struct Outcome {
        var lines: [String]
        var summary: String
        var failures: [String] { lines.filter { $0.hasPrefix("FAIL") } }
    }

    static func run(_ node: TestNode, program: String, base: String, xdev: String, nobody: Bool) async throws -> Outcome {
        let prep = try await runCommand(program, ["prepare", base], outputIn: node.root)
        guard prep.status == 0 else { throw TestFailure("prepare \(base): \(prep.stderr)") }
        let argv = (nobody ? asNobody : []) + [program, "run", base, xdev]
        let r = try await runCommand(argv[0], Array(argv.dropFirst()), outputIn: node.root, timeout: .seconds(120))
        let lines = r.stdout.split(separator: "\n").map(String.init)
        guard let summary = lines.last(where: { $0.hasPrefix("conformance:") }) else {
            throw TestFailure("the suite did not finish (\(r.status)): \(r.stderr)\n\(r.stdout)")
        }
        return Outcome(lines: lines, summary: summary)
    }

    @Test("create, open, unlink, rename, link, symlink, chmod, chown, truncate, utimens, mkdir, rmdir, mkfifo: success and every errno, as root and as nobody")
    func conformance() async throws {
        try await TestNode.with(members: 1) { node in
            let program = try await FuseC.program("fuse_conformance")
            let host = node.root + "/host"
            let xdev = node.root + "/xdev"
            for d in [host, xdev] { try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: false) }
            chmod(node.root, 0o755)
            chmod(host, 0o755)
            chmod(xdev, 0o777)
            try await withMount(node) { mp in
                for nobody in [false, true] {
                    let who = nobody ? "nobody" : "root"
                    let reference = try await Self.run(node, program: program, base: host + "/" + who, xdev: mp, nobody: nobody)
                    let fos = try await Self.run(node, program: program, base: mp + "/" + who, xdev: xdev, nobody: nobody)
                    print("conformance as \(who): host \(reference.summary.dropFirst(13)); fos mount \(fos.summary.dropFirst(13))")
                    for l in fos.failures { print("  fos \(l)") }
                    #expect(reference.failures.isEmpty, "the host fails the suite as \(who): \(reference.failures)")
                    #expect(fos.failures.isEmpty, "the mount fails cases as \(who):\n\(fos.failures.joined(separator: "\n"))")
                    #expect(fos.lines.filter { $0.hasPrefix("PASS") }.count == reference.lines.filter { $0.hasPrefix("PASS") }.count)
                }
            }
        }
    }
}
