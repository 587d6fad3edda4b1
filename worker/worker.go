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
	// degraded says, for Ready's detail, what is off because the stream
	// lacks an optional subject, and which subject to add (set by Setup).
	degraded []string

	held     *heldSet
	answered *seqMemory
	released *seqMemory // seq -> deliveries when released unsent
	// gw is the only door to Bybit.
	gw *gateway

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
	// routes: what each input subject means (cancel or cancel-all, and
	// the account of an account's own subject).
	routes map[string]route
}

// Stats are counters a caller (the demo, tests) can read while the worker runs.
type Stats struct {
	Received    atomic.Int64
	Redelivered atomic.Int64
	RateLimited atomic.Int64
}

// account is a configured account and its clock-resync state.
type account struct {
	name   string
	client *bybit.Client
	limits map[string]int
	group  string
	wsURL  string

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
		accounts[DefaultAccount] = &account{name: DefaultAccount, client: client, limits: cfg.Limits, group: DefaultAccount, wsURL: cfg.WSURL}
	}
	for name, a := range cfg.Accounts {
		limits := maps.Clone(cfg.Limits)
		maps.Copy(limits, a.Limits)
		group := a.LimitGroup
		if group == "" {
			group = name
		}
		accounts[name] = &account{name: name, client: a.Client, limits: limits, group: group, wsURL: a.WSURL}
	}
	if len(accounts) == 0 {
		return nil, errors.New("worker: no Bybit account: pass a client or Config.Accounts")
	}
	metrics := NewMetrics(cfg.Registerer)
	w := &Worker{
		accounts: accounts,
		metrics:  metrics,
		gw:       newGateway(cfg, metrics),
		cfg:      cfg,
		log:      cfg.Logger,
		now:      cfg.Now,
		js:       js,
		held:     newHeldSet(),
		answered: newSeqMemory(memorySize),
		released: newSeqMemory(memorySize),
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
	w.ready.Store(true)
	w.log.Info("worker started", "stream", w.cfg.Stream, "consumer", w.cfg.Consumer,
		"ackWait", w.consumer.AckWait, "maxDeliver", w.consumer.MaxDeliver, "maxAckPending", w.maxHeld,
		"confirm", w.confirm != nil)
	puller{cons: w.cons, held: w.held, max: w.maxHeld, log: w.log, ban: w.gw.ban, outliveStop: true, accept: w.accept}.run(ctx)

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
	w.jobs.Wait()
	<-confirmDone
	stopHB()
	<-hbDone
	<-sampleDone
	w.log.Info("worker stopped")
	return nil
}

// heartbeatLoop keeps every held message alive with one ticker, at a third of
// AckWait, wherever it waits (queue, rate limit, backoff, PubAck).
func (w *Worker) heartbeatLoop(ctx context.Context) { w.held.heartbeatLoop(ctx, w.consumer.AckWait) }

// sleepCtx waits for d, or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	return sleepOrChange(ctx, d, nil, nil)
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
		batch = w.gw.pacer(a, budget{endpointCancelBatch, category})
	}
	l := newLane(key, a, w.gw.pacer(a, budget{endpointCancel, category}), batch)
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

// dispatch takes work off one lane as budget allows: the ban gate, then the
// single-cancel budget or, when that is spent, the batch budget (both are
// spent, so a burst drains at their sum), then the process-wide IP limit and
// one of the WORKER_CONCURRENCY request slots.
func (w *Worker) dispatch(l *lane) {
	defer w.laneWG.Done()
	ctx, cancel := w.untilStopping()
	defer cancel()
	for l.waitWork(ctx) {
		probe, err := w.gw.enter(ctx)
		if err != nil {
			return
		}
		p, slots, units := w.nextRequest(l)
		if len(units) == 0 {
			w.gw.handBack(probe)
			if w.waitBudget(ctx, l) != nil {
				return
			}
			continue
		}
		units = w.dropExpired(units)
		if len(units) == 0 {
			// Nothing to send: a probe proves nothing without a request.
			p.unreserve(slots)
			w.gw.handBack(probe)
			continue
		}
		if len(slots) > len(units) {
			p.unreserve(slots[len(units):])
			slots = slots[:len(units)]
		}
		b := budget{endpointCancel, l.key.category}
		if p == l.batch {
			b.endpoint = endpointCancelBatch
		}
		ps, err := w.gw.admit(ctx, b, p, slots, probe, true)
		if err != nil {
			w.requeueUnits(units)
			if errors.Is(err, errBanned) {
				continue
			}
			return
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
		if p == l.batch {
			go w.sendBatch(l, units, ps)
		} else {
			go w.sendSingle(l, units[0], ps)
		}
	}
}

// nextRequest reserves budget for the next request of the lane: a single
// cancel while that budget lasts, else a batch sized to the batch budget
// left. It returns no units when both budgets are spent.
func (w *Worker) nextRequest(l *lane) (*pacer, []*slot, []*unit) {
	if got := l.single.reserve(1); got != nil {
		units := l.take(1, false)
		if len(units) == 0 {
			l.single.unreserve(got)
		}
		return l.single, got, units
	}
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
		return ctx.Err()
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
			if w.now().Sub(j.stored) <= w.cfg.MaxAge {
				jobs = append(jobs, j)
				continue
			}
			go w.apply(j, nil, w.decide(j, event{kind: evExpired, why: "be sent"}))
		}
		if len(jobs) > 0 {
			u.jobs = jobs
			kept = append(kept, u)
		}
	}
	return kept
}

func (w *Worker) requeueUnits(units []*unit) {
	for _, u := range units {
		for _, j := range u.jobs {
			if !j.lane.push(j, true) {
				w.giveBack(j, 0, "shutdown")
			}
		}
	}
}

func toRequest(c messages.Cancel) bybit.CancelOrderRequest {
	return bybit.CancelOrderRequest{Category: c.Category, Symbol: c.Symbol, OrderID: c.OrderID, OrderLinkID: c.OrderLinkID, OrderFilter: c.OrderFilter}
}

// sendSingle makes one POST /v5/order/cancel for a unit and acts on it.
func (w *Worker) sendSingle(l *lane, u *unit, ps *pass) {
	w.markSent(u)
	res, err := l.account.client.CancelOrder(w.sendCtx, toRequest(u.primary().req))
	ps.done(rateLimitOf(res.RateLimit, err), err)
	w.settle(l.single, u, res, err)
}

// sendBatch makes one POST /v5/order/cancel-batch and maps each order's
// answer back to its unit by position.
func (w *Worker) sendBatch(l *lane, units []*unit, ps *pass) {
	reqs := make([]bybit.CancelOrderRequest, len(units))
	for i, u := range units {
		w.markSent(u)
		reqs[i] = toRequest(u.primary().req)
	}
	res, err := l.account.client.CancelBatch(w.sendCtx, l.key.category, reqs)
	ps.done(rateLimitOf(res.RateLimit, err), err)
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

// rateLimitOf is the rate-limit state a call's answer carried: its error's
// when it failed.
func rateLimitOf(answer bybit.RateLimit, err error) bybit.RateLimit {
	if err != nil {
		rl, _ := bybit.RateLimitOf(err)
		return rl
	}
	return answer
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
				w.giveBack(j, 0, "shutdown")
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

// settle decides and acts for every cancel of a unit: they share the
// exchange's answer.
func (w *Worker) settle(p *pacer, u *unit, res bybit.CancelOrderResult, err error) {
	for _, j := range u.jobs {
		w.apply(j, p, w.decide(j, answered(res, err)))
	}
}

// apply carries out a decision for j; p is the budget its attempt spent (nil:
// it made none). A cancel's requeue puts it back in its lane; a cancel-all
// runs its calls in its own goroutine, so apply only reports its requeue
// (true) and the caller waits d.delay and calls again.
func (w *Worker) apply(j *job, p *pacer, d decision) (again bool) {
	j.ambiguous = j.ambiguous || d.ambiguous
	switch d.action {
	case actAck, actTerm:
		// Bybit answered: the key works; a cancel went through: the lane's
		// rate-limit backoff starts over.
		switch d.result.Status {
		case messages.StatusCancelled:
			j.lane.resetRateLimitBackoff()
			w.keyWorks(j.lane.account)
		case messages.StatusNotOpen:
			w.keyWorks(j.lane.account)
		}
		w.finish(j, d)
		return false
	case actNak:
		if d.reason == "retry_budget" {
			w.metrics.retries.WithLabelValues(d.reason).Inc()
			w.log.Warn("retry budget spent; released for a later delivery", w.jobAttrs(j, "error", j.retry.lastErr, "delay", d.delay)...)
		}
		w.release(j, d.delay)
		return false
	}
	w.metrics.retries.WithLabelValues(d.reason).Inc()
	w.retryEffects(j, p, d)
	if j.all != nil {
		return true
	}
	delay := d.delay
	if d.class == bybit.ClassRateLimited {
		// The budget's block holds the lane until the reset; the request
		// waits for it at the front of its queue.
		delay = 0
	}
	w.requeue(j, delay)
	return false
}

// retryEffects is what a requeue does beyond waiting: a rate limit blocks
// the budget (or the IP pacer) until its reset, a clock skew resyncs, an IP
// ban gives back what waits when BanRelease is on.
func (w *Worker) retryEffects(j *job, p *pacer, d decision) {
	switch d.class {
	case bybit.ClassRateLimited:
		w.rateLimited(j, p, d)
	case bybit.ClassIPRateLimited:
		w.stats.RateLimited.Add(1)
		w.gw.blockIP(d.rateLimitReset)
		w.log.Warn("over Bybit's IP rate limit (10018); every request waits", w.jobAttrs(j, "until", d.rateLimitReset)...)
	case bybit.ClassClockSkew:
		w.resync(j.lane.account, j.sentAt)
	case bybit.ClassIPBan:
		if w.cfg.BanRelease && j.all == nil {
			w.releaseAllQueued(w.cfg.BanPause)
		}
	default:
		w.log.Debug("transient failure; retrying", w.jobAttrs(j, "error", j.retry.lastErr, "delay", d.delay)...)
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

// requeue puts j back at the front of its lane after delay.
func (w *Worker) requeue(j *job, delay time.Duration) {
	if delay <= 0 {
		if !j.lane.push(j, true) {
			w.giveBack(j, 0, "shutdown")
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
			w.giveBack(j, 0, "shutdown")
		}
	}()
}

// releaseAllQueued gives every queued message back to the consumer, for other
// replicas (on other IPs) to take during an IP ban.
func (w *Worker) releaseAllQueued(delay time.Duration) {
	w.lanesMu.Lock()
	lanes := make([]*lane, 0, len(w.lanes))
	for _, l := range w.lanes {
		lanes = append(lanes, l)
	}
	w.lanesMu.Unlock()
	for _, l := range lanes {
		for _, j := range l.drain() {
			w.giveBack(j, delay, "ip_ban")
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

// giveBack gives j back unsent for another delivery (or answers it on its
// last one), why naming the cause.
func (w *Worker) giveBack(j *job, delay time.Duration, why string) {
	w.apply(j, nil, w.decide(j, event{kind: evGiveBack, why: why, delay: delay}))
}

// release gives a message back for another delivery with NakWithDelay.
func (w *Worker) release(j *job, delay time.Duration) {
	defer w.jobs.Done()
	if j.prog != nil {
		w.recordReleased(j)
	}
	msg := j.letGo()
	if j.attempts == 0 && !j.ambiguous {
		w.released.put(j.seq, j.deliveries)
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
	w.held.remove(&j.heldMsg)
}

// finish publishes the result, waits for its PubAck, then acks the request
// (terminates it, for actTerm). A publish that fails is retried with the same
// Nats-Msg-Id while the worker lives; the message stays held and heartbeated
// meanwhile.
func (w *Worker) finish(j *job, d decision) {
	defer w.jobs.Done()
	r := d.result
	if j.prog != nil {
		// A cancel-all lists what every call of every delivery cancelled,
		// whichever way it ends.
		r.Orders = j.prog.orders
		r.OrdersComplete = new(j.prog.complete())
	}
	r.Attempts = j.attempts
	r.Ambiguous = j.ambiguous
	r.RateLimitWaitMs = j.rateLimitWait.Milliseconds()
	r.Deliveries = j.deliveries
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
	if err := w.publish(ctx, subject, data, r.MsgID()); err != nil {
		// The result may or may not be stored: the redelivery finds out
		// (the Nats-Msg-Id keeps it from being stored twice).
		w.log.Error("result not published before shutdown; the request will be redelivered", w.jobAttrs(j, "error", err)...)
		_ = j.letGo().Nak()
		w.held.remove(&j.heldMsg)
		return
	}
	w.metrics.observeResult(r, w.now())
	w.answered.put(j.seq, 1)

	msg := j.letGo()
	if d.action == actTerm {
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
	w.held.remove(&j.heldMsg)
	w.logOutcome(j, r)
}

// publish stores a message in the stream with its Nats-Msg-Id, waiting for
// the PubAck and retrying until ctx ends.
func (w *Worker) publish(ctx context.Context, subject string, data []byte, msgID string) error {
	retry := newRetryBackoff()
	for {
		_, err := w.js.PublishMsg(ctx, &nats.Msg{Subject: subject, Data: data},
			jetstream.WithMsgID(msgID), jetstream.WithExpectStream(w.cfg.Stream))
		if err == nil || ctx.Err() != nil {
			return err
		}
		w.log.Warn("publish failed; retrying", "subject", subject, "msgId", msgID, "error", err)
		_ = sleepCtx(ctx, retry.NextBackOff())
	}
}

func (w *Worker) logOutcome(j *job, r messages.Result) {
	attrs := []any{
		"requestId", r.RequestID, "seq", r.RequestSeq, "category", r.Category, "symbol", r.Symbol,
		"orderId", r.OrderID, "orderLinkId", r.OrderLinkID, "status", r.Status,
		"attempts", r.Attempts, "ambiguous", r.Ambiguous, "rateLimitWait", j.rateLimitWait,
		"latency", w.now().Sub(j.stored),
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
	w.log.Info("cancel "+string(r.Status), attrs...)
}

func (w *Worker) jobAttrs(j *job, extra ...any) []any {
	return append([]any{"requestId", j.requestID, "seq", j.seq, "category", j.req.Category, "symbol", j.req.Symbol,
		"orderId", j.req.OrderID, "orderLinkId", j.req.OrderLinkID, "attempts", j.attempts}, extra...)
}
