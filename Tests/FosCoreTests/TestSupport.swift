import CFosWire

/// Deterministic generator for the fuzz and pattern tests: a failure
/// reproduces with the same seed.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}

/// A byte of the test pattern for record `seq` at offset `i`.
@inline(__always)
func patternByte(_ seq: UInt64, _ i: Int) -> UInt8 {
    UInt8(truncatingIfNeeded: seq &* 131 &+ UInt64(i) &* 7 &+ (seq >> 8))
}

/// Size in bytes of the header of a channel message.
let msgHeaderSize = MemoryLayout<fos_msg_hdr>.size
/// Largest ring record: FOS_MAX_PAYLOAD + the message header (FOS_RING_MAX_RECORD).
let maxRecord = Int(FOS_MAX_PAYLOAD) + msgHeaderSize
