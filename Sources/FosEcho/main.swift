import CFosSys
import CFosWire
import FosCore
import Foundation
import Synchronization

/// The example fleet: echo with a few twists that exercise the server model.
///   ECHO    replies with the payload;
///   SLOW    sleeps (u32 ms) then echoes: only that handler waits;
///   RELAY   forwards to a peer over the fleet-internal mailbox (an RPC from a
///           handler), or answers as the peer when alone in the fleet;
///   WHOAMI  reports pid, core and mailbox.
do {
    let rt = try FosRuntime.connect(ownThread: false)
    let name = rt.isMember ? rt.fleet : (ProcessInfo.processInfo.environment["FOS_FLEET"] ?? "/app/echo")
    let policy = ProcessInfo.processInfo.environment["FOS_POLICY"].flatMap(NamePolicy.init(name:)) ?? .roundRobin
    let me = Mutex<FosServer.Addresses?>(nil)
    @Sendable func whoami() -> Reply {
        var w = fos_echo_whoami()
        w.pid = getpid()
        w.core = fos_sys_current_cpu()
        w.mailbox = me.withLock { $0?.external.mailbox } ?? 0
        var out = [UInt8]()
        appendStruct(w, to: &out)
        return Reply(payload: out)
    }
    let server = FosServer(runtime: rt, handlers: [
        UInt16(FOS_OP_ECHO): { Reply(payload: $0.payload) },
        UInt16(FOS_OP_ECHO_SLOW): { req in
            let ms = req.payload.withUnsafeBytes { loadStruct(UInt32.self, from: $0) } ?? 0
            try await Task.sleep(for: .milliseconds(Int(min(ms, 10_000))))
            return Reply(payload: Array(req.payload.dropFirst(4)))
        },
        UInt16(FOS_OP_ECHO_RELAY): { req in
            // The request came from outside: hand it to a fleet peer. Alone
            // in the fleet, answer as that peer (a process cannot connect to
            // its own mailbox).
            let mine = me.withLock { $0?.internal }
            let peer: NameEntry
            do {
                peer = try await rt.lookup(name, fleetInternal: true, excluding: mine.map { [$0] } ?? [])
            } catch FosError.noSuchName {
                return whoami()
            }
            let ch = try await rt.connect(peer.addr, key: rt.fleetKey)
            defer { Task { try? await rt.close(ch) } }
            return try await rt.call(ch, opcode: UInt16(FOS_OP_ECHO_WHOAMI), payload: req.payload)
        },
        UInt16(FOS_OP_ECHO_WHOAMI): { _ in whoami() },
    ])
    rt.loop.spawn {
        do {
            let a = try await server.start(name: name, policy: policy)
            me.withLock { $0 = a }
            if policy == .custom && rt.memberIndex == 0 {
                // The fleet's own policy: send every client to the oldest
                // member (lowest mailbox id) that is alive.
                let chooser = FosServer(runtime: rt, handlers: [
                    UInt16(FOS_OP_NAME_CHOOSE): { req in
                        let off = MemoryLayout<fos_name_lookup>.size
                        let count = req.payload.withUnsafeBytes { loadStruct(UInt32.self, from: $0, at: off) } ?? 0
                        var best: (UInt32, UInt64)?
                        for i in 0..<min(count, 1024) {
                            let at = off + 4 + Int(i) * MemoryLayout<fos_name_entry>.size
                            guard let e = req.payload.withUnsafeBytes({ loadStruct(fos_name_entry.self, from: $0, at: at) })
                            else { return Reply(status: EINVAL) }
                            if best == nil || e.addr.mailbox < best!.1 { best = (i, e.addr.mailbox) }
                        }
                        guard let b = best else { return Reply(status: ENOENT) }
                        var out = [UInt8]()
                        appendStruct(b.0, to: &out)
                        return Reply(payload: out)
                    },
                ])
                let key = Capability.random()
                let ca = try await rt.createMailbox(key: key, service: chooser)
                try await rt.register(name: name, addr: ca, key: key, policy: .custom, flags: UInt32(FOS_NAME_POLICY))
            }
        } catch {
            FileHandle.standardError.write(Data("fos-echo: cannot start: \(error)\n".utf8))
            exit(1)
        }
    }
    rt.run()
} catch {
    FileHandle.standardError.write(Data("fos-echo: \(error)\n".utf8))
    exit(1)
}
