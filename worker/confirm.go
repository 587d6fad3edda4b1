package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
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
	w        *Worker
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

func newConfirmer(w *Worker) *confirmer {
	c := &confirmer{w: w, book: newOrderBook(recentUpdates), streams: map[string]*accountStream{}, held: newHeldSet()}
	for name, a := range w.accounts {
		if a.wsURL == "" {
			continue
		}
		// Connecting counts as up: a confirmation waits for the stream
		// until it is known to be down.
		as := &accountStream{}
		as.up.Store(true)
		log := w.log.With("account", name)
		as.stream = a.client.OrderStream(bybit.OrderStreamOptions{
			URL:    a.wsURL,
			Topics: dcpTopics(a),
			OnOrders: func(orders []bybit.Order) {
				for _, o := range orders {
					c.book.put(name, o)
				}
			},
			OnState: func(up bool, err error) {
				as.up.Store(up)
				as.subscribed.Store(up)
				w.observeDCP(a)
				w.metrics.streamUp.WithLabelValues(name).Set(boolGauge(up))
				switch {
				case up:
					log.Info("private order stream up")
				case err != nil:
					w.metrics.streamDrops.WithLabelValues(name).Inc()
					log.Warn("private order stream down; reconnecting (confirmations use REST meanwhile)", "error", err)
				}
			},
		})
		c.streams[name] = as
	}
	return c
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
	cfg := c.w.cfg
	cons, err := c.w.js.Consumer(ctx, cfg.Stream, cfg.ConfirmConsumer())
	switch {
	case errors.Is(err, jetstream.ErrConsumerNotFound):
		// New results only: a stream's history is not confirmed again
		// when the feature is first turned on.
		cons, err = c.w.js.CreateConsumer(ctx, cfg.Stream, pinnedConfig(jetstream.ConsumerConfig{
			Durable:        cfg.ConfirmConsumer(),
			Description:    "bybit-cancel-worker confirmations",
			FilterSubjects: cfg.resultSubjects(),
			AckPolicy:      jetstream.AckExplicitPolicy,
			AckWait:        cfg.AckWait,
			MaxDeliver:     cfg.MaxDeliver,
			MaxAckPending:  cfg.MaxAckPending,
			DeliverPolicy:  jetstream.DeliverNewPolicy,
			Metadata:       map[string]string{ManagedKey: ManagedValue},
		}, cfg))
		if err != nil {
			return fmt.Errorf("create consumer %s: %w", cfg.ConfirmConsumer(), err)
		}
	case err != nil:
		return fmt.Errorf("look up consumer %s: %w", cfg.ConfirmConsumer(), err)
	case cons.CachedInfo().Config.Metadata[ManagedKey] == ManagedValue && !isPinned(cons.CachedInfo().Config):
		// One created before the fleet's priority group: given it.
		cons, err = c.w.js.UpdateConsumer(ctx, cfg.Stream, pinnedConfig(cons.CachedInfo().Config, cfg))
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
	c.cons, c.settings, c.pinned = cons, settingsOf(info), isPinned(info)
	for _, name := range sortedAccountNames(c.w.accounts) {
		if a := c.w.accounts[name]; a.dcp != nil {
			c.w.armDCP(ctx, a)
		}
	}
	// Subscribed before the first cancel is pulled, so that no update of
	// this process's cancels is missed; run goes on with these connections.
	for name, as := range c.streams {
		err := as.stream.Connect(ctx)
		switch {
		case bybit.IsAuthError(err):
			err = fmt.Errorf("account %s: private WebSocket %s: %w", name, redactWS(c.w.accounts[name].wsURL), err)
			if !c.w.otherAccountUsable(name) {
				c.close()
				return err
			}
			// One refused key does not stop the other accounts: this
			// one's stream keeps retrying, REST lookups cover meanwhile.
			c.w.markStartupProblem(c.w.accounts[name], err)
		case err != nil:
			c.w.log.Warn("private order stream not reachable at start; confirmations use REST until it is", "account", name, "error", err)
		case c.w.accounts[name].dcp != nil:
			as.subscribed.Store(true)
		}
		if a := c.w.accounts[name]; a.dcp != nil {
			c.w.observeDCP(a)
			if armed, why := c.w.dcpArmed(a); armed {
				c.w.log.Info("dead-man switch armed: Bybit cancels every futures, spot and option order of the account once every replica's private stream has been gone for the window (disarm: unset the window and restart, or stop Bybit's DCP — see README)",
					"account", name, "window", a.dcp.window, "topics", dcpTopics(a))
			} else {
				c.w.log.Warn("dead-man switch not armed", "account", name, "why", why)
			}
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
func (c *confirmer) run(ctx context.Context) {
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
		c.held.heartbeatLoop(ctx, c.w.js.Conn(), c.settings.AckWait)
	}()

	retry := newRetryBackoff()
	for ctx.Err() == nil {
		n, changed := c.held.len()
		room := c.w.maxHeld - n
		if room <= 0 {
			select {
			case <-ctx.Done():
			case <-changed:
			}
			continue
		}
		// The pull ends with ctx: a result Nak'd at a stop must not come
		// back into the same pull (each delivery counts to MaxDeliver).
		fctx, cancel := context.WithTimeout(ctx, pullInterval)
		start := c.w.now()
		batch, err := c.cons.Fetch(min(room, maxFetch), c.w.fleet.confirm.fetchOpts(fctx)...)
		if err != nil {
			cancel()
			c.w.log.Warn("confirm pull failed", "error", err)
			_ = sleepCtx(ctx, retry.NextBackOff())
			continue
		}
		for msg := range batch.Messages() {
			c.w.fleet.confirm.pulled(start, pinOf(msg), nil)
			c.w.fleet.confirm.takeover(ctx, c.cons, msg)
			c.accept(ctx, msg)
		}
		cancel()
		c.w.fleet.confirm.pulled(start, "", batch.Error())
		if ctx.Err() != nil {
			break
		}
		if errors.Is(batch.Error(), jetstream.ErrPinIDMismatch) {
			continue // another replica confirms now
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, context.DeadlineExceeded) {
			c.w.log.Warn("confirm pull interrupted", "error", err)
			_ = sleepCtx(ctx, retry.NextBackOff())
			continue
		}
		retry.Reset()
	}
	c.work.Wait()
	<-hbDone
	streams.Wait()
	c.close()
}

// accept starts confirming one result, or acks it when it needs none.
func (c *confirmer) accept(ctx context.Context, msg jetstream.Msg) {
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
		c.w.log.Error("unreadable result on a result subject: not confirmed", "seq", meta.Sequence.Stream, "error", err)
		_ = msg.TermWithReason("unreadable result")
		return
	}
	if !r.NeedsConfirmation() || len(r.ConfirmTargets()) == 0 {
		_ = msg.Ack()
		return
	}
	j := &job{seq: meta.Sequence.Stream, msg: msg, deliveries: meta.NumDelivered}
	if _, fresh := c.held.add(j); !fresh {
		return // a redelivery of one still being confirmed
	}
	c.work.Add(1)
	go func() {
		defer c.work.Done()
		defer c.held.remove(j)
		c.confirmResult(ctx, j, r, meta.Timestamp)
	}()
}

// confirmResult confirms every order of a result, publishes one
// confirmation each, then acks the result.
func (c *confirmer) confirmResult(ctx context.Context, j *job, r messages.Result, ackTime time.Time) {
	name := r.Account
	if name == "" {
		name = DefaultAccount
	}
	a := c.w.accounts[name]
	lastDelivery := c.settings.MaxDeliver > 0 && j.deliveries >= uint64(c.settings.MaxDeliver)
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
			conf.ConfirmedAt = c.w.now().UTC()
			conf.AckToConfirmMs = max(conf.ConfirmedAt.Sub(conf.AckTime).Milliseconds(), 0)
			data, err := conf.Marshal()
			if err == nil {
				err = c.w.publish(ctx, c.w.cfg.ConfirmedSubject, data, messages.ConfirmedMsgID(r.RequestSeq, ref.OrderID, ref.OrderLinkID))
			}
			if err != nil {
				failed.Store(true)
				return
			}
			c.w.metrics.observeConfirmation(conf)
			c.logConfirmation(conf)
		}()
	}
	wg.Wait()
	j.mu.Lock()
	j.done = true
	j.mu.Unlock()
	switch {
	case failed.Load() && ctx.Err() != nil:
		// Stopping: another process, or this one restarted, finishes it;
		// the confirmations already published are not published twice.
		_ = j.msg.Nak()
		return
	case failed.Load():
		// The lookups keep failing: try again later.
		_ = j.msg.NakWithDelay(c.w.cfg.ConfirmTimeout)
		return
	}
	_ = j.msg.DoubleAck(ctx)
}

func (c *confirmer) logConfirmation(conf messages.Confirmation) {
	attrs := []any{"requestId", conf.RequestID, "seq", conf.RequestSeq, "category", conf.Category, "orderId", conf.OrderID,
		"orderLinkId", conf.OrderLinkID, "orderStatus", conf.OrderStatus, "confirmedBy", conf.ConfirmedBy, "ackToConfirmMs", conf.AckToConfirmMs}
	switch {
	case conf.ConfirmedBy == messages.ConfirmedByUnknown:
		c.w.log.Warn("order state unknown after its cancel", append(attrs, "error", conf.Error)...)
	case conf.OrderStatus == "Filled" || !conf.Final:
		c.w.log.Warn("order not cancelled: "+conf.OrderStatus, attrs...)
	default:
		c.w.log.Log(context.Background(), slog.LevelDebug, "order confirmed", attrs...)
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
		o, found, err = c.lookup(ctx, a, LookupRealtime, q)
		if err == nil && !found {
			o, found, err = c.lookup(ctx, a, LookupHistory, q)
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
			c.w.log.Warn("order lookup failed", "account", a.name, "orderId", q.OrderID, "orderLinkId", q.OrderLinkID, "error", err)
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
	deadline := time.NewTimer(c.w.cfg.ConfirmTimeout)
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
func (c *confirmer) lookup(ctx context.Context, a *account, endpoint string, q bybit.OrderQuery) (bybit.Order, bool, error) {
	w := c.w
	w.lanesMu.Lock()
	p := w.budgetLocked(a, endpoint)
	w.lanesMu.Unlock()
	var res bybit.Lookup
	sent, err := w.paced(forConfirmations(ctx), p, false, endpoint, q.Category, func() (bybit.RateLimit, error) {
		var err error
		if endpoint == LookupRealtime {
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

// orderBook keeps the latest update of recent orders per account, by
// orderId and by orderLinkId, bounded (oldest forgotten first), and wakes
// whoever watches an order.
type orderBook struct {
	mu      sync.Mutex
	orders  map[string]bybit.Order
	ring    []string
	next    int
	waiters map[string]*waiter
}

// waiter is a channel closed at an order's next update, and how many watch it.
type waiter struct {
	ch chan struct{}
	n  int
}

func newOrderBook(n int) *orderBook {
	return &orderBook{orders: make(map[string]bybit.Order, n), ring: make([]string, n), waiters: map[string]*waiter{}}
}

func bookKeys(account, category, orderID, orderLinkID string) []string {
	var keys []string
	if orderID != "" {
		keys = append(keys, account+"\x00"+category+"\x00id\x00"+orderID)
	}
	if orderLinkID != "" {
		keys = append(keys, account+"\x00"+category+"\x00link\x00"+orderLinkID)
	}
	return keys
}

func (b *orderBook) put(account string, o bybit.Order) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, k := range bookKeys(account, o.Category, o.OrderID, o.OrderLinkID) {
		if prev, ok := b.orders[k]; ok && prev.UpdatedTime > o.UpdatedTime {
			continue // an older update arriving late
		} else if !ok {
			if old := b.ring[b.next]; old != "" {
				delete(b.orders, old)
			}
			b.ring[b.next] = k
			b.next = (b.next + 1) % len(b.ring)
		}
		b.orders[k] = o
		if wt, ok := b.waiters[k]; ok {
			close(wt.ch)
			delete(b.waiters, k)
		}
	}
}

// watch returns the latest update of an order (by orderId when known, else
// by orderLinkId), a channel closed at its next update, and the release the
// watcher calls when it stops watching.
func (b *orderBook) watch(account, category, orderID, orderLinkID string) (bybit.Order, bool, <-chan struct{}, func()) {
	b.mu.Lock()
	defer b.mu.Unlock()
	keys := bookKeys(account, category, orderID, orderLinkID)
	k := keys[0]
	o, seen := b.orders[k]
	for _, alt := range keys[1:] {
		if !seen {
			k = alt
			o, seen = b.orders[alt]
		}
	}
	wt, ok := b.waiters[k]
	if !ok {
		wt = &waiter{ch: make(chan struct{})}
		b.waiters[k] = wt
	}
	wt.n++
	return o, seen, wt.ch, func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		if wt.n--; wt.n == 0 && b.waiters[k] == wt {
			delete(b.waiters, k)
		}
	}
}
