// Package replay reads the worker's stream after the fact: it joins every
// request with its result by the request's stream sequence, tells requests
// that will never be answered from those still on their way, summarises the
// timeline, and republishes what was left undone as new, traceable requests.
//
// It reads with an ordered consumer, so the worker's durable consumer is not
// touched; it only reads that consumer's ack floor.
package replay

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
)

// Config says where the worker keeps requests and results. Read reads the
// inputs and the results, and ConfirmedSubject too when it is set: each
// request shows the order status its confirmations report.
type Config = messages.Subjects

// readSubjects are the subjects Read reads.
func readSubjects(c Config) []string {
	s := []string{c.CancelSubject, c.CancelAllSubject, c.AckSubject, c.RejectedSubject}
	if c.ConfirmedSubject != "" {
		s = append(s, c.ConfirmedSubject)
	}
	return s
}

// Window selects requests by stream sequence and by stream time; zero values
// leave that side open. Results are looked for past the window's end.
type Window struct {
	Since, Until   time.Time
	FromSeq, ToSeq uint64
}

func (w Window) contains(seq uint64, t time.Time) bool {
	return (w.FromSeq == 0 || seq >= w.FromSeq) && (w.ToSeq == 0 || seq <= w.ToSeq) &&
		(w.Since.IsZero() || !t.Before(w.Since)) && (w.Until.IsZero() || !t.After(w.Until))
}

// Filter narrows the requests shown; an empty field matches everything.
// OrderID matches orderId or orderLinkId, and a cancel-all whose result lists
// the order.
type Filter struct {
	Category  string
	Symbol    string
	RequestID string
	OrderID   string
}

func (f Filter) matches(r *Row) bool {
	if f.Category != "" && r.Category != f.Category || f.Symbol != "" && r.Symbol != f.Symbol {
		return false
	}
	if f.RequestID != "" && r.RequestID != f.RequestID {
		return false
	}
	if f.OrderID == "" || r.OrderID == f.OrderID || r.OrderLinkID == f.OrderID {
		return true
	}
	if r.result != nil {
		for _, o := range r.result.Orders {
			if o.OrderID == f.OrderID || o.OrderLinkID == f.OrderID {
				return true
			}
		}
	}
	return false
}

// States of a request that has no result: the worker's consumer has acked or
// terminated it (it will never get one), or it is still waiting for delivery
// or held by a worker.
const (
	StateUnanswered = "unanswered"
	StatePending    = "pending"
)

// Row is one request and what became of it.
type Row struct {
	Seq         uint64    `json:"seq"`
	Subject     string    `json:"subject"`
	RequestTime time.Time `json:"requestTime"`
	RequestID   string    `json:"requestId"`
	Category    string    `json:"category,omitempty"`
	Symbol      string    `json:"symbol,omitempty"`
	OrderID     string    `json:"orderId,omitempty"`
	OrderLinkID string    `json:"orderLinkId,omitempty"`
	Account     string    `json:"account,omitempty"`
	// Status is the result's status, or unanswered or pending.
	Status string `json:"status"`

	RetCode         *int       `json:"retCode,omitempty"`
	RetMsg          string     `json:"retMsg,omitempty"`
	Ambiguous       bool       `json:"ambiguous"`
	Attempts        int        `json:"attempts"`
	RateLimitWaitMs int64      `json:"rateLimitWaitMs"`
	Orders          int        `json:"orders,omitempty"`
	ResultSeq       uint64     `json:"resultSeq,omitempty"`
	ResultTime      *time.Time `json:"resultTime,omitempty"`
	// LatencyMs is publish→result: the result's stream time minus the
	// request's.
	LatencyMs *float64 `json:"latencyMs,omitempty"`
	Error     string   `json:"error,omitempty"`
	LastError string   `json:"lastError,omitempty"`

	// ReplayOf and ReplayOfSeq are set on a request the replay tool resent.
	ReplayOf    string `json:"replayOf,omitempty"`
	ReplayOfSeq uint64 `json:"replayOfSeq,omitempty"`
	// Replays are the resends of this request found in the stream, oldest
	// first, each with its own outcome.
	Replays []Replay `json:"replays,omitempty"`
	// Confirmations are the order states Bybit reported after an
	// acknowledged cancel, one per order (read with
	// Config.ConfirmedSubject).
	Confirmations []Confirmed `json:"confirmations,omitempty"`

	// req is the strictly decoded body (reqErr why it is not a request).
	req    request
	reqErr error
	result *messages.Result
}

// Replay is a resend of a request and what became of it.
type Replay struct {
	Seq       uint64   `json:"seq"`
	RequestID string   `json:"requestId"`
	Status    string   `json:"status"`
	RetCode   *int     `json:"retCode,omitempty"`
	LatencyMs *float64 `json:"latencyMs,omitempty"`
}

// Confirmed is one order's confirmation: its status at Bybit after the
// cancel (Cancelled, Filled, ...), whether that is final, and how it was
// learnt.
type Confirmed struct {
	OrderID     string `json:"orderId,omitempty"`
	OrderLinkID string `json:"orderLinkId,omitempty"`
	OrderStatus string `json:"orderStatus,omitempty"`
	Final       bool   `json:"final"`
	ConfirmedBy string `json:"confirmedBy"`
	Error       string `json:"error,omitempty"`
}

// OrderStatus is the confirmed order status of the request: the one
// status, or for several orders each with its count ("Cancelled 3,
// Filled 1"); "unknown" for a confirmation that learnt nothing; empty
// without confirmations.
func (r *Row) OrderStatus() string {
	if len(r.Confirmations) == 0 {
		return ""
	}
	counts := map[string]int{}
	for _, c := range r.Confirmations {
		counts[c.status()]++
	}
	if len(counts) == 1 && len(r.Confirmations) == 1 {
		return r.Confirmations[0].status()
	}
	keys := slices.Sorted(maps.Keys(counts))
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", k, counts[k]))
	}
	return strings.Join(parts, ", ")
}

func (c Confirmed) status() string {
	s := c.OrderStatus
	if s == "" {
		s = messages.ConfirmedByUnknown
	}
	if !c.Final && c.OrderStatus != "" {
		s += " (not final)"
	}
	return s
}

// Latency is publish→result; ok is false without a result.
func (r *Row) Latency() (time.Duration, bool) {
	if r.LatencyMs == nil {
		return 0, false
	}
	return time.Duration(*r.LatencyMs * float64(time.Millisecond)), true
}

// AnsweredByReplay reports whether a resend of the request has a result.
func (r *Row) AnsweredByReplay() (Replay, bool) {
	for i := len(r.Replays) - 1; i >= 0; i-- {
		if rp := r.Replays[i]; rp.Status != StateUnanswered && rp.Status != StatePending {
			return rp, true
		}
	}
	return Replay{}, false
}

// Report is the outcome of a Read.
type Report struct {
	// Rows are the requests in the window that pass the filter, in stream
	// order.
	Rows []*Row
	// Warnings say what limits the report (e.g. a missing consumer).
	Warnings []string
	// AckFloor is the worker consumer's ack floor (stream sequence) when
	// the read began.
	AckFloor uint64
	// ReadTo is the last stream sequence read.
	ReadTo uint64
	// ReadAt is when the read began.
	ReadAt time.Time
}

// Read scans the stream from the window's start to its current end. The
// consumers it reads with are deleted when it returns.
func Read(ctx context.Context, js jetstream.JetStream, cfg Config, win Window, filter Filter) (*Report, error) {
	rd := &reader{cfg: cfg, win: win, rep: &Report{ReadAt: time.Now()}, bySeq: map[uint64]*Row{}, inWindow: map[uint64]bool{}}
	// The consumer's state first, then the stream's end: a request at or
	// below this ack floor was answered (if ever) before its ack, so its
	// result is below the end read next.
	floor, consumerKnown, err := ackFloor(ctx, js, cfg)
	if err != nil {
		return nil, err
	}
	rd.rep.AckFloor = floor
	if !consumerKnown {
		rd.warn("consumer %s not found: requests without a result are reported pending (a worker that creates it is delivered every stored request)", cfg.Consumer)
	}
	stream, err := js.Stream(ctx, cfg.Stream)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", cfg.Stream, err)
	}
	rd.last = stream.CachedInfo().State.LastSeq
	if cfg.ConfirmedSubject != "" && !captures(stream.CachedInfo().Config.Subjects, cfg.ConfirmedSubject) {
		rd.warn("stream %s does not capture %s: no confirmations shown", cfg.Stream, cfg.ConfirmedSubject)
		rd.cfg.ConfirmedSubject = ""
	}
	if rd.last == 0 || win.FromSeq > rd.last {
		return rd.rep, nil
	}
	oc := orderedConfig(rd.cfg, win)
	defer deleteConsumers(ctx, stream, oc.NamePrefix)
	cons, err := js.OrderedConsumer(ctx, cfg.Stream, oc)
	if err != nil {
		return nil, fmt.Errorf("read stream %s: %w", cfg.Stream, err)
	}
	if err := rd.scan(cons); err != nil {
		return nil, fmt.Errorf("read stream %s: %w", cfg.Stream, err)
	}
	rd.conclude(consumerKnown, floor, filter)
	return rd.rep, nil
}

// orderedConfig reads the subjects of cfg from the window's start.
func orderedConfig(cfg Config, win Window) jetstream.OrderedConsumerConfig {
	oc := jetstream.OrderedConsumerConfig{FilterSubjects: readSubjects(cfg), DeliverPolicy: jetstream.DeliverAllPolicy}
	switch {
	case win.FromSeq > 0:
		oc.DeliverPolicy, oc.OptStartSeq = jetstream.DeliverByStartSequencePolicy, win.FromSeq
	case !win.Since.IsZero():
		// The server's search by time can start one message late when a
		// message's time equals the start; begin a second early and let
		// the window decide.
		start := win.Since.Add(-time.Second)
		oc.DeliverPolicy, oc.OptStartTime = jetstream.DeliverByStartTimePolicy, &start
	}
	// The ordered consumer makes a new server consumer for every fetch
	// (<prefix>_1, _2, ...) and deletes the one before in the background;
	// all that carry this read's prefix are deleted at the end. The short
	// inactivity threshold is for a replay killed before it could.
	oc.NamePrefix = "cancel-worker-replay-" + nuid.Next()
	oc.InactiveThreshold = ConsumerInactiveThreshold
	return oc
}

// reader is the state of one Read.
type reader struct {
	cfg  Config
	win  Window
	rep  *Report
	last uint64 // the stream's last sequence when the read began

	all      []*Row // every request kept: in the window, or a resend of one
	bySeq    map[uint64]*Row
	inWindow map[uint64]bool
}

func (rd *reader) warn(format string, args ...any) {
	rd.rep.Warnings = append(rd.rep.Warnings, fmt.Sprintf(format, args...))
}

// scan reads up to the stream's end as it was when the read began.
func (rd *reader) scan(cons jetstream.Consumer) error {
	for done, waited := false, false; !done; {
		// Take what is there; if nothing is, wait once before concluding
		// that the stream holds nothing more for these subjects.
		var batch jetstream.MessageBatch
		var err error
		if waited {
			batch, err = cons.Fetch(1000, jetstream.FetchMaxWait(time.Second))
		} else {
			batch, err = cons.FetchNoWait(1000)
		}
		if err != nil {
			return err
		}
		n := 0
		for msg := range batch.Messages() {
			n++
			last, err := rd.take(msg)
			if err != nil {
				return err
			}
			done = done || last
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			return err
		}
		if n == 0 {
			if waited {
				return nil
			}
			waited = true
			continue
		}
		waited = false
	}
	return nil
}

// take books one message; done says it is the last one to read.
func (rd *reader) take(msg jetstream.Msg) (done bool, err error) {
	meta, err := msg.Metadata()
	if err != nil {
		return false, err
	}
	seq := meta.Sequence.Stream
	rd.rep.ReadTo = seq
	done = seq >= rd.last || meta.NumPending == 0
	switch msg.Subject() {
	case rd.cfg.ConfirmedSubject:
		c, err := messages.DecodeConfirmation(msg.Data())
		if err != nil {
			rd.warn("confirmation at sequence %d is not a confirmation: %v", seq, err)
			return done, nil
		}
		if row := rd.bySeq[c.RequestSeq]; row != nil {
			row.addConfirmation(c)
		}
	case rd.cfg.AckSubject, rd.cfg.RejectedSubject:
		res, err := messages.DecodeResult(msg.Data())
		if err != nil {
			rd.warn("result at sequence %d is not a result: %v", seq, err)
			return done, nil
		}
		if row := rd.bySeq[res.RequestSeq]; row != nil && row.result == nil {
			row.setResult(&res, seq, meta.Timestamp)
		}
	default:
		row := newRow(rd.cfg, msg, seq, meta.Timestamp)
		switch {
		case rd.win.contains(seq, meta.Timestamp):
			rd.inWindow[seq] = true
		case row.ReplayOfSeq != 0 && rd.bySeq[row.ReplayOfSeq] != nil:
		default:
			return done, nil
		}
		rd.all = append(rd.all, row)
		rd.bySeq[seq] = row
	}
	return done, nil
}

// conclude names the state of the requests without a result, joins resends
// with what they resent, and keeps the rows of the window that pass filter.
func (rd *reader) conclude(consumerKnown bool, floor uint64, filter Filter) {
	for _, row := range rd.all {
		if row.result == nil {
			row.Status = StatePending
			if consumerKnown && row.Seq <= floor {
				row.Status = StateUnanswered
			}
		}
	}
	for _, row := range rd.all {
		if orig := rd.bySeq[row.ReplayOfSeq]; row.ReplayOfSeq != 0 && orig != nil && orig != row {
			orig.Replays = append(orig.Replays, Replay{
				Seq: row.Seq, RequestID: row.RequestID, Status: row.Status, RetCode: row.RetCode, LatencyMs: row.LatencyMs,
			})
		}
	}
	for _, row := range rd.all {
		if rd.inWindow[row.Seq] && filter.matches(row) {
			rd.rep.Rows = append(rd.rep.Rows, row)
		}
	}
}

// captures reports whether one of a stream's subjects (wildcards allowed)
// takes subj.
func captures(streamSubjects []string, subj string) bool {
	want := strings.Split(subj, ".")
	for _, pattern := range streamSubjects {
		p := strings.Split(pattern, ".")
		for i, tok := range p {
			if tok == ">" && i < len(want) {
				return true
			}
			if i >= len(want) || tok != "*" && tok != want[i] {
				break
			}
			if i == len(p)-1 && len(p) == len(want) {
				return true
			}
		}
	}
	return false
}

// ConsumerInactiveThreshold is how long the server keeps a consumer of a
// replay that ended without deleting it (killed).
const ConsumerInactiveThreshold = 30 * time.Second

// deleteConsumers deletes the consumers of stream whose names start with
// prefix, also when ctx has ended.
func deleteConsumers(ctx context.Context, stream jetstream.Stream, prefix string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	names := stream.ConsumerNames(ctx)
	var mine []string
	for name := range names.Name() {
		if strings.HasPrefix(name, prefix+"_") {
			mine = append(mine, name)
		}
	}
	for _, name := range mine {
		// Not found: the ordered consumer's own background delete won.
		_ = stream.DeleteConsumer(ctx, name)
	}
}

// addConfirmation records an order's confirmation; a later one for the same
// order (a redelivered result outside the duplicate window) replaces it.
func (r *Row) addConfirmation(c messages.Confirmation) {
	conf := Confirmed{OrderID: c.OrderID, OrderLinkID: c.OrderLinkID, OrderStatus: c.OrderStatus, Final: c.Final, ConfirmedBy: c.ConfirmedBy, Error: c.Error}
	for i, have := range r.Confirmations {
		if have.OrderID == conf.OrderID && have.OrderLinkID == conf.OrderLinkID {
			r.Confirmations[i] = conf
			return
		}
	}
	r.Confirmations = append(r.Confirmations, conf)
}

// ackFloor reads the stream sequence at or below which the worker's consumer
// has acked or terminated every message.
func ackFloor(ctx context.Context, js jetstream.JetStream, cfg Config) (uint64, bool, error) {
	cons, err := js.Consumer(ctx, cfg.Stream, cfg.Consumer)
	switch {
	case errors.Is(err, jetstream.ErrConsumerNotFound):
		return 0, false, nil
	case errors.Is(err, jetstream.ErrStreamNotFound):
		return 0, false, fmt.Errorf("stream %s not found", cfg.Stream)
	case err != nil:
		return 0, false, fmt.Errorf("consumer %s: %w", cfg.Consumer, err)
	}
	return cons.CachedInfo().AckFloor.Stream, true, nil
}

func newRow(cfg Config, msg jetstream.Msg, seq uint64, at time.Time) *Row {
	data := msg.Data()
	echo := messages.LenientEcho(data)
	var msgID string
	if h := msg.Headers(); h != nil {
		msgID = h.Get(nats.MsgIdHdr)
	}
	row := &Row{
		Seq: seq, Subject: msg.Subject(), RequestTime: at.UTC(),
		RequestID: messages.RequestID(echo.RequestID, msgID, cfg.Stream, seq),
		Category:  echo.Category, Symbol: echo.Symbol, OrderID: echo.OrderID, OrderLinkID: echo.OrderLinkID, Account: echo.Account,
	}
	row.req, row.reqErr = decodeRequest(cfg, row.Subject, data)
	row.ReplayOf, row.ReplayOfSeq = row.req.replayOf, row.req.replayOfSeq
	return row
}

func (r *Row) setResult(res *messages.Result, seq uint64, at time.Time) {
	r.result = res
	r.Status = string(res.Status)
	r.RetCode, r.RetMsg = res.RetCode, res.RetMsg
	r.Ambiguous, r.Attempts, r.RateLimitWaitMs = res.Ambiguous, res.Attempts, res.RateLimitWaitMs
	r.Orders = len(res.Orders)
	r.Error, r.LastError = res.Error, res.LastError
	r.ResultSeq = seq
	t := at.UTC()
	r.ResultTime = &t
	ms := float64(at.Sub(r.RequestTime)) / float64(time.Millisecond)
	r.LatencyMs = &ms
	// The worker's reading of the request wins over the lenient one.
	if r.Category == "" {
		r.Category = res.Category
	}
	if r.Symbol == "" {
		r.Symbol = res.Symbol
	}
}
