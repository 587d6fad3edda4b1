package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker"
)

// benchRun is one run of the bench: the bench's own connection, the
// replicas it drives, and what it reads back from the stream.
type benchRun struct {
	o         benchOptions
	cfg       worker.Config
	nc        *nats.Conn
	js        jetstream.JetStream
	replicas  *benchReplicas
	results   *resultTally
	confirmed *confirmTally
	progress  io.Writer
	start     time.Time // when the burst starts being published
	stops     []func()
}

// openBenchRun connects the bench's own client and starts reading the
// results (and, with --confirm, the confirmations) back from the stream.
func openBenchRun(ctx context.Context, o benchOptions, cfg worker.Config, natsURL string, progress io.Writer) (*benchRun, error) {
	nc, js, err := connectJetStream(natsURL)
	if err != nil {
		return nil, err
	}
	r := &benchRun{o: o, cfg: cfg, nc: nc, js: js, progress: progress,
		results: newResultTally(o.n + o.cancelAll), confirmed: newConfirmTally(o.n)}
	stop, err := consumeStream(ctx, js, cfg.Stream, []string{cfg.AckSubject, cfg.RejectedSubject}, r.results.take)
	if err != nil {
		r.close()
		return nil, err
	}
	r.stops = append(r.stops, stop)
	if o.confirm {
		stop, err := consumeStream(ctx, js, cfg.Stream, []string{cfg.ConfirmedSubject}, r.confirmed.take)
		if err != nil {
			r.close()
			return nil, err
		}
		r.stops = append(r.stops, stop)
	}
	return r, nil
}

// close stops the readers, the last started first, and the connection.
func (r *benchRun) close() {
	for _, stop := range slices.Backward(r.stops) {
		stop()
	}
	r.nc.Close()
}

// run warms up, publishes the burst, waits for every result (and
// confirmation) and measures.
func (r *benchRun) run(ctx context.Context, ex *bybittest.Exchange) (benchResult, error) {
	if err := r.warmUp(ctx); err != nil {
		return benchResult{}, err
	}
	o := r.o
	fmt.Fprintf(r.progress, "bench: %d cancels over %s, %d replica(s), exchange latency %v\n", o.n, strings.Join(o.categories, ","), o.replicas, o.latency)
	r.start = time.Now()
	var syncRep *syncReport
	if o.sync {
		syncRep = &syncReport{}
	}
	publishErr := r.publish(ctx, syncRep)
	failover := startFailover(o)
	defer failover.stopTimer()
	published, err := r.wait(ctx, publishErr, failover)
	if err != nil {
		return benchResult{}, err
	}
	if o.confirm {
		if err := r.waitConfirmations(ctx); err != nil {
			return benchResult{}, err
		}
	}
	m := benchMeasures{start: r.start, results: r.results, ex: ex, sync: syncRep}
	m.kill = failover.report(r.replicas, r.results, r.cfg.AckWait)
	// Peak RSS of the worker: the largest replica process, or (in-process)
	// the whole bench, nats-server and simulator included.
	m.peakRSS = r.replicas.peakRSS()
	r.replicas.stopInProcess()
	if syncRep != nil && !published {
		// Every result is stored; the last replies may still be on their way.
		if err := waitErr(ctx, publishErr); err != nil {
			return benchResult{}, err
		}
	}
	if o.confirm {
		m.confirm = r.confirmed.report(r.start)
	}
	return m.result(o), nil
}

// warmUp publishes one cancel before the burst: a replica is pinned (and
// has waited its takeover window) as in a fleet that has run for a while;
// then its window is let roll so that the burst finds the whole budget.
func (r *benchRun) warmUp(ctx context.Context) error {
	if _, err := r.js.Publish(ctx, r.cfg.CancelSubject, []byte(`{"category":"linear","symbol":"WARMUPUSDT","orderId":"bench-warm-up","requestId":"`+warmUpRequestID+`"}`)); err != nil {
		return err
	}
	select {
	case <-r.results.warm:
	case <-time.After(time.Minute):
		return errors.New("bench: no result for the warm-up cancel after a minute")
	case <-ctx.Done():
		return ctx.Err()
	}
	time.Sleep(time.Second)
	return nil
}

// publish publishes the cancel-alls and the burst (as sync requests with
// --sync) in the background; the channel gets its one outcome.
func (r *benchRun) publish(ctx context.Context, syncRep *syncReport) <-chan error {
	publishErr := make(chan error, 1)
	go func() {
		if err := publishCancelAlls(ctx, r.js, r.cfg.CancelAllSubject, r.o); err != nil {
			publishErr <- err
			return
		}
		if syncRep != nil {
			publishErr <- syncBench(ctx, r.nc, "orders.sync.cancel", r.o, syncRep)
			return
		}
		publishErr <- publishBench(ctx, r.js, r.cfg.CancelSubject, r.o)
	}()
	return publishErr
}

// wait waits until every result is stored, printing the progress each
// second and stopping the active replica when failover says; published
// reports whether the publishing had ended by then.
func (r *benchRun) wait(ctx context.Context, publishErr <-chan error, failover *benchFailover) (published bool, err error) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	poll := time.NewTicker(20 * time.Millisecond)
	defer poll.Stop()
	for {
		select {
		case <-r.results.done:
			return published, nil
		case <-failover.due():
			failover.stopActive(r.replicas, r.progress)
		case <-poll.C:
			failover.watch(r.replicas)
		case err := <-publishErr:
			if err != nil {
				return published, err
			}
			published = true
		case err := <-r.replicas.errs:
			return published, fmt.Errorf("worker stopped: %w", err)
		case <-tick.C:
			n := r.results.count.Load()
			el := time.Since(r.start)
			fmt.Fprintf(r.progress, "  %6.1fs  %6d/%d results  %7.0f/s\n", el.Seconds(), n, r.o.n+r.o.cancelAll, float64(n)/el.Seconds())
		case <-ctx.Done():
			return published, ctx.Err()
		}
	}
}

// waitConfirmations waits for the confirmation of every cancel.
func (r *benchRun) waitConfirmations(ctx context.Context) error {
	select {
	case <-r.confirmed.done:
		return nil
	case <-time.After(time.Minute):
		return fmt.Errorf("bench: %d of %d confirmations after a minute", r.confirmed.count(), r.o.n)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// waitErr waits for the one outcome on errc.
func waitErr(ctx context.Context, errc <-chan error) error {
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// publishCancelAlls publishes the --cancel-all requests, one per symbol.
func publishCancelAlls(ctx context.Context, js jetstream.JetStream, subject string, o benchOptions) error {
	for i := range o.cancelAll {
		body := fmt.Sprintf(`{"category":"option","symbol":%q,"requestId":"%s%d"}`, cancelAllSymbol(i), cancelAllRequestID, i)
		if _, err := js.Publish(ctx, subject, []byte(body)); err != nil {
			return err
		}
	}
	return nil
}

// benchCancel is the i-th cancel of the burst, the categories in turn.
func benchCancel(o benchOptions, i int) []byte {
	c := o.categories[i%len(o.categories)]
	symbol := "BTCUSDT"
	if c == "option" {
		symbol = "BTC-27DEC24-100000-C"
	}
	return []byte(`{"category":"` + c + `","symbol":"` + symbol + `","orderId":"bench-` + strconv.Itoa(i) + `"}`)
}

// publishBench publishes the cancels, all at once (asynchronously, waiting
// for every PubAck) or at a steady rate.
func publishBench(ctx context.Context, js jetstream.JetStream, subject string, o benchOptions) error {
	if o.rate > 0 {
		t := time.NewTicker(time.Second / time.Duration(o.rate))
		defer t.Stop()
		for i := range o.n {
			if _, err := js.Publish(ctx, subject, benchCancel(o, i)); err != nil {
				return err
			}
			select {
			case <-t.C:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	}
	futures := make([]jetstream.PubAckFuture, 0, o.n)
	for i := range o.n {
		f, err := js.PublishAsync(subject, benchCancel(o, i))
		if err != nil {
			return err
		}
		futures = append(futures, f)
	}
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// connectJetStream connects to NATS at url with a JetStream client.
func connectJetStream(url string, opts ...nats.Option) (*nats.Conn, jetstream.JetStream, error) {
	return withJetStream(nats.Connect(url, opts...))
}

// withJetStream adds a JetStream client to a connection just made (closing
// it when that fails).
func withJetStream(nc *nats.Conn, err error) (*nats.Conn, jetstream.JetStream, error) {
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, js, nil
}

// consumeStream reads the messages of subjects from the stream with an
// ordered consumer (as a user should: a plain subscriber would also see
// publishes the stream dropped as duplicates) until the returned stop.
func consumeStream(ctx context.Context, js jetstream.JetStream, stream string, subjects []string, take func(jetstream.Msg)) (func(), error) {
	reader, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{FilterSubjects: subjects})
	if err != nil {
		return nil, err
	}
	cc, err := reader.Consume(take)
	if err != nil {
		return nil, err
	}
	return cc.Stop, nil
}

// resultTally collects the results of a run as the stream stores them.
type resultTally struct {
	want     int // the burst's cancels and the cancel-alls
	count    atomic.Int64
	done     chan struct{} // closed when all want are in
	warm     chan struct{} // closed when the warm-up cancel's result is in
	warmOnce sync.Once
	last     atomic.Int64 // when the burst's last result was stored, Unix ns

	mu          sync.Mutex
	latencies   []time.Duration // of the burst's results: from request to result
	resultTimes []time.Time     // when each of the burst's results was stored
	perSeq      map[uint64]int  // results per request sequence
	cancelAll   cancelAllReport
}

func newResultTally(want int) *resultTally {
	return &resultTally{want: want, done: make(chan struct{}), warm: make(chan struct{}),
		latencies: make([]time.Duration, 0, want), resultTimes: make([]time.Time, 0, want), perSeq: make(map[uint64]int, want)}
}

// take counts one stored result.
func (t *resultTally) take(m jetstream.Msg) {
	var r struct {
		RequestTime time.Time           `json:"requestTime"`
		RequestSeq  uint64              `json:"requestSeq"`
		RequestID   string              `json:"requestId"`
		Status      messages.Status     `json:"status"`
		Orders      []messages.OrderRef `json:"orders"`
	}
	meta, err := m.Metadata()
	if err != nil || json.Unmarshal(m.Data(), &r) != nil {
		return
	}
	if r.RequestID == warmUpRequestID {
		t.warmOnce.Do(func() { close(t.warm) })
		return
	}
	t.mu.Lock()
	t.perSeq[r.RequestSeq]++
	if strings.HasPrefix(r.RequestID, cancelAllRequestID) { // beside the burst
		t.cancelAll.results++
		t.cancelAll.orders += len(r.Orders)
		if r.Status == messages.StatusCancelled {
			t.cancelAll.cancelled++
		}
		t.cancelAll.lastAt = meta.Timestamp
	} else {
		t.latencies = append(t.latencies, meta.Timestamp.Sub(r.RequestTime))
		t.resultTimes = append(t.resultTimes, meta.Timestamp)
		t.last.Store(meta.Timestamp.UnixNano())
	}
	t.mu.Unlock()
	if t.count.Add(1) == int64(t.want) {
		close(t.done)
	}
}

// lastAt is when the burst's last result was stored.
func (t *resultTally) lastAt() time.Time { return time.Unix(0, t.last.Load()) }

// duplicates is how many results repeat one of the same request.
func (t *resultTally) duplicates() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, c := range t.perSeq {
		n += c - 1
	}
	return n
}

// confirmTally collects the confirmations of a bench run.
type confirmTally struct {
	want int
	done chan struct{}

	mu   sync.Mutex
	got  []messages.Confirmation
	last time.Time
}

func newConfirmTally(want int) *confirmTally {
	return &confirmTally{want: want, done: make(chan struct{})}
}

// take counts one stored confirmation.
func (t *confirmTally) take(m jetstream.Msg) {
	c, err := messages.DecodeConfirmation(m.Data())
	meta, merr := m.Metadata()
	if err != nil || merr != nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.got = append(t.got, c)
	t.last = meta.Timestamp
	if len(t.got) == t.want {
		close(t.done)
	}
}

func (t *confirmTally) count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.got)
}
