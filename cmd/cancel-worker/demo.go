package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker/embedded"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker/replay"
)

// demoRequest is one step of the scripted scenario.
type demoRequest struct {
	body    string
	msgID   string
	expect  messages.Status
	comment string
}

// startSim serves a simulated exchange on a loopback port.
func startSim(ex *bybittest.Exchange, addr string) (string, func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: ex, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return "http://" + ln.Addr().String(), func() { _ = srv.Close() }, nil
}

// simWorker is a worker of this process against the simulated exchange,
// its stream and consumer set up, and its own connection to NATS.
type simWorker struct {
	nc *nats.Conn
	js jetstream.JetStream
	w  *worker.Worker
}

// newSimWorker connects to NATS at natsURL and sets up a worker of cfg
// against the simulated exchange at baseURL (its demo key). The caller
// closes sw.nc.
func newSimWorker(ctx context.Context, cfg worker.Config, natsURL, baseURL string, opts ...nats.Option) (simWorker, error) {
	nc, js, err := connectJetStream(natsURL, opts...)
	if err != nil {
		return simWorker{}, err
	}
	sw, err := setUpSimWorker(ctx, cfg, nc, js, baseURL)
	if err != nil {
		nc.Close()
	}
	return sw, err
}

func setUpSimWorker(ctx context.Context, cfg worker.Config, nc *nats.Conn, js jetstream.JetStream, baseURL string) (simWorker, error) {
	client, err := bybit.NewClient(bybit.Options{BaseURL: baseURL, APIKey: bybittest.DemoAPIKey, APISecret: bybittest.DemoAPISecret})
	if err != nil {
		return simWorker{}, err
	}
	w, err := worker.New(cfg, js, client)
	if err != nil {
		return simWorker{}, err
	}
	if err := w.Setup(ctx); err != nil {
		return simWorker{}, err
	}
	return simWorker{nc: nc, js: js, w: w}, nil
}

// demoOptions are the flags of `cancel-worker demo`.
type demoOptions struct {
	burst     int
	pushDelay time.Duration
	log       *slog.Logger
}

func runDemo(ctx context.Context, args []string, _ lookupEnv, stdout, stderr io.Writer) error {
	o, err := parseDemoFlags(args, stderr)
	if err != nil {
		return err
	}
	return demo(ctx, o, stdout)
}

func parseDemoFlags(args []string, stderr io.Writer) (demoOptions, error) {
	fs := newFlagSet("demo", commandAbout("demo"), stderr)
	burst := fs.Int("burst", 25, "linear cancels published at once (the simulated limits are 10/s single and 10/s batch)")
	logLevel := fs.String("log-level", "warn", "the worker's log level (its lines go to stderr)")
	pushDelay := fs.Duration("push-delay", 30*time.Millisecond, "how long after a cancel the simulated exchange pushes the order's update (Bybit cancels asynchronously)")
	if err := fs.parse(args); err != nil {
		return demoOptions{}, err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return demoOptions{}, fmt.Errorf("--log-level: %q is not debug, info, warn or error", *logLevel)
	}
	return demoOptions{burst: *burst, pushDelay: *pushDelay, log: newLogger(stderr, level, "text")}, nil
}

// demo runs the scripted scenario: it publishes the script, prints every
// result and confirmation as it comes, then the summary, checked against
// what the script expects, and what replay says of the stream.
func demo(ctx context.Context, o demoOptions, stdout io.Writer) error {
	ns, stopNATS, err := embedded.StartTempNATS("cancel-worker-demo-")
	if err != nil {
		return err
	}
	defer stopNATS()

	ex := bybittest.New(bybittest.Options{})
	ex.SetPushDelay(o.pushDelay)
	baseURL, stopSim, err := startSim(ex, "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer stopSim()

	script := demoScript(ex, o.burst)
	fmt.Fprintf(stdout, "demo: nats-server %s (JetStream, temp store), simulated Bybit %s (limits per endpoint: linear/inverse/option 10/s, spot 20/s)\n",
		ns.ClientURL(), baseURL)

	cfg := demoWorkerConfig(o.log)
	cfg.Confirm, cfg.WSURL = true, wsURLOf(baseURL)
	sw, err := newSimWorker(ctx, cfg, ns.ClientURL(), baseURL, nats.Name("cancel-worker-demo"))
	if err != nil {
		return err
	}
	defer sw.nc.Close()

	results, confirmations, stopReading, err := demoReaders(ctx, sw.js, cfg, len(script))
	if err != nil {
		return err
	}
	defer stopReading()

	wctx, stopWorker := context.WithCancel(ctx)
	defer stopWorker()
	workerDone := make(chan error, 1)
	go func() { workerDone <- sw.w.Run(wctx) }()

	start := time.Now()
	fmt.Fprintf(stdout, "publishing %d requests: one per category by orderId and orderLinkId, 1 for an order that fills before its cancel lands, a burst of %d linear cancels, 2 invalid messages, 1 cancel of an order that is not open\n\n",
		len(script), o.burst)
	if err := demoPublish(ctx, sw.js, cfg.CancelSubject, script); err != nil {
		return err
	}
	t := newDemoTally(script)
	if err := t.collect(ctx, stdout, start, results, confirmations, workerDone); err != nil {
		return err
	}
	stopWorker()
	if err := <-workerDone; err != nil {
		return err
	}
	if err := t.report(stdout, ex, o.burst, o.pushDelay); err != nil {
		return err
	}
	return demoReplay(ctx, sw.js, cfg, stdout)
}

// demoReplay prints what `cancel-worker replay` says of the demo's stream,
// for incident review.
func demoReplay(ctx context.Context, js jetstream.JetStream, cfg worker.Config, stdout io.Writer) error {
	rep, err := replay.Read(ctx, js, cfg.Subjects, replay.Window{}, replay.Filter{})
	if err != nil {
		return fmt.Errorf("demo: replay: %w", err)
	}
	fmt.Fprintln(stdout, "\nreplay of this stream (the summary `cancel-worker replay` prints after its table):")
	return replay.WriteSummary(stdout, replay.Summarise(rep.Rows))
}

// demoReaders reads results and confirmations from the stream (ordered
// consumers), as a user should: a plain subscriber would also see publishes
// the stream dropped as duplicates.
func demoReaders(ctx context.Context, js jetstream.JetStream, cfg worker.Config, n int) (<-chan messages.Result, <-chan messages.Confirmation, func(), error) {
	results := make(chan messages.Result, n)
	confirmations := make(chan messages.Confirmation, n)
	var stops []func()
	stop := func() {
		for _, s := range stops {
			s()
		}
	}
	read := func(subjects []string, take func(jetstream.Msg)) error {
		stopOne, err := consumeStream(ctx, js, cfg.Stream, subjects, take)
		if err != nil {
			return err
		}
		stops = append(stops, stopOne)
		return nil
	}
	err := read([]string{cfg.AckSubject, cfg.RejectedSubject}, func(m jetstream.Msg) {
		if r, err := messages.DecodeResult(m.Data()); err == nil {
			results <- r
		}
	})
	if err != nil {
		return nil, nil, nil, err
	}
	err = read([]string{cfg.ConfirmedSubject}, func(m jetstream.Msg) {
		if c, err := messages.DecodeConfirmation(m.Data()); err == nil {
			confirmations <- c
		}
	})
	if err != nil {
		stop()
		return nil, nil, nil, err
	}
	return results, confirmations, stop, nil
}

func demoPublish(ctx context.Context, js jetstream.JetStream, subject string, script []demoRequest) error {
	for _, r := range script {
		m := &nats.Msg{Subject: subject, Data: []byte(r.body), Header: nats.Header{}}
		opts := []jetstream.PublishOpt{}
		if r.msgID != "" {
			opts = append(opts, jetstream.WithMsgID(r.msgID))
		}
		if _, err := js.PublishMsg(ctx, m, opts...); err != nil {
			return fmt.Errorf("publish: %w", err)
		}
	}
	return nil
}

// demoTally is what the demo saw come back.
type demoTally struct {
	script        []demoRequest
	wantConfirmed int
	counts        map[messages.Status]int
	orderStatus   map[string]int
	confirmedBy   map[string]int
	waited        time.Duration
	elapsed       time.Duration
	confLatency   []time.Duration
	filled        []string
}

func newDemoTally(script []demoRequest) *demoTally {
	t := &demoTally{script: script, counts: map[messages.Status]int{}, orderStatus: map[string]int{}, confirmedBy: map[string]int{}}
	for _, r := range script {
		if r.expect == messages.StatusCancelled {
			t.wantConfirmed++
		}
	}
	return t
}

// collect prints every result and confirmation as it comes, until all are in.
func (t *demoTally) collect(ctx context.Context, stdout io.Writer, start time.Time, results <-chan messages.Result, confirmations <-chan messages.Confirmation, workerDone <-chan error) error {
	for got, confirmed := 0, 0; got < len(t.script) || confirmed < t.wantConfirmed; {
		select {
		case r := <-results:
			got++
			t.counts[r.Status]++
			t.waited = max(t.waited, time.Duration(r.RateLimitWaitMs)*time.Millisecond)
			fmt.Fprintln(stdout, formatResult(time.Since(start), r))
			if got == len(t.script) {
				t.elapsed = time.Since(start)
			}
		case c := <-confirmations:
			confirmed++
			t.orderStatus[c.OrderStatus]++
			t.confirmedBy[c.ConfirmedBy]++
			t.confLatency = append(t.confLatency, c.ConfirmedAt.Sub(c.AckTime))
			if c.OrderStatus == "Filled" {
				t.filled = append(t.filled, c.RequestID)
			}
			fmt.Fprintln(stdout, formatConfirmation(time.Since(start), c))
		case <-time.After(30 * time.Second):
			return fmt.Errorf("demo: only %d of %d results and %d of %d confirmations after 30s", got, len(t.script), confirmed, t.wantConfirmed)
		case err := <-workerDone:
			return fmt.Errorf("demo: worker stopped early: %v", err)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// report prints the summary and checks it against what the script expects.
func (t *demoTally) report(stdout io.Writer, ex *bybittest.Exchange, burst int, pushDelay time.Duration) error {
	limited := answered10006(ex.Requests())
	want := map[messages.Status]int{}
	for _, r := range t.script {
		want[r.expect]++
	}
	n := len(t.script)
	fmt.Fprintf(stdout, "\nsummary: %d requests, %d results in %s: %s\n", n, n, t.elapsed.Round(time.Millisecond), formatCounts(t.counts))
	fmt.Fprintf(stdout, "rate limits: the %d-cancel linear burst (10/s single + 10/s batch) waited up to %s for budget; the exchange answered 10006 %d times\n",
		burst, t.waited.Round(time.Millisecond), limited)
	lat := t.confLatency
	slices.Sort(lat)
	fmt.Fprintf(stdout, "confirmations: %d (%s), by %s; ack→confirmation p50 %s, max %s (order updates pushed %s after each cancel)\n",
		len(lat), formatCountsOf(t.orderStatus), formatCountsOf(t.confirmedBy),
		lat[len(lat)/2].Round(time.Millisecond), lat[len(lat)-1].Round(time.Millisecond), pushDelay)
	if len(t.filled) > 0 {
		fmt.Fprintf(stdout, "filled before the cancel landed (accepted, yet not cancelled): %s\n", strings.Join(t.filled, ", "))
	}
	for s, n := range want {
		if t.counts[s] != n {
			return fmt.Errorf("demo: expected %s, got %s", formatCounts(want), formatCounts(t.counts))
		}
	}
	if want := map[string]int{"Cancelled": t.wantConfirmed - 1, "Filled": 1}; !maps.Equal(t.orderStatus, want) {
		return fmt.Errorf("demo: expected confirmations %s, got %s", formatCountsOf(want), formatCountsOf(t.orderStatus))
	}
	fmt.Fprintln(stdout, "every request got exactly the result and the confirmation the scenario expects")
	return nil
}

func formatConfirmation(at time.Duration, c messages.Confirmation) string {
	return fmt.Sprintf("+%6.3fs  confirmed  %-7s %-22s orderId=%-36s %-9s by %-9s %4dms after the ack  requestId=%s",
		at.Seconds(), c.Category, c.Symbol, c.OrderID, c.OrderStatus, c.ConfirmedBy, c.AckToConfirmMs, c.RequestID)
}

func demoWorkerConfig(log *slog.Logger) worker.Config {
	cfg := worker.DefaultConfig()
	// In process beside the simulator: no IP ceiling (a scenario sets its
	// own), no size limit on the embedded stream, no sync service;
	// confirmations as the scenario chooses.
	cfg.IPLimit, cfg.StreamMaxBytes = worker.Rate{}, 0
	cfg.Confirm = false
	cfg.SyncCancelSubject, cfg.SyncCancelAllSubject, cfg.SyncMaxTimeout = "", "", 0
	cfg.Logger = log
	return cfg
}

// demoScript fills the simulated book and returns the requests to publish.
func demoScript(ex *bybittest.Exchange, burst int) []demoRequest {
	var s []demoRequest
	add := func(o bybittest.Order, byLink bool, requestID, comment string) {
		o = ex.AddOrder(o)
		body := map[string]string{"category": o.Category, "symbol": o.Symbol, "requestId": requestID}
		if byLink {
			body["orderLinkId"] = o.OrderLinkID
		} else {
			body["orderId"] = o.OrderID
		}
		b, _ := json.Marshal(body)
		s = append(s, demoRequest{body: string(b), expect: messages.StatusCancelled, comment: comment})
	}
	add(bybittest.Order{Category: "spot", Symbol: "BTCUSDT"}, false, "demo-spot-by-id", "")
	add(bybittest.Order{Category: "linear", Symbol: "BTCUSDT", OrderLinkID: "demo-linear-link-1"}, true, "demo-linear-by-link", "")
	add(bybittest.Order{Category: "inverse", Symbol: "BTCUSD"}, false, "demo-inverse-by-id", "")
	add(bybittest.Order{Category: "option", Symbol: "BTC-27DEC24-100000-C", OrderLinkID: "demo-option-link-1"}, true, "demo-option-by-link", "")
	// Accepted, but it fills before the cancel lands: the confirmation says Filled.
	add(bybittest.Order{Category: "spot", Symbol: "ETHUSDT", FillOnCancel: true}, false, "demo-fills-first", "")
	for i := range burst {
		add(bybittest.Order{Category: "linear", Symbol: "ETHUSDT"}, false, fmt.Sprintf("demo-burst-%02d", i+1), "")
	}
	s = append(s,
		demoRequest{body: `{"category":"linear","symbol":"btcusdt","orderId":"1"}`, msgID: "demo-invalid-lowercase", expect: messages.StatusInvalid},
		demoRequest{body: `cancel everything!`, msgID: "demo-invalid-not-json", expect: messages.StatusInvalid},
		demoRequest{body: `{"category":"linear","symbol":"BTCUSDT","orderId":"no-such-order","requestId":"demo-not-open"}`, expect: messages.StatusNotOpen},
	)
	return s
}

func formatResult(at time.Duration, r messages.Result) string {
	id := "orderId=" + r.OrderID
	if r.OrderID == "" {
		id = "orderLinkId=" + r.OrderLinkID
	}
	line := fmt.Sprintf("+%6.3fs  %-9s  %-7s %-22s %-44s attempts=%d waited=%dms  requestId=%s",
		at.Seconds(), r.Status, r.Category, r.Symbol, id, r.Attempts, r.RateLimitWaitMs, r.RequestID)
	switch {
	case r.Error != "":
		line += "  error=" + r.Error
	case r.RetCode != nil && *r.RetCode != 0:
		line += fmt.Sprintf("  retCode=%d %s", *r.RetCode, r.RetMsg)
	}
	if r.Status == messages.StatusInvalid {
		line = fmt.Sprintf("+%6.3fs  %-9s  seq=%d requestId=%s  error=%s", at.Seconds(), r.Status, r.RequestSeq, r.RequestID, r.Error)
	}
	return line
}

func formatCounts(c map[messages.Status]int) string {
	m := make(map[string]int, len(c))
	for k, v := range c {
		m[string(k)] = v
	}
	return formatCountsOf(m)
}

func formatCountsOf(c map[string]int) string {
	keys := slices.Sorted(maps.Keys(c))
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", k, c[k]))
	}
	return strings.Join(parts, ", ")
}

func runSim(ctx context.Context, args []string, stderr io.Writer) error {
	fs := newFlagSet("sim", commandAbout("sim"), stderr)
	addr := fs.String("addr", "127.0.0.1:8080", "listen address")
	latency := fs.Duration("latency", 0, "delay of every answer")
	pushDelay := fs.Duration("push-delay", 30*time.Millisecond, "delay of each order update on the private WebSocket after its cancel")
	var orders, readOnly, rsaKeys listFlag
	fs.Var(&orders, "order", "rest open orders: CATEGORY:SYMBOL[:COUNT[:KIND]] (KIND: Order, StopOrder, tpslOrder, OcoOrder, BidirectionalTpslOrder), for cancel-all; repeatable")
	fs.Var(&readOnly, "read-only-key", "also accept a read-only HMAC key: KEY:SECRET (cancels answer 10005); repeatable")
	fs.Var(&rsaKeys, "rsa-key", "also accept an RSA key: KEY:PUBLIC_KEY_PEM_FILE (the private key signs); repeatable")
	demo := fs.Bool("demo", false, "behave like Bybit's demo trading (BYBIT_ENV=demo): cancel-batch for linear and option only, no GET /v5/user/query-api (retCode 10032)")
	if err := fs.parse(args); err != nil {
		return err
	}
	setup, err := parseSimSetup(orders, readOnly, rsaKeys)
	if err != nil {
		return err
	}
	ex := bybittest.New(bybittest.Options{AutoCreate: true, Latency: *latency, Accounts: setup.accounts, Demo: *demo})
	ex.SetPushDelay(*pushDelay)
	for _, o := range setup.orders {
		o = ex.AddOrder(o)
		fmt.Fprintf(stderr, "resting %s %s %s orderId=%s\n", o.Category, o.Symbol, o.Kind, o.OrderID)
	}
	url, stop, err := startSim(ex, *addr)
	if err != nil {
		return fmt.Errorf("sim: %w", err)
	}
	defer stop()
	fmt.Fprintf(stderr, "simulated Bybit at %s, private WebSocket %s (key %s; every cancel of an unknown order succeeds once)\n", url, wsURLOf(url), bybittest.DemoAPIKey)
	<-ctx.Done()
	if errors.Is(ctx.Err(), context.Canceled) {
		return nil
	}
	return ctx.Err()
}
