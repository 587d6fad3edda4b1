package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker/embedded"
)

// benchOptions are the flags of `cancel-worker bench`.
type benchOptions struct {
	n           int
	categories  []string
	limit       int
	latency     time.Duration
	batch       bool
	noLimit     bool
	replicas    int
	concurrency int
	rate        int
	inProcess   bool
	plot        string
	killAfter   time.Duration
	// sigtermAfter stops the active replica with SIGTERM instead.
	sigtermAfter time.Duration
	// exchangeLimit, when set, is the exchange's real per-UID limit; the
	// workers then run Bybit's documented defaults and learn it.
	exchangeLimit int
	confirm       bool
	pushDelay     time.Duration
	// sync sends the cancels as sync requests (benchsync.go).
	sync bool
	// cancelAll option cancel-alls of cancelAllOrders resting orders each
	// are published beside the burst (a kill switch next to a burst).
	cancelAll       int
	cancelAllOrders int
	// ipLimit is BYBIT_IP_LIMIT of each replica ("off" or N/duration).
	ipLimit string
}

// benchResult is what one run measured.
type benchResult struct {
	drain, ideal time.Duration
	limited      int
	p50, p99     time.Duration
	// resultAt is when each result was stored, from the burst's start.
	resultAt        []time.Duration
	kill            *killReport
	peakRSS         int64
	throughput      float64
	budgetPerSecond int
	confirm         *confirmReport
	sync            *syncReport
	cancelAll       *cancelAllReport
}

// cancelAllReport is what --cancel-all measured.
type cancelAllReport struct {
	results, cancelled, orders int
	lastAt                     time.Time     // when the last cancel-all result was stored
	last                       time.Duration // from the burst's start to lastAt
	requests                   int           // what the exchange was sent: order cancels (a batch counts per order) and cancel-all calls
	limited                    int           // of which answered 10006
}

// warmUpRequestID marks the one cancel published before the burst.
const warmUpRequestID = "bench-warm-up"

// cancelAllRequestID marks the cancel-alls of --cancel-all in their results.
const cancelAllRequestID = "bench-cancel-all-"

// confirmReport is what --confirm measured: from each result being stored
// to its order's confirmation.
type confirmReport struct {
	n, byWebSocket, byREST, unknown int
	p50, p99, max                   time.Duration
	all                             time.Duration // from the burst's start to the last confirmation
}

func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench", commandAbout("bench"), stderr)
	var o benchOptions
	var cats string
	fs.IntVar(&o.n, "n", 600, "cancels to publish")
	fs.StringVar(&cats, "categories", "linear", "categories, comma-separated; the cancels are split evenly")
	fs.IntVar(&o.limit, "limit", 10, "per-endpoint limit per second of each category, at the exchange and in the worker")
	fs.DurationVar(&o.latency, "latency", 0, "simulated exchange latency per request")
	fs.BoolVar(&o.batch, "batch", true, "send through cancel-batch too")
	fs.BoolVar(&o.noLimit, "no-limit", false, "no rate limits anywhere (raw throughput of the worker)")
	fs.IntVar(&o.replicas, "replicas", 1, "worker processes (in-process) sharing the durable consumer, each with BYBIT_LIMIT_SHARE=1/replicas")
	fs.IntVar(&o.concurrency, "concurrency", 16, "WORKER_CONCURRENCY of each replica")
	fs.BoolVar(&o.inProcess, "in-process", false, "run the workers inside the bench process instead of as `cancel-worker run` processes (peak RSS then covers everything)")
	fs.IntVar(&o.rate, "rate", 0, "publish at this many messages a second instead of all at once (for latency at a steady load)")
	fs.DurationVar(&o.killAfter, "kill-after", 0, "SIGKILL the active replica this long after the burst is published (needs --replicas 2 or more) and report recovery")
	fs.DurationVar(&o.sigtermAfter, "sigterm-after", 0, "stop the active replica with SIGTERM this long after the burst is published (needs --replicas 2 or more) and report the hand-over")
	fs.IntVar(&o.exchangeLimit, "exchange-limit", 0, "the exchange's real per-endpoint limit per second (an account above the base tier); the workers run Bybit's documented defaults (no BYBIT_LIMITS) and learn it from X-Bapi-Limit")
	fs.StringVar(&o.plot, "plot", "", "draw cumulative results over time against the ideal to this .svg or .png file")
	fs.BoolVar(&o.confirm, "confirm", false, "also confirm every cancel (CONFIRM=true) and report ack→confirmation latency")
	fs.DurationVar(&o.pushDelay, "push-delay", 0, "with --confirm: the simulated exchange pushes each order update this long after the cancel")
	fs.BoolVar(&o.sync, "sync", false, "send the cancels as sync requests on orders.sync.cancel (needs --rate) and report request→reply latency next to publish→result")
	fs.IntVar(&o.cancelAll, "cancel-all", 0, "also publish this many option cancel-alls at the start, each for its own symbol with --cancel-all-orders resting orders")
	fs.IntVar(&o.cancelAllOrders, "cancel-all-orders", 50, "resting orders each --cancel-all request cancels")
	fs.StringVar(&o.ipLimit, "ip-limit", "off", "BYBIT_IP_LIMIT of each replica: N/duration (production: 500/5s) or off")
	flattenN := fs.Int("flatten", 0, "instead: rest this many orders across "+strings.Join(flattenCategories, ", ")+" and flatten the account with one request at Bybit's base-tier limits")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the run to this file (go tool pprof)")
	if err := fs.parse(args); err != nil {
		return err
	}
	if *flattenN > 0 {
		return benchFlatten(ctx, *flattenN, o.latency, stdout, stderr)
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	o.categories = strings.Split(cats, ",")
	for _, c := range o.categories {
		if !slices.Contains(messages.Categories, c) {
			return fmt.Errorf("--categories: %q is not one of spot, linear, inverse, option", c)
		}
	}
	if o.n < 1 || o.replicas < 1 || o.limit < 1 {
		return errors.New("--n, --replicas and --limit must be at least 1")
	}
	if o.sync && (o.rate <= 0 || o.inProcess) {
		return errors.New("--sync needs --rate, and runs the workers as processes (their sync service)")
	}
	if o.cancelAll < 0 || o.cancelAllOrders < 1 {
		return errors.New("--cancel-all must not be negative and --cancel-all-orders must be at least 1")
	}
	if _, err := parseRate(o.ipLimit); err != nil {
		return fmt.Errorf("--ip-limit: %w", err)
	}
	if (o.killAfter > 0 || o.sigtermAfter > 0) && (o.replicas < 2 || o.inProcess) {
		return errors.New("--kill-after and --sigterm-after need --replicas 2 or more, run as processes")
	}
	if o.killAfter > 0 && o.sigtermAfter > 0 {
		return errors.New("--kill-after or --sigterm-after, not both")
	}
	res, err := bench(ctx, o, stdout)
	if err != nil {
		return err
	}
	mode := fmt.Sprintf("%d/s per endpoint", o.limit)
	if o.exchangeLimit > 0 {
		mode = fmt.Sprintf("exchange %d/s per endpoint, worker defaults (learned)", o.exchangeLimit)
	}
	if o.ipLimit != "off" {
		mode += ", IP " + o.ipLimit
	}
	if o.noLimit {
		mode = "no limit"
	}
	if o.plot != "" {
		title := fmt.Sprintf("%d cancels, %s, %s, batch %v", o.n, strings.Join(o.categories, ","), mode, o.batch && !o.noLimit)
		budget := res.budgetPerSecond
		if o.noLimit {
			budget = 0
		}
		if err := plotDrain(o.plot, res.resultAt, (o.n+len(o.categories)-1)/len(o.categories)*len(o.categories), budget*len(o.categories), title); err != nil {
			return fmt.Errorf("--plot: %w", err)
		}
		fmt.Fprintf(stdout, "plot written to %s\n", o.plot)
	}
	if res.sync != nil {
		res.sync.print(stdout, o, res)
	}
	if k := res.kill; k != nil {
		how := "killed (SIGKILL)"
		if o.sigtermAfter > 0 {
			how = "stopped (SIGTERM)"
		}
		fmt.Fprintf(stdout, "\n| replicas | AckWait | PinnedTTL | active one %s after | held at kill | redeliveries while all alive | last redelivery after kill | every result after kill | duplicated results |\n", how)
		fmt.Fprintf(stdout, "|---|---|---|---|---|---|---|---|---|\n")
		fmt.Fprintf(stdout, "| %d | %v | %v | %v | %.0f | %.0f | %v | %v | %d |\n", o.replicas, k.ackWait, worker.DefaultPinnedTTL, o.killAfter+o.sigtermAfter, k.heldAtKill,
			k.aliveRedeliveries, k.lastRedelivery.Round(time.Millisecond), k.allResults.Round(time.Millisecond), k.duplicates)
	}
	if c := res.confirm; c != nil {
		fmt.Fprintf(stdout, "\n| confirmations | by websocket | by rest | unknown | push delay | ack→confirmation p50 | p99 | max | last confirmation |\n")
		fmt.Fprintf(stdout, "|---|---|---|---|---|---|---|---|---|\n")
		fmt.Fprintf(stdout, "| %d | %d | %d | %d | %v | %v | %v | %v | %v |\n", c.n, c.byWebSocket, c.byREST, c.unknown, o.pushDelay,
			c.p50.Round(10*time.Microsecond), c.p99.Round(10*time.Microsecond), c.max.Round(10*time.Microsecond), c.all.Round(time.Millisecond))
	}
	if c := res.cancelAll; c != nil {
		fmt.Fprintf(stdout, "\n| cancel-alls | orders each | IP limit | cancelled | orders cancelled | last cancel-all | sent (order cancels + cancel-all calls) | 10006 | 10006 share | burst drain | burst ideal | burst ratio |\n")
		fmt.Fprintf(stdout, "|---|---|---|---|---|---|---|---|---|---|---|---|\n")
		fmt.Fprintf(stdout, "| %d option | %d | %s | %d/%d | %d | %v | %d | %d | %.2f %% | %v | %v | %.3f |\n", o.cancelAll, o.cancelAllOrders, o.ipLimit,
			c.cancelled, c.results, c.orders, c.last.Round(time.Millisecond), c.requests, c.limited, 100*float64(c.limited)/float64(max(c.requests, 1)),
			res.drain.Round(time.Millisecond), res.ideal.Round(time.Millisecond), res.drain.Seconds()/max(res.ideal.Seconds(), 1e-9))
	}
	fmt.Fprintf(stdout, "\n| N | categories | budgets | batch | replicas | latency | drain | ideal | ratio | throughput | 10006 | p50 | p99 | peak RSS |\n")
	fmt.Fprintf(stdout, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	ideal, ratio := "—", "—"
	if !o.noLimit {
		ideal = res.ideal.Round(time.Millisecond).String()
		ratio = fmt.Sprintf("%.3f", res.drain.Seconds()/max(res.ideal.Seconds(), 1e-9))
	}
	fmt.Fprintf(stdout, "| %d | %s | %s | %v | %d | %v | %v | %s | %s | %.0f/s | %d | %v | %v | %.0f MB |\n",
		o.n, strings.Join(o.categories, ","), mode, o.batch && !o.noLimit, o.replicas, o.latency,
		res.drain.Round(time.Millisecond), ideal, ratio, res.throughput, res.limited,
		res.p50.Round(10*time.Microsecond), res.p99.Round(10*time.Microsecond), float64(res.peakRSS)/1e6)
	return nil
}

// bench runs the worker exactly as in production (file storage, DoubleAck,
// result PubAcks) against the simulated exchange verifying every signature.
func bench(ctx context.Context, o benchOptions, progress io.Writer) (benchResult, error) {
	ns, stopNATS, err := embedded.StartTempNATS("cancel-worker-bench-")
	if err != nil {
		return benchResult{}, err
	}
	defer stopNATS()

	limits := map[string]int{}
	if !o.noLimit {
		for _, c := range o.categories {
			limits["cancel/"+c] = o.limit
			limits["cancel-batch/"+c] = o.limit
		}
	}
	exLimits := maps.Clone(limits)
	if o.exchangeLimit > 0 {
		for _, c := range o.categories {
			exLimits["cancel/"+c] = o.exchangeLimit
			exLimits["cancel-batch/"+c] = o.exchangeLimit
		}
	}
	if !o.noLimit && o.cancelAll > 0 {
		// Bybit's own cancel-all budget, which the worker knows by default.
		exLimits["cancel-all/option"] = bybittest.DefaultLimits()["cancel-all/option"]
	}
	ex := bybittest.New(bybittest.Options{AutoCreate: true, Limits: exLimits, Latency: o.latency})
	for i := range o.cancelAll {
		for range o.cancelAllOrders {
			ex.AddOrder(bybittest.Order{Category: messages.CategoryOption, Symbol: cancelAllSymbol(i)})
		}
	}
	ex.SetPushDelay(o.pushDelay)
	baseURL, stopSim, err := startSim(ex, "127.0.0.1:0")
	if err != nil {
		return benchResult{}, err
	}
	defer stopSim()

	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg := demoWorkerConfig(log)
	cfg.Batch = o.batch
	cfg.Concurrency = o.concurrency
	cfg.LimitShare = 1 // identical settings: the consumer pins one replica at a time
	cfg.MaxAckPending = max(1000, o.n)
	cfg.Confirm = o.confirm
	cfg.WSURL = wsURLOf(baseURL)
	cfg.Limits = limits
	cfg.IPLimit, _ = parseRate(o.ipLimit)
	if !o.noLimit {
		cfg.Limits = worker.DefaultLimits()
		for k := range limits {
			cfg.Limits[k] = o.limit
		}
		if o.exchangeLimit > 0 {
			cfg.Limits = worker.DefaultLimits() // nothing explicit: learned
		} else {
			cfg.LimitCeilings = limits
		}
	}

	wctx, stopWorkers := context.WithCancel(ctx)
	defer stopWorkers()
	var wg sync.WaitGroup
	errs := make(chan error, o.replicas)
	var procs []*exec.Cmd
	var metricsURLs []string
	if o.inProcess {
		for range o.replicas {
			nc, err := nats.Connect(ns.ClientURL())
			if err != nil {
				return benchResult{}, err
			}
			defer nc.Close()
			js, err := jetstream.New(nc)
			if err != nil {
				return benchResult{}, err
			}
			client, err := bybit.NewClient(bybit.Options{BaseURL: baseURL, APIKey: bybittest.DemoAPIKey, APISecret: bybittest.DemoAPISecret})
			if err != nil {
				return benchResult{}, err
			}
			w, err := worker.New(cfg, js, client)
			if err != nil {
				return benchResult{}, err
			}
			if err := w.Setup(ctx); err != nil {
				return benchResult{}, err
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := w.Run(wctx); err != nil {
					errs <- err
				}
			}()
		}
	} else {
		if procs, metricsURLs, err = startBenchWorkers(ctx, o, cfg, ns.ClientURL(), baseURL); err != nil {
			return benchResult{}, err
		}
		defer func() {
			for _, p := range procs {
				_ = p.Process.Kill()
				_ = p.Wait()
			}
		}()
	}

	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		return benchResult{}, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return benchResult{}, err
	}
	var count atomic.Int64
	latencies := make([]time.Duration, 0, o.n)
	resultTimes := make([]time.Time, 0, o.n)
	perSeq := make(map[uint64]int, o.n)
	var latMu sync.Mutex
	done := make(chan struct{})
	reader, err := js.OrderedConsumer(ctx, cfg.Stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{cfg.AckSubject, cfg.RejectedSubject}})
	if err != nil {
		return benchResult{}, err
	}
	var lastResult atomic.Int64
	var allReport cancelAllReport
	warm := make(chan struct{})
	var warmOnce sync.Once
	cc, err := reader.Consume(func(m jetstream.Msg) {
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
			warmOnce.Do(func() { close(warm) })
			return
		}
		if strings.HasPrefix(r.RequestID, cancelAllRequestID) {
			latMu.Lock()
			perSeq[r.RequestSeq]++
			allReport.results++
			allReport.orders += len(r.Orders)
			if r.Status == messages.StatusCancelled {
				allReport.cancelled++
			}
			allReport.lastAt = meta.Timestamp
			latMu.Unlock()
			if count.Add(1) == int64(o.n+o.cancelAll) {
				close(done)
			}
			return
		}
		latMu.Lock()
		perSeq[r.RequestSeq]++
		latencies = append(latencies, meta.Timestamp.Sub(r.RequestTime))
		resultTimes = append(resultTimes, meta.Timestamp)
		latMu.Unlock()
		lastResult.Store(meta.Timestamp.UnixNano())
		if count.Add(1) == int64(o.n+o.cancelAll) {
			close(done)
		}
	})
	if err != nil {
		return benchResult{}, err
	}
	defer cc.Stop()
	confirmed := newConfirmTally(o.n)
	if o.confirm {
		stop, err := confirmed.read(ctx, js, cfg)
		if err != nil {
			return benchResult{}, err
		}
		defer stop()
	}

	// One cancel before the burst: a replica is pinned (and has waited its
	// takeover window) as in a fleet that has run for a while; then its
	// window is let roll so that the burst finds the whole budget.
	if _, err := js.Publish(ctx, cfg.CancelSubject, []byte(`{"category":"linear","symbol":"WARMUPUSDT","orderId":"bench-warm-up","requestId":"`+warmUpRequestID+`"}`)); err != nil {
		return benchResult{}, err
	}
	select {
	case <-warm:
	case <-time.After(time.Minute):
		return benchResult{}, errors.New("bench: no result for the warm-up cancel after a minute")
	case <-ctx.Done():
		return benchResult{}, ctx.Err()
	}
	time.Sleep(time.Second)
	fmt.Fprintf(progress, "bench: %d cancels over %s, %d replica(s), exchange latency %v\n", o.n, strings.Join(o.categories, ","), o.replicas, o.latency)
	start := time.Now()
	publishErr := make(chan error, 1)
	var syncRep *syncReport
	published := false
	if o.sync {
		syncRep = &syncReport{}
	}
	go func() {
		if err := publishCancelAlls(ctx, js, cfg.CancelAllSubject, o); err != nil {
			publishErr <- err
			return
		}
		if o.sync {
			publishErr <- syncBench(ctx, nc, "orders.sync.cancel", o, syncRep)
			return
		}
		publishErr <- publishBench(ctx, js, cfg.CancelSubject, o)
	}()

	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var killAt <-chan time.Time
	if o.killAfter+o.sigtermAfter > 0 {
		kt := time.NewTimer(o.killAfter + o.sigtermAfter)
		defer kt.Stop()
		killAt = kt.C
	}
	var killed time.Time
	victim := 0
	var kr killReport
	var lastRedeliveries float64
	var lastRedeliveryAt time.Time
	poll := time.NewTicker(20 * time.Millisecond)
	defer poll.Stop()
wait:
	for {
		select {
		case <-done:
			break wait
		case <-killAt:
			for _, u := range metricsURLs {
				kr.aliveRedeliveries += counterOf(u, "cancel_worker_redeliveries_total")
			}
			victim = activeReplica(metricsURLs)
			kr.heldAtKill = counterOf(metricsURLs[victim], "cancel_worker_messages_received_total") - counterOf(metricsURLs[victim], "cancel_worker_results_total")
			if o.sigtermAfter > 0 {
				_ = procs[victim].Process.Signal(syscall.SIGTERM)
			} else {
				_ = procs[victim].Process.Kill()
			}
			killed = time.Now()
			fmt.Fprintf(progress, "  stopped replica %d (the active one) holding about %.0f messages\n", victim+1, kr.heldAtKill)
		case <-poll.C:
			if killed.IsZero() {
				continue
			}
			var red float64
			for i, u := range metricsURLs {
				if i == victim {
					continue
				}
				red += counterOf(u, "cancel_worker_redeliveries_total")
			}
			if red > lastRedeliveries {
				lastRedeliveries, lastRedeliveryAt = red, time.Now()
			}
		case err := <-publishErr:
			if err != nil {
				return benchResult{}, err
			}
			published = true
		case err := <-errs:
			return benchResult{}, fmt.Errorf("worker stopped: %w", err)
		case <-tick.C:
			n := count.Load()
			el := time.Since(start)
			fmt.Fprintf(progress, "  %6.1fs  %6d/%d results  %7.0f/s\n", el.Seconds(), n, o.n+o.cancelAll, float64(n)/el.Seconds())
		case <-ctx.Done():
			return benchResult{}, ctx.Err()
		}
	}
	if o.confirm {
		select {
		case <-confirmed.done:
		case <-time.After(time.Minute):
			return benchResult{}, fmt.Errorf("bench: %d of %d confirmations after a minute", confirmed.count(), o.n)
		case <-ctx.Done():
			return benchResult{}, ctx.Err()
		}
	}
	drain := time.Unix(0, lastResult.Load()).Sub(start)
	var kill *killReport
	if !killed.IsZero() {
		for i, u := range metricsURLs { // a redelivery may land after the last poll
			if i == victim {
				continue
			}
			if red := counterOf(u, "cancel_worker_redeliveries_total"); red > lastRedeliveries {
				lastRedeliveries, lastRedeliveryAt = red, time.Now()
			}
		}
		kr.lastRedelivery = lastRedeliveryAt.Sub(killed)
		kr.allResults = time.Unix(0, lastResult.Load()).Sub(killed)
		latMu.Lock()
		for _, c := range perSeq {
			kr.duplicates += c - 1
		}
		latMu.Unlock()
		kr.ackWait = cfg.AckWait
		kill = &kr
	}
	// Peak RSS of the worker: the largest replica process, or (in-process)
	// the whole bench, nats-server and simulator included.
	var rss int64
	for _, p := range procs {
		rss = max(rss, peakRSS(strconv.Itoa(p.Process.Pid)))
	}
	if len(procs) == 0 {
		rss = peakRSS("self")
	}
	stopWorkers()
	wg.Wait()

	if syncRep != nil && !published {
		// Every result is stored; the last replies may still be on their way.
		select {
		case err := <-publishErr:
			if err != nil {
				return benchResult{}, err
			}
		case <-ctx.Done():
			return benchResult{}, ctx.Err()
		}
	}
	res := benchResult{drain: drain, throughput: float64(o.n) / drain.Seconds(), peakRSS: rss, kill: kill, sync: syncRep}
	if o.confirm {
		res.confirm = confirmed.report(start)
	}
	for _, q := range ex.Requests() {
		if q.RetCode == 10006 {
			res.limited++
		}
	}
	if o.cancelAll > 0 {
		latMu.Lock()
		c := allReport
		latMu.Unlock()
		c.last = c.lastAt.Sub(start)
		for _, q := range ex.Requests() {
			if q.Path == "/v5/order/cancel" || q.Path == "/v5/order/cancel-batch" || q.Path == "/v5/order/cancel-all" {
				c.requests++
				if q.RetCode == 10006 {
					c.limited++
				}
			}
		}
		res.cancelAll = &c
	}
	for _, t := range resultTimes {
		res.resultAt = append(res.resultAt, t.Sub(start))
	}
	slices.Sort(latencies)
	res.p50 = latencies[len(latencies)/2]
	res.p99 = latencies[min(len(latencies)-1, len(latencies)*99/100)]
	// The ideal drain of N cancels with a budget B a second fully available
	// at the start is (N − B) / B; the categories drain in parallel.
	limit := o.limit
	if o.exchangeLimit > 0 {
		limit = o.exchangeLimit
	}
	budget := limit
	if o.batch {
		budget *= 2
	}
	if ip, _ := parseRate(o.ipLimit); !ip.Unlimited() {
		// The IP limit counts requests, a batch as one: at best the batch
		// budget goes in full batches and singles take what is left.
		reqs := float64(ip.N) / ip.Per.Seconds() / float64(len(o.categories))
		single := float64(limit)
		var batchOrders, batchReqs float64
		if o.batch {
			batchOrders = float64(limit)
			batchReqs = math.Ceil(batchOrders / float64(bybit.MaxBatch(o.categories[0])))
		}
		if reqs < single+batchReqs {
			budget = int(max(reqs-batchReqs, 0) + min(batchOrders, reqs*float64(bybit.MaxBatch(o.categories[0]))))
		}
	}
	perCat := (o.n + len(o.categories) - 1) / len(o.categories)
	res.ideal = time.Duration(float64(max(perCat-budget, 0)) / float64(budget) * float64(time.Second))
	if ip, _ := parseRate(o.ipLimit); !ip.Unlimited() {
		res.ideal = idealUnderIPLimit(perCat*len(o.categories), len(o.categories), limit, o.batch, bybit.MaxBatch(o.categories[0]), ip)
	}
	res.budgetPerSecond = budget
	return res, nil
}

// idealUnderIPLimit is the ideal drain of n orders over cats categories when
// an IP limit applies besides the UID budgets (limit a second per endpoint
// and category): the start of the first one-second window by which the best
// schedule has sent them all. The IP limit is a rolling window too (500/5s
// lets 500 requests go at once, not 100 a second), so it is not a rate: in
// any ipWindows consecutive one-second windows at most ip.N requests. A batch
// carries up to maxBatch orders for one IP request, a single one, and both
// cost one unit of their UID budget an order; so the best schedule sends the
// whole batch budget every window and gives singles only the IP requests the
// batches of the IP window leave (spent as early as they may be).
func idealUnderIPLimit(n, cats, limit int, batch bool, maxBatch int, ip worker.Rate) time.Duration {
	ipWindows, ipN := int(math.Round(ip.Per.Seconds())), ip.N
	if ip.Per < time.Second { // several IP windows in one second
		ipWindows, ipN = 1, int(float64(ip.N)*float64(time.Second)/float64(ip.Per))
	}
	batchReqs := 0 // a window's batch requests, all categories
	if batch {
		batchReqs = cats * ((limit + maxBatch - 1) / maxBatch)
	}
	var batches, singles []int // requests sent in each window
	sent := 0
	for t := 0; ; t++ {
		recent := func(xs []int) int { // in the ipWindows-1 windows before t
			sum := 0
			for _, x := range xs[max(0, len(xs)-(ipWindows-1)):] {
				sum += x
			}
			return sum
		}
		b := min(batchReqs, max(0, ipN-recent(batches)-recent(singles)))
		orders := min(b*maxBatch, cats*limit)
		// Singles may use what the batches of a whole IP window leave.
		s := min(cats*limit, max(0, ipN-ipWindows*batchReqs-recent(singles)))
		if batchReqs*ipWindows > ipN {
			s = 0 // the batches need every IP request: a single would cost orders
		}
		batches, singles = append(batches, b), append(singles, s)
		if sent += orders + s; sent >= n {
			return time.Duration(t) * time.Second
		}
	}
}

// cancelAllSymbol is the option symbol of the i-th --cancel-all request.
func cancelAllSymbol(i int) string { return fmt.Sprintf("BTC-27DEC24-%d-C", 100000+1000*i) }

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

// parseRate reads BYBIT_IP_LIMIT's form: N/duration or off.
func parseRate(s string) (worker.Rate, error) {
	p := &parser{v: values{"BYBIT_IP_LIMIT": s}}
	r := p.rate("BYBIT_IP_LIMIT")
	return r, p.err
}

// publishBench publishes the cancels, all at once (asynchronously, waiting
// for every PubAck) or at a steady rate.
func publishBench(ctx context.Context, js jetstream.JetStream, subject string, o benchOptions) error {
	body := func(i int) []byte {
		c := o.categories[i%len(o.categories)]
		symbol := "BTCUSDT"
		if c == "option" {
			symbol = "BTC-27DEC24-100000-C"
		}
		return []byte(`{"category":"` + c + `","symbol":"` + symbol + `","orderId":"bench-` + strconv.Itoa(i) + `"}`)
	}
	if o.rate > 0 {
		t := time.NewTicker(time.Second / time.Duration(o.rate))
		defer t.Stop()
		for i := range o.n {
			if _, err := js.Publish(ctx, subject, body(i)); err != nil {
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
		f, err := js.PublishAsync(subject, body(i))
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

// startBenchWorkers runs the replicas as `cancel-worker run` processes, as in
// production, configured through the environment.
func startBenchWorkers(ctx context.Context, o benchOptions, cfg worker.Config, natsURL, baseURL string) ([]*exec.Cmd, []string, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, nil, err
	}
	var limits []string
	for k, v := range cfg.LimitCeilings { // the explicit ones: --limit
		limits = append(limits, fmt.Sprintf("%s=%d", k, v))
	}
	if o.exchangeLimit > 0 {
		limits = limits[:0] // Bybit's documented defaults, learned up
	}
	if o.noLimit {
		limits = limits[:0]
		for k := range worker.DefaultLimits() {
			limits = append(limits, k+"=0")
		}
	}
	set := map[string]string{
		"NATS_URL": natsURL, "BYBIT_BASE_URL": baseURL,
		"BYBIT_API_KEY": bybittest.DemoAPIKey, "BYBIT_API_SECRET": bybittest.DemoAPISecret,
		"BYBIT_IP_LIMIT": o.ipLimit, "BYBIT_LIMITS": strings.Join(limits, ","),
		"BYBIT_BATCH": strconv.FormatBool(cfg.Batch), "BYBIT_LIMIT_SHARE": strconv.FormatFloat(cfg.LimitShare, 'f', -1, 64),
		"WORKER_CONCURRENCY": strconv.Itoa(cfg.Concurrency), "NATS_MAX_ACK_PENDING": strconv.Itoa(cfg.MaxAckPending),
		"LOG_LEVEL": "info", "LOG_FORMAT": "json",
		"CONFIRM": strconv.FormatBool(cfg.Confirm), "BYBIT_WS_URL": cfg.WSURL,
	}
	var procs []*exec.Cmd
	var logs []*embedded.LogBuffer
	var urls []string
	for range o.replicas {
		// Each replica serves /metrics where it is told to.
		addr, err := freeLoopbackAddr()
		if err != nil {
			return procs, nil, err
		}
		set["HTTP_ADDR"] = addr
		env, err := settingsEnv(set)
		if err != nil {
			return procs, nil, err
		}
		cmd := exec.CommandContext(ctx, self, "run")
		cmd.Env = append(os.Environ(), env...)
		lb := &embedded.LogBuffer{}
		cmd.Stderr = lb
		if err := cmd.Start(); err != nil {
			return procs, nil, err
		}
		procs = append(procs, cmd)
		logs = append(logs, lb)
		urls = append(urls, "http://"+addr)
	}
	// Wait until the consumer exists: the workers create it.
	nc, err := nats.Connect(natsURL)
	if err != nil {
		return procs, nil, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return procs, nil, err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		info, err := js.Consumer(ctx, cfg.Stream, cfg.Consumer)
		if err == nil && allServing(urls) {
			if ci, err := info.Info(ctx); err == nil && ci.NumWaiting >= o.replicas {
				return procs, urls, nil
			}
		}
		if time.Now().After(deadline) {
			for _, lb := range logs {
				fmt.Fprint(os.Stderr, lb.String())
			}
			return procs, nil, errors.New("bench: the workers did not bind the consumer in 30s")
		}
		select {
		case <-ctx.Done():
			return procs, nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// settingsEnv writes settings of `cancel-worker run` as its environment; a
// name that is not one of its settings is an error, so that the bench
// cannot drift from the command it runs.
func settingsEnv(set map[string]string) ([]string, error) {
	known := map[string]bool{}
	for _, s := range settings {
		known[s.env] = true
	}
	env := make([]string, 0, len(set))
	for _, name := range slices.Sorted(maps.Keys(set)) {
		if !known[name] {
			return nil, fmt.Errorf("bench: %s is not a setting of cancel-worker run", name)
		}
		env = append(env, name+"="+set[name])
	}
	return env, nil
}

// freeLoopbackAddr is a loopback address with a port free now.
func freeLoopbackAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// allServing reports whether every replica answers /healthz.
func allServing(urls []string) bool {
	for _, u := range urls {
		resp, err := http.Get(u + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
	}
	return true
}

// killReport is what --kill-after measured.
type killReport struct {
	ackWait           time.Duration
	heldAtKill        float64
	aliveRedeliveries float64
	lastRedelivery    time.Duration // from the kill
	allResults        time.Duration // from the kill
	duplicates        int
}

// activeReplica is the index of the replica that reports
// cancel_worker_active 1 (the first one if none does).
func activeReplica(urls []string) int {
	for i, u := range urls {
		if counterOf(u, "cancel_worker_active") == 1 {
			return i
		}
	}
	return 0
}

// counterOf scrapes one worker's /metrics for the sum of a counter or gauge
// over its labels; -1 when it cannot be read.
func counterOf(url, name string) float64 {
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return -1
	}
	var sum float64
	for _, m := range families[name].GetMetric() {
		switch {
		case m.Counter != nil:
			sum += m.GetCounter().GetValue()
		case m.Gauge != nil:
			sum += m.GetGauge().GetValue()
		case m.Untyped != nil:
			sum += m.GetUntyped().GetValue()
		}
	}
	return sum
}

// peakRSS is a process's peak resident set (VmHWM), in bytes.
func peakRSS(pid string) int64 {
	b, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb * 1024
		}
	}
	return 0
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

func (t *confirmTally) read(ctx context.Context, js jetstream.JetStream, cfg worker.Config) (func(), error) {
	reader, err := js.OrderedConsumer(ctx, cfg.Stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{cfg.ConfirmedSubject}})
	if err != nil {
		return nil, err
	}
	cc, err := reader.Consume(func(m jetstream.Msg) {
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
	})
	if err != nil {
		return nil, err
	}
	return cc.Stop, nil
}

func (t *confirmTally) count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.got)
}

func (t *confirmTally) report(start time.Time) *confirmReport {
	t.mu.Lock()
	defer t.mu.Unlock()
	r := &confirmReport{n: len(t.got), all: t.last.Sub(start)}
	lat := make([]time.Duration, 0, len(t.got))
	for _, c := range t.got {
		switch c.ConfirmedBy {
		case messages.ConfirmedByWebSocket:
			r.byWebSocket++
		case messages.ConfirmedByREST:
			r.byREST++
		default:
			r.unknown++
		}
		lat = append(lat, c.ConfirmedAt.Sub(c.AckTime))
	}
	slices.Sort(lat)
	if len(lat) > 0 {
		r.p50, r.p99, r.max = lat[len(lat)/2], lat[min(len(lat)-1, len(lat)*99/100)], lat[len(lat)-1]
	}
	return r
}
