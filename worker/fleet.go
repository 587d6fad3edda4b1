package worker

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// A fleet: N replicas with identical settings on one consumer, one of them
// active at the account's whole budget.
//
// The consumers carry JetStream's pinned-client priority policy (nats-server
// ≥ 2.11) with the group PriorityGroup: the server delivers only to the pull
// requests of the one replica it pinned; the others' pulls wait (standbys).
// The server drops a pin when PinnedTTL passes without a pull carrying it
// (a kill -9), when the consumer's leader changes, or on an UNPIN (a
// SIGTERM's hand-over); the next pull of another replica is then pinned.
//
// A pin decides who receives, not who sends: a replica can lose it without
// being told at once. So each replica holds a lease: it starts no request
// once min(AckWait, PinnedTTL) − 1 s has passed since its last confirmed
// contact with the server (a flush round trip each second, and a pull the
// server took with its pin), or as soon as a pull is refused for a pin that
// is no longer its own; it then releases what it holds, unsent. Requests
// already in flight finish; the replica that takes over answers a
// redelivery of theirs ambiguous (NumDelivered > 1), as it does a message
// released unsent by the old replica: it cannot know that one was not sent.

// PriorityGroup is the priority group the worker's consumers pin replicas
// through.
const PriorityGroup = "cancel-worker"

// DefaultPinnedTTL is how long a pin outlives its replica's last pull
// (NATS_PINNED_TTL): the takeover time after a kill -9.
const DefaultPinnedTTL = 5 * time.Second

// leaseOf is how long a replica may go on starting requests after its last
// confirmed contact: min(AckWait, PinnedTTL) − 1 s, both as the consumer
// has them (read back from its info, not the worker's settings), and never below twice
// the contact interval (an AckWait under 3 s), or it would lapse between
// two confirmations. It stays under PinnedTTL (at least 3 s), the time
// before the server can pin another replica: redeliveries go only to the
// pinned one.
func leaseOf(ackWait, pinnedTTL time.Duration) time.Duration {
	return max(min(ackWait, pinnedTTL), 3*pullInterval) - pullInterval
}

// pinnedConfig gives a consumer config the worker creates the fleet's
// priority group, its pins outliving a replica's last pull by ttl.
func pinnedConfig(cc jetstream.ConsumerConfig, ttl time.Duration) jetstream.ConsumerConfig {
	cc.PriorityPolicy = jetstream.PriorityPolicyPinned
	cc.PriorityGroups = []string{PriorityGroup}
	cc.PinnedTTL = ttl
	return cc
}

// isPinned reports whether a consumer pins replicas through PriorityGroup.
func isPinned(cc jetstream.ConsumerConfig) bool {
	return cc.PriorityPolicy == jetstream.PriorityPolicyPinned && slices.Contains(cc.PriorityGroups, PriorityGroup)
}

// pin follows this replica's pin on one consumer. The zero pin of a consumer
// without the priority group is always active (the shares apply there).
type pin struct {
	on       bool
	consumer string
	lease    time.Duration
	now      func() time.Time

	mu sync.Mutex
	id string // the pin id of the messages this replica received
	// renewed is the start of the last pull the server took with id: the
	// server's TTL started after it.
	renewed time.Time
	// startAt is when a replica newly pinned may start: one rate-limit
	// window after the pin came, so that Bybit's window never holds both
	// the last requests of the replica it took over from and its first —
	// unless takeover finds no sign of such a replica.
	startAt   time.Time
	unchecked bool // a new pin that takeover has not looked at yet
	lost      bool // a pull was refused: id is no longer the server's pin
	// elsewhere, when set, reports another sign of a replica at work for
	// takeover: the confirmation consumer, whose pin follows this one, in
	// another replica's hands or acked within the window.
	elsewhere func(ctx context.Context) bool
	// changed, when set, is told (outside mu) as soon as a message or a
	// refused pull changed the pin, or takeover let a new pin start at
	// once: whether the replica is active may have changed in the middle
	// of a pull, which ends up to a pull's wait later.
	changed func()
}

// takeoverWait is how long a newly pinned replica waits before its first
// request: Bybit's per-UID window.
const takeoverWait = time.Second

func newPin(on bool, consumer string, lease time.Duration, now func() time.Time) *pin {
	return &pin{on: on, consumer: consumer, lease: lease, now: now}
}

// pullWait is how long one pull of this consumer waits: pullInterval, or a
// quarter of the lease when that is shorter. A pull renews the pin as of its
// start, but the replica learns it only when the pull ends, so just before
// a pull ends its lease counts from the start of the one before: two pulls,
// three with a renewing pull's pause between them (see renewal), and a
// loaded host learns late that a pull ended (the server's word of its
// expiry reaches it late, see fetchOpts). With pulls of a full second and the
// shortest lease (2 s), two pulls 150 ms late ran the active replica's lease
// out and it gave back everything it held; a quarter of the lease leaves a
// quarter of it (half, between plain pulls) for pulls to end late.
func (p *pin) pullWait() time.Duration {
	if !p.on {
		return pullInterval
	}
	return min(pullInterval, p.lease/4)
}

// fetchOpts are the options of every pull of this consumer. The server
// expires the pull after pullWait and then says so (a 408), after every
// message it delivered to it, on the same connection; the pull ends there,
// or a second later should that never come. A pull ended on a clock of the
// client's (FetchContext) stopped reading while messages the server had
// delivered to it were still on their way, on a loaded host or a slow link:
// the server counts them delivered and hands them out again only after
// AckWait.
func (p *pin) fetchOpts() []jetstream.FetchOpt {
	opts := []jetstream.FetchOpt{jetstream.FetchMaxWait(p.pullWait())}
	if p.on {
		opts = append(opts, jetstream.FetchPriorityGroup(PriorityGroup))
	}
	return opts
}

// pulled records a pull started at start: the pin id its messages carried
// ("" none) and how it ended. It reports whether the replica now holds a
// pin (it always does without the priority group).
func (p *pin) pulled(start time.Time, seen string, err error) bool {
	if !p.on {
		return true
	}
	p.mu.Lock()
	held, changed := p.pulledLocked(start, seen, err)
	p.mu.Unlock()
	if changed && p.changed != nil {
		p.changed()
	}
	return held
}

// pulledLocked is pulled under mu; changed: the pin is new or lost.
func (p *pin) pulledLocked(start time.Time, seen string, err error) (held, changed bool) {
	switch {
	case errors.Is(err, jetstream.ErrPinIDMismatch):
		changed = !p.lost
		p.lost = true
	case seen != "":
		// Delivered to this replica: the server's pin is this one.
		if seen != p.id || p.lost {
			p.id, p.lost = seen, false
			p.startAt, p.unchecked = p.now().Add(takeoverWait), true
			changed = true
		}
		p.renewed = start
	case p.id != "" && !p.lost && (err == nil || errors.Is(err, nats.ErrTimeout)):
		// The server took the pull with the pin (a wrong one is refused).
		p.renewed = start
	}
	return p.id != "" && !p.lost, changed
}

// warmUntil is when a newly pinned replica may start (zero: now).
func (p *pin) warmUntil() time.Time {
	if !p.on {
		return time.Time{}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.id == "" || p.lost || !p.now().Before(p.startAt) {
		return time.Time{}
	}
	return p.startAt
}

// takeover looks at a new pin once, at its first message: when nothing on
// the consumer shows another replica at work in the last window — no ack
// within it, and msg not a redelivery — the replica starts at once (a
// first start); otherwise it waits out the window.
func (p *pin) takeover(ctx context.Context, cons jetstream.Consumer, msg jetstream.Msg) {
	if !p.on {
		return
	}
	p.mu.Lock()
	check := p.unchecked
	p.unchecked = false
	p.mu.Unlock()
	if !check {
		return
	}
	if meta, err := msg.Metadata(); err != nil || meta.NumDelivered > 1 {
		return
	}
	ictx, cancel := context.WithTimeout(context.WithoutCancel(ctx), pullInterval)
	defer cancel()
	info, err := cons.Info(ictx)
	if err != nil || (info.AckFloor.Last != nil && p.now().Sub(*info.AckFloor.Last) < takeoverWait) {
		return
	}
	if p.elsewhere != nil && p.elsewhere(ictx) {
		return
	}
	p.mu.Lock()
	p.startAt = p.now()
	p.mu.Unlock()
	if p.changed != nil {
		p.changed()
	}
}

// drop forgets the pin: the replica handed it over.
func (p *pin) drop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.id != "" {
		p.lost = true
	}
}

// held reports the pin id this replica holds ("" none, or not any more).
func (p *pin) held() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.lost {
		return ""
	}
	return p.id
}

// active reports whether the replica may start a request: it holds the pin
// and its lease, from the later of contact (the last flush round trip's
// start) and the pin's renewal, has not run out.
func (p *pin) active(contact time.Time) bool {
	if !p.on {
		return true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.id == "" || p.lost || p.now().Before(p.startAt) {
		return false
	}
	since := p.renewed
	if contact.Before(since) {
		since = contact
	}
	return p.now().Before(since.Add(p.lease))
}

// fleet is a replica's view of both its consumers' pins.
type fleet struct {
	fleetDeps
	cancel  *pin
	confirm *pin // nil without confirmations

	mu      sync.Mutex
	contact time.Time // start of the last flush the server answered
	working bool      // last state reported (metric, log)
	// The confirmation pin follows the cancel pin (both consumers pinned):
	// a replica pulls confirmations and looks orders up only while it is
	// active on the cancel consumer, or while the server pins no other replica there
	// (cancelFree, looked up each second; an idle fleet after a restart),
	// so that two replicas never both call Bybit behind one IP limit.
	// followed is closed and replaced when mayConfirm may have changed.
	cancelFree bool
	followed   chan struct{}
}

// fleetDeps is what the fleet works with: the connection whose round trips
// confirm the contact, the cancel consumer, and the two calls back into the
// worker that a lost lease and a renewing pull need.
type fleetDeps struct {
	js     jetstream.JetStream
	stream string
	// cons is the cancel consumer, named name.
	cons   jetstream.Consumer
	name   string
	now    func() time.Time
	log    *slog.Logger
	active prometheus.Gauge // cancel_worker_active of the cancel consumer
	// ban is the IP ban gate; with banRelease a banned replica gives its pin
	// up instead of keeping it (see keepPin).
	ban        *banGate
	banRelease bool
	// release gives back, unsent, everything queued: the lease ran out.
	release func()
	// accept takes a message that a renewing pull delivered after all.
	accept func(ctx context.Context, msg jetstream.Msg, pulledAt time.Time)
}

// follows reports whether the confirmation pin follows the cancel pin.
func (f *fleet) follows() bool {
	return f != nil && f.cancel.on && f.confirm != nil && f.confirm.on
}

// mayConfirm reports whether this replica may pull confirmations and look
// orders up, as far as the cancel consumer goes.
func (f *fleet) mayConfirm() bool {
	if !f.follows() {
		return true
	}
	if f.mayStart() {
		return true
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cancelFree && f.cancel.held() == ""
}

// waitConfirm waits until this replica may pull confirmations.
func (f *fleet) waitConfirm(ctx context.Context) error {
	for {
		f.mu.Lock()
		ch := f.followed
		f.mu.Unlock()
		if f.mayConfirm() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
	}
}

// nudge wakes what waits in waitConfirm to look again.
func (f *fleet) nudge() {
	f.mu.Lock()
	close(f.followed)
	f.followed = make(chan struct{})
	f.mu.Unlock()
}

// confirmElsewhere reports whether the confirmation consumer shows another
// replica at work: pinned to a pin that is not this replica's, or acked
// within the last window. That replica may still look orders up until it
// learns the cancel pin moved on, so a new cancel pin waits the window.
func (f *fleet) confirmElsewhere(ctx context.Context, cons jetstream.Consumer) bool {
	info, err := cons.Info(ctx)
	if err != nil {
		return true
	}
	if info.AckFloor.Last != nil && f.now().Sub(*info.AckFloor.Last) < takeoverWait {
		return true
	}
	for _, g := range info.PriorityGroups {
		if g.Group == PriorityGroup && g.PinnedClientID != "" && g.PinnedClientID != f.confirm.held() {
			return true
		}
	}
	return false
}

// lookCancelPin records whether the server pins another replica on the
// cancel consumer (asked only by a replica not active there); when one is
// newly pinned there, the confirmation pin is handed over to follow it.
func (f *fleet) lookCancelPin() {
	if !f.follows() || f.mayStart() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), pullInterval)
	defer cancel()
	info, err := f.cons.Info(ctx)
	free := false
	if err == nil {
		free = true
		for _, g := range info.PriorityGroups {
			if g.Group == PriorityGroup && g.PinnedClientID != "" && g.PinnedClientID != f.cancel.held() {
				free = false
			}
		}
	}
	f.mu.Lock()
	changed := free != f.cancelFree
	f.cancelFree = free
	f.mu.Unlock()
	if changed && !free {
		f.leaveConfirm() // another replica was pinned there: hand over at once
	}
	if changed {
		f.nudge()
	}
}

// newFleet follows the cancel consumer's pin (pinned: the consumer has the
// priority group), with the lease the consumer's settings give; share is
// BYBIT_LIMIT_SHARE, which a pinned consumer does not apply.
func newFleet(d fleetDeps, pinned bool, lease time.Duration, share float64) *fleet {
	f := &fleet{fleetDeps: d, cancel: newPin(pinned, d.name, lease, d.now), followed: make(chan struct{})}
	// The state follows the cancel pin as soon as it changes: a replica
	// made active by the first message of a pull pulls confirmations (and
	// reports itself active) at once, not once that pull has ended.
	f.cancel.changed = f.check
	if !pinned {
		d.log.Warn("the consumer has no pinned-client priority group: every replica works at once, each at BYBIT_LIMIT_SHARE of every budget, and a dead replica's share is lost; to run one replica at the whole budget with a takeover in seconds, recreate it with priority policy pinned_client and priority group "+PriorityGroup+" (nats consumer add --pinned-groups "+PriorityGroup+" --pinned-ttl 5s)",
			"consumer", d.name)
	} else if share > 0 && share < 1 {
		d.log.Warn("BYBIT_LIMIT_SHARE is not applied: the consumer pins one replica at a time, which works at the whole budget", "consumer", d.name, "share", share)
	}
	return f
}

// confirmCall marks the context of a confirmation's lookup: it needs the
// confirmation consumer's pin; every other call the cancel consumer's.
type confirmCall struct{}

func forConfirmations(ctx context.Context) context.Context {
	return context.WithValue(ctx, confirmCall{}, true)
}

func isConfirmCall(ctx context.Context) bool {
	v, _ := ctx.Value(confirmCall{}).(bool)
	return v
}

// warm waits, when this replica was just pinned on the consumer the call of
// ctx needs, until it may start (see takeoverWait).
func (f *fleet) warm(ctx context.Context) error {
	if f == nil {
		return nil
	}
	p := f.cancel
	if isConfirmCall(ctx) {
		p = f.confirm
	}
	if p == nil {
		return nil
	}
	if until := p.warmUntil(); !until.IsZero() {
		return sleepCtx(ctx, until.Sub(f.now()))
	}
	return nil
}

// mayStart reports whether this replica may start a cancel now.
func (f *fleet) mayStart() bool {
	if f == nil {
		return true
	}
	return f.cancel.active(f.lastContact())
}

// mayLookUp reports whether this replica may start a confirmation lookup.
func (f *fleet) mayLookUp() bool {
	if f == nil || f.confirm == nil {
		return true
	}
	return f.mayConfirm() && f.confirm.active(f.lastContact())
}

func (f *fleet) lastContact() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.contact
}

// run confirms the contact with the server every second and, when the
// cancel consumer's lease runs out, releases everything queued. It ends
// with ctx. The contact belongs to the connection, not to one consumer: it
// runs when either consumer pins replicas (a confirmation consumer pinned
// behind an operator's cancel consumer without the group needs it too).
func (f *fleet) run(ctx context.Context) {
	if !f.cancel.on {
		f.report(true)
		if f.confirm == nil || !f.confirm.on {
			return
		}
	}
	t := time.NewTicker(pullInterval)
	defer t.Stop()
	for {
		f.touch()
		if f.cancel.on {
			f.check()
		}
		f.lookCancelPin()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// touch confirms the contact with the server by a flush round trip. A slow
// round trip (a loaded host) still confirms the contact at its start, so it
// may take as long as the lease.
func (f *fleet) touch() {
	start := f.now()
	if f.js.Conn().FlushTimeout(f.contactTimeout()) == nil {
		f.mu.Lock()
		f.contact = start
		f.mu.Unlock()
	}
}

// contactTimeout is the shortest lease of a pinned consumer: a flush
// slower than that confirms nothing any more.
func (f *fleet) contactTimeout() time.Duration {
	d := f.cancel.lease
	if f.confirm != nil && f.confirm.on && (!f.cancel.on || f.confirm.lease < d) {
		d = f.confirm.lease
	}
	return d
}

// check reports a change of state; a replica that stopped being active
// gives back what it holds, unsent.
func (f *fleet) check() {
	active := f.mayStart()
	if !f.report(active) {
		return
	}
	if !active {
		f.release()
		f.leaveConfirm()
	}
	f.nudge()
}

// leaveConfirm: a replica no longer active on the cancel consumer hands
// the confirmation consumer's pin over (if it holds it), so that it
// follows the cancel pin to the new active replica.
func (f *fleet) leaveConfirm() {
	if !f.follows() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*pullInterval)
	defer cancel()
	f.unpin(ctx, f.confirm)
	f.confirm.drop()
}

// report sets cancel_worker_active and logs a change; it reports whether
// the state changed.
func (f *fleet) report(active bool) bool {
	f.mu.Lock()
	changed := active != f.working
	f.working = active
	f.mu.Unlock()
	v := 0.0
	if active {
		v = 1
	}
	f.active.Set(v)
	if changed && f.cancel.on {
		if active {
			f.log.Info("this replica is the active one: it holds the consumer's pin", "consumer", f.name)
		} else {
			f.log.Warn("this replica is no longer active (its pin or its lease ended): what it holds is released unsent; requests in flight finish", "consumer", f.name)
		}
	}
	return changed
}

// pulled records a pull of the cancel consumer (see pin.pulled) and
// reports the state at once when it changed.
func (f *fleet) pulled(start time.Time, seen string, err error) {
	f.cancel.pulled(start, seen, err)
	if f.cancel.on {
		f.check()
	}
}

// unpin hands the pin of one consumer over: only when this replica holds
// the server's current pin (a standby never unpins the active one).
func (f *fleet) unpin(ctx context.Context, p *pin) {
	if p == nil || !p.on {
		return
	}
	id := p.held()
	if id == "" {
		return
	}
	s, err := f.js.Stream(ctx, f.stream)
	if err == nil {
		var c jetstream.Consumer
		if c, err = s.Consumer(ctx, p.consumer); err == nil {
			var info *jetstream.ConsumerInfo
			if info, err = c.Info(ctx); err == nil {
				for _, g := range info.PriorityGroups {
					if g.Group == PriorityGroup && g.PinnedClientID == id {
						err = s.UnpinConsumer(ctx, p.consumer, PriorityGroup)
						if err == nil {
							// This replica cannot see whether another one pulls:
							// say what the unpin does, not that someone is there.
							f.log.Info("pin handed over: a standby replica, if one is pulling, takes over at once", "consumer", p.consumer)
						}
					}
				}
			}
		}
	}
	if err != nil {
		f.log.Warn("could not hand the pin over; a standby replica, if any, takes over after NATS_PINNED_TTL", "consumer", p.consumer, "error", err)
	}
}

// pinOf is the pin id a message was delivered under ("" none).
func pinOf(msg jetstream.Msg) string {
	if h := msg.Headers(); h != nil {
		return h.Get("Nats-Pin-Id")
	}
	return ""
}

// keepPin reports whether the pull loop must go on pulling when it would
// not otherwise (its held set full, an IP ban): a replica of a fleet keeps
// its pin that way, so that replicas behind the same IP do not send into a
// ban. With BYBIT_BAN_RELEASE a banned replica unpins itself instead (see
// banReleased) and stops pulling.
func (f *fleet) keepPin() bool {
	if f == nil || !f.cancel.on {
		return false
	}
	return !(f.banRelease && f.ban.closed())
}

// renew sends a pull that can deliver nothing (a byte limit no message
// fits) when the held set is full: the server renews the pin of the
// request, and the replica keeps its pin while it works through a burst.
func (f *fleet) renew(ctx context.Context, cons jetstream.Consumer) {
	start := f.now()
	batch, err := cons.FetchBytes(1, f.cancel.fetchOpts()...)
	if err != nil {
		return
	}
	for msg := range batch.Messages() {
		// None fits; should one come, it is taken like any other.
		f.cancel.pulled(start, pinOf(msg), nil)
		f.cancel.takeover(ctx, cons, msg)
		f.accept(ctx, msg, start)
	}
	f.pulled(start, "", batch.Error())
}

// renewal is closed when the next renewing pull is due (nil: never): one
// pull's wait after the last (see pullWait).
func (f *fleet) renewal() <-chan time.Time {
	if !f.keepPin() {
		return nil
	}
	return time.After(f.cancel.pullWait())
}

// banReleased: with BYBIT_BAN_RELEASE, a replica whose IP is banned gives
// its pin up, so that a replica on another IP takes over.
func (f *fleet) banReleased(ctx context.Context) {
	if f == nil {
		return
	}
	f.unpin(ctx, f.cancel)
	f.unpin(ctx, f.confirm)
}

// errNotActive stops a call a replica may no longer start.
var errNotActive = errors.New("this replica is no longer the active one (its pin or lease ended)")

// mayCall reports whether a paced call may start: a confirmation's lookup
// needs the confirmation consumer's pin, anything else (a cancel-all, a
// flatten's listing) the cancel consumer's.
func (f *fleet) mayCall(ctx context.Context) bool {
	if isConfirmCall(ctx) {
		return f.mayLookUp()
	}
	return f.mayStart()
}
