import CFosWire

/// Typed client stub of the example fleet (/app/echo): one place that knows
/// its opcodes and payload layouts.
public struct EchoClient: Sendable {
    public let runtime: FosRuntime
    public let name: String
    public let timeout: Duration

    public init(runtime: FosRuntime, name: String = "/app/echo", timeout: Duration = .seconds(5)) {
        self.runtime = runtime
        self.name = name
        self.timeout = timeout
    }

    public struct WhoAmI: Sendable, Equatable {
        public var pid: Int32
        public var core: Int32
        public var mailbox: UInt64
    }

    public func echo(_ bytes: [UInt8]) async throws -> [UInt8] {
        try await runtime.call(name: name, opcode: UInt16(FOS_OP_ECHO), payload: bytes, timeout: timeout).checked()
    }

    /// Echo after the handler slept `milliseconds` (only that handler waits).
    public func slowEcho(_ bytes: [UInt8], milliseconds: UInt32, timeout: Duration? = nil) async throws -> [UInt8] {
        var p = [UInt8]()
        appendStruct(milliseconds, to: &p)
        p += bytes
        return try await runtime.call(name: name, opcode: UInt16(FOS_OP_ECHO_SLOW), payload: p,
                                      timeout: timeout ?? self.timeout, attempts: 1).checked()
    }

    public func whoami() async throws -> WhoAmI {
        try decode(try await runtime.call(name: name, opcode: UInt16(FOS_OP_ECHO_WHOAMI), timeout: timeout).checked())
    }

    /// Asks a member to ask a fleet peer (over the internal mailbox) who it is.
    public func relayWhoami() async throws -> WhoAmI {
        try decode(try await runtime.call(name: name, opcode: UInt16(FOS_OP_ECHO_RELAY), timeout: timeout).checked())
    }

    private func decode(_ b: [UInt8]) throws -> WhoAmI {
        guard b.count == MemoryLayout<fos_echo_whoami>.size,
              let w = b.withUnsafeBytes({ loadStruct(fos_echo_whoami.self, from: $0) })
        else { throw FosError.badMessage("bad whoami reply") }
        return WhoAmI(pid: w.pid, core: w.core, mailbox: w.mailbox)
    }
}
