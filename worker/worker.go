// Package worker joins NATS JetStream and Bybit: it pulls cancel requests,
// holds them in per-(account, category) queues, sends each as a signed Bybit
// cancel within the rate limits, publishes one result per request and only
// then acks it.
package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
)

// DefaultAccount names the account of the BYBIT_API_KEY credentials.
const DefaultAccount = "default"

// memory sizes: sequences answered (acked on redelivery without a second
// exchange call) and released without being sent (not ambiguous when they
// come back).
const memorySize = 1 << 16

// maxFetch bounds one pull request.
const maxFetch = 256

// Worker processes cancel requests. Create it with New and start it with Run.
type Worker struct {
	cfg Config
	log *slog.Logger
	now func() time.Time
	js  jetstream.JetStream
	// accounts by name; DefaultAccount is the client passed to New.
	accounts map[string]*account

	consumer ConsumerSettings
	cons     jetstream.Consumer
	maxHeld  int
	// keepProgress: the stream captures the cancel-all progress subject.
	keepProgress bool
	// progressRefused: the server refused a progress record for want of
	// permission; records are not written any more (one warning).
	progressRefused atomic.Bool
	// degraded says, for Ready's detail, what is off because the stream
	// lacks an optional subject, and which subject to add (set by Setup).
	degraded []string

	held     *heldSet
	answered *seqMemory
	released *seqMemory // seq -> deliveries when released unsent
	gate     *banGate
	ipPacer  *pacer
	slots    chan struct{}

	lanesMu sync.Mutex
	lanes   map[laneKey]*lane
	pacers  map[string]*pacer // by limit group/endpoint/category
	laneWG  sync.WaitGroup

	// sendCtx carries exchange calls and result publishes. A stop signal does
	// not cancel it; ShutdownTimeout after the stop does.
	sendCtx    context.Context
	cancelSend context.CancelFunc
	stopping   chan struct{}
	stopped    atomic.Bool
	jobs       sync.WaitGroup

	stats   Stats
	metrics *Metrics
	ready   atomic.Bool
	// confirm follows acknowledged cancels (Config.Confirm); nil when off.
	confirm *confirmer
	// fleet follows this replica's pins (fleet.go); set by Setup.
	fleet *fleet
	// routes: what each input subject means (cancel or cancel-all, and
	// the account of an account's own subject).
	routes map[string]route
}

// Stats are counters a caller (the demo, tests) can read while the worker runs.
type Stats struct {
	Received    atomic.Int64
	Redelivered atomic.Int64
	RateLimited atomic.Int64
	// MsgIDCollisions counts results whose Nats-Msg-Id the stream already
	// held for another message, stored under their fallback id instead.
	MsgIDCollisions atomic.Int64
}

// account is a configured account and its clock-resync state.
type account struct {
	name   string
	client *bybit.Client
	limits map[string]int
	// ceilings are the explicit limits (Config.LimitCeilings, the
	// account's own Limits) the learned ones never exceed.
	ceilings map[string]int
	group    string
	wsURL    string
	// dcp is the account's dead-man switch; nil: not armed.
	dcp *dcpState

	syncMu   sync.Mutex
	lastSync time.Time

	// checkErr is why the start-up check failed; nil once it passed, or a
	// later answer of Bybit's proved the key works (guarded by checkMu;
	// unchecked is set while it is not nil).
	checkMu   sync.Mutex
	checkErr  error
	unchecked atomic.Bool
}

// startupProblem returns why the account's start-up check failed, nil if it
// passed or the key has worked since.
func (a *account) startupProblem() error {
	if !a.unchecked.Load() {
		return nil
	}
	a.checkMu.Lock()
	defer a.checkMu.Unlock()
	return a.checkErr
}

// New checks the configuration and prepares a worker. client sends the
// cancels of the default account (nil: there is none, and every request must
// name one of cfg.Accounts).
func New(cfg Config, js jetstream.JetStream, client *bybit.Client) (*Worker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		return nil, errors.New("worker: Config.Logger is required")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Limits == nil {
		cfg.Limits = DefaultLimits()
	}
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	accounts := map[string]*account{}
	if client != nil {
		accounts[DefaultAccount] = &account{name: DefaultAccount, client: client, limits: cfg.Limits, ceilings: cfg.LimitCeilings, group: DefaultAccount, wsURL: cfg.WSURL, dcp: newDCPState(cfg.DCPWindow)}
	}
	for name, a := range cfg.Accounts {
		limits := maps.Clone(cfg.Limits)
		maps.Copy(limits, a.Limits)
		ceilings := maps.Clone(cfg.LimitCeilings)
		if ceilings == nil {
			ceilings = map[string]int{}
		}
		maps.Copy(ceilings, a.Limits)
		group := a.LimitGroup
		if group == "" {
			group = name
		}
		accounts[name] = &account{name: name, client: a.Client, limits: limits, ceilings: ceilings, group: group, wsURL: a.WSURL, dcp: newDCPState(a.DCPWindow)}
	}
	if len(accounts) == 0 {
		return nil, errors.New("worker: no Bybit account: pass a client or Config.Accounts")
	}
	w := &Worker{
		accounts: accounts,
		pacers:   map[string]*pacer{},
		metrics:  NewMetrics(cfg.Registerer),
		cfg:      cfg,
		log:      cfg.Logger,
		now:      cfg.Now,
		js:       js,
		held:     newHeldSet(),
		answered: newSeqMemory(memorySize),
		released: newSeqMemory(memorySize),
		gate:     newBanGate(cfg.Now),
		ipPacer:  newPacer(cfg.IPLimit, cfg.Now),
		slots:    make(chan struct{}, cfg.Concurrency),
		lanes:    map[laneKey]*lane{},
		stopping: make(chan struct{}),
		routes:   cfg.routes(),
	}
	if cfg.Confirm {
		w.confirm = newConfirmer(w)
	}
	return w, nil
}

// Ready reports whether the worker can process requests now, and if not,
// why: connected to NATS, consumer bound, clock offset known, no IP ban.
// When ready, the detail also says what runs degraded: a feature off for a
// subject the stream lacks (and which to add), an account whose start-up
// check failed.
func (w *Worker) Ready() (bool, string) {
	switch {
	case !w.ready.Load():
		return false, "consumer not bound (starting or stopping)"
	case w.js.Conn().Status() != nats.CONNECTED:
		return false, "NATS " + strings.ToLower(w.js.Conn().Status().String())
	case !w.gate.bannedUntil().IsZero():
		until := w.gate.bannedUntil()
		if w.now().Before(until) {
			return false, "paused by a Bybit IP ban until " + until.UTC().Format(time.RFC3339)
		}
		return false, "the pause of a Bybit IP ban is over; waiting for a request Bybit answers to show the ban has ended"
	}
	notes := slices.Clone(w.degraded)
	for _, name := range slices.Sorted(maps.Keys(w.accounts)) {
		a := w.accounts[name]
		if err := a.startupProblem(); err != nil {
			// Its clock may be unmeasured; a 10002 resyncs it.
			notes = append(notes, "account "+name+": start-up check failed, its cancels are still sent and Bybit's answer decides each: "+err.Error())
			continue
		}
		if _, ok := a.client.ClockOffset(); !ok {
			return false, "clock offset to Bybit not measured for account " + a.name
		}
	}
	if dcp := w.DCPStatus(); dcp != "" {
		notes = append(notes, dcp)
	}
	if len(notes) == 0 {
		return true, "ready"
	}
	return true, "ready; " + strings.Join(notes, "; ")
}

// Stats returns live counters.
func (w *Worker) Stats() *Stats { return &w.stats }

// Setup creates or checks the stream and the consumer, measures the clock
// offset and checks the API key. Run calls it; it is exported so that a
// caller can fail fast before starting anything else.
func (w *Worker) Setup(ctx context.Context) error {
	if w.cons != nil {
		return nil
	}
	scfg, err := EnsureStream(ctx, w.js, w.cfg)
	if err != nil {
		return err
	}
	// A stream of the operator's may lack the optional subjects: what
	// needs one is off, said once here and on Ready's detail.
	w.keepProgress = true
	w.degraded = nil
	for _, o := range w.cfg.missingOptional(scfg.Subjects) {
		switch o.add {
		case w.cfg.progressSubjects():
			w.keepProgress = false
		case w.cfg.ConfirmedSubject:
			w.confirm = nil
		}
		w.log.Warn("the stream does not capture "+o.name+" ("+o.add+"): "+o.without+"; add "+o.add+" to the stream's subjects",
			"stream", w.cfg.Stream, "add", o.add)
		w.degraded = append(w.degraded, fmt.Sprintf("stream %s does not capture %s: %s (add it to the stream's subjects)", w.cfg.Stream, o.add, o.without))
	}
	cons, settings, err := EnsureConsumer(ctx, w.js, w.cfg)
	if err != nil {
		return err
	}
	if err := w.checkAccounts(ctx); err != nil {
		return err
	}
	w.maxHeld = cons.CachedInfo().Config.MaxAckPending
	if w.maxHeld <= 0 {
		w.maxHeld = w.cfg.MaxAckPending
	}
	if w.confirm != nil {
		if err := w.confirm.setup(ctx); err != nil {
			return err
		}
	}
	w.cons, w.consumer = cons, settings
	pinned := isPinned(cons.CachedInfo().Config)
	w.fleet = newFleet(w, pinned)
	if pinned {
		w.cfg.LimitShare = 1 // one replica works at a time, at the whole budget
	}
	if w.confirm != nil {
		w.fleet.confirm = newPin(w.confirm.pinned, w.cfg.ConfirmConsumer(), leaseOf(w.confirm.settings.AckWait, w.cfg.pinnedTTL()), w.now)
	}
	return nil
}

// checkAccounts runs every account's start-up check. An account whose check
// fails is only warned about (and shown on Ready's detail and
// cancel_worker_account_usable): its cancels are still sent, and Bybit's
// answer decides each, so a key fixed on Bybit's side works without a
// restart. Only when no account passes does the worker refuse to start.
func (w *Worker) checkAccounts(ctx context.Context) error {
	var failed []error
	names := slices.Sorted(maps.Keys(w.accounts))
	for _, name := range names {
		a := w.accounts[name]
		err := Preflight(ctx, a.client, w.log.With("account", name))
		if err != nil && ctx.Err() != nil {
			return fmt.Errorf("account %s: %w", name, err)
		}
		a.checkMu.Lock()
		a.checkErr = err
		a.unchecked.Store(err != nil)
		a.checkMu.Unlock()
		if err != nil {
			failed = append(failed, fmt.Errorf("account %s: %w", name, err))
			continue
		}
		a.lastSync = w.now()
		w.metrics.accountUsable.WithLabelValues(name).Set(1)
	}
	if len(failed) == len(names) {
		return errors.Join(failed...)
	}
	for _, name := range names {
		if a := w.accounts[name]; a.startupProblem() != nil {
			w.markStartupProblem(a, a.startupProblem())
		}
	}
	return nil
}

// otherAccountUsable reports whether an account other than name passed its
// start-up check.
func (w *Worker) otherAccountUsable(name string) bool {
	for n, a := range w.accounts {
		if n != name && a.startupProblem() == nil {
			return true
		}
	}
	return false
}

// markStartupProblem records a start-up check an account failed after the
// others passed theirs, and warns.
func (w *Worker) markStartupProblem(a *account, err error) {
	a.checkMu.Lock()
	a.checkErr = err
	a.unchecked.Store(true)
	a.checkMu.Unlock()
	w.metrics.accountUsable.WithLabelValues(a.name).Set(0)
	w.log.Warn("account "+a.name+": its start-up check failed; the worker runs for the other accounts and still sends this one's cancels, Bybit's answer decides each (a key fixed on Bybit's side works without a restart)",
		"account", a.name, "error", err)
}

// keyWorks records that Bybit authenticated an account's request (a cancel
// accepted, or answered not open): a start-up check that failed no longer
// counts against it.
func (w *Worker) keyWorks(a *account) {
	if !a.unchecked.Load() {
		return
	}
	a.checkMu.Lock()
	err := a.checkErr
	a.checkErr = nil
	a.unchecked.Store(false)
	a.checkMu.Unlock()
	if err == nil {
		return
	}
	w.metrics.accountUsable.WithLabelValues(a.name).Set(1)
	w.log.Info("account "+a.name+": Bybit accepted its key now; its start-up check no longer counts", "account", a.name, "startupError", err)
}

// Run processes requests until ctx ends, then stops gracefully: it stops
// pulling, lets requests already sent finish (bounded by ShutdownTimeout),
// publishes their results, and releases everything else with Nak.
func (w *Worker) Run(ctx context.Context) error {
	if err := w.Setup(ctx); err != nil {
		return err
	}
	w.sendCtx, w.cancelSend = context.WithCancel(context.WithoutCancel(ctx))
	defer w.cancelSend()

	hbCtx, stopHB := context.WithCancel(context.WithoutCancel(ctx))
	hbDone := make(chan struct{})
	go func() {
		defer close(hbDone)
		w.heartbeatLoop(hbCtx)
	}()

	sampleDone := make(chan struct{})
	go func() {
		defer close(sampleDone)
		w.sampleLoop(hbCtx)
	}()
	confirmDone := make(chan struct{})
	go func() {
		defer close(confirmDone)
		if w.confirm != nil {
			w.confirm.run(ctx)
		}
	}()
	if w.fleet.cancel.on {
		w.fleet.touch() // the first contact, before the first pull
		w.fleet.report(false)
	}
	fleetDone := make(chan struct{})
	go func() {
		defer close(fleetDone)
		w.fleet.run(hbCtx)
	}()
	w.ready.Store(true)
	w.log.Info("worker started", "stream", w.cfg.Stream, "consumer", w.cfg.Consumer,
		"ackWait", w.consumer.AckWait, "maxDeliver", w.consumer.MaxDeliver, "maxAckPending", w.maxHeld,
		"confirm", w.confirm != nil)
	w.pull(ctx)

	// Stop: no more pulling; lanes stop dispatching and give back what waits.
	w.log.Info("stopping: releasing queued requests, finishing those already sent", "timeout", w.cfg.ShutdownTimeout)
	w.ready.Store(false)
	w.stopped.Store(true)
	close(w.stopping)
	timer := time.AfterFunc(w.cfg.ShutdownTimeout, w.cancelSend)
	defer timer.Stop()
	w.laneWG.Wait()
	w.lanesMu.Lock()
	for _, l := range w.lanes {
		for _, j := range l.close() {
			w.release(j, 0, "shutdown")
		}
	}
	w.lanesMu.Unlock()
	// Nothing new goes out from here: hand the pin over at once (only
	// if this replica holds it); requests in flight still finish.
	w.fleet.unpin(w.sendCtx, w.fleet.cancel)
	w.jobs.Wait()
	<-confirmDone
	w.fleet.unpin(w.sendCtx, w.fleet.confirm)
	stopHB()
	<-fleetDone
	<-hbDone
	<-sampleDone
	w.log.Info("worker stopped")
	return nil
}

// heartbeatLoop keeps every held message alive with one ticker, at a third of
// AckWait, wherever it waits (queue, rate limit, backoff, PubAck).
func (w *Worker) heartbeatLoop(ctx context.Context) {
	w.held.heartbeatLoop(ctx, w.js.Conn(), w.consumer.AckWait)
}

// pull fetches messages while fewer than MaxAckPending are held, and not at
// all during an IP ban (a replica of a fleet keeps pulling, see keepPin).
func (w *Worker) pull(ctx context.Context) {
	retry := newRetryBackoff()
	for ctx.Err() == nil {
		if !w.fleet.keepPin() {
			if err := w.gate.waitOpen(ctx); err != nil {
				return
			}
		}
		n, changed := w.held.len()
		room := w.maxHeld - n
		if room <= 0 {
			if w.fleet.keepPin() {
				w.fleet.renew(ctx, w.cons)
			}
			select {
			case <-ctx.Done():
				return
			case <-changed:
			case <-w.fleet.renewal():
			}
			continue
		}
		// The fetch outlives a stop signal by at most its expiry, so that
		// messages already on their way are released, not lost until AckWait.
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), pullInterval)
		start := w.now()
		// The server starts a delivery's AckWait when it hands the message
		// to this pull, never before the pull was asked for.
		pulledAt := time.Now()
		batch, err := w.cons.Fetch(min(room, maxFetch), w.fleet.cancel.fetchOpts(fctx)...)
		if err != nil {
			cancel()
			w.log.Warn("pull failed", "error", err)
			if sleepCtx(ctx, retry.NextBackOff()) != nil {
				return
			}
			continue
		}
		for msg := range batch.Messages() {
			// The pin first: a lane sends only for the active replica.
			w.fleet.cancel.pulled(start, pinOf(msg), nil)
			w.fleet.cancel.takeover(ctx, w.cons, msg)
			w.accept(ctx, msg, pulledAt)
		}
		cancel()
		w.fleet.pulled(start, "", batch.Error())
		if err := batch.Error(); err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, nats.ErrTimeout) {
			if errors.Is(err, jetstream.ErrPinIDMismatch) {
				w.log.Info("the consumer pinned another replica: this one stands by", "consumer", w.cfg.Consumer)
				continue
			}
			w.log.Warn("pull interrupted", "error", err)
			if sleepCtx(ctx, retry.NextBackOff()) != nil {
				return
			}
			continue
		}
		retry.Reset()
	}
}

// sleepCtx waits for d, or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	return sleepOrChange(ctx, d, nil, nil)
}

// accept takes one delivered message into the worker; pulledAt is when the
// pull that brought it was asked for.
func (w *Worker) accept(ctx context.Context, msg jetstream.Msg, pulledAt time.Time) {
	meta, err := msg.Metadata()
	if err != nil {
		w.log.Error("message without JetStream metadata; terminated", "subject", msg.Subject(), "error", err)
		_ = msg.Term()
		return
	}
	w.stats.Received.Add(1)
	w.metrics.received.Inc()
	if meta.NumDelivered > 1 {
		w.stats.Redelivered.Add(1)
		w.metrics.redeliveries.Inc()
	}
	seq := meta.Sequence.Stream
	if _, done := w.answered.get(seq); done {
		// This process published the result already; only the ack was lost.
		w.log.Debug("redelivered request already answered; acked again", "seq", seq)
		_ = msg.DoubleAck(w.sendCtxOr(ctx))
		return
	}
	j := &job{
		seq:         seq,
		deliveries:  meta.NumDelivered,
		requestTime: meta.Timestamp,
		msg:         msg,
		confirmedAt: pulledAt,
	}
	if cur, added := w.held.add(j); !added {
		// A redelivery of a message this process still holds (its
		// heartbeats were lost): answer it once, via the newest delivery,
		// whose count the retry budget's end and the result go by.
		cur.redelivered(msg, meta.NumDelivered, pulledAt)
		return
	}
	w.jobs.Add(1)
	j.ambiguous = meta.NumDelivered > 1
	if prev, ok := w.released.get(seq); ok && prev == meta.NumDelivered-1 {
		// This process itself released the previous delivery before
		// sending anything: nothing can have reached Bybit.
		j.ambiguous = false
	}

	var msgID string
	if h := msg.Headers(); h != nil {
		msgID = h.Get(nats.MsgIdHdr)
	}
	var req messages.Cancel
	var all messages.CancelAll
	rt := w.routes[msg.Subject()]
	if rt.all {
		all, err = messages.DecodeCancelAll(msg.Data())
		req = messages.Cancel{Category: all.Category, Account: all.Account, RequestID: all.RequestID}
	} else {
		req, err = messages.DecodeCancel(msg.Data())
	}
	if err == nil {
		err = reservedMsgID(msgID)
	}
	if err == nil {
		// A request on an account's own subject is for that account.
		req.Account, err = forAccount(rt, req.Account)
		all.Account = req.Account
	}
	if err != nil {
		j.requestID = messages.RequestID(messages.LenientEcho(msg.Data()).RequestID, msgID, w.cfg.Stream, seq)
		r := messages.NewInvalidResult(msg.Data(), err, j.requestID, seq, j.requestTime)
		go w.finish(j, decision{action: actFinish, result: r})
		return
	}
	j.req = req
	j.requestID = messages.RequestID(req.RequestID, msgID, w.cfg.Stream, seq)
	if rt.all {
		j.all = &all
	}
	if w.stopped.Load() || ctx.Err() != nil {
		// Decoded first: a release on the last delivery is answered
		// with the request's fields.
		w.release(j, 0, "shutdown")
		return
	}
	name := req.Account
	if name == "" {
		name = DefaultAccount
	}
	acct, ok := w.accounts[name]
	if !ok {
		err := fmt.Errorf("%w: unknown account %q", messages.ErrInvalid, req.Account)
		if req.Account == "" {
			err = fmt.Errorf("%w: no account given and no default account is configured", messages.ErrInvalid)
		}
		r := messages.NewInvalidResult(msg.Data(), err, j.requestID, seq, j.requestTime)
		go w.finish(j, decision{action: actFinish, result: r})
		return
	}
	if j.all != nil && j.all.Flatten() {
		go w.flatten(j, acct) // lanes per category, as it goes
		return
	}
	l := w.lane(acct, req.Category)
	j.lane = l
	if j.all != nil {
		go w.cancelAll(j, acct)
		return
	}
	if !l.push(j, false) {
		w.release(j, 0, "shutdown")
	}
}

func (w *Worker) sendCtxOr(ctx context.Context) context.Context {
	if w.sendCtx != nil {
		return w.sendCtx
	}
	return ctx
}

// lane returns the queue of an (account, category), starting its dispatcher
// on first use. Accounts of one limit group (one Bybit UID) share a pacer.
func (w *Worker) lane(a *account, category string) *lane {
	key := laneKey{account: a.name, category: category}
	w.lanesMu.Lock()
	defer w.lanesMu.Unlock()
	if l, ok := w.lanes[key]; ok {
		return l
	}
	var batch *pacer
	if w.cfg.Batch {
		batch = w.pacerForLocked(a, "cancel-batch", category)
	}
	l := newLane(key, a, w.pacerForLocked(a, "cancel", category), batch)
	w.lanes[key] = l
	w.laneWG.Add(1)
	go w.dispatch(l)
	return l
}

// untilStopping is a context that ends when the worker starts to stop (the
// send context outlives that, for requests already sent).
func (w *Worker) untilStopping() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(w.sendCtx)
	go func() {
		select {
		case <-w.stopping:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// pacerForLocked returns the budget of an (account's limit group, endpoint,
// category); lanesMu is held.
func (w *Worker) pacerForLocked(a *account, endpoint, category string) *pacer {
	return w.budgetLocked(a, endpoint+"/"+category)
}

// budgetLocked returns the pacer of one of an account's limits (a key of
// Config.Limits), shared by its limit group; lanesMu is held.
func (w *Worker) budgetLocked(a *account, budget string) *pacer {
	p, ok := w.pacers[a.group+"/"+budgetKey(budget)]
	if !ok {
		p = w.newBudget(a, budget)
		w.pacers[a.group+"/"+budgetKey(budget)] = p
	}
	return p
}

// dispatch takes work off one lane as budget allows: the ban gate, then the
// single-cancel budget or, when that is spent, the batch budget (both are
// spent, so a burst drains at their sum), then the process-wide IP limit and
// one of the WORKER_CONCURRENCY request slots.
func (w *Worker) dispatch(l *lane) {
	defer w.laneWG.Done()
	ctx, cancel := w.untilStopping()
	defer cancel()
	for l.waitWork(ctx) {
		if w.fleet.warm(ctx) != nil {
			return
		}
		probe, err := w.gate.wait(ctx)
		if err != nil {
			return
		}
		if !w.fleet.mayStart() {
			// Not (or no longer) the active replica: what waits goes back.
			w.handBackProbe(probe)
			for _, j := range l.drain() {
				w.release(j, 0, "lease")
			}
			continue
		}
		p, slots, units := w.nextRequest(l)
		if len(units) == 0 {
			w.handBackProbe(probe)
			if w.waitBudget(ctx, l) != nil {
				return
			}
			continue
		}
		units = w.dropExpired(units)
		if len(units) == 0 {
			// Nothing to send: a probe proves nothing without a request.
			p.unreserve(slots)
			w.handBackProbe(probe)
			continue
		}
		if len(slots) > len(units) {
			p.unreserve(slots[len(units):])
			slots = slots[:len(units)]
		}
		giveBack := func() {
			p.unreserve(slots)
			w.handBackProbe(probe)
			w.requeueUnits(units)
		}
		releaseIP, _, err := w.ipPacer.acquire(ctx)
		if err != nil {
			giveBack()
			return
		}
		select {
		case w.slots <- struct{}{}:
		case <-ctx.Done():
			releaseIP()
			giveBack()
			return
		}
		if (!probe && w.gate.closed()) || !w.fleet.mayStart() {
			// A ban began (or this replica's lease ended) while this
			// request waited for its slot.
			releaseIP()
			<-w.slots
			giveBack()
			continue
		}
		// Last look before sending: a copy the server may have handed to
		// another consumer is not sent.
		if units = w.dropStale(units); len(units) == 0 {
			releaseIP()
			<-w.slots
			p.unreserve(slots)
			w.handBackProbe(probe)
			continue
		}
		if len(slots) > len(units) {
			p.unreserve(slots[len(units):])
			slots = slots[:len(units)]
		}
		for _, u := range units {
			for _, j := range u.jobs {
				// Everything between entering the lane and now was waiting
				// for budget (the lane's, the IP's, a ban's or a slot).
				waited := time.Since(j.queuedAt)
				j.rateLimitWait += waited
				w.metrics.rateLimitWait.WithLabelValues(l.key.category).Add(waited.Seconds())
			}
		}
		w.metrics.inFlight.Inc()
		p.markSent(slots)
		done := func() { p.answered(slots); releaseIP(); <-w.slots; w.metrics.inFlight.Dec() }
		if p == l.batch {
			go w.sendBatch(l, units, probe, done)
		} else {
			go w.sendSingle(l, units[0], probe, done)
		}
	}
}

// nextRequest reserves budget for the next request of the lane: a single
// cancel while that budget lasts (and the IP limit has more room than the
// lane's batches need, see ipKeptForBatches), else a batch sized to the
// batch budget left. It returns no units when both budgets are spent.
func (w *Worker) nextRequest(l *lane) (*pacer, []*slot, []*unit) {
	if ok, _, _ := w.ipPacer.above(w.ipKeptForBatches(l)); !ok {
		return w.nextBatch(l)
	}
	if got := l.single.reserve(1); got != nil {
		units := l.take(1, false)
		if len(units) == 0 {
			l.single.unreserve(got)
		}
		return l.single, got, units
	}
	return w.nextBatch(l)
}

// ipKeptForBatches is how much of the IP limit a lane's single cancels leave
// to its batches: the requests its batch budget needs over one IP window.
// Both budgets cost one unit an order, but a single takes one IP request for
// one order where a batch takes one for up to maxBatch: when the IP limit is
// the scarcer budget, singles that spend it first starve the batches for the
// rest of the IP window (a 200/s account at BYBIT_IP_LIMIT=500/5s drained
// at 1.7 × its ideal). Singles use only what the batches cannot; 0 when the
// lane has no batch to send or the IP limit is off.
func (w *Worker) ipKeptForBatches(l *lane) int {
	if l.batch == nil || l.batchOff.Load() || l.batchable() == 0 || w.ipPacer == nil {
		return 0
	}
	return l.batch.requestsPer(w.cfg.IPLimit.Per, l.maxBatch)
}

// nextBatch reserves the batch budget for a batch of the lane's batchable
// orders, sized to the room left; no units when there is none.
func (w *Worker) nextBatch(l *lane) (*pacer, []*slot, []*unit) {
	if l.batch == nil || l.batchOff.Load() {
		return nil, nil, nil
	}
	n := min(l.batchable(), l.maxBatch)
	if n == 0 {
		return nil, nil, nil
	}
	got := l.batch.reserve(n)
	if got == nil {
		return nil, nil, nil
	}
	if len(got) > 0 { // a limited budget: no more orders than it has room for
		n = len(got)
	}
	return l.batch, got, l.take(n, true)
}

// waitBudget waits until either of the lane's budgets may have room. A
// budget that has room again by now (a slot was answered or expired since
// nextRequest found it full) returns at once: its change has already
// happened and will not be signalled again.
func (w *Worker) waitBudget(ctx context.Context, l *lane) error {
	free, wait, changed := l.single.room()
	if free > 0 {
		ok, ipWait, ipChanged := w.ipPacer.above(w.ipKeptForBatches(l))
		if ok {
			return ctx.Err()
		}
		// The single budget has room, but what is left of the IP limit is
		// kept for the batches: wait for the IP budget or the batch one.
		wait, changed = ipWait, ipChanged
	}
	var bChanged <-chan struct{}
	if l.batch != nil && !l.batchOff.Load() {
		bFree, bWait, bc := l.batch.room()
		if bFree > 0 && l.batchable() > 0 {
			return ctx.Err()
		}
		if wait == 0 || (bWait > 0 && bWait < wait) {
			wait = bWait
		}
		bChanged = bc
	}
	return sleepOrChange(ctx, wait, changed, bChanged)
}

// dropExpired answers failed the cancels older than WORKER_MAX_AGE.
func (w *Worker) dropExpired(units []*unit) []*unit {
	kept := units[:0]
	for _, u := range units {
		jobs := u.jobs[:0]
		for _, j := range u.jobs {
			if w.now().Sub(j.requestTime) <= w.cfg.MaxAge {
				jobs = append(jobs, j)
				continue
			}
			msg := fmt.Sprintf("older than WORKER_MAX_AGE (%v) before it could be sent", w.cfg.MaxAge)
			if j.lastErr != nil {
				msg += "; last error: " + j.lastErr.Error()
			}
			go w.finish(j, w.failed(j, msg))
		}
		if len(jobs) > 0 {
			u.jobs = jobs
			kept = append(kept, u)
		}
	}
	return kept
}

// dropStale lets go of the cancels the server may have handed to another
// consumer (see letGo) and returns the units left to send.
func (w *Worker) dropStale(units []*unit) []*unit {
	kept := units[:0]
	for _, u := range units {
		jobs := u.jobs[:0]
		for _, j := range u.jobs {
			if !w.possiblyRedelivered(j) {
				jobs = append(jobs, j)
				continue
			}
			w.letGo(j, "not sent")
			w.jobs.Done()
		}
		if len(jobs) > 0 {
			u.jobs = jobs
			kept = append(kept, u)
		}
	}
	return kept
}

// possiblyRedelivered reports whether the server may have handed j's
// delivery to another consumer: its heartbeats went unanswered too long (see
// staleRule), and it is not the consumer's last delivery (the server does not
// hand out a last delivery again).
func (w *Worker) possiblyRedelivered(j *job) bool {
	return !w.lastDelivery(j) && w.held.stale(j)
}

// letGo gives up a held message that the server may have handed to another
// consumer, which then answers it. Sending it too would race that consumer's
// call at the exchange, and storing what came back would race its result for
// the Nats-Msg-Id result:<seq>, which keeps whichever is stored first: an
// answer like not_open may be what the other call did, and is not the truth
// to keep. No Nak: acks name the stream sequence, not the delivery, so a Nak
// would make the server hand out again a message another consumer works on.
// Left alone, the message is redelivered AckWait after the last heartbeat the
// server heard if nobody else holds it. The caller accounts for w.jobs.
func (w *Worker) letGo(j *job, what string) {
	j.mu.Lock()
	j.done = true
	deliveries := j.deliveries
	j.mu.Unlock()
	if j.attempts == 0 && !j.ambiguous {
		// Nothing was sent: back straight to this process, it is not
		// ambiguous.
		w.released.put(j.seq, deliveries)
	}
	w.metrics.retries.WithLabelValues("possibly_redelivered").Inc()
	w.log.Warn("heartbeats unanswered for most of AckWait: the server may have handed this request to another consumer; "+what+", left to the current delivery",
		w.jobAttrs(j, "deliveries", deliveries, "ackWait", w.consumer.AckWait)...)
	w.held.remove(j)
}

func (w *Worker) requeueUnits(units []*unit) {
	for _, u := range units {
		for _, j := range u.jobs {
			if !j.lane.push(j, true) {
				w.release(j, 0, "shutdown")
			}
		}
	}
}

// endProbe ends a ban probe with what its request showed: banned again (a
// new pause), or answered by Bybit (the ban is over). A request that got no
// answer (it failed on the way) shows neither: the probe passes on.
func (w *Worker) endProbe(probe bool, err error) {
	if !probe {
		return
	}
	var apiErr *bybit.APIError
	var httpErr *bybit.HTTPError
	switch {
	case err != nil && bybit.ClassOf(err) == bybit.ClassIPBan:
		w.gate.report(true, w.cfg.BanPause)
		w.metrics.banPauses.Inc()
		w.log.Error("still banned after the pause; pausing again", "pause", w.cfg.BanPause)
	case err == nil || errors.As(err, &apiErr) || errors.As(err, &httpErr):
		w.gate.report(false, w.cfg.BanPause)
		w.log.Info("IP ban over: the probe request went through; resuming")
	default:
		w.gate.handBack()
		w.log.Warn("the ban probe got no answer; the next request probes again", "error", err)
	}
}

// handBackProbe gives back a probe whose holder sends nothing: only an
// answered request lifts a ban, so the next request to pass the gate probes.
func (w *Worker) handBackProbe(probe bool) {
	if probe {
		w.gate.handBack()
	}
}

func toRequest(c messages.Cancel) bybit.CancelOrderRequest {
	return bybit.CancelOrderRequest{Category: c.Category, Symbol: c.Symbol, OrderID: c.OrderID, OrderLinkID: c.OrderLinkID, OrderFilter: c.OrderFilter}
}

// sendSingle makes one POST /v5/order/cancel for a unit and acts on it.
func (w *Worker) sendSingle(l *lane, u *unit, probe bool, done func()) {
	w.markSent(u)
	start := time.Now()
	res, err := l.account.client.CancelOrder(w.sendCtx, toRequest(u.primary().req))
	rl := res.RateLimit
	if err != nil {
		rl, _ = bybit.RateLimitOf(err)
	}
	w.afterRequest(l.single, "cancel", l.key.category, probe, start, rl, err, done)
	w.settle(l.single, u, res, err)
}

// sendBatch makes one POST /v5/order/cancel-batch and maps each order's
// answer back to its unit by position.
func (w *Worker) sendBatch(l *lane, units []*unit, probe bool, done func()) {
	reqs := make([]bybit.CancelOrderRequest, len(units))
	for i, u := range units {
		w.markSent(u)
		reqs[i] = toRequest(u.primary().req)
	}
	start := time.Now()
	res, err := l.account.client.CancelBatch(w.sendCtx, l.key.category, reqs)
	rl := res.RateLimit
	if err != nil {
		rl, _ = bybit.RateLimitOf(err)
	}
	w.afterRequest(l.batch, "cancel-batch", l.key.category, probe, start, rl, err, done)
	if err != nil && w.batchRefused(l, units, err) {
		return
	}
	for i, u := range units {
		if err != nil { // the whole request failed: every order shares it
			w.settle(l.batch, u, bybit.CancelOrderResult{}, err)
			continue
		}
		it := res.Items[i]
		w.settle(l.batch, u, bybit.CancelOrderResult{OrderID: it.OrderID, OrderLinkID: it.OrderLinkID, Time: res.Time, RateLimit: res.RateLimit}, it.Err)
	}
}

// batchRefused handles a cancel-batch refused as a whole, which applied
// nothing: its orders are queued again as single cancels, whose own answers
// decide their results. Where the endpoint (or the category on it) is not
// offered, the lane sends no more batches and says so once; after any other
// refusal only these orders go alone. It returns false for failures its
// orders share as before (transient, rate limits, a ban, our own context).
func (w *Worker) batchRefused(l *lane, units []*unit, err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	n := 0
	for _, u := range units {
		n += len(u.jobs)
	}
	switch c := bybit.ClassOf(err); {
	case bybit.Unavailable(err):
		if l.batchOff.CompareAndSwap(false, true) {
			w.metrics.batchUnavailable.WithLabelValues(l.key.account, categoryLabel(l.key.category)).Set(1)
			w.log.Warn("cancel-batch is not available for this account and category (Bybit's demo trading offers it for linear and option only, classic accounts not at all): this lane sends single cancels from now on",
				"account", l.key.account, "category", l.key.category, "error", err)
		}
	case c == bybit.ClassPermanent || c == bybit.ClassNotOpen:
		w.metrics.batchRefused.WithLabelValues(categoryLabel(l.key.category)).Inc()
		w.log.Warn("cancel-batch refused as a whole; its orders are retried one by one as single cancels",
			"account", l.key.account, "category", l.key.category, "orders", n, "error", err)
		for _, u := range units {
			for _, j := range u.jobs {
				j.noBatch = true // not queued now: the lane's counts stay true
			}
		}
	default:
		return false
	}
	// Back to the front of the lane, in the order they were taken.
	for i := len(units) - 1; i >= 0; i-- {
		for k := len(units[i].jobs) - 1; k >= 0; k-- {
			j := units[i].jobs[k]
			if !j.lane.push(j, true) {
				w.release(j, 0, "shutdown")
			}
		}
	}
	return true
}

func (w *Worker) markSent(u *unit) {
	now := w.now()
	for _, j := range u.jobs {
		j.attempts++
		j.sentAt = now
	}
}

// afterRequest is the bookkeeping every exchange request shares, whichever
// path sent it (a lane's dispatcher, a cancel-all, a confirmation lookup):
// an IP ban's pause, the budget p's view of Bybit's headers, freeing what the
// request held (done), metrics, and the end of a ban probe.
func (w *Worker) afterRequest(p *pacer, endpoint, category string, probe bool, start time.Time, rl bybit.RateLimit, err error, done func()) {
	banned := err != nil && bybit.ClassOf(err) == bybit.ClassIPBan
	if banned {
		// Close the gate before the slot is freed, so that no request
		// waiting for the slot slips out during the ban.
		w.startBan(err)
	}
	// Book what the headers say before the slot is freed, so the next
	// request already counts with it.
	p.observe(rl, start)
	done()
	w.metrics.observeRequest(endpoint, category, time.Since(start), err)
	w.metrics.observeBudget(endpoint, category, rl)
	w.endProbe(probe, err)
}

// settle decides and acts for every cancel of a unit: they share the
// exchange's answer.
func (w *Worker) settle(p *pacer, u *unit, res bybit.CancelOrderResult, err error) {
	for _, j := range u.jobs {
		w.apply(j, p, w.decide(j, res, err), err)
	}
}

// apply carries out a decision; p is the budget the attempt spent.
func (w *Worker) apply(j *job, p *pacer, d decision, err error) {
	switch d.action {
	case actFinish:
		if err == nil {
			j.lane.resetRateLimitBackoff()
		}
		if err == nil || d.class == bybit.ClassNotOpen {
			w.keyWorks(j.lane.account)
		}
		w.finish(j, d)
	case actRelease:
		w.metrics.retries.WithLabelValues(d.reason).Inc()
		w.log.Warn("retry budget spent; released for a later delivery", w.jobAttrs(j, "error", err, "delay", d.delay)...)
		w.release(j, d.delay, d.reason)
	case actRetry:
		w.metrics.retries.WithLabelValues(d.reason).Inc()
		delay := d.delay
		switch d.class {
		case bybit.ClassRateLimited:
			w.rateLimited(j, p, d)
			// The budget's block holds the lane until the reset; the
			// request waits for it at the front of its queue.
			delay = 0
		case bybit.ClassIPRateLimited:
			w.stats.RateLimited.Add(1)
			w.ipPacer.blockUntil(d.rateLimitReset)
			w.log.Warn("over Bybit's IP rate limit (10018); every request waits", w.jobAttrs(j, "until", d.rateLimitReset)...)
		case bybit.ClassClockSkew:
			w.resync(j.lane.account, j.sentAt)
		case bybit.ClassIPBan:
			if w.cfg.BanRelease {
				w.releaseAllQueued(w.cfg.BanPause, "ip_ban")
				w.fleet.banReleased(w.sendCtxOr(context.Background()))
			}
		default:
			w.log.Debug("transient failure; retrying", w.jobAttrs(j, "error", err, "delay", d.delay)...)
		}
		w.requeue(j, delay)
	}
}

// rateLimited blocks the budget p an attempt spent until the reset of its
// 10006 (decide's rateLimitReset): every later call of that budget waits,
// whichever path makes it, also when the worker counts nothing for it.
func (w *Worker) rateLimited(j *job, p *pacer, d decision) {
	w.stats.RateLimited.Add(1)
	p.blockUntil(d.rateLimitReset)
	w.log.Debug("rate limited; waiting for the window to reset", w.jobAttrs(j, "until", d.rateLimitReset)...)
}

// startBan stops every request of the process for BanPause.
func (w *Worker) startBan(err error) {
	until := w.now().Add(w.cfg.BanPause)
	if w.gate.ban(until) {
		w.metrics.banPauses.Inc()
		w.log.Error("Bybit answered HTTP 403 without an envelope (its IP ban, \"access too frequent\", or its CDN refusing this address): every request stops; one probe follows the pause", "until", until, "error", err)
	}
}

// requeue puts j back at the front of its lane after delay.
func (w *Worker) requeue(j *job, delay time.Duration) {
	if delay <= 0 {
		if !j.lane.push(j, true) {
			w.release(j, 0, "shutdown")
		}
		return
	}
	go func() {
		t := time.NewTimer(delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-w.stopping:
		}
		if !j.lane.push(j, true) {
			w.release(j, 0, "shutdown")
		}
	}()
}

// releaseAllQueued gives every queued message back to the consumer, for other
// replicas (on other IPs) to take during an IP ban.
func (w *Worker) releaseAllQueued(delay time.Duration, reason string) {
	w.lanesMu.Lock()
	lanes := make([]*lane, 0, len(w.lanes))
	for _, l := range w.lanes {
		lanes = append(lanes, l)
	}
	w.lanesMu.Unlock()
	for _, l := range lanes {
		for _, j := range l.drain() {
			w.release(j, delay, reason)
		}
	}
}

// resync measures an account's clock offset again unless that happened
// after since (concurrent 10002s resync once).
func (w *Worker) resync(a *account, since time.Time) {
	a.syncMu.Lock()
	defer a.syncMu.Unlock()
	if a.lastSync.After(since) {
		return
	}
	off, err := a.client.SyncClock(w.sendCtx)
	if err != nil {
		w.log.Warn("clock resync failed", "account", a.name, "error", err)
		return
	}
	a.lastSync = w.now()
	w.log.Info("clock resynced with Bybit", "account", a.name, "offset", off)
}

// release gives a message back for another delivery.
func (w *Worker) release(j *job, delay time.Duration, reason string) {
	defer w.jobs.Done()
	if w.possiblyRedelivered(j) {
		w.letGo(j, "not released ("+reason+")")
		return
	}
	if w.lastDelivery(j) {
		// Nothing would redeliver it: answer it instead, so that it is
		// accounted for — a cancel-all with what its earlier deliveries
		// recorded.
		if j.all != nil && j.prog == nil {
			w.loadProgressForRelease(j)
		}
		w.jobs.Add(1)
		w.finish(j, w.failed(j, "released on the consumer's last delivery: "+reason))
		return
	}
	if j.prog != nil {
		w.recordReleased(j)
	}
	j.mu.Lock()
	j.done = true
	msg, deliveries := j.msg, j.deliveries
	j.mu.Unlock()
	if j.attempts == 0 && !j.ambiguous {
		w.released.put(j.seq, deliveries)
	}
	var err error
	if delay > 0 {
		err = msg.NakWithDelay(delay)
	} else {
		err = msg.Nak()
	}
	if err != nil {
		w.log.Warn("release failed; the message comes back after AckWait", "seq", j.seq, "error", err)
	}
	w.held.remove(j)
}

// finish publishes the result, waits for its PubAck, then acks the request
// (terminates it for invalid and failed). A publish that fails is retried with
// the same Nats-Msg-Id while the worker lives; the message stays held and
// heartbeated meanwhile.
func (w *Worker) finish(j *job, d decision) {
	defer w.jobs.Done()
	r := d.result
	if w.possiblyRedelivered(j) && r.Status == messages.StatusNotOpen {
		// The answer came after the server may have handed the request
		// to another consumer: the order may be gone because that
		// consumer's cancel landed first, whose result is the true one.
		w.letGo(j, "its not_open not stored")
		return
	}
	j.mu.Lock()
	deliveries, handedOut := j.deliveries, j.handedOut
	j.mu.Unlock()
	if j.prog != nil {
		// A cancel-all lists what every call of every delivery cancelled,
		// whichever way it ends — also a run that overlaps this one.
		w.settleProgress(j)
		r.Orders = j.prog.orders
		r.OrdersComplete = new(j.prog.complete())
	}
	r.Attempts = j.attempts
	r.Ambiguous = j.ambiguous || handedOut
	r.RateLimitWaitMs = j.rateLimitWait.Milliseconds()
	r.Deliveries = deliveries
	if !j.sentAt.IsZero() {
		r.SentAt = new(j.sentAt.UTC())
	}
	data, err := r.Marshal()
	if err != nil { // a Result always marshals; this guards a future field
		w.log.Error("encode result", "seq", j.seq, "error", err)
		return
	}
	subject := w.cfg.RejectedSubject
	if r.Acknowledged() {
		subject = w.cfg.AckSubject
	}
	ctx := w.sendCtx
	ack, err := w.publishAck(ctx, subject, data, r.MsgID())
	if err != nil {
		// The result may or may not be stored: the redelivery finds out
		// (the Nats-Msg-Id keeps it from being stored twice).
		w.log.Error("result not published before shutdown; the request will be redelivered", w.jobAttrs(j, "error", err)...)
		j.mu.Lock()
		j.done = true
		msg := j.msg
		j.mu.Unlock()
		_ = msg.Nak()
		w.held.remove(j)
		return
	}
	var local *messages.Result
	if ack.Duplicate {
		stored, found := w.storedResult(ctx, j, ack.Sequence)
		if found == storedOther {
			// Another message holds this result's id (JetStream
			// deduplicates across the stream's subjects): a request
			// published with it. Every replica falls back to the same
			// id, which no publisher can know before this request
			// was stored.
			fallback := messages.FallbackResultMsgID(j.seq, j.requestTime)
			w.stats.MsgIDCollisions.Add(1)
			w.metrics.msgIDCollisions.Inc()
			w.log.Error("another message in the stream holds this result's Nats-Msg-Id (a request published with a reserved id); result stored under its fallback id",
				w.jobAttrs(j, "msgId", r.MsgID(), "heldBySeq", ack.Sequence, "fallbackMsgId", fallback)...)
			ack, err = w.publishAck(ctx, subject, data, fallback)
			if err != nil {
				w.log.Error("result not published before shutdown; the request will be redelivered", w.jobAttrs(j, "error", err)...)
				j.mu.Lock()
				j.done = true
				msg := j.msg
				j.mu.Unlock()
				_ = msg.Nak()
				w.held.remove(j)
				return
			}
			if ack.Duplicate {
				stored, found = w.storedResult(ctx, j, ack.Sequence)
			}
		}
		if found == storedMine {
			// An earlier delivery stored a result first: that one is
			// what readers see, so it is what is counted, logged and
			// acted on.
			local = new(r)
			r = stored
		}
	}
	w.metrics.observeResult(r, w.now())
	w.answered.put(j.seq, 1)

	j.mu.Lock()
	j.done = true
	msg := j.msg
	j.mu.Unlock()
	if r.Status == messages.StatusInvalid || r.Status == messages.StatusFailed {
		reason := r.Error
		if reason == "" {
			reason = r.LastError
		}
		err = msg.TermWithReason(string(r.Status) + ": " + reason)
	} else {
		err = backoff.Retry(func() error { return msg.DoubleAck(ctx) },
			backoff.WithContext(backoff.WithMaxRetries(newRetryBackoff(), 5), ctx))
	}
	if err != nil && !errors.Is(err, jetstream.ErrMsgAlreadyAckd) {
		w.log.Warn("ack failed after the result was published; a redelivery will be acked without a second result", "seq", j.seq, "error", err)
	}
	w.held.remove(j)
	w.logOutcome(j, r, local)
}

// What storedResult found at a duplicate PubAck's sequence.
const (
	storedMine       = iota // this request's result, stored earlier
	storedUnreadable        // nothing could be read
	storedOther             // another message: its id collides with the result's
)

// storedResult reads the message the stream kept at seq (a duplicate
// PubAck's sequence): this request's result, stored by an earlier delivery,
// or another message holding the same Nats-Msg-Id. Unreadable is logged.
func (w *Worker) storedResult(ctx context.Context, j *job, seq uint64) (messages.Result, int) {
	var m *jetstream.RawStreamMsg
	err := backoff.Retry(func() error {
		s, err := w.js.Stream(ctx, w.cfg.Stream)
		if err == nil {
			m, err = s.GetMsg(ctx, seq)
		}
		return err
	}, backoff.WithContext(backoff.WithMaxRetries(newRetryBackoff(), 3), ctx))
	if err != nil {
		w.log.Warn("result already stored by an earlier delivery, and it cannot be read: counted as this delivery's", w.jobAttrs(j, "storedSeq", seq, "error", err)...)
		return messages.Result{}, storedUnreadable
	}
	if m.Subject != w.cfg.AckSubject && m.Subject != w.cfg.RejectedSubject {
		return messages.Result{}, storedOther
	}
	r, err := messages.DecodeResult(m.Data)
	if err != nil || r.RequestSeq != j.seq {
		return messages.Result{}, storedOther
	}
	return r, storedMine
}

// reservedMsgID refuses a request whose Nats-Msg-Id has one of the worker's
// own prefixes: JetStream deduplicates ids across the stream, so the request
// would take the place of one of the worker's messages.
func reservedMsgID(id string) error {
	if p, ok := messages.ReservedMsgID(id); ok {
		return fmt.Errorf("%w: Nats-Msg-Id %q starts with %q, which is reserved for the worker's own messages (results, progress records, confirmations); give the request another id", messages.ErrInvalid, id, p)
	}
	return nil
}

// publish stores a message in the stream with its Nats-Msg-Id, waiting for
// the PubAck and retrying until ctx ends.
func (w *Worker) publish(ctx context.Context, subject string, data []byte, msgID string) error {
	_, err := w.publishAck(ctx, subject, data, msgID)
	return err
}

// publishAck is publish returning the PubAck: Duplicate when a message with
// the same Nats-Msg-Id was stored before, whose sequence it then names.
func (w *Worker) publishAck(ctx context.Context, subject string, data []byte, msgID string) (*jetstream.PubAck, error) {
	retry := newRetryBackoff()
	for {
		ack, err := w.js.PublishMsg(ctx, &nats.Msg{Subject: subject, Data: data},
			jetstream.WithMsgID(msgID), jetstream.WithExpectStream(w.cfg.Stream))
		if err == nil || ctx.Err() != nil {
			return ack, err
		}
		w.log.Warn("publish failed; retrying", "subject", subject, "msgId", msgID, "error", err)
		_ = sleepCtx(ctx, retry.NextBackOff())
	}
}

// logOutcome logs the stored result r; local is this delivery's own, when a
// result stored earlier was kept instead.
func (w *Worker) logOutcome(j *job, r messages.Result, local *messages.Result) {
	attrs := []any{
		"requestId", r.RequestID, "seq", r.RequestSeq, "category", r.Category, "symbol", r.Symbol,
		"orderId", r.OrderID, "orderLinkId", r.OrderLinkID, "status", r.Status,
		"attempts", r.Attempts, "ambiguous", r.Ambiguous, "rateLimitWait", j.rateLimitWait,
		"latency", w.now().Sub(j.requestTime),
	}
	if r.RetCode != nil {
		attrs = append(attrs, "retCode", *r.RetCode)
	}
	if j.all != nil {
		attrs = append(attrs, "cancelAll", true, "orders", len(r.Orders))
		if r.OrdersComplete != nil {
			attrs = append(attrs, "ordersComplete", *r.OrdersComplete)
		}
	}
	switch r.Status {
	case messages.StatusInvalid:
		attrs = append(attrs, "error", r.Error)
	case messages.StatusFailed:
		attrs = append(attrs, "error", r.LastError)
	case messages.StatusRejected:
		attrs = append(attrs, "retMsg", r.RetMsg)
	}
	if local != nil {
		attrs = append(attrs, "storedResultKept", true, "thisDeliveryStatus", local.Status,
			"thisDeliveryAmbiguous", local.Ambiguous, "deliveries", local.Deliveries)
		w.log.Info("cancel "+string(r.Status)+" (the result stored by an earlier delivery was kept)", attrs...)
		return
	}
	w.log.Info("cancel "+string(r.Status), attrs...)
}

func (w *Worker) jobAttrs(j *job, extra ...any) []any {
	return append([]any{"requestId", j.requestID, "seq", j.seq, "category", j.req.Category, "symbol", j.req.Symbol,
		"orderId", j.req.OrderID, "orderLinkId", j.req.OrderLinkID, "attempts", j.attempts}, extra...)
}
