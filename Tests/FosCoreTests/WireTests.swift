import CFosWire
import FosCore
import Testing

#if canImport(Glibc)
import Glibc
#endif

private func bytes<T>(of value: T) -> [UInt8] {
    withUnsafeBytes(of: value) { Array($0) }
}

private func msg(_ h: fos_msg_hdr, payload: Int? = nil) -> [UInt8] {
    bytes(of: h) + [UInt8](repeating: 0x5a, count: payload ?? Int(h.payload_len))
}

private func msgValidate(_ b: [UInt8]) -> Int32 {
    b.withUnsafeBytes { fos_msg_validate($0.baseAddress, $0.count) }
}

private func ctlValidate(_ b: [UInt8]) -> Int32 {
    b.withUnsafeBytes { fos_ctl_validate($0.baseAddress, $0.count) }
}

private func ctl(op: UInt16, total: Int, version: UInt16 = UInt16(FOS_WIRE_VERSION), len: UInt32? = nil) -> [UInt8] {
    let h = fos_ctl_hdr(version: version, op: op, len: len ?? UInt32(total), request_id: 9, status: 0, reserved: 0)
    return bytes(of: h) + [UInt8](repeating: 0xc3, count: max(0, total - MemoryLayout<fos_ctl_hdr>.size))
}

private func nameValidate(_ b: [UInt8]) -> Int32 {
    b.withUnsafeBytes { fos_name_validate($0.baseAddress?.assumingMemoryBound(to: CChar.self), $0.count) }
}

/// FOS_CTL_MAX_DATAGRAM
private let ctlMax = Int(FOS_MAX_PAYLOAD) + 64

@Suite("Wire format")
struct WireTests {
    @Test func layoutSizes() {
        #expect(MemoryLayout<fos_msg_hdr>.size == 24)
        #expect(MemoryLayout<fos_ctl_hdr>.size == 24)
        #expect(MemoryLayout<fos_name_entry>.size == 72)
        #expect(MemoryLayout<fos_name_lookup>.size == 24)
        #expect(MemoryLayout<fos_ctl_hello_reply>.size == 40)
        #expect(MemoryLayout<fos_mailbox_addr>.size == 16)
        #expect(MemoryLayout<fos_msg_hdr>.offset(of: \fos_msg_hdr.request_id) == 8)
        #expect(MemoryLayout<fos_msg_hdr>.offset(of: \fos_msg_hdr.payload_len) == 16)
        #expect(MemoryLayout<fos_name_entry>.offset(of: \fos_name_entry.name_len) == 64)
    }

    @Test func msgHeaderInitFillsTheWireFields() {
        let h = fos_msg_hdr(opcode: 0x200, requestID: 77, payloadLength: 5, flags: UInt32(FOS_MSG_REPLY), status: 3)
        #expect(h.version == UInt16(FOS_WIRE_VERSION))
        #expect(h.opcode == 0x200)
        #expect(h.request_id == 77)
        #expect(h.payload_len == 5)
        #expect(h.flags == UInt32(FOS_MSG_REPLY))
        #expect(h.status == 3)
    }

    // MARK: fos_msg_validate

    @Test func msgGood() {
        #expect(msgValidate(msg(fos_msg_hdr(opcode: 1, requestID: 1, payloadLength: 0))) == 0)
        #expect(msgValidate(msg(fos_msg_hdr(opcode: 0x100, requestID: 2, payloadLength: 37))) == 0)
        let flags = UInt32(FOS_MSG_REPLY | FOS_MSG_ONEWAY)
        #expect(msgValidate(msg(fos_msg_hdr(opcode: 0xffff, requestID: .max, payloadLength: 1, flags: flags))) == 0)
        #expect(msgValidate(msg(fos_msg_hdr(opcode: 2, requestID: 0, payloadLength: Int(FOS_MAX_PAYLOAD)))) == 0)
    }

    @Test func msgShortBuffer() {
        let full = msg(fos_msg_hdr(opcode: 1, requestID: 1, payloadLength: 0))
        for n in 0..<24 {
            #expect(msgValidate(Array(full.prefix(n))) == EBADMSG, "length \(n)")
        }
        #expect(fos_msg_validate(nil, 0) == EBADMSG)
    }

    @Test func msgWrongVersion() {
        for v: UInt16 in [0, 2, 0x100, .max] {
            var h = fos_msg_hdr(opcode: 1, requestID: 1, payloadLength: 4)
            h.version = v
            #expect(msgValidate(msg(h)) == EPROTO, "version \(v)")
        }
    }

    @Test func msgOpcodeZero() {
        #expect(msgValidate(msg(fos_msg_hdr(opcode: 0, requestID: 1, payloadLength: 4))) == EPROTO)
    }

    @Test func msgPayloadLengthMismatch() {
        let h = fos_msg_hdr(opcode: 1, requestID: 1, payloadLength: 10)
        #expect(msgValidate(msg(h, payload: 9)) == EBADMSG)
        #expect(msgValidate(msg(h, payload: 11)) == EBADMSG)
        #expect(msgValidate(msg(h, payload: 0)) == EBADMSG)
        #expect(msgValidate(msg(h, payload: 10)) == 0)
    }

    @Test func msgPayloadTooLarge() {
        var h = fos_msg_hdr(opcode: 1, requestID: 1, payloadLength: 0)
        h.payload_len = FOS_MAX_PAYLOAD + 1
        #expect(msgValidate(msg(h)) == EMSGSIZE)  // even with every byte present
        h.payload_len = .max
        #expect(msgValidate(msg(h, payload: 0)) == EMSGSIZE)
    }

    @Test func msgUnknownFlags() {
        for flag in [FOS_MSG_ONEWAY, FOS_MSG_AHEAD, FOS_MSG_AHEAD_OK] {
            let h = fos_msg_hdr(opcode: 1, requestID: 1, payloadLength: 0, flags: UInt32(flag))
            #expect(msgValidate(msg(h)) == 0, "flag \(flag)")
        }
        for bit in 4..<32 {
            let h = fos_msg_hdr(opcode: 1, requestID: 1, payloadLength: 0, flags: UInt32(1) << UInt32(bit))
            #expect(msgValidate(msg(h)) == EPROTO, "flag bit \(bit)")
        }
    }

    // MARK: fos_ctl_validate

    @Test func ctlGood() {
        #expect(ctlValidate(ctl(op: UInt16(FOS_CTL_HELLO), total: 24)) == 0)
        #expect(ctlValidate(ctl(op: UInt16(FOS_CTL_CONNECT), total: 24 + 32)) == 0)
        #expect(ctlValidate(ctl(op: 1, total: ctlMax)) == 0)
    }

    @Test func ctlShortBuffer() {
        let full = ctl(op: 1, total: 24)
        for n in 0..<24 {
            #expect(ctlValidate(Array(full.prefix(n))) == EBADMSG, "length \(n)")
        }
    }

    @Test func ctlWrongVersion() {
        #expect(ctlValidate(ctl(op: 1, total: 24, version: 0)) == EPROTO)
        #expect(ctlValidate(ctl(op: 1, total: 24, version: 2)) == EPROTO)
    }

    @Test func ctlLengthMismatch() {
        #expect(ctlValidate(ctl(op: 1, total: 40, len: 39)) == EBADMSG)
        #expect(ctlValidate(ctl(op: 1, total: 40, len: 41)) == EBADMSG)
        #expect(ctlValidate(ctl(op: 1, total: 40, len: 0)) == EBADMSG)
    }

    @Test func ctlTooLarge() {
        #expect(ctlValidate(ctl(op: 1, total: ctlMax + 1)) == EMSGSIZE)
    }

    @Test func ctlOpZero() {
        #expect(ctlValidate(ctl(op: 0, total: 24)) == EPROTO)
    }

    // MARK: names

    static let goodNames = ["/a", "/sys/fs", "/app/x-1/y", "/sys/name", "/a.b", "/.a", "/..a", "/...", "/~_+-=:@!",
                            "/" + String(repeating: "n", count: 254)]
    static let badNames = ["", "/", "a", "a/b", "//a", "/a/", "/a//b", "/.", "/..", "/a/./b", "/a/../b", "/a/.",
                           "/a/..", "/a b", " /a", "/é", "/ünï", "/日本",
                           "/" + String(repeating: "n", count: 255)]

    @Test(arguments: goodNames)
    func goodName(_ name: String) {
        #expect(validateName(name))
        #expect(nameValidate(Array(name.utf8)) == 0)
    }

    @Test(arguments: badNames)
    func badName(_ name: String) {
        #expect(!validateName(name))
        #expect(nameValidate(Array(name.utf8)) == EINVAL)
    }

    /// Control characters, kept out of the test arguments so they do not end up in the log.
    @Test func controlCharactersInNames() {
        for name in ["/a\t", "/a\nb", "/a\u{7f}", "/a\u{0}b", "/\u{1b}[0m", "/a\r"] {
            #expect(!validateName(name))
            #expect(nameValidate(Array(name.utf8)) == EINVAL)
        }
    }

    @Test func nameLengthBoundary() {
        #expect(validateName("/" + String(repeating: "x", count: 254)))  // 255 bytes
        #expect(!validateName("/" + String(repeating: "x", count: 255)))  // 256 bytes
        let parts = String(repeating: "/ab", count: 85)  // 255 bytes of components
        #expect(parts.utf8.count == 255)
        #expect(validateName(parts))
        #expect(!validateName(parts + "c"))
    }

    @Test func nameEveryByte() {
        let slash = UInt8(ascii: "/"), dot = UInt8(ascii: ".")
        for b in 0...255 {
            let c = UInt8(b)
            let printable = c > 0x20 && c < 0x7f
            // "/c": one component of one byte
            let alone: Int32 = printable && c != slash && c != dot ? 0 : EINVAL
            #expect(nameValidate([slash, c]) == alone, "byte \(b) alone")
            // "/abXcd": '/' splits into two good components, '.' is an ordinary byte here
            let inside: Int32 = printable ? 0 : EINVAL
            #expect(nameValidate(Array("/ab".utf8) + [c] + Array("cd".utf8)) == inside, "byte \(b) inside")
        }
    }

    // MARK: fuzz

    @Test func fuzzMessageAndControlValidation() {
        var rng = SplitMix64(seed: 0x5eed_f05)
        var acceptedMsg = 0
        var acceptedCtl = 0
        for i in 0..<20_000 {
            var buf: [UInt8]
            if i % 2 == 0 {
                // pure noise, short or long
                let len = Int.random(in: 0...(i % 10 == 0 ? 2048 : 64), using: &rng)
                buf = [UInt8](repeating: 0, count: len)
                buf.withUnsafeMutableBytes { b in
                    for k in stride(from: 0, to: len, by: 8) {
                        withUnsafeBytes(of: rng.next()) { r in
                            b.baseAddress!.advanced(by: k).copyMemory(from: r.baseAddress!, byteCount: min(8, len - k))
                        }
                    }
                }
            } else {
                // a well-formed message or datagram with a few fields mangled
                let payload = Int.random(in: 0...48, using: &rng)
                if i % 4 == 1 {
                    buf = msg(fos_msg_hdr(opcode: UInt16.random(in: 1...0x300, using: &rng), requestID: rng.next(),
                                          payloadLength: payload, flags: UInt32.random(in: 0...3, using: &rng)))
                } else {
                    buf = ctl(op: UInt16.random(in: 1...40, using: &rng), total: 24 + payload)
                }
                for _ in 0..<Int.random(in: 0...2, using: &rng) where !buf.isEmpty {
                    switch Int.random(in: 0...3, using: &rng) {
                    case 0: buf[Int.random(in: 0..<min(24, buf.count), using: &rng)] = UInt8.random(in: 0...255, using: &rng)
                    case 1: buf[Int.random(in: 0..<buf.count, using: &rng)] ^= 1 << UInt8.random(in: 0...7, using: &rng)
                    case 2: buf.removeLast(Int.random(in: 0...min(8, buf.count), using: &rng))
                    default: buf.append(UInt8.random(in: 0...255, using: &rng))
                    }
                }
            }
            let m = msgValidate(buf)
            #expect([0, EBADMSG, EPROTO, EMSGSIZE].contains(m))
            if m == 0 {
                acceptedMsg += 1
                let h = buf.withUnsafeBytes { $0.loadUnaligned(as: fos_msg_hdr.self) }
                let ok = h.version == UInt16(FOS_WIRE_VERSION) && h.opcode != 0 &&
                    h.payload_len <= FOS_MAX_PAYLOAD && Int(h.payload_len) + 24 == buf.count &&
                    h.flags & ~UInt32(FOS_MSG_REPLY | FOS_MSG_ONEWAY | FOS_MSG_AHEAD | FOS_MSG_AHEAD_OK) == 0
                #expect(ok, "accepted a bad message: \(buf.prefix(24))")
            }
            let c = ctlValidate(buf)
            #expect([0, EBADMSG, EPROTO, EMSGSIZE].contains(c))
            if c == 0 {
                acceptedCtl += 1
                let h = buf.withUnsafeBytes { $0.loadUnaligned(as: fos_ctl_hdr.self) }
                let ok = h.version == UInt16(FOS_WIRE_VERSION) && h.op != 0 && Int(h.len) == buf.count &&
                    buf.count >= 24 && buf.count <= ctlMax
                #expect(ok, "accepted a bad datagram: \(buf.prefix(24))")
            }
        }
        // The mangled half must reach the accepting paths, or the invariants went unchecked.
        #expect(acceptedMsg > 500)
        #expect(acceptedCtl > 500)
    }
}
