package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
)

// flattenFlags are flatten's own flags, beside the NATS settings.
type flattenFlags struct {
	account, requestID, format string
	timeout                    time.Duration
}

func (f *flattenFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.account, "account", "", "the account to flatten, as the worker names it (empty: the default account of BYBIT_API_KEY)")
	fs.StringVar(&f.requestID, "request-id", "", "the request's requestId and Nats-Msg-Id (default: a new one); the same id run again inside the stream's duplicate window waits for the first run's result instead of flattening twice")
	fs.DurationVar(&f.timeout, "timeout", 5*time.Minute, "how long to wait for the result")
	fs.StringVar(&f.format, "format", "text", "text, or json (the result as the worker published it)")
}

// runFlatten publishes {"scope":"account"} on the cancel-all subject and
// waits for its one result on the result subjects by requestSeq. It fails
// (exit 1) unless the result is complete: nothing left open on the account.
func runFlatten(ctx context.Context, args []string, env lookupEnv, stdout, stderr io.Writer) error {
	var f flattenFlags
	v, err := parseSettings("flatten", replaySettings, args, env, stderr, f.register)
	if err != nil {
		return err
	}
	if f.format != "text" && f.format != "json" {
		return fmt.Errorf("--format %q is not text or json", f.format)
	}
	if f.requestID == "" {
		f.requestID = "flatten-" + strings.ToLower(rand.Text()[:12])
	}
	body, err := json.Marshal(messages.CancelAll{Scope: messages.ScopeAccount, Account: f.account, RequestID: f.requestID})
	if err != nil {
		return err
	}
	if _, err := messages.DecodeCancelAll(body); err != nil {
		return err
	}
	p := &parser{v: v}
	nc := p.natsConfig()
	if err := nc.readSecrets(env); err != nil {
		return err
	}
	if nc.name == "" {
		nc.name = "cancel-worker-flatten"
	}
	conn, err := connectNATS(nc, newLogger(stderr, slog.LevelWarn, "text"))
	if err != nil {
		return err
	}
	defer conn.Close()
	js, err := jetstream.New(conn)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	ack, err := js.PublishMsg(ctx, &nats.Msg{Subject: p.str("NATS_CANCEL_ALL_SUBJECT"), Data: body},
		jetstream.WithMsgID(f.requestID), jetstream.WithExpectStream(p.str("NATS_STREAM")))
	if err != nil {
		return fmt.Errorf("publish the flatten request: %w", err)
	}
	note := ""
	if ack.Duplicate {
		note = " (already in the stream: waiting for that request's result)"
	}
	fmt.Fprintf(stderr, "flatten of account %q published as %s, stream sequence %d%s; waiting for its result\n",
		accountName(f.account), f.requestID, ack.Sequence, note)

	r, err := waitResult(ctx, js, p.str("NATS_STREAM"), ack.Sequence, p.str("NATS_ACK_SUBJECT"), p.str("NATS_REJECTED_SUBJECT"))
	if err != nil {
		return err
	}
	if f.format == "json" {
		data, _ := r.Marshal()
		fmt.Fprintln(stdout, string(data))
	} else {
		writeFlatten(stdout, r)
	}
	if r.Complete == nil || !*r.Complete || r.Status != messages.StatusCancelled {
		reason := r.LastError
		if reason == "" {
			reason = r.Error
		}
		return fmt.Errorf("flatten not complete (%s): %s", r.Status, reason)
	}
	return nil
}

func accountName(a string) string {
	if a == "" {
		return "default"
	}
	return a
}

// waitResult reads the result subjects from seq on (a result follows its
// request in the stream) until the result of the request at seq.
func waitResult(ctx context.Context, js jetstream.JetStream, stream string, seq uint64, subjects ...string) (messages.Result, error) {
	c, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{
		FilterSubjects: subjects, DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: seq,
	})
	if err != nil {
		return messages.Result{}, err
	}
	for {
		m, err := c.Next(jetstream.FetchContext(ctx))
		if err != nil {
			if ctx.Err() != nil {
				return messages.Result{}, fmt.Errorf("no result for the request at stream sequence %d yet (is a worker running?): %w", seq, ctx.Err())
			}
			if errors.Is(err, nats.ErrTimeout) {
				continue
			}
			return messages.Result{}, err
		}
		r, err := messages.DecodeResult(m.Data())
		if err == nil && r.RequestSeq == seq {
			return r, nil
		}
	}
}

// writeFlatten prints a flatten's result for a person.
func writeFlatten(w io.Writer, r messages.Result) {
	complete := r.Complete != nil && *r.Complete
	fmt.Fprintf(w, "status %s, complete %v, %d orders cancelled in %d rounds\n", r.Status, complete, len(r.Orders), r.Rounds)
	cats := make([]string, 0, len(r.Cancelled))
	for c := range r.Cancelled {
		cats = append(cats, c)
	}
	sort.Strings(cats)
	for _, c := range cats {
		fmt.Fprintf(w, "  %-8s %d cancelled\n", c, r.Cancelled[c])
	}
	if r.OrdersComplete != nil && !*r.OrdersComplete {
		fmt.Fprintln(w, "  the list may miss orders: a call's answer was lost")
	}
	if complete {
		fmt.Fprintln(w, "nothing left open")
		return
	}
	more := ""
	if r.LeftMore {
		more = " (and more)"
	}
	fmt.Fprintf(w, "left open%s:\n", more)
	for _, o := range r.Left {
		fmt.Fprintf(w, "  %-8s %-22s %s %s\n", o.Category, o.Symbol, o.OrderID, o.OrderLinkID)
	}
	if r.RetMsg != "" {
		fmt.Fprintf(w, "Bybit: %d %s\n", derefInt(r.RetCode), r.RetMsg)
	}
	if r.LastError != "" {
		fmt.Fprintln(w, "why:", r.LastError)
	}
}

func derefInt(p *int) int {
	if p == nil {
		return 0
	}
	return *p
}
