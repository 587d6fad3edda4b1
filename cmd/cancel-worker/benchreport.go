package main

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker"
)

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

// confirmReport is what --confirm measured: from each result being stored
// to its order's confirmation.
type confirmReport struct {
	n, byWebSocket, byREST, unknown int
	p50, p99, max                   time.Duration
	all                             time.Duration // from the burst's start to the last confirmation
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

// benchMeasures is what a run saw, every result in and the workers
// stopped, for result to make figures of.
type benchMeasures struct {
	start   time.Time
	results *resultTally
	ex      *bybittest.Exchange
	kill    *killReport
	confirm *confirmReport
	sync    *syncReport
	peakRSS int64
}

// result is the run's figures.
func (m benchMeasures) result(o benchOptions) benchResult {
	drain := m.results.lastAt().Sub(m.start)
	res := benchResult{drain: drain, throughput: float64(o.n) / drain.Seconds(), peakRSS: m.peakRSS, kill: m.kill, sync: m.sync, confirm: m.confirm}
	requests := m.ex.Requests()
	res.limited = answered10006(requests)
	if o.cancelAll > 0 {
		res.cancelAll = m.cancelAllReport(requests)
	}
	t := m.results
	t.mu.Lock()
	for _, at := range t.resultTimes {
		res.resultAt = append(res.resultAt, at.Sub(m.start))
	}
	slices.Sort(t.latencies)
	res.p50, res.p99 = p50p99(t.latencies)
	t.mu.Unlock()
	res.ideal, res.budgetPerSecond = idealDrain(o)
	return res
}

// cancelAllReport completes the cancel-alls' figures with what the exchange
// was sent.
func (m benchMeasures) cancelAllReport(requests []bybittest.Request) *cancelAllReport {
	m.results.mu.Lock()
	c := m.results.cancelAll
	m.results.mu.Unlock()
	c.last = c.lastAt.Sub(m.start)
	for _, q := range requests {
		if q.Path == "/v5/order/cancel" || q.Path == "/v5/order/cancel-batch" || q.Path == "/v5/order/cancel-all" {
			c.requests++
			if q.RetCode == 10006 {
				c.limited++
			}
		}
	}
	return &c
}

// answered10006 is how many of the requests the exchange refused for a
// rate limit.
func answered10006(requests []bybittest.Request) int {
	n := 0
	for _, q := range requests {
		if q.RetCode == 10006 {
			n++
		}
	}
	return n
}

// p50p99 are the median and the 99th percentile of sorted durations.
func p50p99(sorted []time.Duration) (p50, p99 time.Duration) {
	return sorted[len(sorted)/2], sorted[min(len(sorted)-1, len(sorted)*99/100)]
}

// idealDrain is the ideal drain of the burst and the budget a second of
// each category it assumes. The ideal drain of N cancels with a budget B a
// second fully available at the start is (N − B) / B; the categories drain
// in parallel.
func idealDrain(o benchOptions) (time.Duration, int) {
	limit := o.limit
	if o.exchangeLimit > 0 {
		limit = o.exchangeLimit
	}
	budget := limit
	if o.batch {
		budget *= 2
	}
	ip, _ := parseRate(o.ipLimit)
	if !ip.Unlimited() {
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
	ideal := time.Duration(float64(max(perCat-budget, 0)) / float64(budget) * float64(time.Second))
	if !ip.Unlimited() {
		ideal = idealUnderIPLimit(perCat*len(o.categories), len(o.categories), limit, o.batch, bybit.MaxBatch(o.categories[0]), ip)
	}
	return ideal, budget
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

// report is the confirmations' figures.
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
		r.p50, r.p99 = p50p99(lat)
		r.max = lat[len(lat)-1]
	}
	return r
}

// writeBenchReport prints the run's tables (and draws --plot): those of
// what ran beside the burst, then the burst's own.
func writeBenchReport(w io.Writer, o benchOptions, res benchResult) error {
	mode := o.budgets()
	if o.plot != "" {
		if err := writeBenchPlot(w, o, res, mode); err != nil {
			return err
		}
	}
	if res.sync != nil {
		res.sync.print(w, o, res)
	}
	if res.kill != nil {
		res.kill.print(w, o)
	}
	if res.confirm != nil {
		res.confirm.print(w, o)
	}
	if res.cancelAll != nil {
		res.cancelAll.print(w, o, res)
	}
	writeBurstTable(w, o, res, mode)
	return nil
}

// budgets names the rate limits of the run, for the tables and the plot.
func (o benchOptions) budgets() string {
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
	return mode
}

func writeBenchPlot(w io.Writer, o benchOptions, res benchResult, mode string) error {
	title := fmt.Sprintf("%d cancels, %s, %s, batch %v", o.n, strings.Join(o.categories, ","), mode, o.batch && !o.noLimit)
	budget := res.budgetPerSecond
	if o.noLimit {
		budget = 0
	}
	if err := plotDrain(o.plot, res.resultAt, (o.n+len(o.categories)-1)/len(o.categories)*len(o.categories), budget*len(o.categories), title); err != nil {
		return fmt.Errorf("--plot: %w", err)
	}
	fmt.Fprintf(w, "plot written to %s\n", o.plot)
	return nil
}

// ratio is the drain against the ideal.
func (res benchResult) ratio() float64 { return res.drain.Seconds() / max(res.ideal.Seconds(), 1e-9) }

func (k *killReport) print(w io.Writer, o benchOptions) {
	how := "killed (SIGKILL)"
	if o.sigtermAfter > 0 {
		how = "stopped (SIGTERM)"
	}
	fmt.Fprintf(w, "\n| replicas | AckWait | PinnedTTL | active one %s after | held at kill | redeliveries while all alive | last redelivery after kill | every result after kill | duplicated results |\n", how)
	fmt.Fprintf(w, "|---|---|---|---|---|---|---|---|---|\n")
	fmt.Fprintf(w, "| %d | %v | %v | %v | %.0f | %.0f | %v | %v | %d |\n", o.replicas, k.ackWait, worker.DefaultPinnedTTL, o.killAfter+o.sigtermAfter, k.heldAtKill,
		k.aliveRedeliveries, k.lastRedelivery.Round(time.Millisecond), k.allResults.Round(time.Millisecond), k.duplicates)
}

func (c *confirmReport) print(w io.Writer, o benchOptions) {
	fmt.Fprintf(w, "\n| confirmations | by websocket | by rest | unknown | push delay | ack→confirmation p50 | p99 | max | last confirmation |\n")
	fmt.Fprintf(w, "|---|---|---|---|---|---|---|---|---|\n")
	fmt.Fprintf(w, "| %d | %d | %d | %d | %v | %v | %v | %v | %v |\n", c.n, c.byWebSocket, c.byREST, c.unknown, o.pushDelay,
		c.p50.Round(10*time.Microsecond), c.p99.Round(10*time.Microsecond), c.max.Round(10*time.Microsecond), c.all.Round(time.Millisecond))
}

func (c *cancelAllReport) print(w io.Writer, o benchOptions, res benchResult) {
	fmt.Fprintf(w, "\n| cancel-alls | orders each | IP limit | cancelled | orders cancelled | last cancel-all | sent (order cancels + cancel-all calls) | 10006 | 10006 share | burst drain | burst ideal | burst ratio |\n")
	fmt.Fprintf(w, "|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	fmt.Fprintf(w, "| %d option | %d | %s | %d/%d | %d | %v | %d | %d | %.2f %% | %v | %v | %.3f |\n", o.cancelAll, o.cancelAllOrders, o.ipLimit,
		c.cancelled, c.results, c.orders, c.last.Round(time.Millisecond), c.requests, c.limited, 100*float64(c.limited)/float64(max(c.requests, 1)),
		res.drain.Round(time.Millisecond), res.ideal.Round(time.Millisecond), res.ratio())
}

// writeBurstTable prints the burst's own row.
func writeBurstTable(w io.Writer, o benchOptions, res benchResult, mode string) {
	fmt.Fprintf(w, "\n| N | categories | budgets | batch | replicas | latency | drain | ideal | ratio | throughput | 10006 | p50 | p99 | peak RSS |\n")
	fmt.Fprintf(w, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	ideal, ratio := "—", "—"
	if !o.noLimit {
		ideal = res.ideal.Round(time.Millisecond).String()
		ratio = fmt.Sprintf("%.3f", res.ratio())
	}
	fmt.Fprintf(w, "| %d | %s | %s | %v | %d | %v | %v | %s | %s | %.0f/s | %d | %v | %v | %.0f MB |\n",
		o.n, strings.Join(o.categories, ","), mode, o.batch && !o.noLimit, o.replicas, o.latency,
		res.drain.Round(time.Millisecond), ideal, ratio, res.throughput, res.limited,
		res.p50.Round(10*time.Microsecond), res.p99.Round(10*time.Microsecond), float64(res.peakRSS)/1e6)
}
