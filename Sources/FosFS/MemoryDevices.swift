// Block devices for tests (and for running the file system without a blk
// server).
//
// `MemoryBlockDevice` stores blocks sparsely (a dictionary; never-written
// blocks read as zeros), so a 16 GiB device that holds a few files costs a few
// MiB. It models a disk with a volatile write cache: a write lands in a pending
// set and only `flush()` makes it durable; `simulatePowerLoss` keeps a chosen
// subset of the pending writes.
//
// `CrashingBlockDevice` wraps any device and keeps writes in its own pending
// list until `flush()`. At a chosen moment (after N write/flush calls, or on
// `crash()`) it "loses power": every flushed write is kept, of the writes since
// the last flush a seeded-random subset reaches the wrapped device — torn per
// block, never within a block — and every later call throws. The wrapped device
// is then the surviving image.
import Synchronization

public enum BlockDeviceError: Error, Equatable, Sendable {
    case outOfRange(block: UInt64, count: Int)
    case badLength(Int)
    case crashed
    /// `writeOutliving(block:data:unchanged:)` was told the device held
    /// bytes it does not.
    case unchangedDiffers(block: UInt64)
}

/// The promise of `writeOutliving(block:data:unchanged:)`, checked against
/// what `device` reads back.
func checkUnchanged(_ device: any BlockDevice, block: UInt64, data: [UInt8], unchanged: Int) async throws {
    guard unchanged > 0 else { return }
    guard unchanged <= data.count else { throw BlockDeviceError.unchangedDiffers(block: block) }
    let have = try await device.read(block: block, count: (unchanged + device.blockSize - 1) / device.blockSize)
    guard have.prefix(unchanged) == data.prefix(unchanged) else { throw BlockDeviceError.unchangedDiffers(block: block) }
}

/// A small deterministic generator (SplitMix64) for seeded tests and crash
/// models.
public struct SeededRandom: RandomNumberGenerator, Sendable {
    private var state: UInt64
    public init(seed: UInt64) { state = seed &+ 0x9E37_79B9_7F4A_7C15 }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

public final class MemoryBlockDevice: BlockDevice {
    public let blockSize: Int
    public let blockCount: UInt64

    private struct State {
        var durable: [UInt64: [UInt8]] = [:]
        var pending: [UInt64: [UInt8]] = [:]
        var reads = 0
        var writes = 0
        var flushes = 0
        var boot: UInt64 = UInt64.random(in: 1...UInt64.max)
    }
    private let state = Mutex(State())

    public var bootID: UInt64 { state.withLock { $0.boot } }

    /// A power loss or reboot happened (unflushed writes may be gone).
    public func newBoot() { state.withLock { $0.boot = UInt64.random(in: 1...UInt64.max) } }

    public init(blockCount: UInt64, blockSize: Int = 4096) {
        self.blockCount = blockCount
        self.blockSize = blockSize
    }

    private func check(_ block: UInt64, _ count: Int) throws {
        guard count >= 0, block <= blockCount, UInt64(count) <= blockCount - block else {
            throw BlockDeviceError.outOfRange(block: block, count: count)
        }
    }

    public func read(block: UInt64, count: Int) async throws -> [UInt8] {
        try check(block, count)
        return state.withLock { s in
            s.reads += 1
            var out = [UInt8](repeating: 0, count: count * blockSize)
            for i in 0..<count {
                let b = block + UInt64(i)
                if let d = s.pending[b] ?? s.durable[b] {
                    out.replaceSubrange(i * blockSize..<(i + 1) * blockSize, with: d)
                }
            }
            return out
        }
    }

    /// Bytes written in place (`writeOutliving(block:offset:bytes:)`) are
    /// a read and a whole write here, the same to the file system: true,
    /// so that tests take the path a node's disk takes.
    public var writesBytesInPlace: Bool { true }

    /// Checks the caller's promise that the device holds `data`'s first
    /// `unchanged` bytes already (a device with a mapping copies only the
    /// rest): every test on this device checks it.
    public func writeOutliving(block: UInt64, data: [UInt8], unchanged: Int) async throws {
        try await checkUnchanged(self, block: block, data: data, unchanged: unchanged)
        try await write(block: block, data: data)
    }

    public func write(block: UInt64, data: [UInt8]) async throws {
        guard data.count % blockSize == 0 else { throw BlockDeviceError.badLength(data.count) }
        let count = data.count / blockSize
        try check(block, count)
        state.withLock { s in
            s.writes += 1
            for i in 0..<count {
                s.pending[block + UInt64(i)] = Array(data[i * blockSize..<(i + 1) * blockSize])
            }
        }
    }

    public func flush() async throws {
        state.withLock { s in
            s.flushes += 1
            for (b, d) in s.pending { s.durable[b] = d }
            s.pending.removeAll()
        }
    }

    public func discard(block: UInt64, count: Int) async throws {
        try check(block, count)
        state.withLock { s in
            for i in 0..<UInt64(count) {
                s.durable[block + i] = nil
                s.pending[block + i] = nil
            }
        }
    }

    /// Power loss: of the unflushed writes keep those `keep` says yes to.
    public func simulatePowerLoss(keep: (UInt64) -> Bool) {
        state.withLock { s in
            for b in s.pending.keys.sorted() where keep(b) { s.durable[b] = s.pending[b] }
            s.pending.removeAll()
            s.boot = UInt64.random(in: 1...UInt64.max)
        }
    }

    /// Blocks currently stored (durable or pending): the memory the device costs.
    public var storedBlocks: Int { state.withLock { Set($0.durable.keys).union($0.pending.keys).count } }
    public var stats: (reads: Int, writes: Int, flushes: Int) {
        state.withLock { ($0.reads, $0.writes, $0.flushes) }
    }
}

public final class CrashingBlockDevice: BlockDevice {
    public let inner: any BlockDevice
    public var blockSize: Int { inner.blockSize }
    public var blockCount: UInt64 { inner.blockCount }

    private struct State {
        var pending: [(UInt64, [UInt8])] = []
        var overlay: [UInt64: [UInt8]] = [:]
        var crashed = false
        var opsLeft: Int?
        var rng: SeededRandom
    }
    private let state: Mutex<State>

    /// - Parameters:
    ///   - crashAfter: crash when this many write/flush calls have been made
    ///     (the call that reaches the count fails); nil = only on `crash()`.
    ///   - seed: chooses which unflushed blocks survive.
    public init(wrapping inner: any BlockDevice, crashAfter: Int? = nil, seed: UInt64) {
        self.inner = inner
        state = Mutex(State(opsLeft: crashAfter, rng: SeededRandom(seed: seed)))
    }

    public var hasCrashed: Bool { state.withLock { $0.crashed } }

    /// Counts one write/flush; returns the writes to push to `inner` if the
    /// crash happens now, or throws if already crashed.
    private func tick() throws -> [(UInt64, [UInt8])]? {
        try state.withLock { s in
            if s.crashed { throw BlockDeviceError.crashed }
            guard let left = s.opsLeft else { return nil }
            if left <= 0 { return Self.crashLocked(&s) }
            s.opsLeft = left - 1
            return nil
        }
    }

    private static func crashLocked(_ s: inout State) -> [(UInt64, [UInt8])] {
        s.crashed = true
        var survivors: [(UInt64, [UInt8])] = []
        for w in s.pending where s.rng.next() & 1 == 0 { survivors.append(w) }
        s.pending.removeAll()
        s.overlay.removeAll()
        return survivors
    }

    public var bootID: UInt64 { inner.bootID }

    private func applyCrash(_ survivors: [(UInt64, [UInt8])]) async throws -> Never {
        for (b, d) in survivors { try await inner.write(block: b, data: d) }
        try await inner.flush()
        (inner as? MemoryBlockDevice)?.newBoot()
        throw BlockDeviceError.crashed
    }

    /// Loses power now (idempotent).
    public func crash() async throws {
        let survivors: [(UInt64, [UInt8])]? = state.withLock { s in s.crashed ? nil : Self.crashLocked(&s) }
        if let survivors {
            (inner as? MemoryBlockDevice)?.newBoot()
            for (b, d) in survivors { try await inner.write(block: b, data: d) }
            try await inner.flush()
        }
    }

    public func read(block: UInt64, count: Int) async throws -> [UInt8] {
        let overlay: [Int: [UInt8]] = try state.withLock { s in
            if s.crashed { throw BlockDeviceError.crashed }
            var o: [Int: [UInt8]] = [:]
            for i in 0..<count { if let d = s.overlay[block + UInt64(i)] { o[i] = d } }
            return o
        }
        var data = try await inner.read(block: block, count: count)
        for (i, d) in overlay { data.replaceSubrange(i * blockSize..<(i + 1) * blockSize, with: d) }
        return data
    }

    /// As MemoryBlockDevice's: a lost write of bytes in place loses the
    /// whole block's write here, which leaves the same bytes.
    public var writesBytesInPlace: Bool { true }

    /// Checks the promise against this device's view (pending writes
    /// included), as MemoryBlockDevice does.
    public func writeOutliving(block: UInt64, data: [UInt8], unchanged: Int) async throws {
        try await checkUnchanged(self, block: block, data: data, unchanged: unchanged)
        try await write(block: block, data: data)
    }

    public func write(block: UInt64, data: [UInt8]) async throws {
        if let survivors = try tick() { try await applyCrash(survivors) }
        guard data.count % blockSize == 0, block + UInt64(data.count / blockSize) <= blockCount else {
            throw BlockDeviceError.outOfRange(block: block, count: data.count / blockSize)
        }
        state.withLock { s in
            for i in 0..<(data.count / blockSize) {
                let d = Array(data[i * blockSize..<(i + 1) * blockSize])
                s.pending.append((block + UInt64(i), d))
                s.overlay[block + UInt64(i)] = d
            }
        }
    }

    public func flush() async throws {
        if let survivors = try tick() { try await applyCrash(survivors) }
        let writes = state.withLock { s in
            let w = s.pending
            s.pending.removeAll()
            s.overlay.removeAll()
            return w
        }
        for (b, d) in writes { try await inner.write(block: b, data: d) }
        try await inner.flush()
    }

    public func discard(block: UInt64, count: Int) async throws {
        // A discard is not modelled as a torn write: it is applied to the
        // pending view (reads return zeros) and reaches `inner` only as zeros
        // at the next flush.
        try await write(block: block, data: [UInt8](repeating: 0, count: count * blockSize))
    }
}
