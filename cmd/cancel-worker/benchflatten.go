package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"time"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker/embedded"
)

// flattenBenchReport is what `bench --flatten N` measured.
type flattenBenchReport struct {
	orders, cancelled   int
	complete            bool
	rounds              int
	cancelAlls, lookups int
	tooMany             int
	took                time.Duration
	singles             time.Duration // N single cancels at the same limits, categories in parallel
	perCategory         map[string]int
	latency             time.Duration
}

// flattenBenchBook rests n orders across the four categories, a quarter
// each: spot of every filter kind, linear settled in USDT and in USDC,
// inverse in three coins, option.
func flattenBenchBook(ex *bybittest.Exchange, n int) map[string]int {
	per := map[string]int{}
	kinds := []string{"Order", "tpslOrder", "StopOrder", "OcoOrder"}
	for i := range n {
		var o bybittest.Order
		switch i % 4 {
		case 0:
			o = bybittest.Order{Category: "spot", Symbol: "BTCUSDT", Kind: kinds[(i/4)%len(kinds)]}
		case 1:
			o = bybittest.Order{Category: "linear", Symbol: "BTCUSDT"}
			if (i/4)%2 == 1 {
				o = bybittest.Order{Category: "linear", Symbol: "ETHPERP", SettleCoin: "USDC"}
			}
		case 2:
			o = bybittest.Order{Category: "inverse", Symbol: []string{"BTCUSD", "ETHUSD", "XRPUSD"}[(i/4)%3]}
		default:
			o = bybittest.Order{Category: "option", Symbol: "BTC-27MAR26-100000-C"}
		}
		ex.AddOrder(o)
		per[o.Category]++
	}
	return per
}

// benchFlatten rests n orders, flattens the account with one request at
// Bybit's base-tier limits and reports the time next to what n single
// cancels would need at the same limits.
func benchFlatten(ctx context.Context, n int, latency time.Duration, stdout, progress io.Writer) error {
	ns, stopNATS, err := embedded.StartTempNATS("cancel-worker-bench-")
	if err != nil {
		return err
	}
	defer stopNATS()
	ex := bybittest.New(bybittest.Options{Limits: bybittest.DefaultLimits(), Latency: latency})
	per := flattenBenchBook(ex, n)
	baseURL, stopSim, err := startSim(ex, "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer stopSim()

	cfg := demoWorkerConfig(slog.New(slog.NewTextHandler(io.Discard, nil)))
	cfg.Limits = worker.DefaultLimits()
	cfg.IPLimit, _ = parseRate("500/5s")
	sw, err := newSimWorker(ctx, cfg, ns.ClientURL(), baseURL)
	if err != nil {
		return err
	}
	defer sw.nc.Close()
	wctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- sw.w.Run(wctx) }()
	defer func() { stop(); <-done }()

	fmt.Fprintf(progress, "flattening %d resting orders (%v)\n", n, per)
	start := time.Now()
	ack, err := sw.js.Publish(ctx, cfg.CancelAllSubject, []byte(`{"scope":"account","requestId":"bench-flatten"}`))
	if err != nil {
		return err
	}
	r, err := waitResult(ctx, sw.js, cfg.Stream, ack.Sequence, cfg.AckSubject, cfg.RejectedSubject)
	if err != nil {
		return err
	}
	rep := flattenBenchReport{orders: n, cancelled: len(r.Orders), complete: r.Complete != nil && *r.Complete,
		rounds: r.Rounds, took: time.Since(start), perCategory: per, latency: latency}
	rep.count(ex.Requests())
	if !rep.complete {
		return errors.New("bench: the flatten did not complete: " + r.LastError)
	}
	writeFlattenBench(stdout, rep)
	return nil
}

// count adds what the exchange was sent, and how long single cancels of
// the same orders would take at the worker's default limits (the
// categories in parallel).
func (rep *flattenBenchReport) count(requests []bybittest.Request) {
	for _, q := range requests {
		switch q.Path {
		case "/v5/order/cancel-all":
			rep.cancelAlls++
		case bybit.EndpointOrderRealtime:
			rep.lookups++
		}
		if q.RetCode == 10006 {
			rep.tooMany++
		}
	}
	limits := worker.DefaultLimits()
	for c, k := range rep.perCategory {
		rep.singles = max(rep.singles, time.Duration(float64(k)/float64(limits["cancel/"+c])*float64(time.Second)))
	}
}

func writeFlattenBench(w io.Writer, r flattenBenchReport) {
	cats := make([]string, 0, len(r.perCategory))
	for c := range r.perCategory {
		cats = append(cats, c)
	}
	slices.Sort(cats)
	split := ""
	for i, c := range cats {
		if i > 0 {
			split += " "
		}
		split += fmt.Sprintf("%s %d", c, r.perCategory[c])
	}
	fmt.Fprintf(w, "\n| flatten: resting orders | split | limits | latency | complete | cancelled | rounds | cancel-all calls | lookups | 10006 | flatten took | %d single cancels need |\n", r.orders)
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|---|")
	fmt.Fprintf(w, "| %d | %s | Bybit base tier | %v | %v | %d | %d | %d | %d | %d | %s | %s |\n",
		r.orders, split, r.latency, r.complete, r.cancelled, r.rounds, r.cancelAlls, r.lookups, r.tooMany,
		r.took.Round(10*time.Millisecond), r.singles.Round(100*time.Millisecond))
}

// flattenCategories is every category a flatten covers (for the help text).
var flattenCategories = []string{messages.CategorySpot, messages.CategoryLinear, messages.CategoryInverse, messages.CategoryOption}
