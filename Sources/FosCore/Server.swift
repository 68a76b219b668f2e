import CFosWire
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A fos server (the paper's §3.4.1): an external mailbox that clients find by
/// name, an internal mailbox only its fleet peers can reach, and the response
/// side of its own calls, served in the order response, internal, external.
/// Handlers are straight-line `async` code on the process's event loop; a
/// handler that calls another server suspends alone while the loop serves on.
public final class FosServer: MailboxService {
    public typealias Handler = @Sendable (Request) async throws -> Reply

    public let runtime: FosRuntime
    private let handlers: [UInt16: Handler]
    private let onConnect: (@Sendable (Channel, CInt) -> Void)?
    private let onDisconnect: (@Sendable (Channel) -> Void)?
    private let ahead: AheadPolicy?

    /// How a server takes requests sent ahead (FOS_MSG_AHEAD,
    /// AheadOrder.swift); both run on the loop thread.
    public struct AheadPolicy: Sendable {
        /// Whether an AHEAD-flagged request is taken as one.
        public var takes: @Sendable (Request) -> Bool
        /// Whether replies on a channel say FOS_MSG_AHEAD_OK.
        public var welcomes: @Sendable (Channel) -> Bool
        /// `MailboxService.aheadSettled`, `settleAhead` and `followsInTurn`.
        public var settled: @Sendable () -> Bool
        public var settle: @Sendable () async -> Bool
        /// (opcode, sender's channel)
        public var follows: @Sendable (UInt16, UInt64) -> Bool
        public init(takes: @escaping @Sendable (Request) -> Bool, welcomes: @escaping @Sendable (Channel) -> Bool,
                    settled: @escaping @Sendable () -> Bool = { true },
                    settle: @escaping @Sendable () async -> Bool = { true },
                    follows: @escaping @Sendable (UInt16, UInt64) -> Bool = { _, _ in false }) {
            self.takes = takes
            self.welcomes = welcomes
            self.settled = settled
            self.settle = settle
            self.follows = follows
        }
    }

    public init(runtime: FosRuntime, handlers: [UInt16: Handler],
                onConnect: (@Sendable (Channel, CInt) -> Void)? = nil,
                onDisconnect: (@Sendable (Channel) -> Void)? = nil,
                ahead: AheadPolicy? = nil) {
        self.runtime = runtime
        self.handlers = handlers
        self.onConnect = onConnect
        self.onDisconnect = onDisconnect
        self.ahead = ahead
    }

    public var ordersAhead: Bool { ahead != nil }
    public func takesAhead(_ request: Request) -> Bool { ahead?.takes(request) ?? false }
    public func welcomesAhead(on channel: Channel) -> Bool { ahead?.welcomes(channel) ?? false }
    public var aheadSettled: Bool { ahead?.settled() ?? true }
    public func settleAhead() async -> Bool { await ahead?.settle() ?? true }
    public func followsInTurn(_ opcode: UInt16, channel: UInt64) -> Bool {
        ahead?.follows(opcode, channel) ?? false
    }

    public func handle(_ request: Request) async throws -> Reply {
        guard let h = handlers[request.opcode] else { return Reply(status: ENOSYS) }
        return try await h(request)
    }

    public func connected(_ channel: Channel, statsFD: CInt) {
        if let f = onConnect { f(channel, statsFD) } else { closeFD(statsFD) }
    }

    public func disconnected(_ channel: Channel) { onDisconnect?(channel) }

    /// Addresses of a started server.
    public struct Addresses: Sendable {
        public var external: MailboxAddress
        public var `internal`: MailboxAddress?
    }

    /// Creates the mailboxes and registers them under `name`. The internal
    /// mailbox exists when this process is a member of the fleet `name`.
    public func start(name: String, policy: NamePolicy = .roundRobin) async throws -> Addresses {
        let key = Capability.random()
        let ext = try await runtime.createMailbox(key: key, priority: .external, service: self)
        var int: MailboxAddress?
        if runtime.fleet == name, !runtime.fleetKey.isNone {
            let a = try await runtime.createMailbox(key: runtime.fleetKey, flags: UInt32(FOS_MBOX_FLEET_INTERNAL),
                                                    priority: .internal, service: self)
            try await runtime.register(name: name, addr: a, key: .none, policy: policy, flags: UInt32(FOS_NAME_INTERNAL))
            int = a
        }
        try await runtime.register(name: name, addr: ext, key: key, policy: policy)
        return Addresses(external: ext, internal: int)
    }
}
