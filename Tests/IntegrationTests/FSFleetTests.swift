import CFosWire
import FosCore
import FosFS
import FosFSClient
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Top-level directory names the fleet places on member `m` of `members`.
func topLevelNames(on m: Int, of members: Int, _ n: Int, prefix: String = "top") -> [String] {
    (0..<10_000).lazy.map { "\(prefix)\($0)" }.filter { FileSystem.placement(ofTopLevel: $0, members: members) == m }
        .prefix(n).map { $0 }
}

/// The fs fleet with state on several members: top-level directories
/// spread over the members, and lookups, opens, renames, links and removals
/// between directories and inodes homed on different members.
@Suite("fs fleet across members", .serialized)
struct FSFleetTests {
    @Test("rename, link, unlink, rmdir, symlinks and path walks between directories of two members")
    func crossMember() async throws {
        try await TestNode.with(members: 1, fsMembers: 2) { node in
            let rt = try node.runtime()
            let c0 = try await FSClient.connect(rt)
            let c1 = try await FSClient.connect(rt, excluding: [c0.member])
            let home = { (ino: UInt64) in FileSystem.home(of: ino, members: 2) }
            let a = "/" + topLevelNames(on: 0, of: 2, 1)[0], b = "/" + topLevelNames(on: 1, of: 2, 1)[0]

            // Top-level directories land on the member their name hashes to,
            // whichever member the client asked.
            let da = try await c1.mkdir(path: a), db = try await c0.mkdir(path: b)
            #expect(home(da.ino) == 0 && home(db.ino) == 1)
            for (i, c) in [c0, c1].enumerated() {
                _ = try await c.writeFile(path: "\(a)/f\(i)", data: pattern(9000 + i, seed: UInt8(i)))
                _ = try await c.writeFile(path: "\(b)/g\(i)", data: pattern(7000 + i, seed: UInt8(10 + i)))
            }
            #expect(home(try await c0.stat(path: "\(b)/g0").ino) == 1, "files follow their directory")

            // statfs sums every member's own part: both members agree, and
            // see space used on the other.
            let s0 = try await c0.statfs(), s1 = try await c1.statfs()
            #expect(s0.fs.freeBlocks == s1.fs.freeBlocks && s0.fs.freeInodes == s1.fs.freeInodes)
            _ = try await c1.writeFile(path: "\(b)/big", data: pattern(1 << 20, seed: 5))
            let after = try await c0.statfs()
            #expect(s0.fs.freeBlocks - after.fs.freeBlocks >= 256, "\(s0.fs.freeBlocks) → \(after.fs.freeBlocks)")
            #expect(s0.fs.freeInodes - after.fs.freeInodes == 1)
            try await c1.unlink(path: "\(b)/big")

            // A file bounces between the members' directories through both clients.
            let f0 = try await c0.stat(path: "\(a)/f0")
            var inA = true
            for k in 0..<10 {
                let c = [c0, c1][k % 2]
                let (from, to) = inA ? (da.ino, db.ino) : (db.ino, da.ino)
                try await c.rename(oldParent: from, oldName: inA ? "f0" : "f0-moved", newParent: to, newName: inA ? "f0-moved" : "f0")
                inA.toggle()
            }
            #expect(inA)
            for c in [c0, c1] {
                #expect(try await c.readFile(path: "\(a)/f0") == pattern(9000, seed: 0))
                #expect(await errnoOf { _ = try await c.stat(path: "\(b)/f0-moved") } == ENOENT)
            }
            try await c1.rename(oldParent: da.ino, oldName: "f0", newParent: db.ino, newName: "moved")
            #expect(try await c0.stat(path: "\(b)/moved").ino == f0.ino)
            #expect(home(f0.ino) == 0, "a renamed inode stays on its member")

            // A directory tree moves to the other member's directory; paths
            // through it walk member 0 → 1 → 0.
            let sub = try await c0.mkdir(path: "\(a)/sub")
            _ = try await c0.mkdir(path: "\(a)/sub/deeper")
            _ = try await c1.writeFile(path: "\(a)/sub/deeper/x", data: pattern(5000, seed: 3))
            try await c1.rename(oldParent: da.ino, oldName: "sub", newParent: db.ino, newName: "sub")
            for c in [c0, c1] {
                #expect(try await c.readFile(path: "\(b)/sub/deeper/x") == pattern(5000, seed: 3))
                #expect(try await c.stat(path: "\(b)/sub/..").ino == db.ino)
                #expect(try await c.lookup(parent: db.ino, name: "sub").ino == sub.ino)
            }
            #expect(try await c0.getattr(ino: db.ino).nlink == 3)
            #expect(try await c0.getattr(ino: da.ino).nlink == 2)

            // Symlinks across members, relative and absolute.
            _ = try await c0.symlink(parent: da.ino, name: "abs", target: "\(b)/sub")
            _ = try await c0.symlink(parent: da.ino, name: "rel", target: "..\(b)/sub/deeper")
            for c in [c0, c1] {
                #expect(try await c.readFile(path: "\(a)/abs/deeper/x") == pattern(5000, seed: 3))
                #expect(try await c.readFile(path: "\(a)/rel/x") == pattern(5000, seed: 3))
                #expect(try await c.resolve(path: "\(a)/abs") == sub.ino)
                #expect(try await c.resolve(path: "\(a)/abs", followLast: false) != sub.ino)
            }
            // open(2) of an existing name whose inode lives on the other member.
            #expect(try await c1.open(path: "\(b)/moved", flags: [.create, .readWrite]).ino == f0.ino)
            #expect(await errnoOf { _ = try await c1.open(path: "\(b)/moved", flags: [.create, .exclusive, .writeOnly]) } == EEXIST)
            #expect(await errnoOf { _ = try await c0.open(path: "\(a)/abs", flags: [.readOnly, .noFollow]) } == ELOOP)
            #expect(try await c0.create(parent: db.ino, name: "moved", flags: [.readWrite]).ino == f0.ino)

            // Hard links across members; the last name goes in a cross-member unlink.
            let g0 = try await c0.stat(path: "\(b)/g0")
            _ = try await c0.link(ino: g0.ino, newParent: da.ino, name: "g0-link")
            #expect(try await c1.stat(path: "\(a)/g0-link").nlink == 2)
            try await c1.unlink(path: "\(b)/g0")
            #expect(try await c0.readFile(path: "\(a)/g0-link") == pattern(7000, seed: 10))
            try await c0.unlink(path: "\(a)/g0-link")
            #expect(await errnoOf { _ = try await c0.getattr(ino: g0.ino) } == ESTALE)

            // RENAME_NOREPLACE and RENAME_EXCHANGE across members.
            #expect(await errnoOf {
                try await c0.rename(oldParent: da.ino, oldName: "f1", newParent: db.ino, newName: "g1", flags: .noReplace)
            } == EEXIST)
            try await c0.rename(oldParent: da.ino, oldName: "f1", newParent: db.ino, newName: "sub", flags: .exchange)
            #expect(try await c1.stat(path: "\(a)/f1").ino == sub.ino)
            #expect(try await c1.readFile(path: "\(b)/sub") == pattern(9001, seed: 1))
            #expect(try await c1.readFile(path: "\(a)/f1/deeper/x") == pattern(5000, seed: 3))
            #expect(await errnoOf {
                try await c0.rename(oldParent: da.ino, oldName: "f1", newParent: db.ino, newName: "g1")
            } == ENOTDIR)

            // Removing a top-level directory of member 1 from the root (member 0).
            for name in try await c1.listDirectory(path: b).map(\.name) where name != "." && name != ".." {
                try await c1.unlink(path: "\(b)/\(name)")
            }
            try await c0.rmdir(parent: FileSystem.rootIno, name: String(b.dropFirst()))
            #expect(await errnoOf { _ = try await c1.stat(path: b) } == ENOENT)
            _ = try await c1.mkdir(path: b)
            #expect(try await node.fleets().filter { $0.fleet == "/sys/fs" }.allSatisfy { $0.restarts == 0 })

            // Everything is on disk and consistent.
            #expect(await node.terminate() == 0)
            let r = try await offline(node, ["fsck", "--disk", node.stateDir + "/disk.img"])
            #expect(r.status == 0 && r.stdout == "clean\n", "\(r.stdout) \(r.stderr)")
            try node.launch()
            try await node.waitReady()
            let c = try await FSClient.connect(try node.runtime())
            #expect(try await c.readFile(path: "\(a)/f1/deeper/x") == pattern(5000, seed: 3))
            #expect(try await c.readFile(path: "\(a)/f1/deeper/../../f1/deeper/x") == pattern(5000, seed: 3))
        }
    }

    @Test("a client routing by inode reaches the home member directly, and keeps working when that member restarts")
    func routing() async throws {
        try await TestNode.with(members: 1, fsMembers: 2) { node in
            let rt = try node.runtime()
            let routed = try await FSClient.connect(rt)
            let own = try await routed.statfs().member
            let other = 1 - own
            let dir = "/" + topLevelNames(on: other, of: 2, 1)[0]
            _ = try await routed.mkdir(path: dir)
            let f = try await routed.writeFile(path: dir + "/f", data: pattern(5000, seed: 4))
            #expect(FileSystem.home(of: f.ino, members: 2) == other)
            let plain = try await FSClient.connect(rt, excluding: [], wait: .seconds(5))
            let plainOwn = try await plain.statfs().member

            func handled() async throws -> [Int: UInt64] {
                await pause(.milliseconds(300))  // members publish their counts when idle
                return Dictionary(uniqueKeysWithValues: try await node.fleets().filter { $0.fleet == "/sys/fs" }.map { ($0.index, $0.handled) })
            }
            await routed.routeByInode()
            var before = try await handled()
            for _ in 0..<300 { _ = try await routed.getattr(ino: f.ino) }
            var after = try await handled()
            #expect(after[other]! - before[other]! >= 300)
            #expect(after[own]! - before[own]! < 30, "the client's own member still saw \(after[own]! - before[own]!) requests")

            // Without routing, a client on the other member goes through it.
            if plainOwn == own {
                before = try await handled()
                for _ in 0..<300 { _ = try await plain.getattr(ino: f.ino) }
                after = try await handled()
                #expect(after[own]! - before[own]! >= 300 && after[other]! - before[other]! >= 300)
            }

            // The home member dies: the routed client falls back, then finds the new one.
            let victim = try #require(try await node.fleets().first { $0.fleet == "/sys/fs" && $0.index == other })
            kill(victim.pid, SIGKILL)
            try await eventually("the file through the routed client", timeout: .seconds(20), every: .milliseconds(100)) {
                (try? await routed.read(ino: f.ino, offset: 0, count: 5000)) == pattern(5000, seed: 4) ? true : nil
            }
            try await eventually("routes to the restarted member", timeout: .seconds(20), every: .milliseconds(200)) { () -> Bool? in
                await routed.routeByInode()
                let b = try await handled()
                for _ in 0..<100 { _ = try await routed.getattr(ino: f.ino) }
                let a = try await handled()
                return a[own]! - b[own]! < 20 ? true : nil
            }
        }
    }

    @Test("kill -9 of fs members during cross-member renames: one name, intact data, fsck clean")
    func membersKilled() async throws {
        try await TestNode.with(members: 1, fsMembers: 2) { node in
            let rt = try node.runtime()
            let c = try await FSClient.connect(rt)
            let a = "/" + topLevelNames(on: 0, of: 2, 1)[0], b = "/" + topLevelNames(on: 1, of: 2, 1)[0]
            let da = try await c.mkdir(path: a), db = try await c.mkdir(path: b)
            let data = pattern(12345, seed: 9)
            _ = try await c.writeFile(path: "\(a)/f", data: data, sync: true)
            for round in 0..<10 {
                let work = Task {
                    var done = 0
                    while !Task.isCancelled {
                        let inA = (try? await c.lookup(parent: da.ino, name: "f")) != nil
                        do {
                            try await c.rename(oldParent: inA ? da.ino : db.ino, oldName: "f",
                                               newParent: inA ? db.ino : da.ino, newName: "f")
                            done += 1
                        } catch {
                            try? await Task.sleep(for: .milliseconds(5))  // a member is restarting
                        }
                    }
                    return done
                }
                try await Task.sleep(for: .milliseconds(30 + (round * 53) % 150))
                let victim = try #require(try await node.fleets().first { $0.fleet == "/sys/fs" && $0.index == round % 2 })
                kill(victim.pid, SIGKILL)
                let killedAt = monotonicNanos()
                // Back: restarted and registered, and serving renames again.
                _ = try await eventually("member \(victim.index) back", timeout: .seconds(20)) { () -> Bool? in
                    let m = try await node.fleets().first { $0.fleet == "/sys/fs" && $0.index == victim.index }
                    guard let m, m.pid != victim.pid, m.state == "running" else { return nil }
                    return try await rt.listNames(prefix: "/sys/fs/").count == 2 ? true : nil
                }
                #expect(seconds(since: killedAt) < 5, "round \(round): member \(victim.index) took \(seconds(since: killedAt)) s to return")
                try await Task.sleep(for: .milliseconds(100))
                work.cancel()
                let renamed = await work.value
                let inA = (try? await c.lookup(parent: da.ino, name: "f")) != nil
                let inB = (try? await c.lookup(parent: db.ino, name: "f")) != nil
                #expect(inA != inB, "round \(round): in \(a): \(inA), in \(b): \(inB)")
                #expect(try await c.readFile(path: inA ? "\(a)/f" : "\(b)/f") == data, "round \(round)")
                #expect(renamed > 0, "round \(round): no rename succeeded")
            }
            #expect(await node.terminate() == 0)
            let r = try await offline(node, ["fsck", "--disk", node.stateDir + "/disk.img"])
            #expect(r.status == 0 && r.stdout == "clean\n", "\(r.stdout) \(r.stderr)")
        }
    }

    @Test("the fleet's size changes across kill -9 of the node: 2 → 3 → 1 → 4 members, nothing lost, fsck clean")
    func resizedAcrossCrashes() async throws {
        try await TestNode.with(members: 1, fsMembers: 2) { node in
            var durable: [String: [UInt8]] = [:]
            for (round, next) in [3, 1, 4, 2].enumerated() {
                let c = try await FSClient.connect(try node.runtime())
                for (path, data) in durable {
                    #expect(try await c.readFile(path: path) == data, "round \(round) (\(node.fsMembers) members): \(path)")
                }
                // Top-level directories over every member, files fsync'd into
                // their journals (committed, not yet checkpointed), then kill -9.
                for d in 0..<6 {
                    let dir = try await c.mkdir(path: "/r\(round)d\(d)")
                    for f in 0..<3 {
                        let data = pattern(3000 + 1000 * f + d, seed: UInt8(round * 16 + d * 3 + f))
                        let path = "/r\(round)d\(d)/f\(f)"
                        _ = try await c.writeFile(path: path, data: data, sync: true)
                        durable[path] = data
                    }
                    try await c.fsync(ino: dir.ino)
                }
                await node.killHard()
                node.fsMembers = next
                try node.launch()
                try await node.waitReady()
            }
            let c = try await FSClient.connect(try node.runtime())
            for (path, data) in durable { #expect(try await c.readFile(path: path) == data, "at the end: \(path)") }
            #expect(await node.terminate() == 0)
            let r = try await offline(node, ["fsck", "--disk", node.stateDir + "/disk.img"])
            #expect(r.status == 0 && r.stdout == "clean\n", "\(r.stdout) \(r.stderr)")
        }
    }
}
