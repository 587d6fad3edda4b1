package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker/replay"
)

// replayFlags are replay's own flags, beside the NATS settings.
type replayFlags struct {
	since, until          string
	fromSeq, toSeq        uint64
	filter                replay.Filter
	format, plot          string
	resend, includeReject bool
	includeCancelAll      bool
	yes, dryRun           bool
}

func (f *replayFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.since, "since", "", "first request time: RFC 3339 (2026-11-24T09:30:00Z) or a duration before now (30m)")
	fs.StringVar(&f.until, "until", "", "last request time: RFC 3339 or a duration before now")
	fs.Uint64Var(&f.fromSeq, "from-seq", 0, "first stream sequence")
	fs.Uint64Var(&f.toSeq, "to-seq", 0, "last stream sequence")
	fs.StringVar(&f.filter.Category, "category", "", "only requests of this category")
	fs.StringVar(&f.filter.Symbol, "symbol", "", "only requests for this symbol")
	fs.StringVar(&f.filter.RequestID, "request-id", "", "only requests with this requestId")
	fs.StringVar(&f.filter.OrderID, "order-id", "", "only requests for this orderId or orderLinkId (and cancel-alls whose result lists it)")
	fs.StringVar(&f.format, "format", "table", "table, or json (one object per line, the summary last)")
	fs.StringVar(&f.plot, "plot", "", "also draw a timeline chart to this .svg or .png file")
	fs.BoolVar(&f.resend, "resend", false, "republish the unanswered and failed requests shown, as new requests")
	fs.BoolVar(&f.includeReject, "include-rejected", false, "with --resend: also the rejected and not_open ones")
	fs.BoolVar(&f.includeCancelAll, "include-cancel-all", false, "with --resend: also cancel-all requests (a cancel-all resent now also cancels every order placed since)")
	fs.BoolVar(&f.yes, "yes", false, "with --resend: publish without asking")
	fs.BoolVar(&f.dryRun, "dry-run", false, "with --resend: print the NATS messages it would publish and publish nothing")
}

// window parses the window flags against now.
func (f *replayFlags) window(now time.Time) (replay.Window, error) {
	w := replay.Window{FromSeq: f.fromSeq, ToSeq: f.toSeq}
	var err error
	if w.Since, err = parseWhen("--since", f.since, now); err != nil {
		return w, err
	}
	if w.Until, err = parseWhen("--until", f.until, now); err != nil {
		return w, err
	}
	switch {
	case !w.Since.IsZero() && !w.Until.IsZero() && w.Until.Before(w.Since):
		return w, fmt.Errorf("--until (%s) is before --since (%s)", w.Until.Format(time.RFC3339), w.Since.Format(time.RFC3339))
	case w.FromSeq != 0 && w.ToSeq != 0 && w.ToSeq < w.FromSeq:
		return w, fmt.Errorf("--to-seq %d is below --from-seq %d", w.ToSeq, w.FromSeq)
	}
	return w, nil
}

// parseWhen reads an RFC 3339 time or a duration before now.
func parseWhen(name, s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return time.Time{}, fmt.Errorf("%s %q is neither an RFC 3339 time (2026-11-24T09:30:00Z) nor a duration before now (30m)", name, s)
	}
	return now.Add(-d), nil
}

func (f *replayFlags) check() error {
	switch {
	case f.format != "table" && f.format != "json":
		return fmt.Errorf("--format %q is not table or json", f.format)
	case !f.resend && (f.yes || f.dryRun || f.includeReject || f.includeCancelAll):
		return errors.New("--yes, --dry-run, --include-rejected and --include-cancel-all go with --resend")
	case f.yes && f.dryRun:
		return errors.New("--dry-run publishes nothing; drop --yes")
	}
	return nil
}

func runReplay(ctx context.Context, args []string, env lookupEnv, stdin io.Reader, stdout, stderr io.Writer) error {
	var f replayFlags
	v, err := parseCommand("replay", "", replaySettings, args, env, stderr, f.register)
	if err != nil {
		return err
	}
	if err := f.check(); err != nil {
		return err
	}
	win, err := f.window(time.Now())
	if err != nil {
		return err
	}
	p := &parser{v: v}
	cfg := p.subjects()
	conn, js, err := connectCommandStream(p.natsConfig(), env, "replay", stderr)
	if err != nil {
		return err
	}
	defer conn.Close()

	rep, err := replay.Read(ctx, js, cfg, win, f.filter)
	if err != nil {
		return err
	}
	for _, w := range rep.Warnings {
		fmt.Fprintln(stderr, "warning:", w)
	}
	sum := replay.Summarise(rep.Rows)
	if f.format == "json" {
		err = replay.WriteJSON(stdout, rep.Rows, sum)
	} else {
		err = replay.WriteTable(stdout, rep.Rows, sum)
	}
	if err != nil {
		return err
	}
	if f.plot != "" {
		if err := plotTimeline(f.plot, rep.Rows); err != nil {
			return err
		}
		fmt.Fprintf(stderr, "timeline drawn to %s\n", f.plot)
	}
	if !f.resend {
		return nil
	}

	// The plan is text: with JSON on stdout it goes to stderr.
	out := stdout
	if f.format == "json" {
		out = stderr
	}
	fmt.Fprintln(out)
	plan, skipped := replay.Plan(rep.Rows, replay.PlanOptions{IncludeRejected: f.includeReject, IncludeCancelAll: f.includeCancelAll})
	if err := replay.WritePlan(out, plan, skipped, f.dryRun); err != nil {
		return err
	}
	switch {
	case f.dryRun:
		fmt.Fprintln(out, "dry run: nothing published")
		return nil
	case len(plan) == 0:
		fmt.Fprintln(out, "nothing to resend")
		return nil
	case !f.yes:
		fmt.Fprintf(out, "Publish the %d above? They will be sent to Bybit. Type yes to publish: ", len(plan))
		answer, _ := bufio.NewReader(stdin).ReadString('\n')
		if a := strings.TrimSpace(strings.ToLower(answer)); a != "yes" && a != "y" {
			fmt.Fprintln(out, "not confirmed: nothing published")
			return nil
		}
	}
	got, err := replay.Publish(ctx, js, plan)
	if err != nil {
		return fmt.Errorf("%w (%d published before the error)", err, got.New)
	}
	fmt.Fprintf(out, "published %d new, %d already in the stream (the same resend inside its duplicate window adds nothing)\n", got.New, got.Duplicates)
	return nil
}
