package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
)

// confirmLookRounds bounds how often a confirmation looks an order up over
// REST when it is still open (the cancel not landed yet) or the lookups
// fail; after that it reports what it last saw.
const confirmLookRounds = 3

// recentUpdates bounds the order updates kept for matching with acks that
// arrive after them.
const recentUpdates = 1 << 16

// confirmer follows acknowledged cancels to the order's final state. Its own
// durable consumer on the result subjects drives it, so a crash loses no
// pending confirmation.
type confirmer struct {
	confirmDeps
	cons     jetstream.Consumer
	settings ConsumerSettings
	pinned   bool // the consumer pins replicas (fleet.go)
	book     *orderBook
	streams  map[string]*accountStream // by account name
	held     *heldSet
	work     sync.WaitGroup
}

// accountStream is one account's private order stream.
type accountStream struct {
	stream *bybit.OrderStream
	up     atomic.Bool
	// subscribed: connected, authenticated and subscribed now (up also
	// counts a first connection under way).
	subscribed atomic.Bool
}

// confirmDeps is what the confirmer works with.
type confirmDeps struct {
	js       jetstream.JetStream
	cfg      Config
	accounts map[string]*account
	gw       *gateway
	pub      publisher
	metrics  *Metrics
	log      *slog.Logger
	now      func() time.Time
	// refused is told of an account whose private stream refused its key
	// at start; it reports whether the others go on without it.
	refused func(a *account, err error) (goOn bool)
}

func newConfirmer(d confirmDeps) *confirmer {
	c := &confirmer{confirmDeps: d, book: newOrderBook(recentUpdates), streams: map[string]*accountStream{}, held: newHeldSet(d.now)}
	for name, a := range c.accounts {
		if a.wsURL == "" {
			continue
		}
		// Connecting counts as up: a confirmation waits for the stream
		// until it is known to be down.
		as := &accountStream{}
		as.up.Store(true)
		log := c.log.With("account", name)
		as.stream = a.client.OrderStream(bybit.OrderStreamOptions{
			URL:              a.wsURL,
			Topics:           a.dcp.topics(),
			MaxReconnectWait: a.dcp.reconnectWait(),
			OnOrders: func(orders []bybit.Order) {
				for _, o := range orders {
					c.book.put(name, o)
				}
			},
			OnState: func(up bool, err error) {
				as.up.Store(up)
				as.subscribed.Store(up)
				c.observeDCP(a)
				c.metrics.streamUp.WithLabelValues(name).Set(boolGauge(up))
				switch {
				case up:
					log.Info("private order stream up")
				case err != nil:
					c.metrics.streamDrops.WithLabelValues(name).Inc()
					log.Warn("private order stream down; reconnecting (confirmations use REST meanwhile)", "error", err)
				}
			},
		})
		c.streams[name] = as
	}
	return c
}

// The dead-man switch (dcp.go) rides on the confirmer's private streams: an
// account's window is set before its stream connects (setup), and the
// switch is armed only while the stream is subscribed.

// dcpArmed reports whether account a's switch is armed now, and if not, why
// (a nil confirmer holds no private stream).
func (c *confirmer) dcpArmed(a *account) (bool, string) {
	subscribed := false
	if c != nil {
		if as := c.streams[a.name]; as != nil {
			subscribed = as.subscribed.Load()
		}
	}
	return a.dcp.status(subscribed)
}

// observeDCP updates the armed gauge of an account.
func (c *confirmer) observeDCP(a *account) {
	if a.dcp == nil {
		return
	}
	armed, _ := c.dcpArmed(a)
	c.metrics.dcpArmed.WithLabelValues(a.name).Set(boolGauge(armed))
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// setup binds the confirm consumer and checks each account's stream auth: a
// refused key is a clear start-up error; an unreachable stream is only
// logged (it reconnects, and REST covers meanwhile).
func (c *confirmer) setup(ctx context.Context) error {
	if err := c.bind(ctx); err != nil {
		return err
	}
	for _, name := range sortedAccountNames(c.accounts) {
		if a := c.accounts[name]; a.dcp != nil {
			dcpArming{log: c.log, window: c.metrics.dcpWindow}.arm(ctx, a.name, a.client, a.dcp)
		}
	}
	// Subscribed before the first cancel is pulled, so that no update of
	// this process's cancels is missed; run goes on with these connections.
	for name, as := range c.streams {
		if err := c.connect(ctx, name, as); err != nil {
			c.close()
			return err
		}
	}
	return nil
}

// bind looks up or creates the confirm consumer and checks its filters.
func (c *confirmer) bind(ctx context.Context) error {
	cfg := c.cfg
	cons, err := c.js.Consumer(ctx, cfg.Stream, cfg.ConfirmConsumer())
	switch {
	case errors.Is(err, jetstream.ErrConsumerNotFound):
		// New results only: a stream's history is not confirmed again
		// when the feature is first turned on.
		cons, err = c.js.CreateConsumer(ctx, cfg.Stream, pinnedConfig(jetstream.ConsumerConfig{
			Durable:        cfg.ConfirmConsumer(),
			Description:    "bybit-cancel-worker confirmations",
			FilterSubjects: cfg.resultSubjects(),
			AckPolicy:      jetstream.AckExplicitPolicy,
			AckWait:        cfg.AckWait,
			MaxDeliver:     cfg.MaxDeliver,
			MaxAckPending:  cfg.MaxAckPending,
			DeliverPolicy:  jetstream.DeliverNewPolicy,
			Metadata:       map[string]string{ManagedKey: ManagedValue},
		}, cfg.pinnedTTL()))
		if err != nil {
			return fmt.Errorf("create consumer %s: %w", cfg.ConfirmConsumer(), err)
		}
	case err != nil:
		return fmt.Errorf("look up consumer %s: %w", cfg.ConfirmConsumer(), err)
	case cons.CachedInfo().Config.Metadata[ManagedKey] == ManagedValue && !isPinned(cons.CachedInfo().Config):
		// One created before the fleet's priority group: given it.
		cons, err = c.js.UpdateConsumer(ctx, cfg.Stream, pinnedConfig(cons.CachedInfo().Config, cfg.pinnedTTL()))
		if err != nil {
			return fmt.Errorf("update consumer %s: %w", cfg.ConfirmConsumer(), err)
		}
	}
	info := cons.CachedInfo().Config
	filters := info.FilterSubjects
	if info.FilterSubject != "" {
		filters = []string{info.FilterSubject}
	}
	if !sameSet(filters, cfg.resultSubjects()) {
		return fmt.Errorf("consumer %s filters %q; it must filter exactly %q", cfg.ConfirmConsumer(), filters, cfg.resultSubjects())
	}
	if info.Metadata[ManagedKey] != ManagedValue {
		if err := checkPinnedTTL(info, cfg, cfg.ConfirmConsumer()); err != nil {
			return err
		}
	}
	c.cons, c.settings, c.pinned = cons, settingsOf(info), isPinned(info)
	return nil
}

// connect connects one account's private stream and says whether its
// dead-man switch is armed; an error is a refused key that stops the start.
func (c *confirmer) connect(ctx context.Context, name string, as *accountStream) error {
	err := as.stream.Connect(ctx)
	switch {
	case bybit.IsAuthError(err):
		err = fmt.Errorf("account %s: private WebSocket %s: %w", name, redactWS(c.accounts[name].wsURL), err)
		// One refused key does not stop the other accounts: this one's
		// stream keeps retrying, REST lookups cover meanwhile.
		if !c.refused(c.accounts[name], err) {
			return err
		}
	case err != nil:
		c.log.Warn("private order stream not reachable at start; confirmations use REST until it is", "account", name, "error", err)
	case c.accounts[name].dcp != nil:
		as.subscribed.Store(true)
	}
	if a := c.accounts[name]; a.dcp != nil {
		c.observeDCP(a)
		if armed, why := c.dcpArmed(a); armed {
			c.log.Info("dead-man switch armed: Bybit cancels every futures, spot and option order of the account once every replica's private stream has been gone for the window (disarm: unset the window and restart, or stop Bybit's DCP — see README)",
				"account", name, "window", a.dcp.window, "topics", a.dcp.topics())
		} else {
			c.log.Warn("dead-man switch not armed", "account", name, "why", why)
		}
	}
	return nil
}

// close releases connections setup made that run did not take.
func (c *confirmer) close() {
	for _, as := range c.streams {
		as.stream.Close()
	}
}

func redactWS(u string) string {
	for i := 0; i < len(u); i++ {
		if u[i] == '?' {
			return u[:i]
		}
	}
	return u
}

// run keeps the streams up and confirms results until ctx ends; held
// results are then released (Nak) for a later delivery.
func (c *confirmer) run(ctx context.Context, maxHeld int, pin *pin, hold func(context.Context) error) {
	var streams sync.WaitGroup
	for _, as := range c.streams {
		streams.Add(1)
		go func() {
			defer streams.Done()
			as.stream.Run(ctx)
		}()
	}
	hbDone := make(chan struct{})
	go func() {
		defer close(hbDone)
		c.held.heartbeatLoop(ctx, c.js.Conn(), c.settings.AckWait)
	}()

	puller{name: "confirm ", cons: c.cons, held: c.held, max: maxHeld, log: c.log, accept: c.accept,
		pin: pin, now: c.now, pulled: func(start time.Time, err error) { pin.pulled(start, "", err) }, hold: hold}.run(ctx)
	c.work.Wait()
	<-hbDone
	streams.Wait()
	c.close()
}

// accept starts confirming one result, or acks it when it needs none.
func (c *confirmer) accept(ctx context.Context, msg jetstream.Msg, pulledAt time.Time) {
	meta, err := msg.Metadata()
	if err != nil {
		_ = msg.Term()
		return
	}
	if ctx.Err() != nil {
		return // stopping: it comes back after AckWait
	}
	r, err := messages.DecodeResult(msg.Data())
	if err != nil {
		c.log.Error("unreadable result on a result subject: not confirmed", "seq", meta.Sequence.Stream, "error", err)
		_ = msg.TermWithReason("unreadable result")
		return
	}
	if !r.NeedsConfirmation() || len(r.ConfirmTargets()) == 0 {
		_ = msg.Ack()
		return
	}
	h := newHeldMsg(msg, meta, pulledAt)
	if _, fresh := c.held.add(&h); !fresh {
		return // a redelivery of one still being confirmed
	}
	c.work.Add(1)
	go func() {
		defer c.work.Done()
		defer c.held.remove(&h)
		c.confirmResult(ctx, &h, r)
	}()
}

// confirmResult confirms every order of a result, publishes one
// confirmation each, then acks the result.
func (c *confirmer) confirmResult(ctx context.Context, h *heldMsg, r messages.Result) {
	ackTime := h.stored
	name := r.Account
	if name == "" {
		name = DefaultAccount
	}
	a := c.accounts[name]
	lastDelivery := c.settings.MaxDeliver > 0 && h.deliveries >= uint64(c.settings.MaxDeliver)
	var wg sync.WaitGroup
	var failed atomic.Bool
	for _, ref := range r.ConfirmTargets() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := scopeOf(r, ref)
			conf := messages.Confirmation{
				RequestID: r.RequestID, RequestSeq: r.RequestSeq, OrderID: ref.OrderID, OrderLinkID: ref.OrderLinkID,
				Category: r.Category, Symbol: r.Symbol, Account: r.Account, ResultStatus: r.Status,
				AckTime: ackTime.UTC(), ConfirmedBy: messages.ConfirmedByUnknown,
			}
			if a == nil {
				conf.Error = fmt.Sprintf("account %q is not configured", r.Account)
			} else if err := c.confirmOrder(ctx, a, r, &conf); err != nil {
				if !lastDelivery {
					failed.Store(true)
					return
				}
				conf.Error = "gave up on the consumer's last delivery: " + err.Error()
			}
			conf.ConfirmedAt = c.now().UTC()
			conf.AckToConfirmMs = max(conf.ConfirmedAt.Sub(conf.AckTime).Milliseconds(), 0)
			data, err := conf.Marshal()
			if err == nil {
				err = c.pub.publish(ctx, c.cfg.ConfirmedSubject, data, messages.ConfirmedMsgID(r.RequestSeq, ref.OrderID, ref.OrderLinkID))
			}
			if err != nil {
				failed.Store(true)
				return
			}
			c.metrics.observeConfirmation(conf)
			c.logConfirmation(conf)
		}()
	}
	wg.Wait()
	msg, _ := h.end()
	switch {
	case failed.Load() && ctx.Err() != nil:
		// Stopping: another process, or this one restarted, finishes it;
		// the confirmations already published are not published twice.
		_ = msg.Nak()
		return
	case failed.Load():
		// The lookups keep failing: try again later.
		_ = msg.NakWithDelay(c.cfg.ConfirmTimeout)
		return
	}
	_ = msg.DoubleAck(ctx)
}

func (c *confirmer) logConfirmation(conf messages.Confirmation) {
	attrs := []any{"requestId", conf.RequestID, "seq", conf.RequestSeq, "category", conf.Category, "orderId", conf.OrderID,
		"orderLinkId", conf.OrderLinkID, "orderStatus", conf.OrderStatus, "confirmedBy", conf.ConfirmedBy, "ackToConfirmMs", conf.AckToConfirmMs}
	switch {
	case conf.ConfirmedBy == messages.ConfirmedByUnknown:
		c.log.Warn("order state unknown after its cancel", append(attrs, "error", conf.Error)...)
	case conf.OrderStatus == "Filled" || !conf.Final:
		c.log.Warn("order not cancelled: "+conf.OrderStatus, attrs...)
	default:
		c.log.Log(context.Background(), slog.LevelDebug, "order confirmed", attrs...)
	}
}

// confirmOrder fills in conf with the order's observed state: from the
// private stream within ConfirmTimeout, else from /v5/order/realtime, then
// /v5/order/history. An error means the lookups failed (or the worker is
// stopping): the result is to be delivered again.
func (c *confirmer) confirmOrder(ctx context.Context, a *account, r messages.Result, conf *messages.Confirmation) error {
	as := c.streams[a.name]
	q := bybit.OrderQuery{Category: r.Category, Symbol: r.Symbol, OrderID: conf.OrderID, OrderLinkID: conf.OrderLinkID,
		BaseCoin: r.BaseCoin, SettleCoin: r.SettleCoin}
	var lastErr error
	for round := 1; ; round++ {
		// The stream: an update may have come before the ack did.
		o, final, err := c.streamFinal(ctx, as, a.name, r.Category, conf.OrderID, conf.OrderLinkID)
		switch {
		case err != nil:
			return err
		case final:
			fill(conf, o, messages.ConfirmedByWebSocket)
			return nil
		}

		var found bool
		o, found, err = c.lookup(ctx, a, endpointRealtime, q)
		if err == nil && !found {
			o, found, err = c.lookup(ctx, a, endpointHistory, q)
		}
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case err == nil && !found:
			conf.Error = "neither /v5/order/realtime nor /v5/order/history lists the order (Bybit keeps only recent closed orders)"
			return nil
		case err == nil && bybit.FinalStatus(o.OrderStatus):
			fill(conf, o, messages.ConfirmedByREST)
			return nil
		case err == nil && round >= confirmLookRounds:
			fill(conf, o, messages.ConfirmedByREST)
			conf.Error = fmt.Sprintf("still %s after %d lookups: the cancel had not landed", o.OrderStatus, round)
			return nil
		case err != nil:
			lastErr = err
			c.log.Warn("order lookup failed", "account", a.name, "orderId", q.OrderID, "orderLinkId", q.OrderLinkID, "error", err)
			if round >= confirmLookRounds {
				return fmt.Errorf("order lookups failed %d times, last: %w", round, lastErr)
			}
		}
	}
}

// streamFinal returns the order's final update from the private stream: one
// kept from before, or one that comes within ConfirmTimeout while the stream
// is up. final is false when none did.
func (c *confirmer) streamFinal(ctx context.Context, as *accountStream, account, category, orderID, orderLinkID string) (o bybit.Order, final bool, err error) {
	deadline := time.NewTimer(c.cfg.ConfirmTimeout)
	defer deadline.Stop()
	for {
		o, seen, changed, release := c.book.watch(account, category, orderID, orderLinkID)
		if seen && bybit.FinalStatus(o.OrderStatus) {
			release()
			return o, true, nil
		}
		if as == nil || !as.up.Load() {
			release()
			return bybit.Order{}, false, nil
		}
		select {
		case <-changed:
			release()
		case <-deadline.C:
			release()
			return bybit.Order{}, false, nil
		case <-ctx.Done():
			release()
			return bybit.Order{}, false, ctx.Err()
		}
	}
}

// fill copies an observed order into a confirmation.
func fill(conf *messages.Confirmation, o bybit.Order, by string) {
	conf.OrderStatus, conf.CancelType, conf.UpdatedTime = o.OrderStatus, o.CancelType, int64(o.UpdatedTime)
	conf.Qty, conf.CumExecQty, conf.LeavesQty, conf.AvgPrice = o.Qty, o.CumExecQty, o.LeavesQty, o.AvgPrice
	conf.Final, conf.ConfirmedBy = bybit.FinalStatus(o.OrderStatus), by
	if conf.OrderID == "" {
		conf.OrderID = o.OrderID
	}
	if conf.OrderLinkID == "" {
		conf.OrderLinkID = o.OrderLinkID
	}
	if conf.Symbol == "" {
		conf.Symbol = o.Symbol
	}
}

// lookup makes one order lookup within its own per-UID limit and the
// process-wide IP limit, respecting an IP ban.
func (c *confirmer) lookup(ctx context.Context, a *account, endpoint endpoint, q bybit.OrderQuery) (bybit.Order, bool, error) {
	b := budget{endpoint, q.Category}
	var res bybit.Lookup
	sent, err := c.gw.call(forConfirmations(ctx), b, c.gw.pacer(a, b), false, func() (bybit.RateLimit, error) {
		var err error
		if endpoint == endpointRealtime {
			res, err = a.client.OpenOrRecentOrder(ctx, q)
		} else {
			res, err = a.client.HistoricOrder(ctx, q)
		}
		if rl, ok := bybit.RateLimitOf(err); ok {
			return rl, err
		}
		return res.RateLimit, err
	})
	if !sent && err == nil {
		err = ctx.Err()
	}
	return res.Order, res.Found, err
}

// scopeOf is the result as one of its orders sees it: a flatten's order
// carries its own category and symbol or coin.
func scopeOf(r messages.Result, ref messages.OrderRef) messages.Result {
	if ref.Category == "" {
		return r
	}
	r.Category, r.Symbol, r.BaseCoin, r.SettleCoin = ref.Category, ref.Symbol, ref.BaseCoin, ref.SettleCoin
	return r
}
