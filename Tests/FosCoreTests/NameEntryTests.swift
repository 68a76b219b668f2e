import CFosWire
import FosCore
import Testing

private func sample(_ name: String = "/app/echo", key: Capability = Capability(bytes: (0x1122_3344_5566_7788, 0x99aa_bbcc_ddee_ff00)),
                    policy: NamePolicy = .leastLoaded) -> NameEntry {
    NameEntry(name: name, addr: MailboxAddress(node: 0xabcdef, mailbox: 42), key: key, policy: policy,
              flags: UInt32(FOS_NAME_INTERNAL), pid: 4321, core: 3, queueLength: 17, handled: 1_000_001)
}

private func encoded(_ e: NameEntry, withKey: Bool = true) -> [UInt8] {
    var out = [UInt8]()
    e.encode(into: &out, withKey: withKey)
    return out
}

private func decodeOne(_ bytes: [UInt8], offset: Int = 0) -> (NameEntry?, Int) {
    var off = offset
    let e = bytes.withUnsafeBytes { NameEntry.decode($0, offset: &off) }
    return (e, off)
}

/// A LIST reply: u32 count, 4 bytes of padding, then the entries.
private func list(_ entries: [NameEntry], count: UInt32? = nil) -> [UInt8] {
    var out = [UInt8]()
    withUnsafeBytes(of: count ?? UInt32(entries.count)) { out.append(contentsOf: $0) }
    out += [0, 0, 0, 0]
    for e in entries { e.encode(into: &out, withKey: false) }
    return out
}

/// Rewrites the fixed-size header of an encoded entry.
private func patched(_ bytes: [UInt8], at offset: Int = 0, _ change: (inout fos_name_entry) -> Void) -> [UInt8] {
    var b = bytes
    b.withUnsafeMutableBytes { p in
        var w = p.loadUnaligned(fromByteOffset: offset, as: fos_name_entry.self)
        change(&w)
        p.storeBytes(of: w, toByteOffset: offset, as: fos_name_entry.self)
    }
    return b
}

@Suite("NameEntry wire form")
struct NameEntryTests {
    @Test func roundTripWithKey() throws {
        for policy in NamePolicy.allCases {
            let e = sample(policy: policy)
            let b = encoded(e)
            #expect(b.count == 72 + 16)  // "/app/echo" is 9 bytes, padded to 16
            let (d, off) = decodeOne(b)
            let got = try #require(d)
            #expect(got == e)
            #expect(got.key == e.key)
            #expect(off == b.count)
        }
    }

    @Test func encodedHeaderFields() {
        let e = sample()
        let w = encoded(e).withUnsafeBytes { $0.loadUnaligned(as: fos_name_entry.self) }
        #expect(w.addr.node == 0xabcdef)
        #expect(w.addr.mailbox == 42)
        #expect(w.policy == NamePolicy.leastLoaded.rawValue)
        #expect(w.flags == UInt32(FOS_NAME_INTERNAL))
        #expect(w.pid == 4321)
        #expect(w.core == 3)
        #expect(w.queue_len == 17)
        #expect(w.handled == 1_000_001)
        #expect(w.name_len == 9)
        #expect(w.reserved0 == 0 && w.reserved1 == 0)
        #expect(Capability(wire: w.key) == e.key)
        #expect(Array(encoded(e)[72..<81]) == Array("/app/echo".utf8))
        #expect(encoded(e)[81...].allSatisfy { $0 == 0 })  // padding is zero
    }

    @Test func withoutKeyZeroesTheKey() throws {
        let e = sample()
        let b = encoded(e, withKey: false)
        let keyOffset = MemoryLayout<fos_name_entry>.offset(of: \fos_name_entry.key)!
        #expect(b[keyOffset..<(keyOffset + 16)].allSatisfy { $0 == 0 })
        // the key bytes appear nowhere in the encoding
        let keyBytes = withUnsafeBytes(of: e.key.wire) { Array($0) }
        #expect(!b.indices.dropLast(15).contains { Array(b[$0..<($0 + 16)]) == keyBytes })
        let got = try #require(decodeOne(b).0)
        #expect(got.key == .none)
        var expected = e
        expected.key = .none
        #expect(got == expected)
        #expect(got != e)
    }

    @Test func padsToEightBytes() throws {
        for len in 1...40 {
            let name = "/" + String(repeating: "q", count: len)
            var out: [UInt8] = [1, 2, 3, 4, 5, 6, 7, 8]  // already 8-aligned prefix
            sample(name).encode(into: &out)
            #expect(out.count % 8 == 0)
            #expect(out.count == 8 + 72 + ((len + 1 + 7) & ~7))
            let (d, off) = decodeOne(out, offset: 8)
            #expect(try #require(d).name == name)
            #expect(off == out.count)
        }
    }

    @Test func longestNameRoundTrips() throws {
        let name = "/" + String(repeating: "z", count: 254)
        let got = try #require(decodeOne(encoded(sample(name))).0)
        #expect(got.name == name)
    }

    @Test func listRoundTrip() throws {
        let entries = [
            sample("/a", key: .none, policy: .roundRobin),
            sample("/sys/name", key: .none, policy: .custom),
            NameEntry(name: "/app/x-1/y", addr: MailboxAddress(node: 2, mailbox: .max), key: .none, policy: .sticky),
            sample("/" + String(repeating: "m", count: 200), key: .none, policy: .nearest),
            sample("/abcdefg", key: .none, policy: .leastLoaded),  // 8 bytes: no padding
        ]
        #expect(try NameEntry.decodeList(list(entries)) == entries)
        #expect(try NameEntry.decodeList(list([])) == [])
        // keys never travel in a list encoded without them
        let keyed = entries.map { var e = $0; e.key = Capability.random(); return e }
        #expect(try NameEntry.decodeList(list(keyed)) == entries)
    }

    @Test func truncatedEntryIsRejected() {
        let b = encoded(sample())
        for n in 0..<(72 + 9) {
            #expect(decodeOne(Array(b.prefix(n))).0 == nil, "\(n) bytes")
        }
        // out-of-range offsets
        #expect(decodeOne(b, offset: b.count).0 == nil)
        #expect(decodeOne(b, offset: -1).0 == nil)
        #expect(decodeOne(b, offset: Int.min).0 == nil)
        #expect(decodeOne(b, offset: .max).0 == nil)
        // a failed decode leaves the offset alone
        #expect(decodeOne(Array(b.prefix(50)), offset: 0).1 == 0)
    }

    @Test func truncatedListThrows() {
        let entries = [sample("/a/b"), sample("/c"), sample("/d/e/f")]
        let full = list(entries)
        let lastPadding = 8 - 6  // "/d/e/f" is 6 bytes
        for n in 0..<(full.count - lastPadding) {
            #expect(throws: FosError.self, "\(n) bytes") { try NameEntry.decodeList(Array(full.prefix(n))) }
        }
        // a count larger than the entries present
        #expect(throws: FosError.self) { try NameEntry.decodeList(list(entries, count: 4)) }
        #expect(throws: FosError.self) { try NameEntry.decodeList(list(entries, count: .max)) }
        #expect(throws: FosError.self) { try NameEntry.decodeList(list([], count: (1 << 20) + 1)) }
    }

    @Test(arguments: [UInt32(0), 6, 7, 0x100, .max])
    func badPolicyIsRejected(_ policy: UInt32) {
        let b = patched(encoded(sample())) { $0.policy = policy }
        #expect(decodeOne(b).0 == nil)
        #expect(throws: FosError.self) { try NameEntry.decodeList(list([sample()]).prefix(8) + b) }
    }

    @Test func nameLengthBeyondBufferIsRejected() {
        let b = encoded(sample())  // 9 name bytes + 7 padding
        #expect(decodeOne(patched(b) { $0.name_len = 17 }).0 == nil)
        #expect(decodeOne(patched(b) { $0.name_len = .max }).0 == nil)
        #expect(decodeOne(patched(b) { $0.name_len = 256 }).0 == nil)
        // within the buffer but over FOS_MAX_NAME
        var long = encoded(sample("/" + String(repeating: "k", count: 254)))
        long += [UInt8](repeating: UInt8(ascii: "k"), count: 16)
        #expect(decodeOne(patched(long) { $0.name_len = 256 }).0 == nil)
        #expect(decodeOne(patched(long) { $0.name_len = 255 }).0 != nil)
    }

    @Test func invalidNameIsRejected() {
        for bad in ["abc", "/a/../b", "/a b", "//", "/é", "/a/"] {
            var out = [UInt8]()
            sample(bad).encode(into: &out)  // encode does not check: the decoder must
            #expect(decodeOne(out).0 == nil, "\(bad)")
        }
        // empty name
        #expect(decodeOne(patched(encoded(sample())) { $0.name_len = 0 }).0 == nil)
        // invalid UTF-8 in the name bytes
        var b = encoded(sample("/abc"))
        b[73] = 0xff
        #expect(decodeOne(b).0 == nil)
        b[73] = 0x00
        #expect(decodeOne(b).0 == nil)
    }

    @Test func fuzzDecodeListNeverCrashes() {
        var rng = SplitMix64(seed: 0xdec0de)
        let good = list([sample("/a/b", key: .none), sample("/c", key: .none), sample("/x-y/z", key: .none)])
        var accepted = 0
        for i in 0..<5_000 {
            var b: [UInt8]
            if i % 2 == 0 {
                let len = Int.random(in: 0...400, using: &rng)
                b = (0..<len).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
                if len >= 4, i % 4 == 0 {  // plausible counts, so the entry decoder runs
                    b[0] = UInt8.random(in: 0...3, using: &rng); b[1] = 0; b[2] = 0; b[3] = 0
                }
            } else {
                b = good
                for _ in 0..<Int.random(in: 1...3, using: &rng) {
                    switch Int.random(in: 0...3, using: &rng) {
                    case 0: b[Int.random(in: 0..<b.count, using: &rng)] = UInt8(truncatingIfNeeded: rng.next())
                    case 1: b[Int.random(in: 0..<b.count, using: &rng)] ^= 1 << UInt8.random(in: 0...7, using: &rng)
                    case 2: b.removeLast(Int.random(in: 0...min(40, b.count - 1), using: &rng))
                    default: b += [UInt8](repeating: UInt8(truncatingIfNeeded: rng.next()), count: Int.random(in: 1...16, using: &rng))
                    }
                }
            }
            if let entries = try? NameEntry.decodeList(b) {
                accepted += 1
                let count = b.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }
                #expect(entries.count == Int(count))
                for e in entries {
                    #expect(validateName(e.name), "\(e.name.debugDescription)")
                    #expect(e.name.utf8.count <= Int(FOS_MAX_NAME))
                }
            }
            // single-entry decoding at arbitrary offsets
            var off = Int.random(in: -8...(b.count + 8), using: &rng)
            let start = off
            let e = b.withUnsafeBytes { NameEntry.decode($0, offset: &off) }
            if let e {
                #expect(validateName(e.name))
                #expect(off > start && off <= (b.count + 7) & ~7)
            } else {
                #expect(off == start)
            }
        }
        #expect(accepted > 100)  // the mutated lists did reach the accepting path
    }
}
