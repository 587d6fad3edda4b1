package worker

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
)

// A flatten ({"scope":"account"} on the cancel-all subject) cancels every
// open order of the account in rounds: look up what is open in every
// category, send the cancel-alls that cover it — through cancelAllRun, the
// path and pacing of every cancel-all, its 500-a-call repeat and progress
// records included — and look again, until a lookup finds nothing or
// flattenRounds rounds are spent.
const (
	flattenRounds = 5
	// flattenPages bounds the pages of 50 read per inverse lookup (coins
	// are found from the symbols listed); the other lookups read one page.
	flattenPages = 10
	// flattenLeftShown bounds the orders a result lists as left.
	flattenLeftShown = 100
	// flattenSettles bounds the looks again, a backoff apart, when the
	// lookups list only orders already cancelled (about 3 s in all).
	flattenSettles = 5
)

// flattenSettleCoins are the settle coins of linear contracts (USDT and
// USDC perpetuals and futures): a linear lookup or cancel-all needs one.
var flattenSettleCoins = []string{"USDT", "USDC"}

// flattenSpotFilters are the spot orderFilter kinds: spot cancel-all
// without one cancels only normal orders (docs/v5/order/cancel-all.mdx).
var flattenSpotFilters = []string{"Order", "tpslOrder", "StopOrder", "OcoOrder", "BidirectionalTpslOrder"}

// flattenScan is what one round of lookups found.
type flattenScan struct {
	open []bybit.Order
	// fresh counts the open orders no cancel-all of this request listed
	// yet; the others are cancels Bybit accepted that the list does not
	// show yet.
	fresh int
	// more: a lookup had pages it did not read.
	more    bool
	calls   []bybit.CancelAllRequest
	symbols map[string]string // orderId -> symbol
}

func callKey(r bybit.CancelAllRequest) string {
	return r.Category + "/" + r.BaseCoin + "/" + r.SettleCoin + "/" + r.OrderFilter
}

func (w *Worker) flatten(j *job, a *account) {
	ctx, cancel := w.untilStopping()
	defer cancel()
	if w.startProgress(ctx, j) != nil {
		w.giveBack(j, 0, "shutdown")
		return
	}
	var st flattenState
	settles, settle := 0, newRetryBackoff()
	for round := 0; ; {
		scan, d, ok := w.flattenLookups(ctx, j, a)
		if !ok {
			if d.publishes() {
				d = w.flattenResult(j, flattenScan{more: true}, round, &d)
			}
			w.apply(j, nil, d)
			return
		}
		if len(scan.open) == 0 || round == flattenRounds {
			w.apply(j, nil, w.flattenResult(j, scan, round, st.refusal))
			return
		}
		calls := st.pending(scan.calls)
		if len(calls) == 0 {
			if scan.fresh > 0 || settles == flattenSettles {
				// Every call that would cover what is left was refused,
				// or the list never caught up with the cancels.
				w.apply(j, nil, w.flattenResult(j, scan, round, st.refusal))
				return
			}
			// Only orders already cancelled are listed: Bybit's cancel is
			// asynchronous, its list catches up; look again shortly.
			settles++
			if sleepCtx(ctx, settle.NextBackOff()) != nil {
				w.giveBack(j, 0, "shutdown")
				return
			}
			continue
		}
		round++
		if d, done := w.flattenCalls(ctx, j, a, calls, scan, round, &st); done {
			w.apply(j, nil, d)
			return
		}
	}
}

// flattenState is what a flatten's rounds remember: the calls Bybit refused
// for good, not sent again, and the first refusal, the result's reason.
type flattenState struct {
	refused map[string]bool
	refusal *decision
}

// pending are the calls not refused yet.
func (st *flattenState) pending(calls []bybit.CancelAllRequest) []bybit.CancelAllRequest {
	var out []bybit.CancelAllRequest
	for _, req := range calls {
		if !st.refused[callKey(req)] {
			out = append(out, req)
		}
	}
	return out
}

// flattenCalls sends one round's cancel-alls; done says a call's outcome
// ends the request, with d.
func (w *Worker) flattenCalls(ctx context.Context, j *job, a *account, calls []bybit.CancelAllRequest, scan flattenScan, round int, st *flattenState) (d decision, done bool) {
	for _, req := range calls {
		j.lane = w.lane(a, req.Category)
		d := w.cancelAllRun(ctx, j, a, req, flattenRef(req, scan.symbols))
		switch {
		case !d.publishes():
			return d, true
		case d.result.Status == messages.StatusFailed:
			// Too old: what is left is reported as it stands.
			return w.flattenResult(j, flattenScan{open: scan.open, more: true}, round, &d), true
		case d.result.Status != messages.StatusCancelled:
			if st.refused == nil {
				st.refused = map[string]bool{}
			}
			st.refused[callKey(req)] = true
			if st.refusal == nil {
				st.refusal = &d
			}
		}
	}
	return decision{}, false
}

// flattenRef tags each order of a call with where it was.
func flattenRef(req bybit.CancelAllRequest, symbols map[string]string) func(bybit.CancelledOrder) messages.OrderRef {
	return func(o bybit.CancelledOrder) messages.OrderRef {
		return messages.OrderRef{OrderID: o.OrderID, OrderLinkID: o.OrderLinkID, Category: req.Category,
			Symbol: symbols[o.OrderID], BaseCoin: req.BaseCoin, SettleCoin: req.SettleCoin}
	}
}

// flattenLookups lists the account's open orders in every category and
// plans the cancel-alls that cover them. ok is false when a lookup's
// outcome decides the request (d).
func (w *Worker) flattenLookups(ctx context.Context, j *job, a *account) (flattenScan, decision, bool) {
	scan := flattenScan{symbols: map[string]string{}}
	type lookup struct {
		q     bybit.OpenOrdersQuery
		pages int
		plan  func(found []bybit.Order) []bybit.CancelAllRequest
	}
	lookups := []lookup{{
		q: bybit.OpenOrdersQuery{Category: messages.CategorySpot}, pages: 1,
		plan: func([]bybit.Order) []bybit.CancelAllRequest {
			var calls []bybit.CancelAllRequest
			for _, f := range flattenSpotFilters {
				calls = append(calls, bybit.CancelAllRequest{Category: messages.CategorySpot, OrderFilter: f})
			}
			return calls
		},
	}, {
		q: bybit.OpenOrdersQuery{Category: messages.CategoryOption}, pages: 1,
		plan: func([]bybit.Order) []bybit.CancelAllRequest {
			return []bybit.CancelAllRequest{{Category: messages.CategoryOption}}
		},
	}}
	for _, coin := range flattenSettleCoins {
		lookups = append(lookups, lookup{
			q: bybit.OpenOrdersQuery{Category: messages.CategoryLinear, SettleCoin: coin}, pages: 1,
			plan: func([]bybit.Order) []bybit.CancelAllRequest {
				return []bybit.CancelAllRequest{{Category: messages.CategoryLinear, SettleCoin: coin}}
			},
		})
	}
	lookups = append(lookups, lookup{
		q: bybit.OpenOrdersQuery{Category: messages.CategoryInverse}, pages: flattenPages,
		plan: func(found []bybit.Order) []bybit.CancelAllRequest {
			coins := map[string]bool{}
			for _, o := range found {
				coins[inverseBaseCoin(o.Symbol)] = true
			}
			var calls []bybit.CancelAllRequest
			for _, c := range sortedKeys(coins) {
				calls = append(calls, bybit.CancelAllRequest{Category: messages.CategoryInverse, BaseCoin: c})
			}
			return calls
		},
	})
	for _, l := range lookups {
		var found []bybit.Order
		q := l.q
		for page := 1; ; page++ {
			res, d, ok := w.openOrders(ctx, j, a, q)
			if !ok {
				return scan, d, false
			}
			found = append(found, res.Orders...)
			if res.NextPageCursor == "" {
				break
			}
			if page == l.pages {
				scan.more = true
				break
			}
			q.Cursor = res.NextPageCursor
		}
		var fresh []bybit.Order
		for _, o := range found {
			scan.symbols[o.OrderID] = o.Symbol
			if !j.prog.seen[o.OrderID] {
				fresh = append(fresh, o)
			}
		}
		scan.open = append(scan.open, found...)
		scan.fresh += len(fresh)
		if len(fresh) > 0 {
			scan.calls = append(scan.calls, l.plan(fresh)...)
		}
	}
	return scan, decision{}, true
}

// openOrders makes one open-order lookup within the realtime lookups'
// budget and the IP limit, retrying as a cancel-all call does.
func (w *Worker) openOrders(ctx context.Context, j *job, a *account, q bybit.OpenOrdersQuery) (bybit.OpenOrdersPage, decision, bool) {
	b := budget{endpointRealtime, q.Category}
	p := w.gw.pacer(a, b)
	j.lane = w.lane(a, q.Category)
	for {
		if age := w.now().Sub(j.stored); age > w.cfg.MaxAge {
			return bybit.OpenOrdersPage{}, w.decide(j, event{kind: evExpired, why: "finish"}), false
		}
		var res bybit.OpenOrdersPage
		sent, err := w.gw.call(ctx, b, p, true, func() (bybit.RateLimit, error) {
			var err error
			res, err = a.client.OpenOrders(w.sendCtx, q)
			if rl, ok := bybit.RateLimitOf(err); ok {
				return rl, err
			}
			return res.RateLimit, err
		})
		if !sent {
			return res, w.decide(j, event{kind: evGiveBack, why: "shutdown"}), false
		}
		if err == nil {
			return res, decision{}, true
		}
		d := w.decide(j, answered(bybit.CancelOrderResult{}, err))
		if d.action != actRequeue {
			return res, d, false
		}
		if w.waitRetry(ctx, j, p, d) != nil {
			return res, w.decide(j, event{kind: evGiveBack, why: "shutdown"}), false
		}
	}
}

// flattenResult is a flatten's one result after rounds rounds of
// cancel-alls: complete when the last lookups found nothing; otherwise what
// is left, with refusal (a call or lookup Bybit refused, or a failure) as
// the reason when there is one.
func (w *Worker) flattenResult(j *job, scan flattenScan, rounds int, refusal *decision) decision {
	r := w.request(j).base
	r.Rounds = rounds
	r.Cancelled = map[string]int{}
	for _, o := range j.prog.orders {
		r.Cancelled[o.Category]++
	}
	complete := len(scan.open) == 0 && !scan.more
	r.Complete = new(complete)
	if complete {
		r.Status = messages.StatusCancelled
		r.RetCode = new(0)
		return concluded(r)
	}
	for i, o := range scan.open {
		if i == flattenLeftShown {
			r.LeftMore = true
			break
		}
		r.Left = append(r.Left, messages.OrderRef{OrderID: o.OrderID, OrderLinkID: o.OrderLinkID, Category: o.Category, Symbol: o.Symbol})
	}
	r.LeftMore = r.LeftMore || scan.more
	left := fmt.Sprintf("%d open orders left", len(scan.open))
	if r.LeftMore {
		left = fmt.Sprintf("at least %d open orders left", len(scan.open))
	}
	switch {
	case refusal != nil && refusal.result.Status == messages.StatusFailed:
		r.Status = messages.StatusFailed
		r.LastError = refusal.result.LastError + "; " + left
		r.RetCode, r.RetMsg = refusal.result.RetCode, refusal.result.RetMsg
	case refusal != nil:
		r.Status = messages.StatusRejected
		r.RetCode, r.RetMsg = refusal.result.RetCode, refusal.result.RetMsg
		r.LastError = fmt.Sprintf("Bybit refused a %s call (%s); %s", refusal.result.Category, refusal.result.RetMsg, left)
	case scan.fresh == 0:
		r.Status = messages.StatusFailed
		r.LastError = fmt.Sprintf("%s: Bybit accepted their cancel, but its open-order list still shows them after waiting for it to catch up; look them up", left)
	default:
		r.Status = messages.StatusFailed
		r.LastError = fmt.Sprintf("%s after %d rounds: orders are placed as fast as they are cancelled", left, rounds)
	}
	return concluded(r)
}

// inverseBaseCoin is the base coin of an inverse symbol: BTCUSD,
// BTCUSDH26 (a future) → BTC.
func inverseBaseCoin(symbol string) string {
	if i := strings.Index(symbol, "USD"); i > 0 {
		return symbol[:i]
	}
	return symbol
}

func sortedKeys(m map[string]bool) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
