import CFosSys
import CFosWire
import FosCore
import Foundation

/// The name service of one node: hierarchical names to fleet members, one
/// member chosen per lookup by the name's policy. A registration lives as long
/// as the registrant's channel; libfos replays it if this server restarts.
final class Registry: @unchecked Sendable {
    // `@unchecked Sendable`: every field is touched only on the event loop
    // thread (handlers and connect/disconnect callbacks all run there).
    struct Member {
        var entry: NameEntry
        var channelID: UInt64
    }
    struct Stats {
        var page: UnsafeMutablePointer<fos_stats_page>?
        var fd: CInt
    }
    var names: [String: [Member]] = [:]
    var owners: [String: UInt32] = [:]
    var rotors: [String: UInt64] = [:]
    var stats: [UInt64: Stats] = [:]
    var perChannel: [UInt64: Int] = [:]
    var choosers: [MailboxAddress: Channel] = [:]
    /// Fleets fosd runs: names at or under them belong to their members alone.
    let fleets: [String]
    var selfAddr: MailboxAddress?
    let rt: FosRuntime

    init(rt: FosRuntime, fleets: [String]) {
        self.rt = rt
        self.fleets = fleets
    }

    func connected(_ ch: Channel, _ statsFD: CInt) {
        var page: UnsafeMutablePointer<fos_stats_page>?
        if statsFD >= 0, fos_sys_check_sealed(statsFD) == 0,
           let p = fos_sys_map_shared(statsFD, MemoryLayout<fos_stats_page>.size, 0) {
            page = p.assumingMemoryBound(to: fos_stats_page.self)
        }
        stats[ch.id] = Stats(page: page, fd: statsFD)
    }

    func disconnected(_ ch: Channel) {
        if let s = stats.removeValue(forKey: ch.id) {
            if let p = s.page { _ = fos_sys_unmap(p, MemoryLayout<fos_stats_page>.size) }
            closeFD(s.fd)
        }
        perChannel[ch.id] = nil
        for (name, ms) in names {
            let left = ms.filter { $0.channelID != ch.id }
            guard left.count != ms.count else { continue }
            names[name] = left.isEmpty ? nil : left
            if left.isEmpty {
                owners[name] = nil
                rotors[name] = nil
            }
        }
    }

    func load(_ m: Member) -> (UInt64, UInt64) {
        guard let p = stats[m.channelID]?.page, p.pointee.magic == FOS_STATS_MAGIC else { return (0, 0) }
        return (p.pointee.queue_len, p.pointee.handled)
    }

    /// May this sender register `name`? /sys names belong to the fleet fosd
    /// started for them; other names to the uid that registered them first.
    func allowed(_ name: String, _ sender: PeerInfo) -> Bool {
        let ownFleet = !sender.fleet.isEmpty && (name == sender.fleet || name.hasPrefix(sender.fleet + "/"))
        if name.hasPrefix("/sys/") || name == "/sys" { return ownFleet }
        if ownFleet { return true }
        // A name of a fleet fosd runs is that fleet's, even while it has no
        // member registered (between a member's death and its restart).
        if fleets.contains(where: { name == $0 || name.hasPrefix($0 + "/") }) { return false }
        if let o = owners[name], o != sender.uid && sender.uid != 0 { return false }
        return true
    }

    func register(_ r: Request) -> Reply {
        let e: NameEntry? = r.payload.withUnsafeBytes { b in
            var off = 0
            return NameEntry.decode(b, offset: &off)
        }
        guard var e else { return Reply(status: EINVAL) }
        guard allowed(e.name, r.sender) else { return Reply(status: EPERM) }
        // Internal mailboxes and policy choosers speak for the fleet itself
        // (internal ones also under its sub-names: /sys/fs/1 is member 1).
        let underOwnFleet = !r.sender.fleet.isEmpty && e.name.hasPrefix(r.sender.fleet + "/")
        if e.flags & UInt32(FOS_NAME_POLICY) != 0 && r.sender.fleet != e.name {
            return Reply(status: EPERM)
        }
        if e.flags & UInt32(FOS_NAME_INTERNAL) != 0 && r.sender.fleet != e.name && !underOwnFleet {
            return Reply(status: EPERM)
        }
        guard e.flags & ~UInt32(FOS_NAME_INTERNAL | FOS_NAME_POLICY) == 0,
              e.flags & UInt32(FOS_NAME_INTERNAL | FOS_NAME_POLICY) != UInt32(FOS_NAME_INTERNAL | FOS_NAME_POLICY),
              e.addr != selfAddr
        else { return Reply(status: EINVAL) }
        guard e.addr.node == rt.node, e.addr.mailbox != 0 else { return Reply(status: EINVAL) }
        guard perChannel[r.channelID, default: 0] < 4096 else { return Reply(status: ENOSPC) }
        e.pid = r.sender.pid
        e.core = r.sender.core >= 0 ? r.sender.core : e.core
        var list = names[e.name] ?? []
        if let first = list.first { e.policy = first.entry.policy }  // the first registrant sets the policy
        for old in list where old.entry.addr == e.addr {
            perChannel[old.channelID, default: 1] -= 1
        }
        list.removeAll { $0.entry.addr == e.addr }
        list.append(Member(entry: e, channelID: r.channelID))
        names[e.name] = list
        if owners[e.name] == nil { owners[e.name] = r.sender.uid }
        perChannel[r.channelID, default: 0] += 1
        return Reply()
    }

    func unregister(_ r: Request) -> Reply {
        let e: NameEntry? = r.payload.withUnsafeBytes { b in
            var off = 0
            return NameEntry.decode(b, offset: &off)
        }
        guard let e else { return Reply(status: EINVAL) }
        guard var list = names[e.name],
              let i = list.firstIndex(where: { $0.entry.addr == e.addr && $0.channelID == r.channelID })
        else { return Reply(status: ENOENT) }
        list.remove(at: i)
        names[e.name] = list.isEmpty ? nil : list
        if list.isEmpty {
            owners[e.name] = nil
            rotors[e.name] = nil
        }
        perChannel[r.channelID, default: 1] -= 1
        return Reply()
    }

    func lookup(_ r: Request) async -> Reply {
        let parsed: (fos_name_lookup, [MailboxAddress], String)? = r.payload.withUnsafeBytes { b in
            guard let l = loadStruct(fos_name_lookup.self, from: b), l.exclude_count <= 64 else { return nil }
            var off = MemoryLayout<fos_name_lookup>.size
            var ex: [MailboxAddress] = []
            for _ in 0..<l.exclude_count {
                guard let a = loadStruct(fos_mailbox_addr.self, from: b, at: off) else { return nil }
                ex.append(MailboxAddress(a))
                off += MemoryLayout<fos_mailbox_addr>.size
            }
            guard off + Int(l.name_len) == b.count else { return nil }
            let name = String(decoding: UnsafeRawBufferPointer(rebasing: b[off...]), as: UTF8.self)
            return (l, ex, name)
        }
        guard let (l, ex, name) = parsed, validateName(name) else { return Reply(status: EINVAL) }
        let wantInternal = l.flags & UInt32(FOS_NAME_INTERNAL) != 0
        let all = names[name] ?? []
        let members = all.filter {
            $0.entry.isInternal == wantInternal && $0.entry.flags & UInt32(FOS_NAME_POLICY) == 0
                && !ex.contains($0.entry.addr)
        }
        guard let policy = members.first?.entry.policy else { return Reply(status: ENOENT) }
        let cands = members.map { m in
            Candidate(addr: m.entry.addr, core: m.entry.core, queueLength: load(m).0)
        }
        let hint = ClientHint(node: rt.node, core: r.sender.core >= 0 ? r.sender.core : l.client_core, key: l.client_key)
        var rotor = rotors[name, default: 0]
        var index = PolicyChooser.choose(policy, cands, client: hint, rotor: &rotor) ?? 0
        rotors[name] = rotor
        if policy == .custom, let chooser = all.first(where: { $0.entry.flags & UInt32(FOS_NAME_POLICY) != 0 }) {
            // The fleet decides: ask its policy mailbox (this handler suspends, others go on).
            if let i = await choose(chooser.entry, l, cands), i < members.count { index = i }
        }
        var m = members[index].entry
        if m.isInternal { m.key = .none }
        (m.queueLength, m.handled) = load(members[index])
        var out = [UInt8]()
        m.encode(into: &out)
        return Reply(payload: out)
    }

    func choose(_ chooser: NameEntry, _ l: fos_name_lookup, _ cands: [Candidate]) async -> Int? {
        do {
            choosers = choosers.filter { !$0.value.isClosed }
            var ch = choosers[chooser.addr]
            if ch == nil {
                ch = try await rt.connect(chooser.addr, key: chooser.key)
                choosers[chooser.addr] = ch
            }
            var p = [UInt8]()
            appendStruct(l, to: &p)
            appendStruct(UInt32(cands.count), to: &p)
            for c in cands {
                var e = fos_name_entry()
                e.addr = c.addr.wire
                e.core = c.core
                e.queue_len = c.queueLength
                appendStruct(e, to: &p)
            }
            let r = try await rt.call(ch!, opcode: UInt16(FOS_OP_NAME_CHOOSE), payload: p, timeout: .milliseconds(200))
            guard r.status == 0, let i = r.payload.withUnsafeBytes({ loadStruct(UInt32.self, from: $0) }) else { return nil }
            return Int(i)
        } catch {
            return nil
        }
    }

    func list(_ r: Request) -> Reply {
        let prefix = String(decoding: r.payload, as: UTF8.self)
        var out = [UInt8](repeating: 0, count: 8)
        var count: UInt32 = 0
        for name in names.keys.sorted() where name.hasPrefix(prefix) {
            for m in names[name]! {
                var e = m.entry
                (e.queueLength, e.handled) = load(m)
                let before = out.count
                e.encode(into: &out, withKey: false)
                if out.count > Int(FOS_MAX_PAYLOAD) {
                    out.removeSubrange(before...)
                    break
                }
                count += 1
            }
        }
        withUnsafeBytes(of: count) { out.replaceSubrange(0..<4, with: $0) }
        return Reply(payload: out)
    }
}

do {
    let rt = try FosRuntime.connect(ownThread: false)
    let fleets = (ProcessInfo.processInfo.environment["FOS_FLEETS"] ?? "").split(separator: ",").map(String.init)
        .filter(validateName)
    let reg = Registry(rt: rt, fleets: fleets)
    let server = FosServer(
        runtime: rt,
        handlers: [
            UInt16(FOS_OP_NAME_REGISTER): { reg.register($0) },
            UInt16(FOS_OP_NAME_UNREGISTER): { reg.unregister($0) },
            UInt16(FOS_OP_NAME_LOOKUP): { await reg.lookup($0) },
            UInt16(FOS_OP_NAME_LIST): { reg.list($0) },
        ],
        onConnect: { reg.connected($0, $1) },
        onDisconnect: { reg.disconnected($0) })
    rt.loop.spawn {
        do {
            // A public mailbox: every local process reaches the name service without a key.
            let a = try await rt.createMailbox(key: .none, flags: UInt32(FOS_MBOX_PUBLIC | FOS_MBOX_NAME_SERVICE),
                                               service: server)
            reg.selfAddr = a
            // List ourselves too; channel 0 is never closed.
            reg.names["/sys/name"] = [Registry.Member(
                entry: NameEntry(name: "/sys/name", addr: a, key: .none, policy: .roundRobin, pid: getpid(), core: rt.core),
                channelID: 0)]
        } catch {
            FileHandle.standardError.write(Data("fos-name: cannot create the name service mailbox: \(error)\n".utf8))
            exit(1)
        }
    }
    rt.run()
} catch {
    FileHandle.standardError.write(Data("fos-name: \(error)\n".utf8))
    exit(1)
}
