import CFosWire

/// What fosd reports to `fosctl`; JSON on the control socket.

public struct NodeStatus: Codable, Sendable {
    public var node: String
    public var pid: Int32
    public var runtimeDir: String
    public var stateDir: String
    public var uptimeSeconds: Double
    public var cores: Int
    public var connections: Int
    public var mailboxes: Int
    public var channels: Int
    public var members: Int
    public var nameService: Bool
    public var rejectedMessages: UInt64

    public init(node: String, pid: Int32, runtimeDir: String, stateDir: String, uptimeSeconds: Double, cores: Int,
                connections: Int, mailboxes: Int, channels: Int, members: Int, nameService: Bool,
                rejectedMessages: UInt64) {
        self.node = node
        self.pid = pid
        self.runtimeDir = runtimeDir
        self.stateDir = stateDir
        self.uptimeSeconds = uptimeSeconds
        self.cores = cores
        self.connections = connections
        self.mailboxes = mailboxes
        self.channels = channels
        self.members = members
        self.nameService = nameService
        self.rejectedMessages = rejectedMessages
    }
}

public struct MemberInfo: Codable, Sendable {
    public var fleet: String
    public var index: Int
    public var member: String
    public var node: String
    public var pid: Int32
    public var core: Int32
    public var state: String
    public var queueLength: UInt64
    public var handled: UInt64
    public var restarts: Int
    public var lastExit: String?

    public init(fleet: String, index: Int, member: String, node: String, pid: Int32, core: Int32, state: String,
                queueLength: UInt64, handled: UInt64, restarts: Int, lastExit: String?) {
        self.fleet = fleet
        self.index = index
        self.member = member
        self.node = node
        self.pid = pid
        self.core = core
        self.state = state
        self.queueLength = queueLength
        self.handled = handled
        self.restarts = restarts
        self.lastExit = lastExit
    }
}

public struct KillResult: Codable, Sendable {
    public var member: String
    public var pid: Int32
    public init(member: String, pid: Int32) {
        self.member = member
        self.pid = pid
    }
}

/// A process the spawn service started (`fosctl ps`).
public struct ProcessRow: Codable, Sendable {
    /// Global process id, "<node>:<n>".
    public var gpid: String
    public var node: String
    public var pid: Int32
    public var uid: UInt32
    public var command: String
    /// "running", "exited N" or "killed by signal N".
    public var state: String
    public var startedSecondsAgo: Double

    public init(gpid: String, node: String, pid: Int32, uid: UInt32, command: String, state: String,
                startedSecondsAgo: Double) {
        self.gpid = gpid
        self.node = node
        self.pid = pid
        self.uid = uid
        self.command = command
        self.state = state
        self.startedSecondsAgo = startedSecondsAgo
    }

    public static func format(_ gpid: UInt64, node: String) -> String { "\(node):\(gpid & 0xFFFF_FFFF)" }

    public static func stateName(_ state: UInt32, _ code: Int32) -> String {
        switch state {
        case UInt32(FOS_SPAWN_EXITED): "exited \(code)"
        case UInt32(FOS_SPAWN_SIGNALED): "killed by signal \(code)"
        default: "running"
        }
    }
}
