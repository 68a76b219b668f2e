import CFosWire
import FosCore
import SystemPackage

/// A SPAWN payload, validated field by field (see fos_wire.h).
struct SpawnRequestParser {
    var path = ""
    var cwd = ""
    var node = ""
    var arguments: [String] = []
    var environment: [String] = []
    var fds: [fos_spawn_fd] = []
    var cpu: Int32 = -1
    /// The caller's descriptor to exec instead of `path` (-1: none).
    var execFD: Int32 = -1
    var signalMask: UInt64 = 0
    var ignoredSignals: UInt64 = 0
    /// Kill the program if the caller ends first.
    var tied = false
    var umask: Int32 = -1
    /// Give the child the caller's resource limits.
    var rlimits = false

    init(_ p: [UInt8]) throws {
        guard let h = p.withUnsafeBytes({ loadStruct(fos_spawn_req.self, from: $0) }), h.flags & ~FOS_SPAWN_F_EXT == 0 else {
            throw Errno.invalidArgument
        }
        guard (1..<4096).contains(h.path_len), h.cwd_len < 4096, h.node_len <= 255,
              (1...FOS_SPAWN_MAX_ARGS).contains(h.argc), h.envc <= FOS_SPAWN_MAX_ARGS, h.nfds <= FOS_SPAWN_MAX_FDS
        else { throw Errno.invalidArgument }
        cpu = h.cpu
        var at = MemoryLayout<fos_spawn_req>.size
        let extBytes = h.flags & FOS_SPAWN_F_EXT != 0 ? MemoryLayout<fos_spawn_ext>.size : 0
        let fdBytes = Int(h.nfds) * MemoryLayout<fos_spawn_fd>.size
        guard p.count >= at + Int(h.path_len) + Int(h.cwd_len) + Int(h.node_len) + fdBytes + extBytes else {
            throw Errno.invalidArgument
        }
        func text(_ n: Int) throws -> String {
            let b = p[at..<(at + n)]
            at += n
            guard !b.contains(0), let s = String(validating: b, as: UTF8.self) else { throw Errno.invalidArgument }
            return s
        }
        path = try text(Int(h.path_len))
        cwd = try text(Int(h.cwd_len))
        node = try text(Int(h.node_len))
        guard path.hasPrefix("/"), cwd.isEmpty || cwd.hasPrefix("/") else { throw Errno.invalidArgument }
        // Exactly argc + envc NUL-terminated strings up to the descriptor map.
        let stringsEnd = p.count - fdBytes - extBytes
        var strings: [String] = []
        var start = at
        for k in at..<stringsEnd where p[k] == 0 {
            guard let s = String(validating: p[start..<k], as: UTF8.self) else { throw Errno.invalidArgument }
            strings.append(s)
            start = k + 1
        }
        guard start == stringsEnd, strings.count == Int(h.argc + h.envc) else { throw Errno.invalidArgument }
        arguments = Array(strings[..<Int(h.argc)])
        environment = Array(strings[Int(h.argc)...])
        guard environment.allSatisfy({ $0.contains("=") }) else { throw Errno.invalidArgument }
        var seen = Set<Int32>()
        for k in 0..<Int(h.nfds) {
            let f = p.withUnsafeBytes { loadStruct(fos_spawn_fd.self, from: $0, at: stringsEnd + k * 8)! }
            guard f.from >= 0, (0..<Int32(FOS_SPAWN_FD_LIMIT)).contains(f.to), seen.insert(f.to).inserted else { throw Errno.invalidArgument }
            fds.append(f)
        }
        if extBytes > 0 {
            let e = p.withUnsafeBytes { loadStruct(fos_spawn_ext.self, from: $0, at: p.count - extBytes)! }
            guard e.flags & ~FOS_SPAWN_X_ALL == 0, e.reserved == 0, e.exec_fd >= -1, e.umask <= 0o777 else {
                throw Errno.invalidArgument
            }
            tied = e.flags & FOS_SPAWN_X_TIED != 0
            rlimits = e.flags & FOS_SPAWN_X_RLIMITS != 0
            if e.flags & FOS_SPAWN_X_UMASK != 0 { umask = Int32(e.umask) }
            execFD = e.exec_fd
            signalMask = e.sigmask
            ignoredSignals = e.sigign
        }
    }
}
