package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

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

// flattenSettings are what flatten reads: how to reach NATS, the stream and
// its subjects, and the sync service's cancel-all subject.
var flattenSettings = slices.DeleteFunc(slices.Clone(settings), func(s setting) bool {
	switch s.env {
	case "NATS_ACK_WAIT", "NATS_MAX_DELIVER", "NATS_MAX_ACK_PENDING", "NATS_DUPLICATE_WINDOW", "NATS_STREAM_REPLICAS",
		"NATS_CANCEL_ALL_PROGRESS_SUBJECT", "NATS_SYNC_CANCEL_SUBJECT":
		return true
	}
	return !strings.HasPrefix(s.env, "NATS_")
})

// runFlatten sends {"scope":"account"} through the sync service's cancel-all
// endpoint (or, with the service off, publishes it on the cancel-all
// subject) and waits for its one result, past the service's timeout cap by
// requestSeq on the result subjects. It succeeds (exit 0) only when the
// result is complete: nothing left open on the account.
func runFlatten(ctx context.Context, args []string, env lookupEnv, stdout, stderr io.Writer) error {
	var f flattenFlags
	v, err := parseSettings("flatten", flattenSettings, args, env, stderr, f.register)
	if err != nil {
		return err
	}
	if err := checkAnswerFlags(f.format, f.timeout); err != nil {
		return err
	}
	if f.requestID == "" {
		f.requestID = "flatten-" + strings.ToLower(rand.Text()[:12])
	}
	body, err := json.Marshal(messages.CancelAll{Scope: messages.ScopeAccount, Account: f.account, RequestID: f.requestID})
	if err != nil {
		return err
	}
	if _, err := messages.DecodeCancelAll(body); err != nil {
		return &exitError{code: exitRejected, msg: "invalid request, not sent: " + err.Error()}
	}
	p := &parser{v: v}
	conn, js, err := connectCommandStream(p.natsConfig(), env, "flatten", stderr)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	sub := p.subjects()
	stream := sub.Stream

	seq, r, err := flattenViaService(ctx, conn, sub.SyncCancelAllSubject, body, f, stderr)
	if err != nil {
		return err
	}
	if seq == 0 {
		// No sync service: the input subject, as any publisher.
		ack, err := js.PublishMsg(ctx, &nats.Msg{Subject: sub.CancelAllSubject, Data: body},
			jetstream.WithMsgID(f.requestID), jetstream.WithExpectStream(stream))
		if err != nil {
			return fmt.Errorf("publish the flatten request: %w", err)
		}
		seq = ack.Sequence
		note := ""
		if ack.Duplicate {
			note = " (already in the stream: waiting for that request's result)"
		}
		fmt.Fprintf(stderr, "flatten of account %q published as %s, stream sequence %d%s; waiting for its result\n",
			accountName(f.account), f.requestID, seq, note)
	}
	if r == nil {
		res, err := waitResult(ctx, js, stream, seq, sub.AckSubject, sub.RejectedSubject)
		if err != nil {
			return &exitError{code: exitTimeout, msg: err.Error()}
		}
		r = &res
	}
	if f.format == "json" {
		data, _ := r.Marshal()
		fmt.Fprintln(stdout, string(data))
	} else {
		writeFlatten(stdout, *r)
	}
	if r.Complete == nil || !*r.Complete || r.Status != messages.StatusCancelled {
		reason := r.LastError
		if reason == "" {
			reason = r.Error
		}
		return &exitError{code: exitRejected, msg: fmt.Sprintf("flatten not complete (%s): %s", r.Status, reason)}
	}
	return nil
}

// flattenViaService sends the flatten to the sync service. It returns the
// request's sequence (0: no service answers, nothing was sent through it)
// and its result when the service had it within its timeout.
func flattenViaService(ctx context.Context, conn *nats.Conn, subject string, body []byte, f flattenFlags, stderr io.Writer) (uint64, *messages.Result, error) {
	if subject == "" {
		return 0, nil, nil
	}
	deadline, _ := ctx.Deadline()
	hdr := nats.Header{messages.HeaderTimeout: []string{time.Until(deadline).Round(time.Millisecond).String()}, nats.MsgIdHdr: []string{f.requestID}}
	reply, err := conn.RequestMsgWithContext(ctx, &nats.Msg{Subject: subject, Header: hdr, Data: body})
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return 0, nil, nil
	case err != nil:
		return 0, nil, fmt.Errorf("request on %s: %w", subject, err)
	}
	seq, _ := strconv.ParseUint(reply.Header.Get(messages.HeaderRequestSeq), 10, 64)
	if code := reply.Header.Get(micro.ErrorCodeHeader); code != "" {
		if code == "504" && seq != 0 {
			// The service's wait is capped (SYNC_MAX_TIMEOUT): the request
			// is stored; its result is read from the stream.
			fmt.Fprintf(stderr, "flatten %s at stream sequence %d still running past the service's wait; waiting for its result\n", f.requestID, seq)
			return seq, nil, nil
		}
		return 0, nil, &exitError{code: exitOther, msg: fmt.Sprintf("the service answered %s: %s", code, reply.Header.Get(micro.ErrorHeader))}
	}
	a, err := messages.DecodeAnswer(reply.Data)
	if err != nil || seq == 0 {
		return 0, nil, fmt.Errorf("unreadable reply from the service on %s: %v", subject, err)
	}
	note := ""
	if reply.Header.Get(messages.HeaderDuplicate) == "true" {
		note = " (already in the stream: that request's result)"
	}
	fmt.Fprintf(stderr, "flatten of account %q sent as %s through the sync service, stream sequence %d%s\n", accountName(f.account), f.requestID, seq, note)
	return seq, &a.Result, nil
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
