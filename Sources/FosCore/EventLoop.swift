import CFosSys
import CFosWire
import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A request as a handler sees it: copied out of shared memory and validated.
public struct Request: Sendable {
    public var opcode: UInt16
    public var requestID: UInt64
    public var payload: [UInt8]
    /// Kernel credentials of the sender, attested by fosd.
    public var sender: PeerInfo
    public var channelID: UInt64
    public var mailbox: UInt64
    /// Taken as sent ahead (FOS_MSG_AHEAD): its answer may wait until the
    /// service is settled (`MailboxService.settleAhead`, AheadOrder.swift).
    public var ahead = false
    /// Served in turn with those taken ahead (a follower too: AheadOrder.swift).
    public var inTurn = false
}

/// A reply: an errno (0 for success) and bytes.
public struct Reply: Sendable {
    public var status: Int32
    public var payload: [UInt8]
    public init(status: Int32 = 0, payload: [UInt8] = []) {
        self.status = status
        self.payload = payload
    }
    /// Throws `FosError.remote` unless the status is 0.
    public func checked() throws -> [UInt8] {
        if status != 0 { throw FosError.remote(Errno(rawValue: status)) }
        return payload
    }
}

/// Order in which a server serves its mailboxes (the paper's §3.4.1):
/// responses to its own calls first, then fleet-internal, then external.
public enum MailboxPriority: Int, Sendable, CaseIterable {
    case response = 0, `internal` = 1, external = 2
}

/// What a mailbox does with its messages.
public protocol MailboxService: AnyObject, Sendable {
    /// Called on the loop thread; the reply is sent when the returned value is ready.
    func handle(_ request: Request) async throws -> Reply
    /// A sender connected (with its read-only stats page for the name service).
    func connected(_ channel: Channel, statsFD: CInt)
    /// A channel to this mailbox closed.
    func disconnected(_ channel: Channel)
    /// The channel's client attached a bulk region (before using it in a message).
    func attached(_ region: Region, to channel: Channel)
    /// Whether this service serves requests in order with those sent ahead
    /// (FOS_MSG_AHEAD, see AheadOrder.swift): if so, every request it gets
    /// waits for the ones taken ahead before it.
    var ordersAhead: Bool { get }
    /// Whether this AHEAD-flagged request is taken as one (called on the
    /// loop thread as it is taken from the ring); if not, it is served as
    /// an ordinary request.
    func takesAhead(_ request: Request) -> Bool
    /// Whether replies on `channel` say FOS_MSG_AHEAD_OK.
    func welcomesAhead(on channel: Channel) -> Bool
    /// Whether everything answered so far would outlive this process
    /// (requests taken ahead may leave their work for a later one to make
    /// so: AheadOrder.swift).
    var aheadSettled: Bool { get }
    /// Makes it so; false if it cannot (the answers waiting then say EIO).
    func settleAhead() async -> Bool
    /// Whether an ordinary request with this opcode that follows a run of
    /// its sender's requests taken ahead may be taken in turn with them
    /// (AheadOrder.swift): one served promptly, never waiting for another
    /// client, that settles the run with its own work. `channel` is the
    /// sender's.
    func followsInTurn(_ opcode: UInt16, channel: UInt64) -> Bool
}

extension MailboxService {
    public func connected(_ channel: Channel, statsFD: CInt) { closeFD(statsFD) }
    public func disconnected(_ channel: Channel) {}
    public func attached(_ region: Region, to channel: Channel) {}
    public var ordersAhead: Bool { false }
    public func takesAhead(_ request: Request) -> Bool { false }
    public func welcomesAhead(on channel: Channel) -> Bool { false }
    public var aheadSettled: Bool { true }
    public func settleAhead() async -> Bool { true }
    public func followsInTurn(_ opcode: UInt16, channel: UInt64) -> Bool { false }
}

/// A service that takes validated messages straight from the ring, on the
/// loop thread, without a task per message (the blk server's fast path). It
/// answers later with `EventLoop.reply`.
public protocol ImmediateService: MailboxService {
    func receive(_ header: fos_msg_hdr, _ payload: UnsafeRawBufferPointer, on channel: Channel, loop: EventLoop)
}

extension ImmediateService {
    public func handle(_ request: Request) async throws -> Reply { Reply(status: ENOSYS) }
}

/// The per-process event loop: polls every channel's ring in priority order,
/// runs the process's tasks (it is their executor), sleeps on eventfds after
/// a short spin. Everything in `LoopState` is touched on the loop thread only.
///
/// `@unchecked Sendable`: cross-thread state is `jobs` (Mutex), `sleeping`,
/// `stopFlag` (Atomic) and `wakeFD` (immutable); `st` and `spareJobs` are
/// confined to the loop thread, which every entry point reaches through
/// `onLoop` first.
public final class EventLoop: SerialExecutor, TaskExecutor, @unchecked Sendable {
    let control: ControlConnection
    let wakeFD: CInt
    let epollFD: CInt
    private let jobs = Mutex<[UnownedJob]>([])
    private let sleeping = Atomic<Bool>(false)
    private let stopFlag = Atomic<Bool>(false)
    private let loopThread = Atomic<UInt>(0)
    /// Channels owned by other threads: the loop only marks them closed.
    private let detached = Mutex<[UInt64: WeakChannel]>([:])
    /// How long the loop spins on empty rings before it sleeps.
    public let spinNanos: UInt64
    /// Whether the spin gives the core to whoever else wants it (sched_yield)
    /// on each look at the clock (fos-fuse: `FosRuntime.connect`).
    let spinYields: Bool
    var stats: UnsafeMutablePointer<fos_stats_page>?

    final class Entry {
        let channel: Channel
        let priority: MailboxPriority
        let service: MailboxService?
        var outbound: [[UInt8]] = []
        var outboundBytes = 0
        var statsFD: CInt = -1
        var inflight = 0
        let immediate: ImmediateService?
        var regions: [UInt32: Region] = [:]
        init(channel: Channel, priority: MailboxPriority, service: MailboxService?) {
            self.channel = channel
            self.priority = priority
            self.service = service
            self.immediate = service as? ImmediateService
        }
    }

    enum MailboxKind {
        case service(MailboxService, MailboxPriority)
        case raw(@Sendable (Channel) -> Void)
    }

    struct Pending {
        var continuation: CheckedContinuation<Reply, Error>
        var channelID: UInt64
        var deadline: UInt64
    }

    struct LoopState {
        var entries: [UInt64: Entry] = [:]
        var byPriority: [[Entry]] = [[], [], []]
        var mailboxes: [UInt64: MailboxKind] = [:]
        var pending: [UInt64: Pending] = [:]
        /// Calls that timed out, by request id and channel: their late
        /// replies are dropped quietly (bounded, oldest forgotten first).
        var expired: [UInt64: UInt64] = [:]
        var expiredOrder: [UInt64] = []
        var nextRequestID: UInt64 = 1
        var nextDeadline: UInt64 = .max
        var backlogged: Set<UInt64> = []
        /// Client channels to close once no call waits on them any more.
        var retiring: Set<UInt64> = []
        var closeObservers: [UInt64: [@Sendable (Channel) -> Void]] = [:]
        var controlEOF: [@Sendable () -> Void] = []
        var controlGone = false
        var pollers: [() -> Bool] = []
        /// A poller's descriptor for epoll, and whether the loop reads it
        /// empty on waking (an eventfd) or leaves that to the poller.
        var pollerFDs: [(fd: CInt, drain: Bool)] = []
        /// Requests taken AHEAD so far, and how many of them were answered
        /// (in the order taken); tasks waiting for a number of answers.
        var aheadTaken: UInt64 = 0
        var aheadAnswered: UInt64 = 0
        var aheadWaiters: [(turn: UInt64, continuation: CheckedContinuation<Void, Never>)] = []
        /// The channel of each request taken ahead and not yet answered, in
        /// turn order from `aheadSendersFirst`; answers held until the
        /// service is settled, in the order they were due.
        var aheadSenders: [UInt64] = []
        var aheadSendersFirst: UInt64 = 0
        var heldAnswers: [HeldAnswer] = []
        /// Requests taken in turn and not yet served, in turn order from
        /// `inTurnFirst`, and whether a task is serving them (`serveInTurn`).
        var inTurn: [InTurnRequest] = []
        var inTurnFirst = 0
        var inTurnServed = false
        var queueLength: UInt64 = 0
        var handled: UInt64 = 0
        var received: UInt64 = 0
        var rejected: UInt64 = 0
    }
    var st = LoopState()
    /// Every channel's receive ring in `st.byPriority`, rebuilt whenever that
    /// changes (so none outlives its channel's mapping). A spinning loop looks
    /// here first (`anyInput`): walking the entries themselves cost a retain
    /// and a release per channel per pass, most of an idle member's time.
    private var ringControls: [UnsafeMutablePointer<fos_ring_ctl>] = []
    private var controlReady = true
    let rxBuffer = UnsafeMutableRawBufferPointer.allocate(
        byteCount: Int(FOS_MAX_PAYLOAD) + MemoryLayout<fos_msg_hdr>.size, alignment: 16)

    init(control: ControlConnection, spinNanos: UInt64, spinYields: Bool) throws {
        self.control = control
        self.spinNanos = spinNanos
        self.spinYields = spinYields
        wakeFD = try sys(fos_sys_eventfd())
        epollFD = try sys(fos_sys_epoll_create())
        try sys(fos_sys_epoll_add(epollFD, wakeFD, UInt32(FOS_EPOLLIN), 0))
        try sys(fos_sys_epoll_add(epollFD, control.fd, UInt32(FOS_EPOLLIN), 1))
        control.loopWake.store(wakeFD, ordering: .relaxed)
    }

    deinit {
        rxBuffer.deallocate()
        closeFD(wakeFD)
        closeFD(epollFD)
    }

    // MARK: Executor

    public func enqueue(_ job: consuming ExecutorJob) {
        let j = UnownedJob(job)
        jobs.withLock { $0.append(j) }
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        if sleeping.load(ordering: .relaxed) { _ = fos_sys_eventfd_signal(wakeFD) }
    }

    public func asUnownedSerialExecutor() -> UnownedSerialExecutor {
        UnownedSerialExecutor(ordinary: self)
    }

    public func asUnownedTaskExecutor() -> UnownedTaskExecutor {
        UnownedTaskExecutor(ordinary: self)
    }

    public func isSameExclusiveExecutionContext(other: EventLoop) -> Bool { self === other }

    public func checkIsolated() {
        precondition(onLoopThread, "not on the fos event loop")
    }

    var onLoopThread: Bool { loopThread.load(ordering: .relaxed) == currentThreadID() }

    /// Runs `body` on the loop thread (as a task preferring this executor).
    public func onLoop<T: Sendable>(_ body: @Sendable () async throws -> T) async throws -> T {
        try await withTaskExecutorPreference(self) { try await body() }
    }

    /// Starts a task on the loop (for handlers and background work).
    @discardableResult
    public func spawn(_ body: @escaping @Sendable () async -> Void) -> Task<Void, Never> {
        Task(executorPreference: self) { await body() }
    }

    // MARK: Running

    /// Runs the loop on the calling thread until `stop()`.
    public func run() {
        loopThread.store(currentThreadID(), ordering: .relaxed)
        var idleSince = monotonicNanos()
        var iter: UInt = 0
        var idlePasses: UInt = 0
        while !stopFlag.load(ordering: .relaxed) {
            iter &+= 1
            var did = runJobs()
            // Every 16th pass looks at every ring whatever the shared
            // indices say: a peer may write the head index too, and hide
            // its ring from `anyInput` (not from `sleep`, which would then
            // keep finding it ready).
            if iter & 15 == 0 || anyInput() { did = pollChannels() || did }
            for p in st.pollers where p() { did = true }
            // The control socket costs a syscall: look at it when epoll said
            // so, and otherwise only every few hundred passes.
            // Live load for fosctl and the least-loaded policy: a few plain stores.
            if iter & 255 == 0 { publishStats() }
            if controlReady || control.pending.load(ordering: .relaxed) || (iter & 511 == 0 && !st.controlGone) {
                controlReady = false
                did = pollControl() || did
            }
            if !st.backlogged.isEmpty { flushBacklog() }
            if !st.retiring.isEmpty { dropRetired() }
            idlePasses = did ? 0 : idlePasses &+ 1
            // The clock costs more than a pass over idle rings: it is read
            // when the loop falls idle and on every 16th pass (the spin's
            // end, the calls' deadlines), not on every pass.
            if idlePasses != 1 && iter & 15 != 0 {
                if idlePasses > 0 { fos_cpu_relax() }
                continue
            }
            let now = monotonicNanos()
            if st.nextDeadline <= now { expireCalls(now) }
            if idlePasses <= 1 {
                idleSince = now
                continue
            }
            if now &- idleSince < spinNanos {
                if spinYields {
                    sched_yield()
                    continue
                }
                // No sched_yield here for servers: it let a FUSE request's
                // caller on this core in sooner (a 4 KiB write through the
                // mount 33-52 µs instead of 53-106), but cost make -j2 under
                // fos-run 15%: a compiler then shared the fs member's core,
                // and requests waited for its time slice.
                fos_cpu_relax()
                continue
            }
            publishStats()
            sleep(now: now)
            idleSince = monotonicNanos()
        }
    }

    /// Starts the loop on a thread of its own (clients; servers call `run`).
    ///
    /// A pthread, not Foundation's Thread: FosCore stays free of Foundation,
    /// whose loading alone costs fos-run several milliseconds per start.
    public func startThread() {
        var attr = pthread_attr_t()
        pthread_attr_init(&attr)
        defer { pthread_attr_destroy(&attr) }
        pthread_attr_setstacksize(&attr, 1 << 20)
        pthread_attr_setdetachstate(&attr, Int32(PTHREAD_CREATE_DETACHED))
        var tid = pthread_t()
        // The thread owns one reference to the loop until run() returns.
        let me = Unmanaged.passRetained(self).toOpaque()
        let r = pthread_create(&tid, &attr, { arg in
            let loop = Unmanaged<EventLoop>.fromOpaque(arg!).takeRetainedValue()
            fos_sys_name_thread("fos-loop")
            loop.run()
            return nil
        }, me)
        guard r == 0 else {
            Unmanaged<EventLoop>.fromOpaque(me).release()
            fatalError("cannot start the fos event loop thread: \(String(cString: strerror(r)))")
        }
        while loopThread.load(ordering: .relaxed) == 0 { usleep(50) }
    }

    public func stop() {
        stopFlag.store(true, ordering: .relaxed)
        _ = fos_sys_eventfd_signal(wakeFD)
    }

    /// The buffer the queue and a running batch trade (loop thread only):
    /// taking a batch swaps it in, so that no pass allocates a new queue.
    private var spareJobs: [UnownedJob] = []

    private func runJobs() -> Bool {
        var batch: [UnownedJob] = []
        swap(&batch, &spareJobs)
        jobs.withLock { q in
            if !q.isEmpty { swap(&q, &batch) }
        }
        defer {
            batch.removeAll(keepingCapacity: true)
            swap(&batch, &spareJobs)
        }
        if batch.isEmpty { return false }
        // As the task executor, not isolated to the loop as a serial
        // executor: every job here is nonisolated code that prefers this
        // executor (no actor runs on the loop), and a job started "isolated"
        // hopped off at once to the generic executor, which sent it back
        // through `enqueue` for another pass: two jobs per request.
        for j in batch {
            j.runSynchronously(on: asUnownedTaskExecutor())
        }
        return true
    }

    private func sleep(now: UInt64) {
        sleeping.store(true, ordering: .sequentiallyConsistent)
        defer { sleeping.store(false, ordering: .relaxed) }
        var ready = jobs.withLock { !$0.isEmpty }
        if !ready {
            for p in st.byPriority {
                for e in p where e.channel.prepareSleep() { ready = true }
            }
        }
        if !ready {
            // Messages queued behind a full ring: the peer's release wakes
            // us once it has freed the space (as a message of its would).
            for id in st.backlogged {
                guard let e = st.entries[id], let first = e.outbound.first else { continue }
                if e.channel.prepareWaitSpace(bytes: first.count) { ready = true }
            }
        }
        if !ready {
            var timeout: Int32 = 1000
            if st.nextDeadline != .max {
                timeout = st.nextDeadline <= now ? 0 : Int32(min(1000, (st.nextDeadline - now) / 1_000_000 + 1))
            }
            // And within 10 ms anyway, whatever the calls' deadlines: another
            // thread sending on the channel (Channel.send) shares the flag
            // and may clear it; a peer that reads nothing wakes us no faster.
            if !st.backlogged.isEmpty { timeout = min(timeout, 10) }
            var data = [UInt64](repeating: 0, count: 64)
            var events = [UInt32](repeating: 0, count: 64)
            let n = fos_sys_epoll_wait(epollFD, &data, &events, 64, timeout)
            if n > 0 {
                for i in 0..<Int(n) {
                    switch data[i] {
                    case 0: _ = fos_sys_eventfd_drain(wakeFD)
                    case 1: controlReady = true
                    case let tag where tag & EventLoop.channelTag == 0 && tag & EventLoop.pollerTag != 0:
                        // A poller's eventfd: drain it; its poll runs in the next pass.
                        let i = Int(tag & ~EventLoop.pollerTag)
                        if i < st.pollerFDs.count, st.pollerFDs[i].drain { _ = fos_sys_eventfd_drain(st.pollerFDs[i].fd) }
                    case let tag:
                        if let e = st.entries[tag & ~EventLoop.channelTag] { _ = fos_sys_eventfd_drain(e.channel.waitFD) }
                    }
                }
            }
        }
        for p in st.byPriority { for e in p { e.channel.wakeDone() } }
        for id in st.backlogged { st.entries[id]?.channel.spaceDone() }
    }

    // MARK: Channels

    /// Whether any ring holds records not yet taken and released.
    private func anyInput() -> Bool {
        ringControls.withUnsafeBufferPointer { rings in
            for r in rings where fos_ring_ctl_pending(r) != 0 { return true }
            return false
        }
    }

    private func rebuildRingControls() {
        ringControls = st.byPriority.flatMap { $0.map { $0.channel.rxControl } }
    }

    /// Polls rings: responses first, then internal, then external.
    private func pollChannels() -> Bool {
        var did = false
        for prio in 0..<3 {
            // A higher class with work preempts lower ones for this pass.
            if did && prio > 0 { break }
            for e in st.byPriority[prio] {
                var n = 0
                // A channel with many requests in progress is not read until
                // some finish: its ring fills and the sender waits
                // (backpressure instead of unbounded tasks and memory).
                while n < 64 && e.inflight < EventLoop.maxInflightPerChannel {
                    guard receiveOne(e) == true else { break }
                    n += 1
                }
                if n > 0 {
                    e.channel.release()
                    did = true
                }
            }
        }
        return did
    }

    /// Takes the next message from `e`'s ring and dispatches it: whether
    /// there was one; nil if the ring was corrupt (`e` is dropped).
    func receiveOne(_ e: Entry, sweep: Bool = true) -> Bool? {
        let len: Int
        do {
            len = try e.channel.receive(into: rxBuffer)
        } catch {
            drop(e, reason: "corrupt ring")
            return nil
        }
        if len == 0 { return false }
        st.received &+= 1
        dispatch(e, UnsafeRawBufferPointer(rebasing: rxBuffer[0..<len]), sweep: sweep)
        return true
    }

    /// `sweep`: first take the other rings' AHEAD records due before this
    /// one (AheadOrder.swift); not for one a sweep takes.
    func dispatch(_ e: Entry, _ bytes: UnsafeRawBufferPointer, sweep: Bool = true) {
        let valid = fos_msg_validate(bytes.baseAddress, bytes.count)
        let hdr = loadStruct(fos_msg_hdr.self, from: bytes)
        if valid != 0 {
            st.rejected &+= 1
            // Answer what can be answered; a client-side channel just drops it.
            if e.channel.side == .server {
                let rid = hdr?.request_id ?? 0
                sendRaw(e, fos_msg_hdr(opcode: UInt16(FOS_OP_ERROR), requestID: rid, payloadLength: 0,
                                       flags: UInt32(FOS_MSG_REPLY), status: valid), [])
            }
            return
        }
        let h = hdr!
        if h.flags & UInt32(FOS_MSG_REPLY) == 0, let imm = e.immediate, h.opcode != UInt16(FOS_OP_PING) {
            st.queueLength &+= 1
            e.inflight += 1
            imm.receive(h, UnsafeRawBufferPointer(rebasing: bytes[MemoryLayout<fos_msg_hdr>.size...]), on: e.channel, loop: self)
            return
        }
        let payload = Array(bytes[MemoryLayout<fos_msg_hdr>.size...])
        if h.flags & UInt32(FOS_MSG_REPLY) != 0 {
            // Only the channel that carried the request may answer it.
            guard e.channel.side == .client, let p = st.pending[h.request_id], p.channelID == e.channel.id else {
                if e.channel.side == .client, st.expired[h.request_id] == e.channel.id {
                    st.expired[h.request_id] = nil  // the answer to a call that gave up waiting
                    return
                }
                st.rejected &+= 1
                // A reply nobody asked for, on a channel whose replies we poll
                // first: drop it, or a hostile server could starve our own
                // clients by flooding the response class.
                if e.channel.side == .client { drop(e, reason: "unsolicited reply") }
                return
            }
            st.pending[h.request_id] = nil
            p.continuation.resume(returning: Reply(status: h.status, payload: payload))
            return
        }
        guard e.channel.side == .server, let service = e.service else {
            st.rejected &+= 1
            return
        }
        if h.opcode == UInt16(FOS_OP_PING) {
            st.handled &+= 1
            if h.flags & UInt32(FOS_MSG_ONEWAY) == 0 {
                sendReply(e, h.opcode, h.request_id, Reply(payload: payload))
            }
            return
        }
        var req = Request(opcode: h.opcode, requestID: h.request_id, payload: payload,
                          sender: e.channel.peer, channelID: e.channel.id, mailbox: e.channel.mailbox)
        let oneway = h.flags & UInt32(FOS_MSG_ONEWAY) != 0
        // Requests sent ahead come first (AheadOrder.swift): every request
        // waits for every one taken so far, after taking those that wait
        // at the head of the other rings.
        let ordered = service.ordersAhead
        let sentAhead = h.flags & UInt32(FOS_MSG_AHEAD) != 0
        let ahead = ordered && sentAhead && service.takesAhead(req)
        if ordered && sweep { takeAhead(except: e, before: sentAhead ? h.status : nil) }
        let turn = st.aheadTaken
        // A follower (AheadOrder.swift) takes a turn as one taken ahead
        // does: the last one taken and not yet answered is its sender's.
        let follows = ordered && !ahead && st.aheadTaken != st.aheadAnswered
            && st.aheadSenders.last == e.channel.id && service.followsInTurn(h.opcode, channel: e.channel.id)
        let inTurn = ahead || follows
        if inTurn {
            st.aheadTaken &+= 1
            st.aheadSenders.append(e.channel.id)
        }
        req.ahead = ahead
        req.inTurn = inTurn
        st.queueLength &+= 1
        e.inflight += 1
        if inTurn {
            // Served one at a time in the order taken, by one task
            // (`serveInTurn`), not a task each that waits for its turn: a
            // task's start, suspension and resumption were most of the
            // loop's own cost per request in an untar.
            st.inTurn.append(InTurnRequest(request: req, oneway: oneway, service: service, turn: turn))
            if !st.inTurnServed {
                st.inTurnServed = true
                Task(executorPreference: self) { [self] in await serveInTurn() }
            }
            return
        }
        Task(executorPreference: self) { [self] in
            if ordered { await aheadTurn(turn) }
            await serve(req, oneway: oneway, service: service, ordered: ordered, turn: turn, inTurn: false)
        }
    }

    /// Has `service` handle `req` and answers it (in order with the
    /// requests taken ahead, if the service orders them).
    func serve(_ req: Request, oneway: Bool, service: MailboxService, ordered: Bool, turn: UInt64,
               inTurn: Bool) async {
        let reply: Reply
        do {
            reply = try await service.handle(req)
        } catch let FosError.remote(err) {
            reply = Reply(status: err.rawValue)
        } catch let err as Errno {
            reply = Reply(status: err.rawValue)
        } catch FosError.timeout {
            reply = Reply(status: ETIMEDOUT)
        } catch FosError.badMessage {
            reply = Reply(status: EPROTO)
        } catch {
            reply = Reply(status: EIO)
        }
        st.queueLength &-= 1
        st.handled &+= 1
        st.entries[req.channelID]?.inflight -= 1
        if ordered {
            await answerInOrder(req, reply, oneway: oneway, service: service, turn: turn, inTurn: inTurn)
        } else if !oneway, let e = st.entries[req.channelID] {
            sendReply(e, req.opcode, req.requestID, reply)
        }
    }

    func sendReply(_ e: Entry, _ opcode: UInt16, _ rid: UInt64, _ r: Reply) {
        if r.payload.count > Int(FOS_MAX_PAYLOAD) {
            // A handler's bug must not cost the client its channel.
            return sendRaw(e, fos_msg_hdr(opcode: opcode, requestID: rid, payloadLength: 0,
                                          flags: UInt32(FOS_MSG_REPLY), status: EMSGSIZE), [])
        }
        let ok = e.service?.welcomesAhead(on: e.channel) == true ? UInt32(FOS_MSG_AHEAD_OK) : 0
        sendRaw(e, fos_msg_hdr(opcode: opcode, requestID: rid, payloadLength: r.payload.count,
                               flags: UInt32(FOS_MSG_REPLY) | ok, status: r.status), r.payload)
    }

    /// Sends without blocking; a full ring queues the message in order.
    private func sendRaw(_ e: Entry, _ h: fos_msg_hdr, _ payload: [UInt8]) {
        if e.outbound.isEmpty {
            do {
                let r = try payload.withUnsafeBytes { try e.channel.trySend(h, $0) }
                if r == .sent { return }
            } catch {
                drop(e, reason: "send failed: \(error)")
                return
            }
        }
        var rec = [UInt8]()
        appendStruct(h, to: &rec)
        rec += payload
        e.outboundBytes += rec.count
        e.outbound.append(rec)
        st.backlogged.insert(e.channel.id)
        // A peer that never reads must not make us hold unbounded memory.
        if e.outboundBytes > 32 << 20 { drop(e, reason: "peer does not read its replies") }
    }

    private func flushBacklog() {
        for id in st.backlogged {
            guard let e = st.entries[id] else {
                st.backlogged.remove(id)
                continue
            }
            while let first = e.outbound.first {
                let hsize = MemoryLayout<fos_msg_hdr>.size
                let h = first.withUnsafeBytes { $0.loadUnaligned(as: fos_msg_hdr.self) }
                let r: Channel.SendResult
                do {
                    r = try first.withUnsafeBytes { b in
                        try e.channel.trySend(h, UnsafeRawBufferPointer(rebasing: b[hsize...]))
                    }
                } catch {
                    drop(e, reason: "send failed: \(error)")
                    break
                }
                guard r == .sent else { break }
                e.outboundBytes -= first.count
                e.outbound.removeFirst()
            }
            if e.outbound.isEmpty { st.backlogged.remove(id) }
        }
    }

    private func expireCalls(_ now: UInt64) {
        var next = UInt64.max
        for (id, p) in st.pending {
            if p.deadline <= now {
                st.pending[id] = nil
                noteExpired(id, channel: p.channelID)
                p.continuation.resume(throwing: FosError.timeout)
            } else {
                next = min(next, p.deadline)
            }
        }
        st.nextDeadline = next
    }

    static let maxExpired = 4096

    private func noteExpired(_ id: UInt64, channel: UInt64) {
        st.expired[id] = channel
        st.expiredOrder.append(id)
        if st.expiredOrder.count > EventLoop.maxExpired {
            let drop = st.expiredOrder.count - EventLoop.maxExpired / 2
            for old in st.expiredOrder.prefix(drop) { st.expired[old] = nil }
            st.expiredOrder.removeFirst(drop)
        }
    }

    /// epoll data of a channel's eventfd: its id with the top bit set, so that
    /// channel ids 0 and 1 (fosd numbers channels from 1) cannot collide with
    /// the tags of the wake eventfd (0) and the control socket (1).
    static let channelTag: UInt64 = 1 << 63
    static let maxInflightPerChannel = 256
    static let pollerTag: UInt64 = 1 << 62

    func add(_ e: Entry) {
        st.entries[e.channel.id] = e
        st.byPriority[e.priority.rawValue].append(e)
        rebuildRingControls()
        _ = fos_sys_epoll_add(epollFD, e.channel.waitFD, UInt32(FOS_EPOLLIN), e.channel.id | EventLoop.channelTag)
    }

    /// Forgets a channel: fails its calls, tells the service and observers.
    /// `tellNode` is false when fosd told us first.
    func drop(_ e: Entry, reason: String, tellNode: Bool = true) {
        guard st.entries.removeValue(forKey: e.channel.id) != nil else { return }
        e.channel.markClosed()
        st.byPriority[e.priority.rawValue].removeAll { $0 === e }
        rebuildRingControls()
        st.backlogged.remove(e.channel.id)
        st.retiring.remove(e.channel.id)
        _ = fos_sys_epoll_del(epollFD, e.channel.waitFD)
        closeFD(e.statsFD)
        for (id, p) in st.pending where p.channelID == e.channel.id {
            st.pending[id] = nil
            p.continuation.resume(throwing: FosError.peerGone)
        }
        if tellNode {
            var c = fos_ctl_channel_close(channel: e.channel.id)
            var payload = [UInt8]()
            appendStruct(c, to: &payload)
            c.channel = 0
            try? controlSend(control.fd, ControlMessage.encode(op: Int32(FOS_CTL_CHANNEL_CLOSE), requestID: 0, payload: payload))
        }
        e.service?.disconnected(e.channel)
        if let obs = st.closeObservers.removeValue(forKey: e.channel.id) {
            for o in obs { o(e.channel) }
        }
    }

    // MARK: Control notifications

    private func pollControl() -> Bool {
        guard let msgs = control.drainNotifications() else {
            // fosd is gone: stop watching its socket (it would stay readable).
            if !st.controlGone {
                st.controlGone = true
                _ = fos_sys_epoll_del(epollFD, control.fd)
                failAllCalls()
            }
            let handlers = st.controlEOF
            st.controlEOF = []
            for h in handlers { h() }
            return false
        }
        for m in msgs { handleNotification(m) }
        return !msgs.isEmpty
    }

    private func handleNotification(_ m: ControlMessage) {
        switch Int(m.header.op) {
        case Int(FOS_CTL_NEW_CHANNEL):
            acceptChannel(m)
        case Int(FOS_CTL_CHANNEL_CLOSE):
            m.closeFDs()
            guard let c = m.payload.withUnsafeBytes({ loadStruct(fos_ctl_channel_close.self, from: $0) }) else { return }
            if let e = st.entries[c.channel] {
                closedByPeer(e)
            } else if let w = detached.withLock({ $0.removeValue(forKey: c.channel) }) {
                w.channel?.markClosed()
            }
        case Int(FOS_CTL_ATTACHED):
            guard m.fds.count == 1,
                  let a = m.payload.withUnsafeBytes({ loadStruct(fos_ctl_attach.self, from: $0) }),
                  let e = st.entries[a.channel], e.channel.side == .server, a.slot < FOS_MAX_ATTACH_SLOTS,
                  a.bytes <= FOS_MAX_ATTACH_BYTES,
                  let r = try? Region(fd: m.fds[0], size: Int(a.bytes), slot: a.slot)
            else {
                m.closeFDs()
                return
            }
            e.regions[a.slot] = r
            e.service?.attached(r, to: e.channel)
        case Int(FOS_CTL_SHUTDOWN):
            m.closeFDs()
            let handlers = st.controlEOF
            st.controlEOF = []
            for h in handlers { h() }
        default:
            m.closeFDs()
        }
    }

    private func acceptChannel(_ m: ControlMessage) {
        guard m.fds.count >= 3,
              let c = m.payload.withUnsafeBytes({ loadStruct(fos_ctl_channel.self, from: $0) })
        else {
            m.closeFDs()
            return
        }
        let nameStart = MemoryLayout<fos_ctl_channel>.size
        let fleetLen = min(Int(c.fleet_len), max(0, m.payload.count - nameStart))
        let fleet = String(decoding: m.payload[nameStart..<(nameStart + fleetLen)], as: UTF8.self)
        let peer = PeerInfo(pid: c.pid, uid: c.uid, gid: c.gid, core: c.sender_core, fleet: fleet)
        let statsFD: CInt = m.fds.count > 3 ? m.fds[3] : -1
        for extra in m.fds.dropFirst(4) { closeFD(extra) }
        guard let kind = st.mailboxes[c.mailbox] else {
            closeFD(statsFD)
            m.fds.prefix(3).forEach(closeFD)
            refuseChannel(c.channel)
            return
        }
        let ch: Channel
        do {
            ch = try Channel(id: c.channel, mailbox: c.mailbox, side: .server, peer: peer,
                             ringBytes: c.ring_bytes, memFD: m.fds[0], serverFD: m.fds[1], clientFD: m.fds[2])
        } catch {
            closeFD(statsFD)
            refuseChannel(c.channel)
            return
        }
        switch kind {
        case .raw(let accept):
            closeFD(statsFD)
            trackDetached(ch)
            accept(ch)
        case .service(let service, let prio):
            let e = Entry(channel: ch, priority: prio, service: service)
            add(e)
            service.connected(ch, statsFD: statsFD)
        }
    }

    /// Tells fosd a channel it announced is unusable here, so its client learns.
    private func refuseChannel(_ id: UInt64) {
        var payload = [UInt8]()
        appendStruct(fos_ctl_channel_close(channel: id), to: &payload)
        try? controlSend(control.fd, ControlMessage.encode(op: Int32(FOS_CTL_CHANNEL_CLOSE), requestID: 0, payload: payload))
    }

    /// The process left the node: every channel closes, every call fails,
    /// and later calls fail at once (no channel, no fosd).
    func leaveNode() {
        for e in Array(st.entries.values) { drop(e, reason: "left the node", tellNode: false) }
        failAllCalls()
    }

    /// Fails every call still waiting (the process leaves the node).
    func failAllCalls() {
        let p = st.pending
        st.pending.removeAll()
        for (_, c) in p { c.continuation.resume(throwing: FosError.peerGone) }
    }

    // MARK: Stats

    func publishStats() {
        guard let s = stats else { return }
        s.pointee.queue_len = st.queueLength
        s.pointee.handled = st.handled
        s.pointee.received = st.received
        s.pointee.rejected = st.rejected
        s.pointee.channels = UInt64(st.entries.count)
    }


    // MARK: API used on the loop thread

    func registerMailbox(_ id: UInt64, _ kind: MailboxKind) { st.mailboxes[id] = kind }
    func ownsMailbox(_ id: UInt64) -> Bool { st.mailboxes[id] != nil }

    /// Adds a client-side channel (its replies are polled first).
    func adoptClient(_ ch: Channel) {
        add(Entry(channel: ch, priority: .response, service: nil))
    }

    /// Closes a client channel this process no longer sends on: at once if no
    /// call waits for a reply on it, else as soon as the last one has ended
    /// (closing it earlier would fail those calls, and retrying them elsewhere
    /// would run them twice).
    func retire(_ ch: Channel) {
        guard let e = st.entries[ch.id] else { return }
        if st.pending.values.contains(where: { $0.channelID == ch.id }) {
            st.retiring.insert(ch.id)
        } else {
            drop(e, reason: "retired")
        }
    }

    private func dropRetired() {
        let busy = Set(st.pending.values.map(\.channelID))
        for id in st.retiring where !busy.contains(id) {
            st.retiring.remove(id)
            if let e = st.entries[id] { drop(e, reason: "retired") }
        }
    }

    func observeClose(_ ch: Channel, _ f: @escaping @Sendable (Channel) -> Void) {
        if st.entries[ch.id] == nil {
            f(ch)
            return
        }
        st.closeObservers[ch.id, default: []].append(f)
    }

    /// Work the loop does every pass besides its rings (an io_uring's
    /// completions, say). `poll` returns true while it has work in hand, which
    /// keeps the loop from sleeping; `wakeFD` (if any) wakes a sleeping loop.
    /// The loop drains an eventfd `wakeFD` itself; any other descriptor
    /// (`drains: false`) must be level-triggered readable only while `poll`
    /// has work, which `poll` then takes.
    public func addPoller(wakeFD: CInt, drains: Bool = true, _ poll: @escaping () -> Bool) {
        st.pollers.append(poll)
        if wakeFD >= 0 {
            st.pollerFDs.append((wakeFD, drains))
            _ = fos_sys_epoll_add(epollFD, wakeFD, UInt32(FOS_EPOLLIN), EventLoop.pollerTag | UInt64(st.pollerFDs.count - 1))
        }
    }

    /// Stops watching a poller's descriptor (one that stays readable once
    /// its poller is done with it, such as a FUSE device after the end).
    /// Any thread: only the kernel's epoll set changes.
    public func removePollerFD(_ fd: CInt) {
        _ = fos_sys_epoll_del(epollFD, fd)
    }

    /// Answers a request an `ImmediateService` took. Loop thread only.
    public func reply(channel: UInt64, to header: fos_msg_hdr, status: Int32, payload: UnsafeRawBufferPointer) {
        st.queueLength &-= 1
        st.handled &+= 1
        st.entries[channel]?.inflight -= 1
        guard header.flags & UInt32(FOS_MSG_ONEWAY) == 0, let e = st.entries[channel] else { return }
        let h = fos_msg_hdr(opcode: header.opcode, requestID: header.request_id, payloadLength: payload.count,
                            flags: UInt32(FOS_MSG_REPLY), status: status)
        if e.outbound.isEmpty, (try? e.channel.trySend(h, payload)) == .sent { return }
        sendRaw(e, h, Array(payload))
    }

    /// The region a channel's client attached in `slot`. If it is not known
    /// yet, the notification may still wait on the control socket: read it.
    public func region(channel: UInt64, slot: UInt32) -> Region? {
        if let r = st.entries[channel]?.regions[slot] { return r }
        _ = pollControl()
        return st.entries[channel]?.regions[slot]
    }

    /// Remembers a channel another thread owns, to mark it closed when fosd says so.
    func trackDetached(_ ch: Channel) {
        detached.withLock { d in
            d = d.filter { $0.value.channel != nil }
            d[ch.id] = WeakChannel(channel: ch)
        }
    }

    func onNodeGone(_ f: @escaping @Sendable () -> Void) { st.controlEOF.append(f) }

    /// Sends a request and suspends until its reply, the deadline, or the
    /// channel's end. Must run on the loop (callers go through `onLoop`).
    func call(_ ch: Channel, opcode: UInt16, payload: [UInt8], timeout: Duration, oneway: Bool = false,
              flags: UInt32 = 0) async throws -> Reply {
        guard let e = st.entries[ch.id] else { throw FosError.peerGone }
        guard payload.count <= Int(FOS_MAX_PAYLOAD) else { throw FosError.remote(.messageTooLong) }
        let rid = st.nextRequestID
        st.nextRequestID &+= 1
        let ahead = flags & UInt32(FOS_MSG_AHEAD) != 0
        let h = fos_msg_hdr(opcode: opcode, requestID: rid, payloadLength: payload.count,
                            flags: (oneway ? UInt32(FOS_MSG_ONEWAY) : 0) | flags,
                            status: ahead ? Self.aheadStamp() : 0)
        if oneway {
            sendRaw(e, h, payload)
            return Reply()
        }
        let c = timeout.components
        let ns: UInt64 = c.seconds < 0 ? 0
            : UInt64(min(c.seconds, 1 << 32)) * 1_000_000_000 + UInt64(max(0, c.attoseconds / 1_000_000_000))
        let deadline = monotonicNanos() &+ ns
        return try await withCheckedThrowingContinuation { cont in
            st.pending[rid] = Pending(continuation: cont, channelID: ch.id, deadline: deadline)
            st.nextDeadline = min(st.nextDeadline, deadline)
            sendRaw(e, h, payload)
        }
    }
}

struct WeakChannel: @unchecked Sendable {
    // `@unchecked Sendable`: Channel is Sendable; the weak box is only read under the mutex.
    weak var channel: Channel?
}

private func currentThreadID() -> UInt { UInt(bitPattern: Int(pthread_self())) }
