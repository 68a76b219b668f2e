import CFosWire

/// How a lookup picks one member of a fleet.
public enum NamePolicy: UInt32, Sendable, CaseIterable, CustomStringConvertible {
    case roundRobin = 1, leastLoaded = 2, nearest = 3, sticky = 4, custom = 5

    public init?(name: String) {
        switch name {
        case "round-robin", "rr": self = .roundRobin
        case "least-loaded": self = .leastLoaded
        case "nearest": self = .nearest
        case "sticky": self = .sticky
        case "custom": self = .custom
        default: return nil
        }
    }

    public var description: String {
        switch self {
        case .roundRobin: return "round-robin"
        case .leastLoaded: return "least-loaded"
        case .nearest: return "nearest"
        case .sticky: return "sticky"
        case .custom: return "custom"
        }
    }
}

/// What a policy knows of a member.
public struct Candidate: Sendable, Equatable {
    public var addr: MailboxAddress
    public var core: Int32
    public var queueLength: UInt64
    public init(addr: MailboxAddress, core: Int32, queueLength: UInt64) {
        self.addr = addr
        self.core = core
        self.queueLength = queueLength
    }
}

/// What a policy knows of the client.
public struct ClientHint: Sendable {
    public var node: UInt64
    public var core: Int32
    public var key: UInt64
    public init(node: UInt64, core: Int32, key: UInt64) {
        self.node = node
        self.core = core
        self.key = key
    }
}

/// The built-in policies, pure so they can be tested alone. `rotor` is the
/// name's round-robin counter, advanced on every choice so that ties rotate.
public enum PolicyChooser {
    public static func choose(_ policy: NamePolicy, _ members: [Candidate], client: ClientHint,
                              rotor: inout UInt64) -> Int? {
        guard !members.isEmpty else { return nil }
        let start = Int(rotor % UInt64(members.count))
        rotor &+= 1
        switch policy {
        case .roundRobin, .custom:
            return start
        case .leastLoaded:
            return best(members, from: start) { $0.queueLength }
        case .nearest:
            return best(members, from: start) { distance(client, $0) }
        case .sticky:
            // Rendezvous hashing: a member's departure moves only its own keys.
            var bestIndex = 0
            var bestScore: UInt64 = 0
            for (i, m) in members.enumerated() {
                let s = mix(client.key ^ mix(m.addr.node &* 31 &+ m.addr.mailbox))
                if i == 0 || s > bestScore {
                    bestScore = s
                    bestIndex = i
                }
            }
            return bestIndex
        }
    }

    /// Lowest score wins; among equals the first at or after `start`.
    static func best(_ members: [Candidate], from start: Int, score: (Candidate) -> UInt64) -> Int {
        var bestIndex = start
        var bestScore = score(members[start])
        for k in 1..<max(members.count, 1) {
            let i = (start + k) % members.count
            let s = score(members[i])
            if s < bestScore {
                bestScore = s
                bestIndex = i
            }
        }
        return bestIndex
    }

    /// Same node and core, then same node by core distance, then other nodes.
    static func distance(_ c: ClientHint, _ m: Candidate) -> UInt64 {
        if m.addr.node != c.node { return 1 << 40 }
        if c.core < 0 || m.core < 0 { return 1 << 20 }
        return UInt64(abs(Int64(c.core) - Int64(m.core)))
    }

    /// SplitMix64 finaliser.
    static func mix(_ x: UInt64) -> UInt64 {
        var z = x &+ 0x9e37_79b9_7f4a_7c15
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}
