package replay

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
)

// Resend is a request to publish again: the original's body with a new
// requestId and replayOf/replayOfSeq naming the original, to the subject the
// original came from.
type Resend struct {
	Original  *Row
	Subject   string
	MsgID     string
	RequestID string
	Body      []byte
}

// Skip is a request of the selection that is not resent, and why.
type Skip struct {
	Row    *Row
	Reason string
}

// ResendMsgID is the Nats-Msg-Id of the resend of the request at seq: the
// same resend published twice inside the stream's duplicate window is
// stored once.
func ResendMsgID(seq uint64) string { return "resend:" + strconv.FormatUint(seq, 10) }

// resendRequestID derives the resend's requestId from the original's,
// keeping it within messages.MaxIDLen.
func resendRequestID(orig string, seq uint64) string {
	suffix := "/resend-" + strconv.FormatUint(seq, 10)
	return cut(orig, messages.MaxIDLen-len(suffix)) + suffix
}

// cut shortens s to at most n bytes without splitting a UTF-8 sequence.
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[:n]
	for !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}

// PlanOptions widen what Plan picks.
type PlanOptions struct {
	// IncludeRejected also picks rejected and not_open requests.
	IncludeRejected bool
	// IncludeCancelAll also picks cancel-all requests. Off by default: a
	// cancel-all resent later also cancels every order placed since the
	// original.
	IncludeCancelAll bool
}

// Plan picks from rows the requests to resend: unanswered and failed ones,
// and what opts add. Pending requests (the worker may still answer them),
// requests already resent, bodies that are not valid requests and, unless
// opts.IncludeCancelAll, cancel-alls are skipped with the reason.
func Plan(rows []*Row, opts PlanOptions) ([]Resend, []Skip) {
	var plan []Resend
	var skipped []Skip
	for _, r := range rows {
		switch messages.Status(r.Status) {
		case StateUnanswered, messages.StatusFailed:
		case messages.StatusRejected, messages.StatusNotOpen:
			if !opts.IncludeRejected {
				skipped = append(skipped, Skip{r, r.Status + ": resent only with --include-rejected"})
				continue
			}
		case StatePending:
			skipped = append(skipped, Skip{r, "pending: not yet delivered or held by a worker, which may still answer it"})
			continue
		default:
			continue
		}
		if len(r.Replays) > 0 {
			last := r.Replays[len(r.Replays)-1]
			skipped = append(skipped, Skip{r, fmt.Sprintf("already resent as sequence %d (%s)", last.Seq, last.Status)})
			continue
		}
		if r.reqErr != nil {
			skipped = append(skipped, Skip{r, "not a valid request: " + r.reqErr.Error()})
			continue
		}
		if r.req.all && !opts.IncludeCancelAll {
			skipped = append(skipped, Skip{r, r.Status + " cancel-all: resent only with --include-cancel-all (sent now, it would also cancel every order placed since " + r.RequestTime.Format(time.RFC3339) + ")"})
			continue
		}
		id := resendRequestID(r.RequestID, r.Seq)
		body, err := r.req.rebuild(id, cut(r.RequestID, messages.MaxIDLen), r.Seq)
		if err != nil {
			skipped = append(skipped, Skip{r, err.Error()})
			continue
		}
		plan = append(plan, Resend{Original: r, Subject: r.Subject, MsgID: ResendMsgID(r.Seq), RequestID: id, Body: body})
	}
	return plan, skipped
}

// Published counts what Publish did: Duplicates were already in the stream
// (the same resend inside the duplicate window) and added nothing.
type Published struct {
	New        int
	Duplicates int
}

// Publish publishes the plan, waiting for each PubAck.
func Publish(ctx context.Context, js jetstream.JetStream, plan []Resend) (Published, error) {
	var p Published
	for _, r := range plan {
		ack, err := js.Publish(ctx, r.Subject, r.Body, jetstream.WithMsgID(r.MsgID))
		if err != nil {
			return p, fmt.Errorf("publish the resend of sequence %d: %w", r.Original.Seq, err)
		}
		if ack.Duplicate {
			p.Duplicates++
		} else {
			p.New++
		}
	}
	return p, nil
}

// request is a strictly decoded cancel or cancel-all.
type request struct {
	all         bool // a cancel-all
	replayOf    string
	replayOfSeq uint64
	rebuild     func(requestID, replayOf string, replayOfSeq uint64) ([]byte, error)
}

func decodeRequest(cfg Config, subject string, data []byte) (request, error) {
	if subject == cfg.CancelAllSubject {
		c, err := messages.DecodeCancelAll(data)
		req := requestOf(&c, &c.RequestID, &c.ReplayOf, &c.ReplayOfSeq)
		req.all = true
		return req, err
	}
	c, err := messages.DecodeCancel(data)
	return requestOf(&c, &c.RequestID, &c.ReplayOf, &c.ReplayOfSeq), err
}

// requestOf wraps a decoded body and pointers to its id fields.
func requestOf[T any](body *T, requestID, replayOf *string, replayOfSeq *uint64) request {
	return request{replayOf: *replayOf, replayOfSeq: *replayOfSeq, rebuild: func(id, of string, seq uint64) ([]byte, error) {
		*requestID, *replayOf, *replayOfSeq = id, of, seq
		return json.Marshal(body)
	}}
}
