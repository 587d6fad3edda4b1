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

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit"
)

// memory sizes: sequences answered (acked on redelivery without a second
// exchange call) and released without being sent (not ambiguous when they
// come back).
const memorySize = 1 << 16

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
	// gw is the only door to Bybit.
	gw  *gateway
	pub publisher

	lanesMu sync.Mutex
	lanes   map[laneKey]*lane
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
	// RateLimited counts rate-limit answers (10006, 10018, ...), each
	// counted after its block is in place: once it has grown, every later
	// request of the blocked budget (or, for 10018, every request) waits.
	RateLimited atomic.Int64
	// MsgIDCollisions counts results whose Nats-Msg-Id the stream already
	// held for another message, stored under their fallback id instead.
	MsgIDCollisions atomic.Int64
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
	if cfg.now == nil {
		cfg.now = time.Now
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
	metrics := NewMetrics(cfg.Registerer)
	w := &Worker{
		pub:      publisher{js: js, stream: cfg.Stream, log: cfg.Logger},
		accounts: accounts,
		metrics:  metrics,
		gw:       newGateway(cfg, metrics),
		cfg:      cfg,
		log:      cfg.Logger,
		now:      cfg.now,
		js:       js,
		held:     newHeldSet(cfg.now),
		answered: newSeqMemory(memorySize),
		released: newSeqMemory(memorySize),
		lanes:    map[laneKey]*lane{},
		stopping: make(chan struct{}),
		routes:   cfg.routes(),
	}
	// The share is read when a budget is first used: Setup sets it to 1
	// in a pinned fleet.
	w.gw.newBudget = func(a *account, key string) *pacer {
		return budgetMaker{share: w.cfg.LimitShare, now: w.now, log: w.log, limit: metrics.budgetLimit}.newBudget(a, key)
	}
	if cfg.Confirm {
		w.confirm = newConfirmer(confirmDeps{
			js: js, cfg: cfg, accounts: accounts, gw: w.gw, pub: w.pub, metrics: metrics, log: w.log, now: w.now,
			refused: func(a *account, err error) bool {
				if !w.otherAccountUsable(a.name) {
					return false
				}
				w.markStartupProblem(a, err)
				return true
			},
		})
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
	case !w.gw.ban.bannedUntil().IsZero():
		until := w.gw.ban.bannedUntil()
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

// DCPStatus describes every account's dead-man switch for /readyz: ""
// when no account arms one.
func (w *Worker) DCPStatus() string {
	var parts []string
	for _, name := range sortedAccountNames(w.accounts) {
		a := w.accounts[name]
		if a.dcp == nil {
			continue
		}
		_, s := w.confirm.dcpArmed(a)
		parts = append(parts, "account "+name+": "+s)
	}
	if len(parts) == 0 {
		return ""
	}
	return "dead-man switch (Bybit DCP): " + strings.Join(parts, "; ")
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
	if err := w.setupStream(ctx); err != nil {
		return err
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
	w.setupFleet(isPinned(cons.CachedInfo().Config))
	return nil
}

// setupStream creates or checks the stream. A stream of the operator's may
// lack the optional subjects: what needs one is off, said once here and on
// Ready's detail.
func (w *Worker) setupStream(ctx context.Context) error {
	scfg, err := EnsureStream(ctx, w.js, w.cfg)
	if err != nil {
		return err
	}
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
	return nil
}

// setupFleet follows this replica's pins on the bound consumers (pinned:
// the cancel consumer has the priority group) and lets only the active
// replica of a fleet call Bybit.
func (w *Worker) setupFleet(pinned bool) {
	w.fleet = newFleet(fleetDeps{
		js: w.js, stream: w.cfg.Stream, cons: w.cons, name: w.cfg.Consumer, now: w.now, log: w.log,
		active: w.metrics.active.WithLabelValues(w.cfg.Consumer),
		ban:    w.gw.ban, banRelease: w.cfg.BanRelease,
		release: func() { w.releaseAllQueued(handOverDelay, "lease") },
		accept:  w.accept,
	}, pinned, leaseOf(w.consumer.AckWait, w.consumer.PinnedTTL), w.cfg.LimitShare)
	if pinned {
		w.cfg.LimitShare = 1 // one replica works at a time, at the whole budget
	}
	// A paced call checks the pin of the consumer it serves.
	w.gw.active = func(ctx context.Context) error {
		if w.fleet.warm(ctx) != nil || !w.fleet.mayCall(ctx) {
			return errNotActive
		}
		return nil
	}
	if w.confirm != nil {
		w.fleet.confirm = newPin(w.confirm.pinned, w.cfg.ConfirmConsumer(), leaseOf(w.confirm.settings.AckWait, w.confirm.settings.PinnedTTL), w.now)
	}
	if w.fleet.follows() {
		cons := w.confirm.cons
		w.fleet.cancel.elsewhere = func(ctx context.Context) bool { return w.fleet.confirmElsewhere(ctx, cons) }
	}
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
		err := preflight(ctx, a.client, w.log.With("account", name), w.now)
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
			w.confirm.run(ctx, w.maxHeld, w.fleet.confirm, w.fleet.waitConfirm)
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
	w.pullRequests(ctx)

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
			w.giveBack(j, 0, "shutdown")
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

// pullRequests pulls the requests' consumer while fewer than MaxAckPending
// are held, not during an IP ban's pause (a replica of a fleet keeps pulling
// to keep its pin, see keepPin).
func (w *Worker) pullRequests(ctx context.Context) {
	puller{cons: w.cons, held: w.held, max: w.maxHeld, log: w.log, ban: w.gw.ban, accept: w.accept,
		pin: w.fleet.cancel, now: w.now, keepPin: w.fleet.keepPin,
		renew:   func(ctx context.Context) { w.fleet.renew(ctx, w.cons) },
		renewal: w.fleet.renewal,
		pulled:  func(start time.Time, err error) { w.fleet.pulled(start, "", err) },
		standBy: func() {
			w.log.Info("the consumer pinned another replica: this one stands by", "consumer", w.cfg.Consumer)
		},
	}.run(ctx)
}

// heartbeatLoop keeps every held message alive with one ticker, at a third of
// AckWait, wherever it waits (queue, rate limit, backoff, PubAck).
func (w *Worker) heartbeatLoop(ctx context.Context) {
	w.held.heartbeatLoop(ctx, w.js.Conn(), w.consumer.AckWait)
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

// sendCtxOr is the send context once Run made it, ctx before.
func (w *Worker) sendCtxOr(ctx context.Context) context.Context {
	if w.sendCtx != nil {
		return w.sendCtx
	}
	return ctx
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

// sampleLoop refreshes the gauges that are read rather than counted: the
// consumer's backlog, the oldest held request, the clock offset, the ban.
func (w *Worker) sampleLoop(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		w.sample(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (w *Worker) sample(ctx context.Context) {
	m := w.metrics
	n, _ := w.held.len()
	m.held.Set(float64(n))
	var oldest time.Time
	for _, j := range w.held.snapshot() {
		if oldest.IsZero() || j.stored.Before(oldest) {
			oldest = j.stored
		}
	}
	if oldest.IsZero() {
		m.oldestAge.Set(0)
	} else {
		m.oldestAge.Set(w.now().Sub(oldest).Seconds())
	}
	var worst time.Duration
	for _, a := range w.accounts {
		if off, ok := a.client.ClockOffset(); ok && off.Abs() >= worst.Abs() {
			worst = off
		}
	}
	m.clockOffset.Set(worst.Seconds())
	if w.gw.ban.bannedUntil().IsZero() {
		m.banned.Set(0)
	} else {
		m.banned.Set(1)
	}
	ictx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if info, err := w.cons.Info(ictx); err == nil {
		m.backlog.Set(float64(info.NumPending))
	}
	if s, err := w.js.Stream(ictx, w.cfg.Stream); err == nil {
		info := s.CachedInfo()
		m.storeBytes.Set(float64(info.State.Bytes))
		m.storeMaxBytes.Set(float64(max(info.Config.MaxBytes, 0)))
	}
}
