import CFosSys
import CFosWire
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// One member under a name, as the name service reports it.
public struct NameEntry: Sendable, Equatable {
    public var name: String
    public var addr: MailboxAddress
    public var key: Capability
    public var policy: NamePolicy
    public var flags: UInt32
    public var pid: Int32
    public var core: Int32
    public var queueLength: UInt64
    public var handled: UInt64

    public init(name: String, addr: MailboxAddress, key: Capability, policy: NamePolicy, flags: UInt32 = 0,
                pid: Int32 = 0, core: Int32 = -1, queueLength: UInt64 = 0, handled: UInt64 = 0) {
        self.name = name
        self.addr = addr
        self.key = key
        self.policy = policy
        self.flags = flags
        self.pid = pid
        self.core = core
        self.queueLength = queueLength
        self.handled = handled
    }

    public var isInternal: Bool { flags & UInt32(FOS_NAME_INTERNAL) != 0 }

    /// Wire form: fos_name_entry, then the name, padded to 8 bytes.
    public func encode(into out: inout [UInt8], withKey: Bool = true) {
        var w = fos_name_entry()
        w.addr = addr.wire
        if withKey { w.key = key.wire }
        w.policy = policy.rawValue
        w.flags = flags
        w.pid = pid
        w.core = core
        w.queue_len = queueLength
        w.handled = handled
        let n = Array(name.utf8)
        w.name_len = UInt16(n.count)
        appendStruct(w, to: &out)
        out += n
        while out.count % 8 != 0 { out.append(0) }
    }

    /// Decodes one entry at `offset`, advancing it. nil for anything malformed.
    public static func decode(_ b: UnsafeRawBufferPointer, offset: inout Int) -> NameEntry? {
        guard let w = loadStruct(fos_name_entry.self, from: b, at: offset) else { return nil }
        let start = offset + MemoryLayout<fos_name_entry>.size
        let len = Int(w.name_len)
        guard len <= Int(FOS_MAX_NAME), start + len <= b.count,
              let policy = NamePolicy(rawValue: w.policy)
        else { return nil }
        let name = String(decoding: UnsafeRawBufferPointer(rebasing: b[start..<(start + len)]), as: UTF8.self)
        guard validateName(name) else { return nil }
        offset = (start + len + 7) & ~7
        return NameEntry(name: name, addr: MailboxAddress(w.addr), key: Capability(wire: w.key), policy: policy,
                         flags: w.flags, pid: w.pid, core: w.core, queueLength: w.queue_len, handled: w.handled)
    }

    public static func decodeList(_ bytes: [UInt8]) throws -> [NameEntry] {
        try bytes.withUnsafeBytes { b in
            guard let count = loadStruct(UInt32.self, from: b), count <= 1 << 20 else {
                throw FosError.badMessage("bad name list")
            }
            var off = 8
            var out = [NameEntry]()
            for _ in 0..<count {
                guard let e = decode(b, offset: &off) else { throw FosError.badMessage("bad name list entry") }
                out.append(e)
            }
            return out
        }
    }
}

/// A binding the client resolved: a member and the channel to it.
struct Binding {
    var entry: NameEntry
    var channel: Channel
    var expires: UInt64
}

/// Client-side naming state: the channel to the name service, the name cache,
/// and this process's own registrations (replayed when the name service
/// restarts). Loop-confined: only touched inside `loop.onLoop`.
///
/// `@unchecked Sendable`: all mutable state is touched on the owning loop's
/// thread only (every method is reached through `FosRuntime` → `onLoop`).
final class NameClient: @unchecked Sendable {
    var channel: Channel?
    var cache: [String: Binding] = [:]
    var registrations: [NameEntry] = []
    var reregistering = false
    var roundRobin: UInt64 = 0
}

extension FosRuntime {
    /// The channel to the node's name service (public mailbox, no key).
    func nameChannel() throws -> Channel {
        if let c = names.channel, !c.isClosed { return c }
        let r = try control.request(Int32(FOS_CTL_NAME_SERVICE))
        r.closeFDs()
        guard let a = r.payload.withUnsafeBytes({ loadStruct(fos_mailbox_addr.self, from: $0) }) else {
            throw FosError.badMessage("bad NAME_SERVICE reply")
        }
        let ch = try openChannel(MailboxAddress(a), key: .none)
        loop.adoptClient(ch)
        names.channel = ch
        loop.observeClose(ch) { [self] _ in
            self.names.channel = nil
            self.reregisterSoon()
        }
        return ch
    }

    /// The channel to the name service, waiting up to `timeout` while fosd has
    /// none yet (EAGAIN): fosd starts every fleet at once, so a member may ask
    /// before the name server has created its mailbox.
    func nameChannel(waitingUpTo timeout: Duration) async throws -> Channel {
        let deadline = ContinuousClock.now + timeout
        while true {
            do {
                return try nameChannel()
            } catch FosError.remote(let e) where e == .resourceTemporarilyUnavailable && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(10))
            }
        }
    }

    /// After the name service restarted: register everything again.
    private func reregisterSoon() {
        guard !names.registrations.isEmpty, !names.reregistering else { return }
        names.reregistering = true
        loop.spawn { [self] in
            defer { self.names.reregistering = false }
            // Until it works or the node goes away: a name server in a crash
            // loop comes back later, and our registrations must come back too.
            var delay = 10
            while !self.loop.st.controlGone {
                do {
                    let ch = try self.nameChannel()
                    for e in self.names.registrations {
                        var p = [UInt8]()
                        e.encode(into: &p)
                        let r = try await self.loop.call(ch, opcode: UInt16(FOS_OP_NAME_REGISTER), payload: p,
                                                         timeout: .seconds(2))
                        // A refusal is final for that entry; anything transient retries all.
                        if r.status == EAGAIN { throw FosError.remote(.resourceTemporarilyUnavailable) }
                    }
                    return
                } catch {
                    try? await Task.sleep(for: .milliseconds(delay))
                    delay = min(delay * 2, 1000)
                }
            }
        }
    }

    /// Registers `addr` under `name`. The registration lives as long as this
    /// process's channel to the name service, and is replayed if that restarts.
    public func register(name: String, addr: MailboxAddress, key: Capability, policy: NamePolicy = .roundRobin,
                         flags: UInt32 = 0) async throws {
        guard validateName(name) else { throw FosError.remote(.invalidArgument) }
        let e = NameEntry(name: name, addr: addr, key: key, policy: policy, flags: flags, core: core)
        try await loop.onLoop {
            var p = [UInt8]()
            e.encode(into: &p)
            let ch = try await self.nameChannel(waitingUpTo: .seconds(5))
            _ = try await self.loop.call(ch, opcode: UInt16(FOS_OP_NAME_REGISTER), payload: p, timeout: .seconds(5)).checked()
            self.names.registrations.removeAll { $0.name == e.name && $0.addr == e.addr }
            self.names.registrations.append(e)
        }
    }

    public func unregister(name: String, addr: MailboxAddress) async throws {
        guard validateName(name) else { throw FosError.remote(.invalidArgument) }
        let e = NameEntry(name: name, addr: addr, key: .none, policy: .roundRobin)
        try await loop.onLoop {
            self.names.registrations.removeAll { $0.name == name && $0.addr == addr }
            var p = [UInt8]()
            e.encode(into: &p)
            let ch = try self.nameChannel()
            _ = try await self.loop.call(ch, opcode: UInt16(FOS_OP_NAME_UNREGISTER), payload: p, timeout: .seconds(5)).checked()
        }
    }

    /// Asks the name service for one member of `name`, chosen by its policy.
    public func lookup(_ name: String, fleetInternal: Bool = false, clientKey: UInt64 = 0,
                       excluding: [MailboxAddress] = []) async throws -> NameEntry {
        guard validateName(name) else { throw FosError.remote(.invalidArgument) }
        return try await loop.onLoop {
            var l = fos_name_lookup()
            l.client_key = clientKey
            l.client_core = fos_sys_current_cpu()
            l.flags = fleetInternal ? UInt32(FOS_NAME_INTERNAL) : 0
            let ex = excluding.prefix(64)
            l.exclude_count = UInt32(ex.count)
            let n = Array(name.utf8)
            l.name_len = UInt16(n.count)
            var p = [UInt8]()
            appendStruct(l, to: &p)
            for a in ex { appendStruct(a.wire, to: &p) }
            p += n
            let ch = try await self.nameChannel(waitingUpTo: .seconds(2))
            let r = try await self.loop.call(ch, opcode: UInt16(FOS_OP_NAME_LOOKUP), payload: p, timeout: .seconds(5))
            if r.status == ENOENT { throw FosError.noSuchName(name) }
            let bytes = try r.checked()
            return try bytes.withUnsafeBytes { b in
                var off = 0
                guard let e = NameEntry.decode(b, offset: &off) else { throw FosError.badMessage("bad lookup reply") }
                return e
            }
        }
    }

    /// Every registration whose name starts with `prefix` (keys withheld).
    public func listNames(prefix: String = "/") async throws -> [NameEntry] {
        try await loop.onLoop {
            let ch = try await self.nameChannel(waitingUpTo: .seconds(2))
            let r = try await self.loop.call(ch, opcode: UInt16(FOS_OP_NAME_LIST), payload: Array(prefix.utf8),
                                             timeout: .seconds(5))
            return try NameEntry.decodeList(try r.checked())
        }
    }

    /// Calls a fleet by name: resolves through the name cache, connects, and
    /// on a dead member evicts it and retries on another one. `timeout` bounds
    /// each attempt; requests must be idempotent to be retried.
    public func call(name: String, opcode: UInt16, payload: [UInt8] = [], fleetInternal: Bool = false,
                     timeout: Duration = .seconds(5), attempts: Int = 8, clientKey: UInt64 = 0) async throws -> Reply {
        try await loop.onLoop {
            var dead: [MailboxAddress] = []
            var lastError: Error = FosError.noSuchName(name)
            for attempt in 0..<attempts {
                let b: Binding
                do {
                    b = try await self.bind(name, fleetInternal: fleetInternal, clientKey: clientKey, excluding: dead)
                } catch let e as FosError {
                    // The fleet may be between members: wait a moment.
                    lastError = e
                    if case .noSuchName = e, attempt + 1 < attempts {
                        try await Task.sleep(for: .milliseconds(20 << min(attempt, 4)))
                        continue
                    }
                    throw e
                }
                do {
                    return try await self.loop.call(b.channel, opcode: opcode, payload: payload, timeout: timeout)
                } catch FosError.timeout {
                    // A hung member: next time, bind afresh (it may be replaced by then).
                    let k = self.cacheKey(name, fleetInternal)
                    if self.names.cache[k]?.channel === b.channel { self.names.cache[k]?.expires = 0 }
                    throw FosError.timeout
                } catch FosError.peerGone {
                    lastError = FosError.peerGone
                    // Forget this binding only: another caller may have bound anew meanwhile.
                    let k = self.cacheKey(name, fleetInternal)
                    if self.names.cache[k]?.channel === b.channel { self.names.cache[k] = nil }
                    dead.append(b.entry.addr)
                }
            }
            throw lastError
        }
    }

    func cacheKey(_ name: String, _ fleetInternal: Bool) -> String { fleetInternal ? "i:" + name : name }

    /// Cached binding, or a fresh lookup and channel.
    private func bind(_ name: String, fleetInternal: Bool, clientKey: UInt64, excluding: [MailboxAddress]) async throws -> Binding {
        let k = cacheKey(name, fleetInternal)
        let now = monotonicNanos()
        if let b = names.cache[k], !b.channel.isClosed, b.expires > now { return b }
        var ex = excluding
        for _ in 0..<4 {
            let entry = try await lookup(name, fleetInternal: fleetInternal, clientKey: clientKey, excluding: ex)
            // Concurrent callers: another one may have bound the name while this
            // one waited for its lookup. Share that binding rather than open a
            // second channel that nobody would ever close.
            if let b = names.cache[k], !b.channel.isClosed, b.expires > monotonicNanos(), !ex.contains(b.entry.addr) {
                return b
            }
            // Round-robin and least-loaded rebind now and then to spread load;
            // sticky and nearest keep their member longer, but not forever.
            let ttl: UInt64 = (entry.policy == .sticky || entry.policy == .nearest) ? 5_000_000_000 : 250_000_000
            // The same member again: keep its channel, just renew the binding.
            if let old = names.cache[k], old.entry.addr == entry.addr, !old.channel.isClosed {
                let b = Binding(entry: entry, channel: old.channel, expires: monotonicNanos() &+ ttl)
                names.cache[k] = b
                return b
            }
            let key = fleetInternal ? fleetKey : entry.key
            do {
                let ch = try openChannel(entry.addr, key: key)
                loop.adoptClient(ch)
                let b = Binding(entry: entry, channel: ch, expires: now &+ ttl)
                // The binding this one replaces may still carry calls in flight
                // (of this or other tasks): close its channel once they are done.
                if let old = names.cache.updateValue(b, forKey: k), !old.channel.isClosed {
                    loop.retire(old.channel)
                }
                return b
            } catch FosError.remote(let e) where e == .noSuchFileOrDirectory || e == .connectionRefused {
                ex.append(entry.addr)  // registered but already gone
            }
        }
        throw FosError.noSuchName(name)
    }
}
