import CFosWire

/// Requests sent ahead (FOS_MSG_AHEAD): the sender goes on without waiting
/// for the reply, so the server must serve such a request before anything
/// that may depend on it, from any sender. What may depend on it is
/// whatever reaches this loop after it was sent: the sender's own next
/// request, or a request of another process the sender told (a pipe, a
/// signal). When the loop takes an ordinary request for a service that
/// orders ahead, it first takes every AHEAD record waiting at the head of
/// that service's other rings (they were published before the ordinary
/// one was read, or they were not sent before it), and the ordinary
/// request's task waits until every request taken ahead so far has been
/// answered. Requests taken ahead are served one at a time in the order
/// taken, each answered before the next starts.
///
/// An AHEAD record behind an ordinary one in the same ring cannot matter:
/// a sender waits for an ordinary request's answer before it sends again
/// (the shim does; a client that does not loses only its own ordering).
///
/// "Answered" is when the reply is in the ring: a sender that finds a
/// member gone replays only the requests it has no reply for, and none
/// taken after them could have been served before them.
extension EventLoop {
    /// Takes the AHEAD records at the head of every ring of a service that
    /// orders ahead but `skip`'s.
    func takeAhead(except skip: Entry) {
        // Not again from a request taken here (it takes nothing new).
        guard !st.takingAhead else { return }
        st.takingAhead = true
        defer { st.takingAhead = false }
        for prio in st.byPriority {
            for e in prio where e !== skip && e.channel.side == .server && e.service?.ordersAhead == true {
                takeAheadRecords(e)
            }
        }
    }

    /// Dispatches the AHEAD records at the head of `e`'s ring; how many.
    @discardableResult
    func takeAheadRecords(_ e: Entry) -> Int {
        var n = 0
        var h = fos_msg_hdr()
        // Bounded: a shim has at most FOS_FS_AHEAD_MAX in flight; a client
        // that sends more only delays its own.
        while n < 256, e.channel.peekHeader(&h), h.flags & UInt32(FOS_MSG_AHEAD) != 0, h.flags & UInt32(FOS_MSG_REPLY) == 0 {
            let len: Int
            do {
                len = try e.channel.receive(into: rxBuffer)
            } catch {
                drop(e, reason: "corrupt ring")
                return n
            }
            if len == 0 { break }
            n += 1
            st.received &+= 1
            dispatch(e, UnsafeRawBufferPointer(rebasing: rxBuffer[0..<len]))
        }
        if n > 0 { e.channel.release() }
        return n
    }

    /// Returns once `turn` requests taken ahead have been answered.
    func aheadTurn(_ turn: UInt64) async {
        if st.aheadAnswered >= turn { return }
        await withCheckedContinuation { c in st.aheadWaiters.append((turn, c)) }
    }

    /// A request taken ahead was answered: wake whoever waited for it.
    func aheadAnswered() {
        st.aheadAnswered &+= 1
        guard !st.aheadWaiters.isEmpty else { return }
        let done = st.aheadAnswered
        var i = 0
        while i < st.aheadWaiters.count {
            if st.aheadWaiters[i].turn <= done {
                st.aheadWaiters.swapAt(i, st.aheadWaiters.count - 1)
                st.aheadWaiters.removeLast().continuation.resume()
            } else {
                i += 1
            }
        }
    }

    /// fosd says the peer closed `e` (or died). What it sent ahead is
    /// still served: its sender was told it was done. The channel goes
    /// once that is answered (the service keeps its state, such as the
    /// sender's groups, until then).
    func closedByPeer(_ e: Entry) {
        guard e.channel.side == .server, e.service?.ordersAhead == true, takeAheadRecords(e) > 0 else {
            return drop(e, reason: "closed by peer", tellNode: false)
        }
        let turn = st.aheadTaken
        let id = e.channel.id
        Task(executorPreference: self) { [self] in
            await aheadTurn(turn)
            if let e = st.entries[id] { drop(e, reason: "closed by peer", tellNode: false) }
        }
    }
}
