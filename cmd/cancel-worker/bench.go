package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"runtime/pprof"
	"slices"
	"strings"
	"time"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker/embedded"
)

// `cancel-worker bench` in four files: this one reads the flags and sets a
// run up; benchrun.go publishes the burst, waits for it and collects what
// the stream stores; benchreplicas.go starts the workers, finds the active
// one, stops it and reads their /metrics; benchreport.go turns a run into
// figures and prints the tables. benchflatten.go and benchsync.go are the
// --flatten and --sync variants.

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
	// flatten, when set, runs `bench --flatten` instead (benchflatten.go).
	flatten int
	// cpuProfile is the file a CPU profile of the run goes to.
	cpuProfile string
}

// warmUpRequestID marks the one cancel published before the burst.
const warmUpRequestID = "bench-warm-up"

// cancelAllRequestID marks the cancel-alls of --cancel-all in their results.
const cancelAllRequestID = "bench-cancel-all-"

func runBench(ctx context.Context, args []string, _ lookupEnv, stdout, stderr io.Writer) error {
	o, err := parseBenchFlags(args, stderr)
	if err != nil {
		return err
	}
	if o.flatten > 0 {
		return benchFlatten(ctx, o.flatten, o.latency, stdout, stderr)
	}
	if o.cpuProfile != "" {
		stop, err := startCPUProfile(o.cpuProfile)
		if err != nil {
			return err
		}
		defer stop()
	}
	if err := o.validate(); err != nil {
		return err
	}
	res, err := bench(ctx, o, stdout)
	if err != nil {
		return err
	}
	return writeBenchReport(stdout, o, res)
}

// parseBenchFlags reads the flags; validate checks them.
func parseBenchFlags(args []string, stderr io.Writer) (benchOptions, error) {
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
	fs.IntVar(&o.flatten, "flatten", 0, "instead: rest this many orders across "+strings.Join(flattenCategories, ", ")+" and flatten the account with one request at Bybit's base-tier limits")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the run to this file (go tool pprof)")
	if err := fs.parse(args); err != nil {
		return o, err
	}
	o.categories = strings.Split(cats, ",")
	return o, nil
}

// validate checks the flags that shape the burst, then those of what runs
// beside it.
func (o benchOptions) validate() error {
	if err := o.validateBurst(); err != nil {
		return err
	}
	return o.validateBeside()
}

func (o benchOptions) validateBurst() error {
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
	return nil
}

// validateBeside checks the cancel-alls, the IP limit and the stop of a
// replica.
func (o benchOptions) validateBeside() error {
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
	return nil
}

// startCPUProfile writes a CPU profile to path until the returned stop.
func startCPUProfile(path string) (func(), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

// bench runs the worker exactly as in production (file storage, DoubleAck,
// result PubAcks) against the simulated exchange verifying every signature.
func bench(ctx context.Context, o benchOptions, progress io.Writer) (benchResult, error) {
	ns, stopNATS, err := embedded.StartTempNATS("cancel-worker-bench-")
	if err != nil {
		return benchResult{}, err
	}
	defer stopNATS()
	limits, exLimits := benchLimits(o)
	ex := benchExchange(o, exLimits)
	baseURL, stopSim, err := startSim(ex, "127.0.0.1:0")
	if err != nil {
		return benchResult{}, err
	}
	defer stopSim()
	cfg := benchWorkerConfig(o, limits, baseURL)

	replicas, err := startReplicas(ctx, o, cfg, ns.ClientURL(), baseURL)
	defer replicas.close()
	if err != nil {
		return benchResult{}, err
	}
	r, err := openBenchRun(ctx, o, cfg, ns.ClientURL(), progress)
	if err != nil {
		return benchResult{}, err
	}
	defer r.close()
	r.replicas = replicas
	return r.run(ctx, ex)
}

// benchLimits are the workers' explicit per-endpoint limits (none with
// --no-limit) and the simulated exchange's.
func benchLimits(o benchOptions) (limits, exLimits map[string]int) {
	limits = map[string]int{}
	if !o.noLimit {
		for _, c := range o.categories {
			limits["cancel/"+c] = o.limit
			limits["cancel-batch/"+c] = o.limit
		}
	}
	exLimits = maps.Clone(limits)
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
	return limits, exLimits
}

// benchExchange is the simulated exchange of a run, with the resting
// orders of the --cancel-all requests.
func benchExchange(o benchOptions, exLimits map[string]int) *bybittest.Exchange {
	ex := bybittest.New(bybittest.Options{AutoCreate: true, Limits: exLimits, Latency: o.latency})
	for i := range o.cancelAll {
		for range o.cancelAllOrders {
			ex.AddOrder(bybittest.Order{Category: messages.CategoryOption, Symbol: cancelAllSymbol(i)})
		}
	}
	ex.SetPushDelay(o.pushDelay)
	return ex
}

// benchWorkerConfig is every replica's configuration.
func benchWorkerConfig(o benchOptions, limits map[string]int, baseURL string) worker.Config {
	cfg := demoWorkerConfig(slog.New(slog.NewTextHandler(io.Discard, nil)))
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
	return cfg
}

// cancelAllSymbol is the option symbol of the i-th --cancel-all request.
func cancelAllSymbol(i int) string { return fmt.Sprintf("BTC-27DEC24-%d-C", 100000+1000*i) }

// parseRate reads BYBIT_IP_LIMIT's form: N/duration or off.
func parseRate(s string) (worker.Rate, error) {
	p := &parser{v: values{"BYBIT_IP_LIMIT": s}}
	r := p.rate("BYBIT_IP_LIMIT")
	return r, p.err
}
