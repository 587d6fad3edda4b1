package replay

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
)

// TimeFormat is how the table shows times (UTC).
const TimeFormat = "2006-01-02T15:04:05.000Z"

// StatusOrder lists statuses in the order summaries show them.
var StatusOrder = []string{"cancelled", "not_open", "rejected", "invalid", "failed", StateUnanswered, StatePending}

// WriteTable prints one line per row, then the summary.
func WriteTable(w io.Writer, rows []*Row, s Summary) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME (UTC)\tSEQ\tREQUEST\tCATEGORY\tSYMBOL\tORDER\tSTATUS\tORDER STATUS\tRETCODE\tAMBIGUOUS\tATTEMPTS\tRATE-LIMIT WAIT\tLATENCY\tNOTE")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n",
			r.RequestTime.UTC().Format(TimeFormat), r.Seq, dash(r.RequestID), dash(r.Category), dash(r.Symbol), dash(r.order()),
			r.Status, dash(r.OrderStatus()), retCode(r.RetCode), yes(r.Ambiguous), r.Attempts, msText(float64(r.RateLimitWaitMs)), latency(r.LatencyMs), r.note())
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	return WriteSummary(w, s)
}

// WriteSummary prints the summary in words.
func WriteSummary(w io.Writer, s Summary) error {
	if s.Requests == 0 {
		_, err := fmt.Fprintln(w, "no requests in the window")
		return err
	}
	fmt.Fprintf(w, "%s from %s to %s: %s\n", plural(s.Requests, "request"), s.First.UTC().Format(TimeFormat), s.Last.UTC().Format(TimeFormat), CountsText(s.ByStatus))
	fmt.Fprintf(w, "answered by a replay: %d; still open (unanswered or failed, no replay answered): %d\n", s.AnsweredByReplay, s.Open)
	if p := s.LatencyMs; p != nil {
		fmt.Fprintf(w, "publish→result latency (%d answered): p50 %s, p95 %s, p99 %s, max %s\n", p.N, msText(p.P50), msText(p.P95), msText(p.P99), msText(p.Max))
	}
	if len(s.OrderStatuses) > 0 {
		n := 0
		for _, c := range s.OrderStatuses {
			n += c
		}
		fmt.Fprintf(w, "confirmations: %s (%s)\n", plural(n, "order"), CountsText(s.OrderStatuses))
	}
	if len(s.FilledBeforeCancel) > 0 {
		fmt.Fprintf(w, "accepted, yet the order was not cancelled (it filled first): %s\n", strings.Join(s.FilledBeforeCancel, ", "))
	}
	fmt.Fprintf(w, "waiting on rate limits: %s, %s in all, longest %s\n", plural(s.RateLimit.Requests, "request"), msText(float64(s.RateLimit.TotalMs)), msText(float64(s.RateLimit.MaxMs)))
	if len(s.Gaps) > 0 {
		fmt.Fprintln(w, "longest gaps with requests waiting and no result published:")
		for _, g := range s.Gaps {
			fmt.Fprintf(w, "  %s from %s to %s (%d waiting)\n", msText(g.Ms), g.From.UTC().Format(TimeFormat), g.To.UTC().Format(TimeFormat), g.Waiting)
		}
	}
	return nil
}

// CountsText lists counts in StatusOrder, then any other status by name.
func CountsText(counts map[string]int) string {
	var keys []string
	for k := range counts {
		if !slices.Contains(StatusOrder, k) {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	var parts []string
	for _, k := range append(slices.Clone(StatusOrder), keys...) {
		if counts[k] > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", k, counts[k]))
		}
	}
	return strings.Join(parts, ", ")
}

// WriteJSON prints one JSON object per line: each row with "type":"request",
// then the summary with "type":"summary".
func WriteJSON(w io.Writer, rows []*Row, s Summary) error {
	enc := json.NewEncoder(w)
	for _, r := range rows {
		if err := enc.Encode(struct {
			Type string `json:"type"`
			*Row
		}{"request", r}); err != nil {
			return err
		}
	}
	return enc.Encode(struct {
		Type string `json:"type"`
		Summary
	}{"summary", s})
}

// WritePlan prints what a resend will publish and what it skips. With
// messages, every NATS message is printed in full (subject, headers, body).
func WritePlan(w io.Writer, plan []Resend, skipped []Skip, messages bool) error {
	for _, p := range plan {
		if messages {
			fmt.Fprintf(w, "PUB %s\n%s: %s\n\n%s\n\n", p.Subject, nats.MsgIdHdr, p.MsgID, p.Body)
			continue
		}
		fmt.Fprintf(w, "resend sequence %d (%s, %s) to %s as requestId %q, %s %s\n",
			p.Original.Seq, p.Original.Status, dash(p.Original.order()), p.Subject, p.RequestID, nats.MsgIdHdr, p.MsgID)
	}
	for _, s := range skipped {
		fmt.Fprintf(w, "skip sequence %d (%s): %s\n", s.Row.Seq, dash(s.Row.RequestID), s.Reason)
	}
	_, err := fmt.Fprintf(w, "%d to resend, %d skipped\n", len(plan), len(skipped))
	return err
}

func (r *Row) order() string {
	switch {
	case r.OrderID != "":
		return r.OrderID
	case r.OrderLinkID != "":
		return "link:" + r.OrderLinkID
	case r.Orders > 0:
		return fmt.Sprintf("all (%d orders)", r.Orders)
	}
	return ""
}

func (r *Row) note() string {
	var parts []string
	if r.ReplayOfSeq != 0 {
		parts = append(parts, fmt.Sprintf("resend of sequence %d", r.ReplayOfSeq))
	}
	if rp, ok := r.AnsweredByReplay(); ok {
		parts = append(parts, fmt.Sprintf("answered by its replay, sequence %d: %s", rp.Seq, rp.Status))
	} else if len(r.Replays) > 0 {
		last := r.Replays[len(r.Replays)-1]
		parts = append(parts, fmt.Sprintf("resent as sequence %d: %s", last.Seq, last.Status))
	}
	switch {
	case r.Error != "":
		parts = append(parts, cut(r.Error, 80))
	case r.LastError != "":
		parts = append(parts, cut(r.LastError, 80))
	case r.RetMsg != "" && r.Status != "cancelled":
		parts = append(parts, cut(r.RetMsg, 80))
	}
	return strings.Join(parts, "; ")
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func yes(b bool) string {
	if b {
		return "yes"
	}
	return "-"
}

func retCode(c *int) string {
	if c == nil {
		return "-"
	}
	return strconv.Itoa(*c)
}

func latency(ms *float64) string {
	if ms == nil {
		return "-"
	}
	return msText(*ms)
}

// msText shows milliseconds as a rounded duration.
func msText(ms float64) string {
	d := time.Duration(ms * float64(time.Millisecond))
	switch {
	case d >= time.Second:
		return d.Round(time.Millisecond).String()
	case d >= time.Millisecond:
		return d.Round(100 * time.Microsecond).String()
	}
	return d.Round(time.Microsecond).String()
}
