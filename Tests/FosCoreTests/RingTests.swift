import CFosWire
import Dispatch
import Foundation
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A channel's shared memory in-process: the `req` ring of a zeroed,
/// 64-byte-aligned fos_chan_shm with a producer and a consumer view on it.
/// The views live in their own allocations so each thread owns one.
final class RingFixture: @unchecked Sendable {
    let ringBytes: UInt32
    let base: UnsafeMutableRawPointer
    let size: Int
    let ctl: UnsafeMutablePointer<fos_ring_ctl>
    let data: UnsafeMutablePointer<UInt8>
    let producer: UnsafeMutablePointer<fos_ring>
    let consumer: UnsafeMutablePointer<fos_ring>

    init(ringBytes: UInt32 = FOS_RING_MIN_BYTES) {
        precondition(fos_ring_bytes_valid(ringBytes) != 0)
        self.ringBytes = ringBytes
        size = Int(fos_chan_size(ringBytes))
        base = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 64)
        base.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        let off = MemoryLayout<fos_chan_shm>.offset(of: \fos_chan_shm.req)!
        ctl = (base + off).bindMemory(to: fos_ring_ctl.self, capacity: 1)
        data = fos_chan_req_data(base)
        producer = .allocate(capacity: 1)
        producer.initialize(to: fos_ring())
        consumer = .allocate(capacity: 1)
        consumer.initialize(to: fos_ring())
        fos_ring_init(producer, ctl, data, ringBytes)
        fos_ring_init(consumer, ctl, data, ringBytes)
    }

    deinit {
        producer.deallocate()
        consumer.deallocate()
        base.deallocate()
    }

    var cap: Int { Int(ringBytes) }

    @discardableResult
    func write(_ bytes: [UInt8]) -> Int32 {
        bytes.withUnsafeBytes { fos_ring_write2(producer, $0.baseAddress, UInt32($0.count), nil, 0) }
    }

    func write2(_ a: [UInt8], _ b: [UInt8]) -> Int32 {
        a.withUnsafeBytes { pa in
            b.withUnsafeBytes { pb in
                fos_ring_write2(producer, pa.baseAddress, UInt32(pa.count), pb.baseAddress, UInt32(pb.count))
            }
        }
    }

    /// Writes a record of `n` bytes without materialising it (lengths only matter).
    func write(count n: Int) -> Int32 {
        write([UInt8](repeating: 0xab, count: n))
    }

    /// (result, bytes copied out).
    func read(capacity: Int = maxRecord) -> (Int64, [UInt8]) {
        var out = [UInt8](repeating: 0, count: capacity)
        let r = out.withUnsafeMutableBytes { fos_ring_read(consumer, $0.baseAddress, UInt32($0.count)) }
        return (r, r > 0 ? Array(out.prefix(Int(r))) : [])
    }

    /// Places a raw record header [len][check] at ring offset `at` (mod cap).
    func pokeRecordHeader(at: UInt64, len: UInt32, check: UInt32) {
        var rec: (UInt32, UInt32) = (len, check)
        withUnsafeBytes(of: &rec) { p in
            let off = Int(at & UInt64(ringBytes - 1))
            UnsafeMutableRawPointer(data + off).copyMemory(from: p.baseAddress!, byteCount: 8)
        }
    }
}

/// State shared between the producer thread and the test.
private final class ThreadFlags: Sendable {
    let producerError = Atomic<Int64>(0)
    let stop = Atomic<Bool>(false)
}

private func record(_ seq: UInt64, length: Int) -> [UInt8] {
    (0..<length).map { patternByte(seq, $0) }
}

/// Bytes a record of `len` payload bytes occupies in the ring.
private func footprint(_ len: Int) -> Int { 8 + ((len + 7) & ~7) }

@Suite("SPSC ring (fos_ring.h)")
struct RingTests {
    @Test func layoutAndSizes() {
        #expect(MemoryLayout<fos_ring_ctl>.size == 256)
        #expect(MemoryLayout<fos_chan_shm>.size == 576)
        #expect(MemoryLayout<fos_chan_shm>.offset(of: \fos_chan_shm.req) == 64)
        #expect(fos_chan_size(FOS_RING_MIN_BYTES) == 4096 + 2 * UInt64(FOS_RING_MIN_BYTES))
        #expect(fos_ring_bytes_valid(FOS_RING_MIN_BYTES) == 1)
        // FOS_RING_MAX_BYTES (64 MiB; three-factor macro, not imported by Swift)
        let maxBytes: UInt32 = 64 << 20
        #expect(fos_ring_bytes_valid(maxBytes) == 1)
        #expect(fos_ring_bytes_valid(FOS_RING_MIN_BYTES / 2) == 0)
        #expect(fos_ring_bytes_valid(maxBytes * 2) == 0)
        #expect(fos_ring_bytes_valid(FOS_RING_MIN_BYTES + 4096) == 0)  // not a power of two
    }

    @Test func singleMessageRoundTrip() {
        let f = RingFixture()
        let msg = Array("hello, fos ring".utf8)
        #expect(fos_ring_readable(f.consumer) == 0)
        #expect(f.read().0 == 0)
        #expect(f.write(msg) == 0)
        #expect(f.ctl.pointee.tail == UInt64(footprint(msg.count)))
        #expect(fos_ring_readable(f.consumer) == 1)
        #expect(fos_ring_backlog(f.consumer) == UInt64(footprint(msg.count)))
        let (n, got) = f.read()
        #expect(n == Int64(msg.count))
        #expect(got == msg)
        #expect(f.read().0 == 0)
        #expect(fos_ring_backlog(f.consumer) == 0)
        // head only moves on release
        #expect(f.ctl.pointee.head == 0)
        #expect(fos_ring_release(f.consumer) == 0)
        #expect(f.ctl.pointee.head == f.ctl.pointee.tail)
    }

    @Test func twoPieceWriteIsOneRecord() {
        let f = RingFixture()
        let a: [UInt8] = [1, 2, 3]
        let b: [UInt8] = [4, 5, 6, 7, 8]
        #expect(f.write2(a, b) == 0)
        #expect(f.write2([], b) == 0)
        #expect(f.write2(a, []) == 0)
        #expect(f.read().1 == a + b)
        #expect(f.read().1 == b)
        #expect(f.read().1 == a)
        #expect(f.read().0 == 0)
    }

    @Test func manyMessagesWrapAround() throws {
        let f = RingFixture()
        var rng = SplitMix64(seed: 0xf05)
        // Records are slices of one random pool, so each check is a memcmp.
        let maxLen = 3000
        let pool = (0..<(8192 + maxLen)).map { _ in UInt8.random(in: 0...255, using: &rng) }
        func slice(_ seq: UInt64) -> Int { Int((seq &* 613) % 8192) }
        var out = [UInt8](repeating: 0, count: maxRecord)
        var written: UInt64 = 0
        var read: UInt64 = 0
        var lengths: [Int] = []  // by sequence number
        let total: UInt64 = 5000
        while read < total {
            // write a random batch until full or done
            let batch = Int.random(in: 1...64, using: &rng)
            for _ in 0..<batch where written < total {
                let len = Int.random(in: 1...maxLen, using: &rng)
                let split = Int.random(in: 0...len, using: &rng)
                let r = pool.withUnsafeBytes { p in
                    let a = p.baseAddress! + slice(written)
                    return fos_ring_write2(f.producer, a, UInt32(split), a + split, UInt32(len - split))
                }
                if r == -EAGAIN { break }
                try #require(r == 0)
                lengths.append(len)
                written += 1
            }
            // read a random number of them back
            let drain = Int.random(in: 1...64, using: &rng)
            for _ in 0..<drain where read < written {
                let n = out.withUnsafeMutableBytes { fos_ring_read(f.consumer, $0.baseAddress, UInt32($0.count)) }
                try #require(n == Int64(lengths[Int(read)]), "length of record \(read)")
                let same = pool.withUnsafeBytes { p in
                    out.withUnsafeBytes { o in memcmp(p.baseAddress! + slice(read), o.baseAddress!, Int(n)) == 0 }
                }
                try #require(same, "content of record \(read)")
                read += 1
            }
            _ = fos_ring_release(f.consumer)
        }
        #expect(f.read().0 == 0)
        #expect(fos_ring_backlog(f.consumer) == 0)
        // The stream really wrapped the 256 KiB ring many times.
        #expect(f.ctl.pointee.tail > 20 * UInt64(f.cap))
        #expect(f.ctl.pointee.head == f.ctl.pointee.tail)
    }

    /// Moves both views of an empty ring to ring offset `target` (8-aligned).
    private func advance(_ f: RingFixture, to target: Int) throws {
        while true {
            let off = Int(f.producer.pointee.pos % UInt64(f.cap))
            var gap = (target - off + f.cap) % f.cap
            if gap == 0 { return }
            gap = min(gap, 8 + 60_000)
            if gap < 16 { gap += 30_000 }  // cannot place less than one record: go round
            try #require(f.write(count: gap - 8) == 0)
            try #require(f.read().0 == Int64(gap - 8))
            _ = fos_ring_release(f.consumer)
        }
    }

    @Test func recordsAcrossTheEndOfTheRing() throws {
        let f = RingFixture()
        // header fits before the end, payload wraps to the start
        try advance(f, to: f.cap - 24)
        let rec = record(42, length: 100)
        #expect(f.write(rec) == 0)
        #expect(f.producer.pointee.pos % UInt64(f.cap) == 88)
        #expect(f.read().1 == rec)
        _ = fos_ring_release(f.consumer)
        // header is the last 8 bytes, payload entirely at the start
        try advance(f, to: f.cap - 8)
        #expect(f.write(rec) == 0)
        #expect(f.read().1 == rec)
        _ = fos_ring_release(f.consumer)
        // record ends exactly at the end of the ring
        try advance(f, to: f.cap - 112)
        #expect(f.write(rec) == 0)
        #expect(f.producer.pointee.pos % UInt64(f.cap) == 0)
        #expect(f.read().1 == rec)
    }

    @Test func fullRingReturnsEAGAINUntilReleased() {
        let f = RingFixture()
        let len = 1000
        let fits = f.cap / footprint(len)
        for i in 0..<fits {
            #expect(f.write(record(UInt64(i), length: len)) == 0, "record \(i)")
        }
        #expect(f.write(count: len) == -EAGAIN)
        // A smaller record that fits in the slack still goes in.
        let slack = f.cap - fits * footprint(len)
        #expect(slack >= 16)
        #expect(f.write(count: slack) == -EAGAIN)  // one 8-byte word too many
        #expect(f.write(count: slack - 8) == 0)
        #expect(f.write(count: 1) == -EAGAIN)
        // Reading alone frees nothing: the head is published by release.
        #expect(f.read().1 == record(0, length: len))
        #expect(f.write(count: len) == -EAGAIN)
        #expect(fos_ring_release(f.consumer) == 0)
        #expect(f.write(record(UInt64(fits), length: len)) == 0)
        #expect(f.write(count: 1) == -EAGAIN)
        // Everything comes out in order.
        for i in 1..<fits {
            #expect(f.read().1 == record(UInt64(i), length: len))
        }
        #expect(f.read().0 == Int64(slack - 8))
        #expect(f.read().1 == record(UInt64(fits), length: len))
        #expect(f.read().0 == 0)
    }

    @Test func releaseSignalsWaitingProducer() {
        let f = RingFixture()
        while f.write(count: 4096) == 0 {}
        #expect(f.write(count: 4096) == -EAGAIN)
        // Producer announces it waits; no space has appeared.
        #expect(fos_ring_prepare_wait_space(f.producer, 4096) == 0)
        #expect(f.ctl.pointee.producer_waiting == 1)
        // Releasing nothing new wakes nobody.
        #expect(fos_ring_release(f.consumer) == 0)
        #expect(f.read().0 == 4096)
        #expect(fos_ring_release(f.consumer) == 1)
        // Space is now there: the producer's re-check says so.
        #expect(fos_ring_prepare_wait_space(f.producer, 4096) == 1)
        fos_ring_space_done(f.producer)
        #expect(f.ctl.pointee.producer_waiting == 0)
        #expect(f.read().0 == 4096)
        #expect(fos_ring_release(f.consumer) == 0)
        #expect(f.write(count: 4096) == 0)
    }

    @Test func sizeLimits() {
        let f = RingFixture()
        #expect(f.write([]) == -EMSGSIZE)
        #expect(f.write2([], []) == -EMSGSIZE)
        #expect(f.write(count: maxRecord + 1) == -EMSGSIZE)
        #expect(f.write2([UInt8](repeating: 1, count: msgHeaderSize),
                         [UInt8](repeating: 2, count: Int(FOS_MAX_PAYLOAD) + 1)) == -EMSGSIZE)
        #expect(f.ctl.pointee.tail == 0)  // nothing was published
        // The largest record passes, whole.
        let big = record(7, length: maxRecord)
        #expect(f.write(big) == 0)
        let (n, got) = f.read(capacity: maxRecord)
        #expect(n == Int64(maxRecord))
        #expect(got == big)
        // Huge lengths cannot overflow the size arithmetic.
        #expect(fos_ring_write2(f.producer, f.data, UInt32.max, f.data, UInt32.max) == -EMSGSIZE)
    }

    @Test func outBufferTooSmallIsRejectedWithoutConsuming() {
        let f = RingFixture()
        let rec = record(3, length: 100)
        #expect(f.write(rec) == 0)
        #expect(f.read(capacity: 99).0 == -Int64(EPROTO))
        #expect(f.consumer.pointee.pos == 0)
        #expect(f.read(capacity: 100).1 == rec)
    }

    // MARK: hostile producer (the consumer never trusts tail or the records)

    @Test func tailBeyondCapacityIsEPROTO() {
        let f = RingFixture()
        #expect(f.write(count: 16) == 0)
        #expect(f.read().0 == 16)
        let pos = f.consumer.pointee.pos
        // A well-formed record sits at pos: only the bound on tail can refuse it.
        f.pokeRecordHeader(at: pos, len: 8, check: 8 ^ FOS_RING_CHECK)
        f.ctl.pointee.tail = pos + UInt64(f.cap) + 8
        #expect(fos_ring_readable(f.consumer) == -EPROTO)
        #expect(f.read().0 == -Int64(EPROTO))
        f.ctl.pointee.tail = UInt64.max
        #expect(f.read().0 == -Int64(EPROTO))
    }

    @Test func tailMovingBackwardsIsEPROTO() {
        let f = RingFixture()
        #expect(f.write(count: 16) == 0)
        #expect(f.write(count: 16) == 0)
        #expect(f.read().0 == 16)
        #expect(f.read().0 == 16)
        let pos = f.consumer.pointee.pos
        #expect(pos == 48)
        f.pokeRecordHeader(at: pos, len: 8, check: 8 ^ FOS_RING_CHECK)  // looks valid
        f.ctl.pointee.tail = pos - 8
        #expect(f.read().0 == -Int64(EPROTO))
        f.ctl.pointee.tail = 0
        #expect(f.read().0 == -Int64(EPROTO))
    }

    @Test func wrongCheckWordIsEPROTO() {
        let f = RingFixture()
        #expect(f.write(count: 32) == 0)
        f.pokeRecordHeader(at: 0, len: 32, check: 32 ^ FOS_RING_CHECK ^ 1)
        #expect(f.read().0 == -Int64(EPROTO))
        // A zeroed (never written) record is rejected too.
        let g = RingFixture()
        g.ctl.pointee.tail = 64
        #expect(g.read().0 == -Int64(EPROTO))
    }

    @Test func recordLongerThanPublishedBytesIsEPROTO() {
        let f = RingFixture()
        f.pokeRecordHeader(at: 0, len: 100, check: 100 ^ FOS_RING_CHECK)
        f.ctl.pointee.tail = 16  // only 8 payload bytes published, 104 needed
        #expect(f.read().0 == -Int64(EPROTO))
        // One 8-byte word short of 8 + align8(100) = 112. (A fresh consumer: a
        // consumer that has seen a tail keeps it until it has consumed it.)
        let g = RingFixture()
        g.pokeRecordHeader(at: 0, len: 100, check: 100 ^ FOS_RING_CHECK)
        g.ctl.pointee.tail = 104
        #expect(g.read().0 == -Int64(EPROTO))
        // The same record with all its bytes published is fine.
        let h = RingFixture()
        h.pokeRecordHeader(at: 0, len: 100, check: 100 ^ FOS_RING_CHECK)
        h.ctl.pointee.tail = 112
        #expect(h.read().0 == 100)
    }

    @Test func partialRecordHeaderIsEPROTO() {
        let f = RingFixture()
        f.pokeRecordHeader(at: 0, len: 1, check: 1 ^ FOS_RING_CHECK)
        f.ctl.pointee.tail = 4
        #expect(f.read().0 == -Int64(EPROTO))
    }

    @Test func oversizedRecordLengthIsEPROTO() {
        let f = RingFixture()
        let len = UInt32(maxRecord + 1)
        f.pokeRecordHeader(at: 0, len: len, check: len ^ FOS_RING_CHECK)
        f.ctl.pointee.tail = UInt64(f.cap)
        #expect(f.read().0 == -Int64(EPROTO))
        let g = RingFixture()
        g.pokeRecordHeader(at: 0, len: 0, check: FOS_RING_CHECK)  // "valid" check, zero length
        g.ctl.pointee.tail = 8
        #expect(g.read().0 == -Int64(EPROTO))
    }

    // MARK: hostile consumer (the producer never trusts head)

    @Test func headBeyondTailIsEPROTOForProducer() {
        let f = RingFixture()
        while f.write(count: 1000) == 0 {}
        let pos = f.producer.pointee.pos
        f.ctl.pointee.head = pos + 8
        #expect(f.write(count: 1000) == -EPROTO)
        f.ctl.pointee.head = UInt64.max
        #expect(f.write(count: 1000) == -EPROTO)
    }

    @Test func headMovingBackwardsIsEPROTOForProducer() {
        let f = RingFixture()
        while f.write(count: 1000) == 0 {}
        for _ in 0..<10 { #expect(f.read().0 == 1000) }
        _ = fos_ring_release(f.consumer)
        // the producer sees the new head when it needs space again
        while f.write(count: 1000) == 0 {}
        let seen = f.producer.pointee.other
        #expect(seen == 10 * 1008)
        f.ctl.pointee.head = seen - 8
        #expect(f.write(count: 1000) == -EPROTO)
    }

    // MARK: sleep protocol

    @Test func sleepProtocol() {
        let f = RingFixture()
        #expect(fos_ring_consumer_asleep(f.producer) == 0)
        #expect(fos_ring_prepare_sleep(f.consumer) == 0)  // empty: may sleep
        #expect(f.ctl.pointee.consumer_sleeping == 1)
        #expect(fos_ring_consumer_asleep(f.producer) == 1)
        #expect(f.write(count: 8) == 0)
        #expect(fos_ring_prepare_sleep(f.consumer) == 1)  // data arrived: must not sleep
        fos_ring_wake_done(f.consumer)
        #expect(f.ctl.pointee.consumer_sleeping == 0)
        #expect(fos_ring_consumer_asleep(f.producer) == 0)
        #expect(f.read().0 == 8)
        #expect(fos_ring_prepare_sleep(f.consumer) == 0)
        fos_ring_wake_done(f.consumer)
        // A corrupt tail must not let the consumer sleep on it silently.
        f.ctl.pointee.tail = UInt64(f.cap) * 4
        #expect(fos_ring_prepare_sleep(f.consumer) == 1)
    }

    // MARK: two threads

    @Test(.timeLimit(.minutes(1)))
    func producerThreadConsumerThreadInOrder() throws {
        let f = RingFixture()
        let count: UInt64 = 1_000_000
        let shared = ThreadFlags()
        let finished = DispatchSemaphore(value: 0)

        let producer = Thread {
            defer { finished.signal() }
            var buf = [UInt8](repeating: 0, count: 40)
            var spins = 0
            var seq: UInt64 = 0
            while seq < count {
                let extra = Int(seq % 25)
                buf.withUnsafeMutableBytes { $0.storeBytes(of: seq, toByteOffset: 0, as: UInt64.self) }
                for i in 0..<extra { buf[8 + i] = patternByte(seq, i) }
                let r = buf.withUnsafeBytes { fos_ring_write2(f.producer, $0.baseAddress, UInt32(8 + extra), nil, 0) }
                if r == 0 {
                    seq += 1
                    spins = 0
                } else if r == -EAGAIN {
                    if shared.stop.load(ordering: .relaxed) { shared.producerError.store(-1, ordering: .relaxed); return }
                    spins += 1
                    if spins & 255 == 0 { sched_yield() } else { fos_cpu_relax() }
                } else {
                    shared.producerError.store(Int64(r), ordering: .relaxed)
                    return
                }
            }
        }
        producer.start()
        defer {
            shared.stop.store(true, ordering: .relaxed)
            finished.wait()
        }

        let deadline = DispatchTime.now().uptimeNanoseconds + 20_000_000_000
        var out = [UInt8](repeating: 0, count: 64)
        var expected: UInt64 = 0
        var spins = 0
        var sinceRelease = 0
        while expected < count {
            let n = out.withUnsafeMutableBytes { fos_ring_read(f.consumer, $0.baseAddress, UInt32($0.count)) }
            if n > 0 {
                let seq = out.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
                try #require(seq == expected, "out of order")
                let extra = Int(seq % 25)
                try #require(n == Int64(8 + extra), "length of \(seq)")
                for i in 0..<extra where out[8 + i] != patternByte(seq, i) {
                    Issue.record("content of \(seq) at \(i)")
                    return
                }
                expected += 1
                sinceRelease += 1
                if sinceRelease == 64 { _ = fos_ring_release(f.consumer); sinceRelease = 0 }
                spins = 0
                continue
            }
            try #require(n == 0, "consumer saw a corrupt ring: \(n)")
            _ = fos_ring_release(f.consumer)
            sinceRelease = 0
            try #require(shared.producerError.load(ordering: .relaxed) == 0, "producer failed")
            spins += 1
            if spins & 255 == 0 {
                try #require(DispatchTime.now().uptimeNanoseconds < deadline, "timed out at \(expected)")
                sched_yield()
            } else {
                fos_cpu_relax()
            }
        }
        _ = fos_ring_release(f.consumer)
        #expect(f.read().0 == 0)
        #expect(shared.producerError.load(ordering: .relaxed) == 0)
        #expect(f.ctl.pointee.head == f.ctl.pointee.tail)
    }
}
