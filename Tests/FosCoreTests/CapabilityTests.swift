import CFosWire
import FosCore
import Testing

private func hex16(_ v: UInt64) -> String {
    let s = String(v, radix: 16)
    return String(repeating: "0", count: 16 - s.count) + s
}

private func flipped(_ c: Capability, bit: Int) -> Capability {
    var b = c.bytes
    if bit < 64 { b.0 ^= 1 << UInt64(bit) } else { b.1 ^= 1 << UInt64(bit - 64) }
    return Capability(bytes: b)
}

@Suite("Capability")
struct CapabilityTests {
    @Test func randomDrawsDifferAndAreNeverNone() {
        var seen = Set<Capability>()
        var seenHalves = Set<UInt64>()
        for _ in 0..<10_000 {
            let c = Capability.random()
            #expect(!c.isNone)
            #expect(c != .none)
            seen.insert(c)
            seenHalves.insert(c.bytes.0)
            seenHalves.insert(c.bytes.1)
        }
        #expect(seen.count == 10_000)
        // Both halves are random, not only one of them.
        #expect(seenHalves.count == 20_000)
    }

    @Test func noneIsAllZero() {
        #expect(Capability.none.isNone)
        #expect(Capability.none.bytes == (0, 0))
        #expect(Capability(bytes: (0, 0)) == .none)
        #expect(!Capability(bytes: (0, 1)).isNone)
        #expect(!Capability(bytes: (1 << 63, 0)).isNone)
    }

    @Test func equalityForSameBytes() {
        let c = Capability.random()
        let d = Capability(bytes: c.bytes)
        #expect(c == d)
        #expect(d == c)
        #expect(c.hashValue == d.hashValue)
        #expect(Capability(bytes: (1, 2)) == Capability(bytes: (1, 2)))
    }

    @Test func anySingleBitDifferenceIsUnequal() {
        for base in [Capability.none, Capability(bytes: (.max, .max)), Capability.random()] {
            for bit in 0..<128 {
                let other = flipped(base, bit: bit)
                #expect(other != base, "bit \(bit) of \(base.bytes)")
                #expect(base != other, "bit \(bit), reversed")
                #expect(flipped(other, bit: bit) == base)
            }
        }
        // Halves are not interchangeable.
        #expect(Capability(bytes: (1, 2)) != Capability(bytes: (2, 1)))
    }

    @Test func wireRoundTrip() {
        for c in [Capability.none, Capability(bytes: (.max, 0)), Capability(bytes: (0x0102_0304_0506_0708, 0x1112_1314_1516_1718))]
            + (0..<100).map({ _ in Capability.random() }) {
            #expect(Capability(wire: c.wire) == c)
        }
    }

    @Test func wireIsTheKeyBytesInOrder() {
        let c = Capability(bytes: (0x0807_0605_0403_0201, 0x100f_0e0d_0c0b_0a09))  // little-endian host
        let w = withUnsafeBytes(of: c.wire) { Array($0) }
        #expect(w == Array(1...16))
        var e = fos_name_entry()
        e.key = c.wire
        #expect(Capability(wire: e.key) == c)
    }

    @Test func descriptionNeverShowsTheKey() {
        #expect(Capability.none.description == "cap(none)")
        for _ in 0..<1000 {
            let c = Capability.random()
            let d = c.description.lowercased()
            #expect(d.hasPrefix("cap("))
            let full = withUnsafeBytes(of: c.wire) { $0.map { hex16(UInt64($0)).suffix(2) }.joined() }
            #expect(full.count == 32)
            #expect(!d.contains(full))
            for half in [c.bytes.0, c.bytes.1] {
                #expect(!d.contains(hex16(half)))
                #expect(!d.contains(String(half, radix: 16)))
                #expect(!d.contains(String(half)))
            }
            // At most a short hint of the key: fewer than 8 hex digits in all.
            #expect(d.filter(\.isHexDigit).count < 8, "\(d)")
        }
    }
}
