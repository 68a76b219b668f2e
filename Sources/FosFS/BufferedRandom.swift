import CFosSys

/// The kernel's random numbers, fetched 256 bytes at a time.
///
/// Why: every create draws one (its inode's generation), and with
/// SystemRandomNumberGenerator that was a getrandom system call each time,
/// 3% of a create's time in the member. The numbers are the kernel's all
/// the same, only fetched ahead.
struct BufferedRandom: RandomNumberGenerator {
    private var pool = [UInt64](repeating: 0, count: 32)
    private var taken = 32

    mutating func next() -> UInt64 {
        if taken == pool.count {
            refill()
            taken = 0
        }
        defer { taken += 1 }
        return pool[taken]
    }

    private mutating func refill() {
        let failed = pool.withUnsafeMutableBytes { fos_sys_random($0.baseAddress, $0.count) } != 0
        if failed {
            var system = SystemRandomNumberGenerator()
            for k in pool.indices { pool[k] = system.next() }
        }
    }
}
