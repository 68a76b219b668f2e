import FosCore
import FosMounts
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

// Helpers of the FUSE mount tests: a mount that is always taken down, shell
// commands as root or as nobody, and the C programs of Tests/FuseC.

/// Mounts the node's file system on a fresh directory in the node's
/// temporary tree, runs `body` with the mount point, and unmounts whatever
/// happens (fosctl umount; if that fails, the daemon is killed and the mount
/// detached, so that the node's removal never walks into a mount).
func withMount<T>(_ node: TestNode, _ options: [String] = ["--allow-other"],
                  _ body: (String) async throws -> T) async throws -> T {
    // Every user passes through the node's tree (mkdtemp makes it 0700).
    chmod(node.root, 0o755)
    let mp = node.root + "/mnt-" + UUID().uuidString.prefix(8)
    try FileManager.default.createDirectory(atPath: mp, withIntermediateDirectories: false)
    let r = try await node.fosctl(["mount", mp] + options, timeout: .seconds(40))
    guard r.status == 0 else {
        await forceUnmount(node, mp)
        throw TestFailure("fosctl mount failed (\(r.status)): \(r.stderr)\(mountLog(node, mp))")
    }
    do {
        let v = try await body(mp)
        try await unmount(node, mp)
        return v
    } catch {
        await forceUnmount(node, mp)
        throw error
    }
}

func mountLog(_ node: TestNode, _ mp: String) -> String {
    let log = (try? String(contentsOfFile: FuseMounts.logPath(runtime: node.runtimeDir, mountpoint: mp), encoding: .utf8)) ?? ""
    return log.isEmpty ? "" : "\nfos-fuse log:\n" + log
}

func unmount(_ node: TestNode, _ mp: String) async throws {
    let r = try await node.fosctl(["umount", mp], timeout: .seconds(30))
    if r.status != 0 || FuseMounts.isMounted(mp) {
        await forceUnmount(node, mp)
        throw TestFailure("fosctl umount failed (\(r.status)): \(r.stderr)")
    }
}

/// Last resort: the daemon killed, the mount detached.
func forceUnmount(_ node: TestNode, _ mp: String) async {
    if let rec = FuseMounts.read(runtime: node.runtimeDir, mountpoint: mp), FuseMounts.daemonAlive(rec.pid) {
        kill(rec.pid, SIGKILL)
    }
    for _ in 0..<50 where FuseMounts.isMounted(mp) {
        _ = umount2(mp, Int32(MNT_DETACH))
        await pause(.milliseconds(20))
    }
}

/// Arguments that run a program as nobody (uid and gid 65534, no groups).
let asNobody = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]

/// Runs a shell script (as nobody with `nobody`); fails the test with its
/// output if it exits non-zero and `check` holds.
@discardableResult
func sh(_ node: TestNode, _ script: String, nobody: Bool = false, check: Bool = true,
        timeout: Duration = .seconds(60), sourceLocation: SourceLocation = #_sourceLocation) async throws -> CLIResult {
    let argv = (nobody ? asNobody : []) + ["/bin/sh", "-c", "set -e\n" + script]
    let r = try await runCommand(argv[0], Array(argv.dropFirst()), outputIn: node.root, timeout: timeout)
    if check {
        #expect(r.status == 0 && !r.signaled, "script failed (\(r.status)):\n\(script)\nstdout: \(r.stdout)\nstderr: \(r.stderr)",
                sourceLocation: sourceLocation)
    }
    return r
}

/// The C programs of Tests/FuseC, compiled once for each version of their
/// source into /tmp/fos-fusec (kept between runs, so nothing piles up).
enum FuseC {
    static let source = ((#filePath as NSString).deletingLastPathComponent as NSString)
        .deletingLastPathComponent + "/FuseC"
    static let cache = "/tmp/fos-fusec"

    static func program(_ name: String) async throws -> String {
        guard let text = FileManager.default.contents(atPath: "\(source)/\(name).c") else {
            throw TestFailure("no \(source)/\(name).c")
        }
        // FNV-1a of the source names the build.
        let hash = text.reduce(UInt64(0xcbf2_9ce4_8422_2325)) { ($0 ^ UInt64($1)) &* 0x100_0000_01b3 }
        let out = "\(cache)/\(name)-\(String(hash, radix: 16))"
        if FileManager.default.isExecutableFile(atPath: out) { return out }
        try FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)
        chmod(cache, 0o755)
        let tmp = out + ".\(getpid()).tmp"
        let r = try await runCommand("/usr/bin/cc", ["-O1", "-Wall", "-o", tmp, "\(source)/\(name).c"], outputIn: cache,
                                     timeout: .seconds(60))
        guard r.status == 0 else { throw TestFailure("cannot compile \(name).c: \(r.stderr)") }
        guard rename(tmp, out) == 0 else { throw TestFailure("cannot place \(out): errno \(errno)") }
        return out
    }
}
