package worker

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit"
)

// endpoint names one of Bybit's endpoints as its rate limits count it.
type endpoint string

// The endpoints the worker calls; with a category they are the keys of
// Config.Limits ("cancel/linear").
const (
	endpointCancel      endpoint = "cancel"
	endpointCancelBatch endpoint = "cancel-batch"
	endpointCancelAll   endpoint = "cancel-all"
	// The confirmation lookups: one limit per UID for every category.
	endpointRealtime endpoint = LookupRealtime
	endpointHistory  endpoint = LookupHistory
)

// budget is one of Bybit's rate limits: an endpoint in a category.
type budget struct {
	endpoint endpoint
	// category is the category the call is for; the lookups' limit spans
	// every category (key leaves it out), their metrics do not.
	category string
}

// key is the budget's key in Config.Limits.
func (b budget) key() string {
	if b.endpoint == endpointRealtime || b.endpoint == endpointHistory {
		return string(b.endpoint)
	}
	return string(b.endpoint) + "/" + b.category
}

// gateway is the only door to Bybit: every call — a lane's single or batch
// cancel, a cancel-all, a confirmation lookup — waits at the ban gate, for
// its budget, for the process-wide IP limit and (but a lookup) for one of
// the request slots, and books what its answer showed on the way out.
type gateway struct {
	log     *slog.Logger
	metrics *Metrics
	now     func() time.Time
	// banPause is BanPause; banRelease is BanRelease (see enterLane).
	banPause   time.Duration
	banRelease bool

	ban   *banGate
	ip    *pacer
	slots chan struct{}

	mu     sync.Mutex
	pacers map[string]*pacer // by limit group and budget key
	// newBudget makes the pacer of one of an account's budgets (budgets.go:
	// learned from X-Bapi-Limit, under its ceiling), by its key.
	newBudget func(a *account, key string) *pacer
	// active, when set, says whether this replica may make a call now (the
	// fleet: only the active replica sends).
	active func(ctx context.Context) error
}

func newGateway(cfg Config, m *Metrics) *gateway {
	return &gateway{
		log: cfg.Logger, metrics: m, now: cfg.now, banPause: cfg.BanPause, banRelease: cfg.BanRelease,
		ban: newBanGate(cfg.now), ip: newPacer(cfg.IPLimit, cfg.now), slots: make(chan struct{}, cfg.Concurrency),
		pacers: map[string]*pacer{},
	}
}

// pacer returns the pacer of one of an account's budgets, shared by its
// limit group.
func (g *gateway) pacer(a *account, b budget) *pacer {
	// Budgets that Bybit counts together share one pacer (budgetKey).
	key := a.group + "/" + budgetKey(b.key())
	g.mu.Lock()
	defer g.mu.Unlock()
	p, ok := g.pacers[key]
	if !ok {
		p = g.newBudget(a, b.key())
		g.pacers[key] = p
	}
	return p
}

// enter waits at the ban gate. probe is true for the one request that tests
// whether a ban is over: its pass must end with done, or be handed back.
func (g *gateway) enter(ctx context.Context) (probe bool, err error) {
	return g.ban.wait(ctx, false)
}

// errBanRelease: an IP ban's pause is in force and BanRelease is on; what
// waits is given back for replicas on other IPs instead of waiting it out.
var errBanRelease = errors.New("an IP ban's pause: what waits is released to other replicas")

// enterLane is enter for a lane's cancels. With BanRelease it does not wait
// out a ban's pause: it returns errBanRelease at once, also when the pause
// begins while it waits (another lane's probe banned again), so that the
// lane gives back whatever reaches it during the pause — the request the
// ban answered, one requeued from a wait for a slot, one a pull in flight
// delivered.
func (g *gateway) enterLane(ctx context.Context) (probe bool, err error) {
	return g.ban.wait(ctx, g.banRelease)
}

// handBack gives back a probe whose holder sends nothing: only an answered
// request lifts a ban, so the next request to pass the gate probes.
func (g *gateway) handBack(probe bool) {
	if probe {
		g.ban.handBack()
	}
}

// errBanned: a ban began while a request waited for the IP limit or a slot.
var errBanned = errors.New("an IP ban began")

// pass is one request's way through the gateway, from admit to done.
type pass struct {
	g      *gateway
	budget budget
	p      *pacer
	held   []*slot // of p, reserved by the caller
	probe  bool
	slot   bool
	ipDone func()
	// sentAt is on the worker's clock (the worker's clock), which dates the
	// pacers' slots; start is the monotonic clock, for the latency metric.
	sentAt time.Time
	start  time.Time
}

// admit takes a request that passed the gate (probe) and holds budget b (the
// slots held of its pacer p) past the IP limit and, with slot, one of the
// request slots. When ctx ends first, or a ban began meanwhile (errBanned:
// enter again), what it held is given back.
func (g *gateway) admit(ctx context.Context, b budget, p *pacer, held []*slot, probe, slot bool) (*pass, error) {
	giveBack := func() {
		p.unreserve(held)
		g.handBack(probe)
	}
	ipDone, _, err := g.ip.acquire(ctx)
	if err != nil {
		giveBack()
		return nil, err
	}
	if slot {
		select {
		case g.slots <- struct{}{}:
		case <-ctx.Done():
			ipDone()
			giveBack()
			return nil, ctx.Err()
		}
	}
	if !probe && g.ban.closed() {
		// A ban began while this request waited.
		ipDone()
		if slot {
			<-g.slots
		}
		giveBack()
		return nil, errBanned
	}
	if slot {
		g.metrics.inFlight.Inc()
	}
	return &pass{g: g, budget: b, p: p, held: held, probe: probe, slot: slot, ipDone: ipDone}, nil
}

// keep gives back the budget held beyond n requests' worth (a batch that
// lost orders at the last look).
func (ps *pass) keep(n int) {
	if len(ps.held) > n {
		ps.p.unreserve(ps.held[n:])
		ps.held = ps.held[:n]
	}
}

// cancel gives back all the pass holds: nothing is sent after all.
func (ps *pass) cancel() {
	ps.p.unreserve(ps.held)
	ps.ipDone()
	if ps.slot {
		<-ps.g.slots
		ps.g.metrics.inFlight.Dec()
	}
	ps.g.handBack(ps.probe)
}

// send marks the request as going out now.
func (ps *pass) send() {
	ps.p.markSent(ps.held)
	ps.sentAt = ps.g.now()
}

// done is the bookkeeping every request shares, whichever path sent it: an
// IP ban's pause, the budget's view of Bybit's headers, freeing what the
// request held, metrics, and the end of a ban probe.
func (ps *pass) done(rl bybit.RateLimit, err error) {
	g := ps.g
	if err != nil && bybit.ClassOf(err) == bybit.ClassIPBan {
		// Close the gate before the slot is freed, so that no request
		// waiting for the slot slips out during the ban.
		g.startBan(err)
	}
	// Book what the headers say before the slot is freed, so the next
	// request already counts with it.
	ps.p.observe(rl, ps.sentAt)
	ps.p.answered(ps.held)
	ps.ipDone()
	if ps.slot {
		<-g.slots
		g.metrics.inFlight.Dec()
	}
	endpoint, category := string(ps.budget.endpoint), ps.budget.category
	g.metrics.observeRequest(endpoint, category, g.now().Sub(ps.sentAt), err)
	g.metrics.observeBudget(endpoint, category, rl)
	if ps.probe {
		g.endProbe(err)
	}
}

// call makes one exchange call of budget b (of pacer p) through the whole
// gateway; sent is false when ctx ended first. With slot it takes one of the
// request slots (the lookups, which run beside the cancels, take none).
func (g *gateway) call(ctx context.Context, b budget, p *pacer, slot bool, send func() (bybit.RateLimit, error)) (sent bool, err error) {
	for {
		probe, err := g.enter(ctx)
		if err != nil {
			return false, err
		}
		held := p.reserve(1)
		if held == nil {
			// Budget spent: wait for it without the probe, as a lane does.
			g.handBack(probe)
			if err := p.waitRoom(ctx); err != nil {
				return false, err
			}
			continue
		}
		ps, err := g.admit(ctx, b, p, held, probe, slot)
		if errors.Is(err, errBanned) {
			continue
		}
		if err != nil {
			return false, err
		}
		if g.active != nil {
			if err := g.active(ctx); err != nil {
				ps.cancel()
				return false, err
			}
		}
		ps.send()
		rl, err := send()
		ps.done(rl, err)
		return true, err
	}
}

// blockIP holds every request until t: Bybit said the IP's limit is spent.
func (g *gateway) blockIP(t time.Time) { g.ip.blockUntil(t) }

// startBan stops every request of the process for the ban pause.
func (g *gateway) startBan(err error) {
	until := g.now().Add(g.banPause)
	if g.ban.ban(until) {
		g.metrics.banPauses.Inc()
		g.log.Error("Bybit answered HTTP 403 without an envelope (its IP ban, \"access too frequent\", or its CDN refusing this address): every request stops; one probe follows the pause", "until", until, "error", err)
	}
}

// endProbe ends a ban probe with what its request showed: banned again (a
// new pause), or answered by Bybit (the ban is over). A request that got no
// answer (it failed on the way) shows neither: the probe passes on.
func (g *gateway) endProbe(err error) {
	var apiErr *bybit.APIError
	var httpErr *bybit.HTTPError
	switch {
	case err != nil && bybit.ClassOf(err) == bybit.ClassIPBan:
		g.ban.report(true, g.banPause)
		g.metrics.banPauses.Inc()
		g.log.Error("still banned after the pause; pausing again", "pause", g.banPause)
	case err == nil || errors.As(err, &apiErr) || errors.As(err, &httpErr):
		g.ban.report(false, g.banPause)
		g.log.Info("IP ban over: the probe request went through; resuming")
	default:
		g.ban.handBack()
		g.log.Warn("the ban probe got no answer; the next request probes again", "error", err)
	}
}

// banGate stops every request of the process during an IP ban. After the
// pause, one request (the probe) goes through and decides whether to resume.
type banGate struct {
	now     func() time.Time
	mu      sync.Mutex
	until   time.Time
	probing bool
	changed chan struct{}
}

func newBanGate(now func() time.Time) *banGate {
	return &banGate{now: now, changed: make(chan struct{})}
}

// wait returns when a request may be sent; probe is true for the one request
// that tests whether a ban is over, which must report its outcome. With
// release it returns errBanRelease instead of waiting out a pause.
func (g *banGate) wait(ctx context.Context, release bool) (probe bool, err error) {
	for {
		g.mu.Lock()
		if g.until.IsZero() {
			g.mu.Unlock()
			return false, nil
		}
		var d time.Duration
		now := g.now()
		switch {
		case now.Before(g.until):
			if release {
				g.mu.Unlock()
				return false, errBanRelease
			}
			d = g.until.Sub(now)
		case !g.probing:
			g.probing = true
			g.mu.Unlock()
			return true, nil
		}
		changed := g.changed
		g.mu.Unlock()
		if err := sleepOrChange(ctx, d, changed, nil); err != nil {
			return false, err
		}
	}
}

// waitOpen returns once no ban's pause is in force: the ban is over, or its
// pause is and a probe decides (it needs a request to send: messages pulled
// meanwhile wait for it at the gate).
func (g *banGate) waitOpen(ctx context.Context) error {
	for {
		g.mu.Lock()
		var left time.Duration
		if !g.until.IsZero() {
			left = g.until.Sub(g.now())
		}
		changed := g.changed
		g.mu.Unlock()
		if left <= 0 {
			return nil
		}
		if err := sleepOrChange(ctx, left, changed, nil); err != nil {
			return err
		}
	}
}

// ban starts or extends a ban until t; it reports whether a new pause
// started (none was in force).
func (g *banGate) ban(t time.Time) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	started := g.until.IsZero()
	if t.After(g.until) {
		g.until = t
	}
	g.wakeLocked()
	return started
}

// report ends a probe: banned again (a new pause), or open.
func (g *banGate) report(banned bool, pause time.Duration) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.probing = false
	if banned {
		g.until = g.now().Add(pause)
	} else {
		g.until = time.Time{}
	}
	g.wakeLocked()
}

// handBack ends a probe that showed nothing (its holder had no request to
// send, or the request got no answer): the ban stays, and the next request
// to pass wait probes instead.
func (g *banGate) handBack() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.probing = false
	g.wakeLocked()
}

// closed reports whether a ban is in force (or its probe under way).
func (g *banGate) closed() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return !g.until.IsZero()
}

// bannedUntil is the end of the current ban, zero if none.
func (g *banGate) bannedUntil() time.Time {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.until
}

func (g *banGate) wakeLocked() {
	close(g.changed)
	g.changed = make(chan struct{})
}
