import FosCore
import Testing

private func member(_ node: UInt64, _ mailbox: UInt64, core: Int32 = -1, queue: UInt64 = 0) -> Candidate {
    Candidate(addr: MailboxAddress(node: node, mailbox: mailbox), core: core, queueLength: queue)
}

private let anyClient = ClientHint(node: 1, core: 0, key: 0)

/// `n` choices in a row, as indexes, with one rotor.
private func choices(_ policy: NamePolicy, _ members: [Candidate], client: ClientHint = anyClient,
                     n: Int, rotor: UInt64 = 0) -> [Int] {
    var r = rotor
    return (0..<n).map { _ in PolicyChooser.choose(policy, members, client: client, rotor: &r) ?? -1 }
}

private func stickyChoice(_ members: [Candidate], key: UInt64, rotor: UInt64 = 0) -> MailboxAddress? {
    var r = rotor
    guard let i = PolicyChooser.choose(.sticky, members, client: ClientHint(node: 1, core: 0, key: key), rotor: &r)
    else { return nil }
    return members[i].addr
}

@Suite("Name policies")
struct PolicyTests {
    @Test(arguments: NamePolicy.allCases)
    func emptyMemberListChoosesNothing(_ policy: NamePolicy) {
        var rotor: UInt64 = 5
        #expect(PolicyChooser.choose(policy, [], client: anyClient, rotor: &rotor) == nil)
    }

    @Test(arguments: NamePolicy.allCases)
    func choiceIsAlwaysInRangeAndAdvancesTheRotor(_ policy: NamePolicy) {
        var rng = SplitMix64(seed: UInt64(policy.rawValue))
        for n in 1...9 {
            let members = (0..<n).map {
                member(UInt64.random(in: 1...3, using: &rng), UInt64($0) + 1, core: Int32.random(in: -1...7, using: &rng),
                       queue: UInt64.random(in: 0...3, using: &rng))
            }
            var rotor = UInt64.max - 3  // wraps around without trapping
            for k in 0..<20 {
                let client = ClientHint(node: UInt64.random(in: 1...3, using: &rng), core: Int32.random(in: -1...7, using: &rng),
                                        key: rng.next())
                let before = rotor
                let i = PolicyChooser.choose(policy, members, client: client, rotor: &rotor)
                #expect(i.map { (0..<n).contains($0) } == true, "\(policy) \(n) members, call \(k)")
                #expect(rotor == before &+ 1)
            }
        }
    }

    @Test(arguments: [NamePolicy.roundRobin, .custom])
    func roundRobinCyclesEvenly(_ policy: NamePolicy) {
        let members = (1...5).map { member(1, $0, queue: $0 * 10) }  // load is ignored
        let picks = choices(policy, members, n: 500)
        #expect(Array(picks.prefix(10)) == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4])
        for i in 0..<5 {
            #expect(picks.filter { $0 == i }.count == 100)
        }
        // every window of 5 consecutive choices covers every member once
        for w in stride(from: 0, to: 500, by: 5) {
            #expect(Set(picks[w..<(w + 5)]).count == 5)
        }
    }

    @Test func leastLoadedPicksTheMinimum() {
        let members = [member(1, 1, queue: 7), member(1, 2, queue: 3), member(1, 3, queue: 0), member(1, 4, queue: 9)]
        #expect(Set(choices(.leastLoaded, members, n: 40)) == [2])
        let single = [member(1, 1, queue: 100)]
        #expect(Set(choices(.leastLoaded, single, n: 5)) == [0])
        let huge = [member(1, 1, queue: .max), member(1, 2, queue: .max - 1)]
        #expect(Set(choices(.leastLoaded, huge, n: 6)) == [1])
    }

    @Test func leastLoadedRotatesAmongTies() {
        let members = [member(1, 1, queue: 5), member(1, 2, queue: 1), member(1, 3, queue: 3), member(1, 4, queue: 1)]
        let picks = choices(.leastLoaded, members, n: 400)
        #expect(Set(picks) == [1, 3])
        #expect(picks.filter { $0 == 1 }.count == 200)
        #expect(picks.filter { $0 == 3 }.count == 200)
        // all equal: behaves like round-robin
        let equal = (1...4).map { member(1, $0, queue: 2) }
        let eq = choices(.leastLoaded, equal, n: 400)
        for i in 0..<4 { #expect(eq.filter { $0 == i }.count == 100) }
    }

    @Test func nearestPrefersSameCoreThenCloserCoreThenOtherNodes() {
        let client = ClientHint(node: 1, core: 4, key: 0)
        let other = member(2, 1, core: 4)
        let far = member(1, 2, core: 0)
        let near = member(1, 3, core: 5)
        let same = member(1, 4, core: 4)
        let unknown = member(1, 5, core: -1)
        func pick(_ ms: [Candidate]) -> Set<MailboxAddress> {
            Set(choices(.nearest, ms, client: client, n: 12).map { ms[$0].addr })
        }
        #expect(pick([other, far, near, same, unknown]) == [same.addr])
        #expect(pick([other, far, near, unknown]) == [near.addr])
        #expect(pick([other, far, unknown]) == [far.addr])
        // a same-node member of unknown core still beats another node
        #expect(pick([other, unknown]) == [unknown.addr])
        #expect(pick([other]) == [other.addr])
        // two at the same distance share the load
        let below = member(1, 6, core: 3)
        let picks = choices(.nearest, [far, near, below], client: client, n: 300)
        #expect(picks.filter { $0 == 1 }.count == 200)  // starts 0 and 1 land on index 1
        #expect(picks.filter { $0 == 2 }.count == 100)
        #expect(!picks.contains(0))
        // a client of unknown core: same node (any core) over other nodes
        let blind = ClientHint(node: 1, core: -1, key: 0)
        #expect(!choices(.nearest, [other, far, member(2, 9, core: 4)], client: blind, n: 9).contains(0))
        #expect(Set(choices(.nearest, [other, far, member(2, 9, core: 4)], client: blind, n: 9)) == [1])
    }

    @Test func stickyIsStableAcrossCallsAndOrder() {
        var rng = SplitMix64(seed: 77)
        let members = (1...6).map { member($0 % 2 + 1, $0 * 3, core: Int32($0)) }
        for _ in 0..<200 {
            let key = rng.next()
            let first = stickyChoice(members, key: key)
            #expect(first != nil)
            for rotor: UInt64 in [1, 2, 3, 99] {
                #expect(stickyChoice(members, key: key, rotor: rotor) == first)
            }
            var shuffled = members
            shuffled.shuffle(using: &rng)
            #expect(stickyChoice(shuffled, key: key) == first)
            #expect(stickyChoice(members.reversed(), key: key) == first)
        }
    }

    @Test(arguments: [false, true])
    func stickySpreadsKeys(sequentialKeys: Bool) {
        var rng = SplitMix64(seed: 1234)
        let members = (1...4).map { member(1, $0) }
        var counts: [MailboxAddress: Int] = [:]
        for k in 0..<1000 {
            let key = sequentialKeys ? UInt64(k) : rng.next()
            counts[stickyChoice(members, key: key)!, default: 0] += 1
        }
        #expect(counts.count == 4)
        for m in members {
            #expect((counts[m.addr] ?? 0) > 100, "\(m.addr): \(counts[m.addr] ?? 0) of 1000")
        }
        // members on different nodes with the same mailbox ids are distinct members too
        let spread = (1...4).map { member($0, 1) }
        var c2: [MailboxAddress: Int] = [:]
        for k in 0..<1000 { c2[stickyChoice(spread, key: UInt64(k) &* 0x9e37)!, default: 0] += 1 }
        for m in spread { #expect((c2[m.addr] ?? 0) > 100, "\(m.addr): \(c2[m.addr] ?? 0) of 1000") }
    }

    @Test func stickyRemovalMovesOnlyTheRemovedMembersKeys() {
        var rng = SplitMix64(seed: 99)
        let members = (1...5).map { member(1, 100 + $0) }
        let keys = (0..<2000).map { _ in rng.next() }
        let before = keys.map { stickyChoice(members, key: $0)! }
        let gone = members[2].addr
        let remaining = members.filter { $0.addr != gone }
        var moved = 0
        for (k, was) in zip(keys, before) {
            let now = stickyChoice(remaining, key: k)!
            if was == gone {
                moved += 1
                #expect(now != gone)
            } else {
                #expect(now == was, "key \(k) moved from \(was) to \(now)")
            }
        }
        #expect(moved > 200)  // the removed member did own keys
        // Adding it back restores the original assignment exactly.
        #expect(keys.map { stickyChoice(remaining + [members[2]], key: $0)! } == before)
    }

    @Test func policyNames() {
        #expect(NamePolicy(name: "round-robin") == .roundRobin)
        #expect(NamePolicy(name: "least-loaded") == .leastLoaded)
        #expect(NamePolicy(name: "nearest") == .nearest)
        #expect(NamePolicy(name: "sticky") == .sticky)
        #expect(NamePolicy(name: "custom") == .custom)
        for p in NamePolicy.allCases {
            #expect(NamePolicy(name: p.description) == p)
        }
        for junk in ["", "Round-Robin", "round_robin", "roundrobin", "least_loaded", "LEAST-LOADED", " sticky",
                     "sticky ", "near", "random", "1", "custom\u{0}"] {
            #expect(NamePolicy(name: junk) == nil, "\(junk.debugDescription)")
        }
    }

    @Test func policyWireValues() {
        #expect(NamePolicy.roundRobin.rawValue == 1)
        #expect(NamePolicy.leastLoaded.rawValue == 2)
        #expect(NamePolicy.nearest.rawValue == 3)
        #expect(NamePolicy.sticky.rawValue == 4)
        #expect(NamePolicy.custom.rawValue == 5)
        #expect(NamePolicy(rawValue: 0) == nil)
        #expect(NamePolicy(rawValue: 6) == nil)
    }
}
