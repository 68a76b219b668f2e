import CFosCRC
import Testing

@Suite struct ChecksumTests {
    @Test func knownVector() {
        let s = Array("123456789".utf8)
        #expect(fos_crc32c(0, s, s.count) == 0xE306_9283)
        #expect(fos_crc32c_portable(0, s, s.count) == 0xE306_9283)
    }

    /// The CPU's crc32 instruction (where used) and the table agree on every
    /// length and alignment, and when a checksum is continued piecewise.
    @Test func hardwareMatchesTable() {
        var g = SystemRandomNumberGenerator()
        let data = (0..<9000).map { _ in UInt8.random(in: 0...255, using: &g) }
        var mismatches = 0
        data.withUnsafeBytes { b in
            for (start, len) in [(0, 0), (0, 1), (3, 7), (1, 8), (5, 4096), (0, 8999), (7, 1000)] {
                let p = b.baseAddress! + start
                if fos_crc32c(0, p, len) != fos_crc32c_portable(0, p, len) { mismatches += 1 }
                let half = len / 2
                let a = fos_crc32c(0, p, half)
                if fos_crc32c(a, p + half, len - half) != fos_crc32c_portable(0, p, len) { mismatches += 1 }
            }
        }
        #expect(mismatches == 0)
    }
}
