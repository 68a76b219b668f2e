import CFosWire
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// What to start (`SpawnClient.spawn`): the program, its arguments and
/// environment, its cwd, which of our descriptors it gets (and as which
/// numbers), and placement hints.
public struct SpawnRequest: Sendable {
    public var path: String
    public var arguments: [String]
    public var environment: [String]
    public var cwd: String
    /// (our descriptor, its number in the child); the child shares the open
    /// file description. 0...2 not given read and write /dev/null.
    public var descriptors: [(from: Int32, to: Int32)]
    /// Pin the child to this CPU.
    public var cpu: Int32?
    /// Run on this node (its id as `fosctl status` shows it; nil: here).
    public var node: String?
    /// Exec this descriptor of ours instead of `path` (which then only
    /// names the program): a program the kernel cannot reach by path.
    public var execDescriptor: Int32?
    /// Signals blocked, and ignored, in the child (bit n-1 for signal n),
    /// as exec keeps them; a fresh child has none.
    public var signalMask: UInt64 = 0
    public var ignoredSignals: UInt64 = 0
    /// Kill the program (SIGKILL) if we end while it still runs.
    public var tiedToCaller = false
    /// The child's umask (nil: the service's).
    public var umask: UInt32?
    /// Give the child our resource limits (exec keeps them).
    public var callerLimits = false

    public init(path: String, arguments: [String]? = nil, environment: [String] = [], cwd: String = "/",
                descriptors: [(from: Int32, to: Int32)] = [], cpu: Int32? = nil, node: String? = nil,
                execDescriptor: Int32? = nil) {
        self.path = path
        self.arguments = arguments ?? [path]
        self.environment = environment
        self.cwd = cwd
        self.descriptors = descriptors
        self.cpu = cpu
        self.node = node
        self.execDescriptor = execDescriptor
    }
}

/// How a spawned process ended.
public enum ProcessEnd: Sendable, Equatable {
    case exited(Int32)
    case signaled(Int32)
}

/// Typed client of the spawn service (/sys/spawn): start programs as the
/// calling user, wait for them, signal them, list them.
public final class SpawnClient: Sendable {
    public let runtime: FosRuntime
    let channel: Channel

    public static func connect(_ rt: FosRuntime, name: String = "/sys/spawn") async throws -> SpawnClient {
        let e = try await rt.lookup(name)
        return SpawnClient(runtime: rt, channel: try await rt.connect(e.addr, key: e.key))
    }

    init(runtime: FosRuntime, channel: Channel) {
        self.runtime = runtime
        self.channel = channel
    }

    func call(_ op: UInt32, _ payload: [UInt8], timeout: Duration = .seconds(30)) async throws -> [UInt8] {
        try await runtime.call(channel, opcode: UInt16(op), payload: payload, timeout: timeout).checked()
    }

    /// Starts a program; returns its global process id and its local pid.
    public func spawn(_ r: SpawnRequest) async throws -> (gpid: UInt64, pid: Int32) {
        let path = Array(r.path.utf8), cwd = Array(r.cwd.utf8), node = Array((r.node ?? "").utf8)
        let ext = r.execDescriptor != nil || r.signalMask != 0 || r.ignoredSignals != 0 || r.tiedToCaller
            || r.umask != nil || r.callerLimits
        var p = [UInt8]()
        appendStruct(fos_spawn_req(path_len: UInt32(path.count), cwd_len: UInt32(cwd.count), argc: UInt32(r.arguments.count),
                                   envc: UInt32(r.environment.count), nfds: UInt32(r.descriptors.count),
                                   cpu: r.cpu ?? -1, node_len: UInt32(node.count), flags: ext ? FOS_SPAWN_F_EXT : 0), to: &p)
        p += path + cwd + node
        for s in r.arguments + r.environment {
            p += Array(s.utf8)
            p.append(0)
        }
        for d in r.descriptors { appendStruct(fos_spawn_fd(from: d.from, to: d.to), to: &p) }
        if ext {
            let flags = (r.tiedToCaller ? FOS_SPAWN_X_TIED : 0) | (r.umask != nil ? FOS_SPAWN_X_UMASK : 0)
                | (r.callerLimits ? FOS_SPAWN_X_RLIMITS : 0)
            appendStruct(fos_spawn_ext(exec_fd: r.execDescriptor ?? -1, flags: flags, sigmask: r.signalMask,
                                       sigign: r.ignoredSignals, umask: r.umask ?? 0, reserved: 0), to: &p)
        }
        guard p.count <= Int(FOS_MAX_PAYLOAD) else { throw FosError.remote(.argListTooLong) }
        let b = try await call(FOS_OP_SPAWN, p)
        guard b.count == MemoryLayout<fos_spawn_reply>.size,
              let reply = b.withUnsafeBytes({ loadStruct(fos_spawn_reply.self, from: $0) }) else {
            throw FosError.badMessage("bad SPAWN reply")
        }
        return (reply.gpid, reply.pid)
    }

    /// The process's end, waiting up to `timeout` for it (nil: still running).
    public func wait(_ gpid: UInt64, timeout: Duration = .seconds(3600)) async throws -> ProcessEnd? {
        let deadline = ContinuousClock.now + timeout
        while true {
            let left = max(.zero, deadline - ContinuousClock.now)
            let ms = UInt32(min(Double(FOS_SPAWN_MAX_WAIT_MS), max(0, Double(left.components.seconds) * 1000
                + Double(left.components.attoseconds) / 1e15)))
            var p = [UInt8]()
            appendStruct(fos_spawn_wait(gpid: gpid, wait_ms: ms, reserved: 0), to: &p)
            do {
                let b = try await call(FOS_OP_SPAWN_WAIT, p, timeout: .milliseconds(Int(ms)) + .seconds(10))
                guard b.count == MemoryLayout<fos_spawn_status>.size,
                      let s = b.withUnsafeBytes({ loadStruct(fos_spawn_status.self, from: $0) }) else {
                    throw FosError.badMessage("bad SPAWN_WAIT reply")
                }
                switch s.state {
                case UInt32(FOS_SPAWN_EXITED): return .exited(s.code)
                case UInt32(FOS_SPAWN_SIGNALED): return .signaled(s.code)
                default: return nil
                }
            } catch FosError.remote(.timedOut) {
                if ContinuousClock.now >= deadline { return nil }
            }
        }
    }

    public func kill(_ gpid: UInt64, signal: Int32 = SIGTERM) async throws {
        var p = [UInt8]()
        appendStruct(fos_spawn_kill(gpid: gpid, signal: signal, reserved: 0), to: &p)
        _ = try await call(FOS_OP_SPAWN_KILL, p)
    }

    /// The node's processes (all users'): the spawn service's JSON array of
    /// `ProcessRow`, for the caller to decode (FosCore stays free of
    /// Foundation: linked into fos-run, it doubled its start).
    public func listJSON() async throws -> [UInt8] {
        try await call(FOS_OP_SPAWN_LIST, [])
    }
}
