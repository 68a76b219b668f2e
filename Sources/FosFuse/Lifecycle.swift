import CFosFuse
import FosMounts
import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

// The daemon's start and end around libfuse's loop: telling fosctl the
// mount is live, recording it, and ending the session once.

/// The pipe fosctl waits on: one line, then closed.
final class Ready: Sendable {
    private let fd: Mutex<Int32>
    init(_ fd: Int32) { self.fd = Mutex(fd) }

    func tell(_ line: String) {
        let f = fd.withLock { f -> Int32 in
            defer { f = -1 }
            return f
        }
        guard f >= 0 else { return }
        let b = Array((line + "\n").utf8)
        _ = b.withUnsafeBytes { Glibc.write(f, $0.baseAddress, $0.count) }
        close(f)
    }
}

/// Once the kernel has INIT's answer: makes readahead as large as one
/// request, checks that the mount answers, records it, and tells fosctl.
func announce(mountpoint: String, runtime: String, node: String, maxWrite: UInt32, ready: Ready) {
    if let m = FuseMounts.mounted().last(where: { $0.mountpoint == mountpoint }) {
        // The kernel offers 128 KiB of readahead; a sequential reader gains
        // from whole 1 MiB requests.
        let kb = String(max(128, maxWrite / 1024))
        if let h = FileHandle(forWritingAtPath: "/sys/class/bdi/\(m.device)/read_ahead_kb") {
            h.write(Data(kb.utf8))
            try? h.close()
        }
    }
    var s = statvfs()
    guard statvfs(mountpoint, &s) == 0 else {
        return ready.tell("error: the mount on \(mountpoint) does not answer: \(String(cString: strerror(errno)))")
    }
    do {
        try FuseMounts.write(FuseMounts.Record(pid: getpid(), mountpoint: mountpoint, node: node, maxWrite: maxWrite),
                             runtime: runtime)
    } catch {
        say("cannot record the mount in \(FuseMounts.directory(runtime: runtime)): \(error)")
    }
    ready.tell("ok")
}

/// Ends the session once, from a signal, the node's end, or not at all (the
/// kernel ends it on umount). Never from a FUSE callback: those run inside
/// fosfuse_poll, under the lock fosfuse_exit takes.
final class Shutdown: Sendable {
    private let state = Mutex<(reason: String?, armed: Bool)>((nil, false))

    var reason: String? { state.withLock { $0.reason } }

    func armed() {
        let r = state.withLock { s -> String? in
            s.armed = true
            return s.reason
        }
        if r != nil { stop() }
    }

    func begin(_ why: String) {
        let go = state.withLock { s -> Bool in
            guard s.reason == nil else { return false }
            s.reason = why
            return s.armed
        }
        if go { stop() }
    }

    private func stop() {
        fosfuse_exit()
    }
}
