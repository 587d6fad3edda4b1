package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker"
)

// Exit codes of `cancel-worker cancel` and `cancel-worker cancel-all`.
const (
	exitCancelled = 0
	exitOther     = 1
	exitNotOpen   = 2
	exitRejected  = 3 // rejected, invalid or failed
	exitTimeout   = 4
	exitFilled    = 5
)

// exitError ends the command with a given exit code.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

// exitCode is the process exit code for an error run returned.
func exitCode(err error) int {
	var e *exitError
	if errors.As(err, &e) {
		return e.code
	}
	return exitOther
}

// cancelSettings are what the cancel commands read: how to reach NATS, as
// `run` does, and the sync subjects.
var cancelSettings = slices.DeleteFunc(slices.Clone(settings), func(s setting) bool {
	switch s.env {
	case "NATS_URL", "NATS_CREDS", "NATS_NKEY", "NATS_USER", "NATS_PASSWORD", "NATS_PASSWORD_FILE", "NATS_TOKEN", "NATS_TOKEN_FILE",
		"NATS_CA", "NATS_CERT", "NATS_KEY", "NATS_CONNECTION_NAME", "NATS_SYNC_CANCEL_SUBJECT", "NATS_SYNC_CANCEL_ALL_SUBJECT":
		return false
	}
	return true
})

// cancelFlags are the cancel commands' own flags.
type cancelFlags struct {
	all                       bool
	category, symbol          string
	orderID, orderLinkID      string
	baseCoin, settleCoin      string
	account, requestID, msgID string
	subject                   string
	waitConfirmation          bool
	timeout                   time.Duration
	format                    string
}

func (f *cancelFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.category, "category", "", "spot, linear, inverse or option (required)")
	fs.StringVar(&f.symbol, "symbol", "", "the order's symbol")
	if f.all {
		fs.StringVar(&f.baseCoin, "base-coin", "", "cancel the orders of this base coin")
		fs.StringVar(&f.settleCoin, "settle-coin", "", "cancel the orders of this settle coin")
	} else {
		fs.StringVar(&f.orderID, "order-id", "", "Bybit's orderId (or --order-link-id)")
		fs.StringVar(&f.orderLinkID, "order-link-id", "", "the order's orderLinkId (or --order-id)")
	}
	fs.StringVar(&f.account, "account", "", "account of the accounts file (default: the default account)")
	fs.StringVar(&f.requestID, "request-id", "", "correlation id echoed in the result")
	fs.StringVar(&f.msgID, "msg-id", "", "Nats-Msg-Id: the same id sent again is answered with the first request's result (default: generated)")
	fs.StringVar(&f.subject, "subject", "", "send on this sync subject instead, e.g. an account's own (syncCancelSubject of the accounts file)")
	fs.BoolVar(&f.waitConfirmation, "wait-confirmation", false, "also wait for the order's confirmed final state")
	fs.DurationVar(&f.timeout, "timeout", worker.DefaultSyncTimeout, "how long the service waits for the result (capped by the worker's SYNC_MAX_TIMEOUT)")
	fs.StringVar(&f.format, "format", "text", "text, or json (the reply as the service sent it)")
}

// body builds and checks the request body.
func (f *cancelFlags) body() ([]byte, error) {
	if f.all {
		c := messages.CancelAll{Category: f.category, Symbol: f.symbol, BaseCoin: f.baseCoin, SettleCoin: f.settleCoin, Account: f.account, RequestID: f.requestID}
		data, _ := json.Marshal(c)
		if _, err := messages.DecodeCancelAll(data); err != nil {
			return nil, err
		}
		return data, nil
	}
	c := messages.Cancel{Category: f.category, Symbol: f.symbol, OrderID: f.orderID, OrderLinkID: f.orderLinkID, Account: f.account, RequestID: f.requestID}
	data, _ := json.Marshal(c)
	if _, err := messages.DecodeCancel(data); err != nil {
		return nil, err
	}
	return data, nil
}

// cancelCommand is `cancel-worker cancel` (all false) or `cancel-worker
// cancel-all` (all true).
func cancelCommand(all bool) func(ctx context.Context, args []string, env lookupEnv, stdout, stderr io.Writer) error {
	return func(ctx context.Context, args []string, env lookupEnv, stdout, stderr io.Writer) error {
		return runCancel(ctx, all, args, env, stdout, stderr)
	}
}

// runCancel is `cancel-worker cancel` (all false) and `cancel-worker
// cancel-all` (all true): one request to the sync service, its answer
// printed, the outcome in the exit code.
func runCancel(ctx context.Context, all bool, args []string, env lookupEnv, stdout, stderr io.Writer) error {
	name := "cancel"
	if all {
		name = "cancel-all"
	}
	f := &cancelFlags{all: all}
	v, err := parseSettings(name, cancelSettings, args, env, stderr, f.register)
	if err != nil {
		return err
	}
	if err := checkAnswerFlags(f.format, f.timeout); err != nil {
		return err
	}
	body, err := f.body()
	if err != nil {
		return &exitError{code: exitRejected, msg: "invalid request, not sent: " + err.Error()}
	}
	p := &parser{v: v}
	subject, err := f.syncSubject(p)
	if err != nil {
		return err
	}
	conn, err := connectCommand(p.natsConfig(), env, name, stderr)
	if err != nil {
		return err
	}
	defer conn.Close()

	// The service answers within the timeout (a 504 at the latest); the
	// margin covers the round trips.
	rctx, cancel := context.WithTimeout(ctx, f.timeout+5*time.Second)
	defer cancel()
	reply, err := conn.RequestMsgWithContext(rctx, &nats.Msg{Subject: subject, Header: f.header(), Data: body})
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return fmt.Errorf("no cancel-worker service answers on %s: is a worker running with its sync service on (see its /readyz)?", subject)
	case err != nil:
		return fmt.Errorf("request on %s: %w", subject, err)
	}
	return f.answer(reply, subject, stdout)
}

// checkAnswerFlags checks the --format and --timeout of the commands that
// wait for an answer (cancel, cancel-all, flatten).
func checkAnswerFlags(format string, timeout time.Duration) error {
	if format != "text" && format != "json" {
		return fmt.Errorf("--format %q is not text or json", format)
	}
	if timeout <= 0 {
		return fmt.Errorf("--timeout must be positive, not %v", timeout)
	}
	return nil
}

// syncSubject is the sync service's subject the request goes to: --subject,
// or the setting of the command's endpoint.
func (f *cancelFlags) syncSubject(p *parser) (string, error) {
	env := "NATS_SYNC_CANCEL_SUBJECT"
	if f.all {
		env = "NATS_SYNC_CANCEL_ALL_SUBJECT"
	}
	subject := p.str(env)
	if f.subject != "" {
		subject = f.subject
	}
	if subject == "" {
		return "", fmt.Errorf("%s must not be empty", env)
	}
	return subject, nil
}

// header is the request's: its timeout, what to wait for, its Nats-Msg-Id.
func (f *cancelFlags) header() nats.Header {
	hdr := nats.Header{messages.HeaderTimeout: []string{f.timeout.String()}}
	if f.waitConfirmation {
		hdr.Set(messages.HeaderWait, messages.WaitConfirmed)
	}
	if f.msgID != "" {
		hdr.Set(nats.MsgIdHdr, f.msgID)
	}
	return hdr
}

// answer prints the service's reply and turns it into the exit code.
func (f *cancelFlags) answer(reply *nats.Msg, subject string, stdout io.Writer) error {
	if code := reply.Header.Get(micro.ErrorCodeHeader); code != "" {
		return serviceError(reply, code, f.format, stdout)
	}
	var receipt struct {
		Stream string `json:"stream"`
		Seq    uint64 `json:"seq"`
	}
	if json.Unmarshal(reply.Data, &receipt) == nil && receipt.Stream != "" {
		return fmt.Errorf("stream %s stored the request on %s (sequence %d) instead of the service answering it: the worker takes no requests from that subject, so nothing was cancelled; remove %s from the stream's subjects", receipt.Stream, subject, receipt.Seq, subject)
	}
	a, err := messages.DecodeAnswer(reply.Data)
	if err != nil {
		return fmt.Errorf("undecodable reply from the service: %v", err)
	}
	if f.format == "json" {
		fmt.Fprintln(stdout, strings.TrimSpace(string(reply.Data)))
	} else {
		printAnswer(stdout, a, reply.Header.Get(messages.HeaderDuplicate) == "true")
	}
	if code, why := outcome(a, f.waitConfirmation); code != exitCancelled {
		return &exitError{code: code, msg: why}
	}
	return nil
}

// serviceError turns a micro error reply into the exit code: 504 is a
// timeout (exit 4, with the sequence), anything else exit 1.
func serviceError(reply *nats.Msg, code, format string, stdout io.Writer) error {
	desc := reply.Header.Get(micro.ErrorHeader)
	seq := reply.Header.Get(messages.HeaderRequestSeq)
	if format == "json" {
		out := map[string]string{"error": code, "description": desc}
		if seq != "" {
			out["requestSeq"], out["stream"] = seq, reply.Header.Get(messages.HeaderStream)
		}
		b, _ := json.Marshal(out)
		fmt.Fprintln(stdout, string(b))
	}
	if code == "504" {
		msg := "timeout: " + desc
		if seq != "" {
			msg = fmt.Sprintf("timeout (stream %s, sequence %s): %s", reply.Header.Get(messages.HeaderStream), seq, desc)
		}
		return &exitError{code: exitTimeout, msg: msg}
	}
	return &exitError{code: exitOther, msg: fmt.Sprintf("the service answered %s: %s", code, desc)}
}

// outcome maps an answer to the exit code.
func outcome(a messages.Answer, confirmations bool) (int, string) {
	if confirmations {
		for _, c := range a.Confirmations {
			if c.OrderStatus == "Filled" {
				return exitFilled, fmt.Sprintf("order %s filled before the cancel landed", c.OrderID)
			}
		}
	}
	switch a.Status {
	case messages.StatusCancelled:
		if confirmations {
			for _, c := range a.Confirmations {
				if !c.Final {
					return exitOther, fmt.Sprintf("order %s still %s at the last look: the cancel had not landed (%s)", c.OrderID, c.OrderStatus, c.Error)
				}
			}
		}
		return exitCancelled, ""
	case messages.StatusNotOpen:
		return exitNotOpen, "not open: " + a.RetMsg
	case messages.StatusRejected:
		return exitRejected, fmt.Sprintf("rejected: %s", a.RetMsg)
	case messages.StatusInvalid:
		return exitRejected, "invalid: " + a.Error
	case messages.StatusFailed:
		return exitRejected, "failed: " + a.LastError
	}
	return exitOther, fmt.Sprintf("unknown status %q", a.Status)
}

// printAnswer writes the answer for a person.
func printAnswer(w io.Writer, a messages.Answer, duplicate bool) {
	var b strings.Builder
	fmt.Fprintf(&b, "%s  %s %s", a.Status, a.Category, a.Symbol)
	for _, kv := range [][2]string{{"orderId", a.OrderID}, {"orderLinkId", a.OrderLinkID}, {"baseCoin", a.BaseCoin}, {"settleCoin", a.SettleCoin}, {"account", a.Account}} {
		if kv[1] != "" {
			fmt.Fprintf(&b, " %s=%s", kv[0], kv[1])
		}
	}
	fmt.Fprintf(&b, "\n  requestSeq=%d requestId=%s attempts=%d ambiguous=%v", a.RequestSeq, a.RequestID, a.Attempts, a.Ambiguous)
	if a.RetCode != nil {
		fmt.Fprintf(&b, " retCode=%d retMsg=%q", *a.RetCode, a.RetMsg)
	}
	if duplicate {
		b.WriteString("\n  (a repeat of an earlier request with the same Nats-Msg-Id: its result)")
	}
	switch {
	case a.Error != "":
		fmt.Fprintf(&b, "\n  error: %s", a.Error)
	case a.LastError != "":
		fmt.Fprintf(&b, "\n  last error: %s", a.LastError)
	}
	for _, o := range a.Orders {
		fmt.Fprintf(&b, "\n  cancelled orderId=%s orderLinkId=%s", o.OrderID, o.OrderLinkID)
	}
	for _, c := range a.Confirmations {
		final := "final"
		if !c.Final {
			final = "NOT final"
		}
		fmt.Fprintf(&b, "\n  confirmed orderId=%s: %s, %s (by %s, %dms after the result)", c.OrderID, c.OrderStatus, final, c.ConfirmedBy, c.AckToConfirmMs)
		if c.Error != "" {
			fmt.Fprintf(&b, " %s", c.Error)
		}
	}
	fmt.Fprintln(w, b.String())
}
