import CFosWire
import FosCore
import FosFS
import Foundation
import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Shared mappings (SharedMaps.swift): what mappings wrote reaches the
/// file; memfds nobody maps go; a restarted member takes its memfds back.
extension SharedMaps {
    // MARK: write-back

    /// Writes what mappings changed in `ino` to the file (nothing if it is
    /// not mapped). A page counts as written back only once the file
    /// system took all of it; the first failure is thrown and the pages
    /// not written stay changed (the next write-back tries them again).
    func writeBack(_ ino: UInt64, svc: FSService) async throws {
        guard let f = file(ino), f.state.withLock({ $0.writable }) else { return }
        // Found outside the operation (a long compare would stop every
        // other one); read again inside it, where no WRITE can interleave.
        let dirty = Self.dirtyRanges(f)
        guard !dirty.isEmpty else { return }
        var written: [(UInt64, Int)] = []
        defer {
            for (offset, n) in written { svc.watch.changed(ino: ino, offset: offset, length: UInt64(n)) }
        }
        try await svc.fs.writeBack(ino: ino, generation: f.generation, {
            f.state.withLock { s in
                dirty.compactMap { (offset, length) -> (UInt64, [UInt8])? in
                    let end = min(offset + length, s.shadow.count)
                    guard offset < end else { return nil }
                    var now = [UInt8](repeating: 0, count: end - offset)
                    _ = now.withUnsafeMutableBytes { preadAll(f.fd, $0.baseAddress!, $0.count, off_t(offset)) }
                    return (UInt64(offset), now)
                }
            }
        }, wrote: { offset, bytes in
            f.state.withLock { s in
                let end = min(Int(offset) + bytes.count, s.shadow.count)
                if Int(offset) < end { s.shadow.replaceSubrange(Int(offset)..<end, with: bytes.prefix(end - Int(offset))) }
            }
            written.append((offset, bytes.count))
        })
    }

    /// MSYNC and FSYNC: write back now, and report a background write-back
    /// that failed since the last ask (once). `memfdIno`: the memfd the
    /// caller maps, if it says (EIO if it is not ours: what it stored since
    /// cannot reach the file).
    ///
    /// Those two answers are thrown as a bare `Errno`: an answer to the
    /// caller. As FSError.posix(.ioError) they would say that the file
    /// system failed, and the member would restart (FSService.status).
    func sync(_ ino: UInt64, memfdIno: UInt64? = nil, svc: FSService) async throws {
        let f = file(ino)
        if let memfdIno, f?.memfdIno != memfdIno { throw Errno.ioError }
        try await writeBack(ino, svc: svc)
        if let e = f?.state.withLock({ s -> Errno? in defer { s.error = nil }; return s.error }) {
            throw e
        }
    }

    /// The (offset, length) ranges of whole pages where the memfd differs
    /// from the shadow; compared a megabyte at a time.
    static func dirtyRanges(_ f: MapFile) -> [(Int, Int)] {
        let page = 4096, chunk = 1 << 20
        var ranges: [(Int, Int)] = []
        var at = 0
        var buf = [UInt8](repeating: 0, count: chunk)
        while true {
            let more = f.state.withLock { s -> Bool in
                let size = s.shadow.count
                guard at < size else { return false }
                let n = min(chunk, size - at)
                buf.withUnsafeMutableBytes { b in
                    // What a short read leaves counts as no change.
                    s.shadow.withUnsafeBytes { b.baseAddress!.copyMemory(from: $0.baseAddress! + at, byteCount: n) }
                    _ = preadAll(f.fd, b.baseAddress!, n, off_t(at))
                }
                var p = 0
                while p < n {
                    let e = min(p + page, n)
                    if buf[p..<e] != s.shadow[(at + p)..<(at + e)] {
                        if let last = ranges.last, last.0 + last.1 == at + p {
                            ranges[ranges.count - 1].1 += e - p
                        } else {
                            ranges.append((at + p, e - p))
                        }
                    }
                    p = e
                }
                at += n
                return true
            }
            if !more { return ranges }
        }
    }

    /// Every mapped file written back (the member is stopping).
    func writeBackAll(svc: FSService) async {
        for f in files {
            do { try await writeBack(f.ino, svc: svc) } catch {
                say("member \(svc.member): write-back of mapped inode \(f.ino) failed: \(error)")
            }
        }
    }

    // MARK: background

    /// Every `syncInterval` while the member lives: writes back, and lets go
    /// of the files nobody maps any more.
    func run(svc: FSService) async {
        while true {
            try? await Task.sleep(for: Self.syncInterval)
            let all = files
            guard !all.isEmpty else { continue }
            var unmapped: [MapFile] = []
            for f in all {
                do {
                    try await writeBack(f.ino, svc: svc)
                } catch FSError.posix(let e) {
                    f.state.withLock { if $0.error == nil { $0.error = e } }
                } catch {
                    return svc.fatal("\(error)")
                }
                if !heldByRecorded(f) { unmapped.append(f) }
            }
            guard !unmapped.isEmpty else { continue }
            // A process that got a mapping by fork was never recorded: every
            // process's maps, off the loop thread.
            let names = Set(unmapped.map { name($0.ino) })
            let found = await Task.detached { Self.mappers(of: names) }.value
            for f in unmapped {
                if let pids = found[name(f.ino)] {
                    f.state.withLock { $0.pids.formUnion(pids) }
                    continue
                }
                await release(f, svc: svc)
            }
        }
    }

    /// The last write-back, then the memfd goes (with the last reference).
    /// Kept if that write-back fails: the pages are still only there.
    private func release(_ f: MapFile, svc: FSService) async {
        do { try await writeBack(f.ino, svc: svc) } catch { return }
        // Handed out again since it was found unmapped: kept (map marks and
        // checks under the same lock as this drop).
        drop(f, unlessGivenSince: monotonicNanos() &- Self.settleNs)
    }

    /// Mapped by a recorded process (or one whose maps we may not read),
    /// or handed out too recently to tell.
    private func heldByRecorded(_ f: MapFile) -> Bool {
        let (pids, given) = f.state.withLock { ($0.pids, $0.given) }
        if monotonicNanos() &- given < Self.settleNs { return true }
        let name = name(f.ino)
        var alive = Set<Int32>()
        var held = false
        for pid in pids where Openers.exists(pid) {
            alive.insert(pid)
            if !held { held = Self.maps(of: pid)?.contains(name) ?? true }
        }
        f.state.withLock { $0.pids = alive }
        return held
    }

    /// The fos memfds `pid` maps (of any node), by /proc/PID/maps path
    /// ("/memfd:fosmap-<node>-<ino>"); nil if its maps cannot be read.
    static func maps(of pid: Int32) -> Set<String>? {
        guard let text = procText("/proc/\(pid)/maps") else { return nil }
        var out = Set<String>()
        for line in text.split(separator: "\n") {
            guard let r = line.range(of: "/memfd:fosmap-") else { continue }
            // "/memfd:fosmap-<node>-<ino> (deleted)"
            out.insert(line[r.lowerBound...].split(separator: " ").first.map(String.init) ?? "")
        }
        return out
    }

    /// Which processes map each of `names`.
    static func mappers(of names: Set<String>) -> [String: Set<Int32>] {
        var found: [String: Set<Int32>] = [:]
        let me = getpid()
        Openers.eachProcess { pid in
            guard pid != me else { return }
            for n in maps(of: pid) ?? [] where names.contains(n) { found[n, default: []].insert(pid) }
        }
        return found
    }

    // MARK: a restarted member

    /// At start: the memfds that processes still map from this member's
    /// previous life, taken back (through /proc/PID/map_files, which needs
    /// root), so that their mappings and everyone else's meet again and what
    /// they wrote since the last write-back reaches the file. A memfd not
    /// taken back stays a private copy of its mapper (its MSYNC says EIO).
    func adopt(svc: FSService) async {
        var found: [UInt64: (pid: Int32, range: String)] = [:]
        let me = getpid()
        Openers.eachProcess { pid in
            guard pid != me, let text = procText("/proc/\(pid)/maps") else { return }
            for line in text.split(separator: "\n") {
                guard let r = line.range(of: prefix) else { continue }
                let hex = line[r.upperBound...].prefix { $0.isHexDigit }
                guard let ino = UInt64(hex, radix: 16), found[ino] == nil,
                      FileSystem.home(of: ino, members: svc.members) == svc.member,
                      let range = line.split(separator: " ").first else { continue }
                found[ino] = (pid, String(range))
            }
        }
        for (ino, at) in found {
            let fd = open("/proc/\(at.pid)/map_files/\(at.range)", O_RDWR | O_CLOEXEC)
            guard fd >= 0 else {
                say("member \(svc.member): cannot take back the mapping of inode \(ino) from pid \(at.pid): "
                    + String(cString: strerror(errno)))
                continue
            }
            var st = stat()
            let uid = fstat(fd, &st) == 0 ? st.st_uid : 0
            var made = false
            do {
                try await svc.fs.withContent(ino: ino, limit: UInt64(Self.maxFileBytes)) { content, generation in
                    let f = MapFile(ino: ino, generation: generation, fd: fd, uid: uid, content: content)
                    made = true
                    // The file's size is the truth; what mappings wrote
                    // within it is found against the shadow and written back.
                    _ = ftruncate(fd, off_t(content.count))
                    f.state.withLock {
                        $0.pids = [at.pid]
                        $0.writable = true
                    }
                    enter(f, bytes: content.count)
                }
                try await writeBack(ino, svc: svc)
            } catch {
                if !made { close(fd) }
                say("member \(svc.member): cannot take back the mapping of inode \(ino): \(error)")
            }
        }
    }
}

/// A /proc file's text (its size reads as 0: read to the end), or nil.
func procText(_ path: String) -> String? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var out = [UInt8]()
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 && errno == EINTR { continue }
        if n < 0 { return nil }
        if n == 0 { break }
        out += chunk[..<n]
    }
    return String(decoding: out, as: UTF8.self)
}
