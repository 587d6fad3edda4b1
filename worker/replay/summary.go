package replay

import (
	"cmp"
	"math"
	"slices"
	"time"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
)

// Summary condenses a report.
type Summary struct {
	Requests int `json:"requests"`
	// ByStatus counts requests by their own status (a result's status,
	// unanswered or pending).
	ByStatus map[string]int `json:"byStatus"`
	// AnsweredByReplay counts requests whose resend has a result.
	AnsweredByReplay int `json:"answeredByReplay"`
	// Open counts unanswered and failed requests no resend has answered.
	Open int `json:"open"`
	// First and Last are the first and last request times.
	First time.Time `json:"first,omitzero"`
	Last  time.Time `json:"last,omitzero"`
	// LatencyMs summarises publish→result over the answered requests.
	LatencyMs *Percentiles `json:"latencyMs,omitempty"`
	// Gaps are the longest stretches during which requests were waiting and
	// no result was published, longest first.
	Gaps      []Gap         `json:"longestGaps,omitempty"`
	RateLimit RateLimitWait `json:"rateLimitWait"`
	// OrderStatuses counts the confirmed orders by the status Bybit
	// reported after the cancel (read with Config.ConfirmedSubject).
	OrderStatuses map[string]int `json:"orderStatuses,omitempty"`
	// FilledBeforeCancel are the requestIds whose cancel Bybit accepted
	// while an order of it had filled: not cancelled, though the result
	// says cancelled.
	FilledBeforeCancel []string `json:"filledBeforeCancel,omitempty"`
}

// Percentiles of a set of durations in milliseconds (nearest rank).
type Percentiles struct {
	N   int     `json:"n"`
	P50 float64 `json:"p50"`
	P95 float64 `json:"p95"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

// Gap is a stretch with requests waiting and no result.
type Gap struct {
	From time.Time `json:"from"`
	To   time.Time `json:"to"`
	Ms   float64   `json:"ms"`
	// Waiting is how many requests were waiting when it ended.
	Waiting int `json:"waiting"`
}

// RateLimitWait is the time requests spent waiting for rate-limit budget.
type RateLimitWait struct {
	Requests int   `json:"requests"`
	TotalMs  int64 `json:"totalMs"`
	MaxMs    int64 `json:"maxMs"`
}

// MaxGaps is how many gaps a summary lists.
const MaxGaps = 3

// Summarise computes the summary of rows.
func Summarise(rows []*Row) Summary {
	s := Summary{Requests: len(rows), ByStatus: map[string]int{}}
	var lat []float64
	var events []event
	for _, r := range rows {
		s.add(r)
		events = append(events, event{at: r.RequestTime})
		if r.LatencyMs != nil {
			lat = append(lat, *r.LatencyMs)
			events = append(events, event{at: *r.ResultTime, result: true})
		}
	}
	if len(lat) > 0 {
		slices.Sort(lat)
		s.LatencyMs = &Percentiles{N: len(lat), P50: rank(lat, 0.50), P95: rank(lat, 0.95), P99: rank(lat, 0.99), Max: lat[len(lat)-1]}
	}
	gaps := gapsOf(events)
	s.Gaps = gaps[:min(len(gaps), MaxGaps)]
	return s
}

// add counts one row.
func (s *Summary) add(r *Row) {
	s.ByStatus[r.Status]++
	filled := false
	for _, c := range r.Confirmations {
		if s.OrderStatuses == nil {
			s.OrderStatuses = map[string]int{}
		}
		s.OrderStatuses[c.status()]++
		filled = filled || c.OrderStatus == "Filled"
	}
	if filled && r.Status == string(messages.StatusCancelled) {
		s.FilledBeforeCancel = append(s.FilledBeforeCancel, r.RequestID)
	}
	if s.First.IsZero() || r.RequestTime.Before(s.First) {
		s.First = r.RequestTime
	}
	if r.RequestTime.After(s.Last) {
		s.Last = r.RequestTime
	}
	if _, byReplay := r.AnsweredByReplay(); byReplay {
		s.AnsweredByReplay++
	} else if r.Status == StateUnanswered || r.Status == string(messages.StatusFailed) {
		s.Open++
	}
	if r.RateLimitWaitMs > 0 {
		s.RateLimit.Requests++
		s.RateLimit.TotalMs += r.RateLimitWaitMs
		s.RateLimit.MaxMs = max(s.RateLimit.MaxMs, r.RateLimitWaitMs)
	}
}

// event is a request arriving or a result stored.
type event struct {
	at     time.Time
	result bool
}

// gapsOf walks requests and results in time order, longest gap first: a gap
// runs from the moment a request started waiting with none waiting before,
// or from the last result, to the next result.
func gapsOf(events []event) []Gap {
	slices.SortStableFunc(events, func(a, b event) int { return a.at.Compare(b.at) })
	var gaps []Gap
	waiting := 0
	var since time.Time
	for _, e := range events {
		if !e.result {
			if waiting == 0 {
				since = e.at
			}
			waiting++
			continue
		}
		if d := e.at.Sub(since); d > 0 {
			gaps = append(gaps, Gap{From: since, To: e.at, Ms: ms(d), Waiting: waiting})
		}
		since = e.at
		waiting--
	}
	slices.SortStableFunc(gaps, func(a, b Gap) int { return cmp.Compare(b.Ms, a.Ms) })
	return gaps
}

func rank(sorted []float64, p float64) float64 {
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[max(i, 0)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
