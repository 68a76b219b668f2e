import CFosSys
import CFosWire
import FosCore
import Foundation

/// The other process of each benchmark. It speaks one tiny protocol on every
/// transport: a message of N bytes is echoed (ping-pong), or, in stream mode,
/// `count` messages are consumed and one ack is sent back.

/// Reference peers: fd 3 is a socket (or fd 3 in, fd 4 out for pipes).
func runFDPeer(size: Int, mode: String, count: Int, inFD: CInt, outFD: CInt) -> Never {
    var buf = [UInt8](repeating: 0, count: max(size, 8))
    func readFull(_ n: Int) -> Bool {
        var got = 0
        while got < n {
            let r = buf.withUnsafeMutableBytes { read(inFD, $0.baseAddress! + got, n - got) }
            if r < 0 && errno == EINTR { continue }
            if r <= 0 { return false }
            got += r
        }
        return true
    }
    func writeFull(_ n: Int) -> Bool {
        var put = 0
        while put < n {
            let r = buf.withUnsafeBytes { write(outFD, $0.baseAddress! + put, n - put) }
            if r < 0 && errno == EINTR { continue }
            if r <= 0 { return false }
            put += r
        }
        return true
    }
    if mode == "echo" {
        while readFull(size) { if !writeFull(size) { break } }
    } else {
        while true {
            var ok = true
            for _ in 0..<count where !readFull(size) { ok = false; break }
            if !ok || !writeFull(8) { break }
        }
    }
    exit(0)
}

/// fos peer: creates a raw mailbox, prints "mailbox key-hex" on stdout, then
/// serves each channel it is given on this thread.
func runFosPeer(runtime: String, size: Int, mode: String, count: Int) -> Never {
    do {
        let rt = try FosRuntime.connect(runtime: runtime)
        let key = Capability.random()
        let channels = AsyncStream<Channel>.makeStream()
        let sem = DispatchSemaphore(value: 0)
        let box = ChannelBox()
        Task {
            let a = try await rt.createRawMailbox(key: key) { ch in
                box.set(ch)
                sem.signal()
            }
            announce(a.mailbox, key)
        }
        _ = channels
        sem.wait()
        let ch = box.get()!
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(FOS_MAX_PAYLOAD) + 64, alignment: 16)
        let hsize = MemoryLayout<fos_msg_hdr>.size
        if mode == "echo" || mode == "echo-sleep" {
            // echo-sleep: never spin, so every message has to wake this side up.
            let spin: UInt64 = mode == "echo" ? 200_000_000 : 0
            while true {
                let n = try ch.receiveBlocking(into: buf, spinNanos: spin)
                var h = buf.loadUnaligned(as: fos_msg_hdr.self)
                h.flags = UInt32(FOS_MSG_REPLY)
                ch.release()
                try ch.send(h, UnsafeRawBufferPointer(rebasing: buf[hsize..<n]))
            }
        } else {
            let ack = fos_msg_hdr(opcode: UInt16(FOS_OP_PING), requestID: 0, payloadLength: 0, flags: UInt32(FOS_MSG_REPLY))
            while true {
                var got = 0
                while got < count {
                    let n = try ch.receive(into: buf)
                    if n > 0 {
                        got += 1
                        if got & 63 == 0 { ch.release() }
                        continue
                    }
                    ch.release()
                    _ = try ch.receiveBlocking(into: buf, spinNanos: 200_000_000)
                    got += 1
                }
                ch.release()
                try ch.send(ack, UnsafeRawBufferPointer(start: nil, count: 0))
            }
        }
    } catch {
        exit(0)  // the client went away: done
    }
}

/// fos server-model peer: a FosServer answering ECHO, its mailbox printed like above.
func runRPCPeer(runtime: String) -> Never {
    do {
        let rt = try FosRuntime.connect(runtime: runtime, ownThread: false)
        let key = Capability.random()
        let server = FosServer(runtime: rt, handlers: [UInt16(FOS_OP_ECHO): { Reply(payload: $0.payload) }])
        rt.loop.spawn {
            do {
                let a = try await rt.createMailbox(key: key, service: server)
                announce(a.mailbox, key)
            } catch {
                exit(1)
            }
        }
        rt.run()
        exit(0)
    } catch {
        exit(1)
    }
}

/// Hands a channel from the loop thread to the benchmark thread.
final class ChannelBox: @unchecked Sendable {
    // `@unchecked Sendable`: guarded by the lock.
    private let lock = NSLock()
    private var ch: Channel?
    func set(_ c: Channel) { lock.withLock { ch = c } }
    func get() -> Channel? { lock.withLock { ch } }
}

/// Tells the parent (through fd 3) where the peer listens.
func announce(_ mailbox: UInt64, _ key: Capability) {
    let line = "\(mailbox) \(String(key.bytes.0, radix: 16)) \(String(key.bytes.1, radix: 16))\n"
    _ = line.withCString { write(3, $0, strlen($0)) }
    close(3)
}
