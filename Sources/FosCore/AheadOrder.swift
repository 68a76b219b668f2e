import CFosWire

/// Requests sent ahead (FOS_MSG_AHEAD): the sender goes on without waiting
/// for the reply, so the server must serve such a request before anything
/// that may depend on it, from any sender. What may depend on it is
/// whatever reaches this loop after it was sent: the sender's own next
/// request, or a request of another process the sender told (a pipe, a
/// signal), which may be sent ahead too. When the loop takes a request for
/// a service that orders ahead, it first takes the AHEAD records waiting at
/// the head of that service's other rings: for an ordinary request all of
/// them (they were published before it was read, or they were not sent
/// before it), for one sent ahead those stamped earlier (its sender may
/// have heard from theirs, not the other way round: FOS_MSG_AHEAD_STAMP_SHIFT),
/// earliest first. An ordinary request's task waits until every request
/// taken ahead before it has been answered. Requests taken ahead are served
/// one at a time in the order taken, by one task (`serveInTurn`), each
/// answered (or its answer held, below) before the next starts.
///
/// An AHEAD record behind an ordinary one in the same ring cannot matter:
/// a sender waits for an ordinary request's answer before it sends again
/// (the shim does; a client that does not loses only its own ordering).
///
/// "Answered" is when the reply is in the ring, or held: a sender that
/// finds a member gone replays only the requests it has no reply for, and
/// none taken after them could have been served before them but its own.
///
/// One settling for a run (`answerInOrder`): a service may leave the work
/// of a request taken ahead unsettled (the fs member does not commit it),
/// as long as the next request taken ahead is the same sender's. Its
/// answer is then held, and the last of the run settles them all (one
/// commit) before any of the answers goes. A sender that finds its member
/// gone replays the whole run, in order, and whatever was taken after the
/// run, any other sender's, was served after the run was settled. An
/// ordinary request settles too, before its answer goes. The ordinary
/// request a sender sent right after its run (waiting in its ring as the
/// run's last one is answered) may follow in turn (`takeFollower`): the
/// run's last answer is held too, the follower's own commit settles them
/// all, and whatever is taken after it waits for its answer, as for one
/// taken ahead. (tar's create of its next file: one commit a file, not two.)
extension EventLoop {
    /// An answer held until the service is settled.
    struct HeldAnswer {
        var channelID: UInt64
        var opcode: UInt16
        var requestID: UInt64
        var reply: Reply
    }

    /// Sends `reply` to `req` (served in turn among requests taken ahead,
    /// `turn`, if `inTurn`), or holds it while the run it ends is the same
    /// sender's.
    func answerInOrder(_ req: Request, _ reply: Reply, oneway: Bool, service: MailboxService, turn: UInt64,
                       inTurn: Bool) async {
        var reply = reply
        if req.ahead {
            let next = turn &+ 1
            // The sender's next ones may be in its ring, not yet taken (the
            // loop had no turn while this one was served), and so may the
            // ordinary request it sent after them.
            if st.aheadTaken == next, let e = st.entries[req.channelID] {
                takeAheadRecords(e)
                if st.aheadTaken == next { takeFollower(e, service) }
            }
            if st.aheadTaken > next, st.aheadSenders[Int(next - st.aheadSendersFirst)] == req.channelID {
                if !oneway {
                    st.heldAnswers.append(HeldAnswer(channelID: req.channelID, opcode: req.opcode,
                                                     requestID: req.requestID, reply: reply))
                }
                aheadAnswered()
                return
            }
        }
        if !service.aheadSettled || !st.heldAnswers.isEmpty {
            // Until settled with nothing left unsettled: work another task
            // did while this one waited is covered too, before its answer
            // (held meanwhile) goes with the others.
            var settled = true
            while settled && !service.aheadSettled {
                settled = await service.settleAhead()
            }
            // Work that could not be settled is lost, and so is anything
            // that saw it: every answer says EIO instead (the shim reports
            // an ahead one for its file at the next write, fsync or close).
            let held = st.heldAnswers
            st.heldAnswers.removeAll(keepingCapacity: true)
            for var h in held {
                if !settled && h.reply.status == 0 { h.reply = Reply(status: EIO) }
                if let e = st.entries[h.channelID] { sendReply(e, h.opcode, h.requestID, h.reply) }
            }
            if !settled && reply.status == 0 { reply = Reply(status: EIO) }
        }
        if !oneway, let e = st.entries[req.channelID] {
            sendReply(e, req.opcode, req.requestID, reply)
        }
        if inTurn { aheadAnswered() }
    }

    /// Takes the ordinary request at the head of `e`'s ring in turn, if the
    /// service lets it follow its sender's run (`followsInTurn`): the run's
    /// answers are then held until its own work settles them (one commit,
    /// not two), and whatever is taken after it waits for its answer.
    func takeFollower(_ e: Entry, _ service: MailboxService) {
        var h = fos_msg_hdr()
        guard e.channel.peekHeader(&h), h.flags & UInt32(FOS_MSG_AHEAD | FOS_MSG_REPLY) == 0,
              service.followsInTurn(h.opcode, channel: e.channel.id) else { return }
        // Its dispatch makes it a follower: the last one taken and not yet
        // answered is its sender's (the run's last, answering now), unless
        // its sweep took another sender's first.
        if receiveOne(e) == true { e.channel.release() }
    }

    /// Whether `h` is a request sent ahead (not an answer).
    static func isAheadRequest(_ h: fos_msg_hdr) -> Bool {
        h.flags & UInt32(FOS_MSG_AHEAD) != 0 && h.flags & UInt32(FOS_MSG_REPLY) == 0
    }

    /// The stamp of a request sent ahead now (FOS_MSG_AHEAD_STAMP_SHIFT).
    static func aheadStamp() -> Int32 {
        Int32(bitPattern: UInt32(truncatingIfNeeded: monotonicNanos() >> UInt64(FOS_MSG_AHEAD_STAMP_SHIFT)))
    }

    /// Takes the AHEAD records at the heads of the rings of a service that
    /// orders ahead but `skip`'s, earliest stamp first: all of them, or
    /// those stamped before `stamp`. The earliest of all heads is taken
    /// each time (a sender's own stamps rise), so none of them needs a
    /// sweep of its own: nothing left is stamped before it.
    func takeAhead(except skip: Entry?, before stamp: Int32?) {
        // Stamps compare by age on our clock: a client's is never in the
        // future, so a record up to 68 s old (2^32 × 16 ns) still counts
        // as older than a new one. The clock is read only once there is a
        // head to compare (most sweeps find none).
        var now: UInt32?
        func age(_ s: Int32) -> UInt32 {
            if now == nil { now = UInt32(bitPattern: Self.aheadStamp()) }
            return now! &- UInt32(bitPattern: s)
        }
        var limit: UInt32?
        // Bounded: every pass takes a record, and a sweep takes no more
        // than the shims' FOS_FS_AHEAD_MAX each could have sent.
        for _ in 0..<4096 {
            var first: (entry: Entry, age: UInt32)?
            var h = fos_msg_hdr()
            for prio in st.byPriority {
                for e in prio where e !== skip && e.channel.side == .server && e.service?.ordersAhead == true {
                    guard e.channel.peekHeader(&h), Self.isAheadRequest(h) else { continue }
                    if limit == nil, let stamp { limit = age(stamp) }
                    let a = age(h.status)
                    if let limit, a <= limit { continue }
                    if first.map({ a > $0.age }) ?? true { first = (e, a) }
                }
            }
            guard let e = first?.entry else { return }
            guard receiveOne(e, sweep: false) == true else { return }
            e.channel.release()
        }
    }

    /// Dispatches the AHEAD records at the head of `e`'s ring, each after
    /// those of other rings stamped before it; how many.
    @discardableResult
    func takeAheadRecords(_ e: Entry) -> Int {
        var n = 0
        var h = fos_msg_hdr()
        // Bounded: a shim has at most FOS_FS_AHEAD_MAX in flight; a client
        // that sends more only delays its own.
        while n < 256, e.channel.peekHeader(&h), Self.isAheadRequest(h) {
            guard let got = receiveOne(e) else { return n }
            if !got { break }
            n += 1
        }
        if n > 0 { e.channel.release() }
        return n
    }

    /// A request taken in turn (ahead, or following), waiting to be served.
    struct InTurnRequest {
        var request: Request
        var oneway: Bool
        var service: MailboxService
        var turn: UInt64
    }

    /// Serves the requests taken in turn, one at a time in the order taken,
    /// until none is left (more may be taken meanwhile, by `answerInOrder`
    /// among others). Each starts once those before it were answered, as a
    /// task each waiting in `aheadTurn` did.
    func serveInTurn() async {
        var served = 0
        while st.inTurnFirst < st.inTurn.count {
            let next = st.inTurn[st.inTurnFirst]
            st.inTurnFirst += 1
            if st.inTurnFirst == st.inTurn.count {
                st.inTurn.removeAll(keepingCapacity: true)
                st.inTurnFirst = 0
            } else if st.inTurnFirst >= 256 {
                st.inTurn.removeFirst(st.inTurnFirst)
                st.inTurnFirst = 0
            }
            await aheadTurn(next.turn)
            await serve(next.request, oneway: next.oneway, service: next.service, ordered: true, turn: next.turn,
                        inTurn: true)
            // A long run served without a pause would keep the loop from
            // its rings (and the member's own calls' answers) meanwhile.
            served += 1
            if served % 32 == 0 { await Task.yield() }
        }
        st.inTurnServed = false
    }

    /// Returns once `turn` requests taken ahead have been answered.
    func aheadTurn(_ turn: UInt64) async {
        if st.aheadAnswered >= turn { return }
        await withCheckedContinuation { c in st.aheadWaiters.append((turn, c)) }
    }

    /// A request taken ahead was answered: wake whoever waited for it.
    func aheadAnswered() {
        st.aheadAnswered &+= 1
        if st.aheadAnswered == st.aheadTaken {
            st.aheadSenders.removeAll(keepingCapacity: true)
            st.aheadSendersFirst = st.aheadAnswered
        } else if st.aheadAnswered - st.aheadSendersFirst >= 256 {
            st.aheadSenders.removeFirst(256)
            st.aheadSendersFirst &+= 256
        }
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

    /// Whether every request taken in turn and not yet answered is
    /// `channel`'s (none of another sender waits in `serveInTurn`).
    public func inTurnOnlyFrom(_ channel: UInt64) -> Bool {
        let first = Int(st.aheadAnswered &- st.aheadSendersFirst)
        guard first >= 0, first <= st.aheadSenders.count else { return st.aheadAnswered == st.aheadTaken }
        return st.aheadSenders[first...].allSatisfy { $0 == channel }
    }

    /// Takes every AHEAD record waiting at the head of the rings of
    /// services that order ahead, but `channel`'s, and returns once each
    /// has been answered (with all taken before them). For a request of
    /// `channel`'s that must see what others published until now; not
    /// from a request taken in turn (those it waits for are served after
    /// it).
    public func takeAheadOfOthers(than channel: UInt64) async {
        takeAhead(except: st.entries[channel], before: nil)
        await aheadTurn(st.aheadTaken)
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
