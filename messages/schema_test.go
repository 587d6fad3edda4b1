package messages

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/stretchr/testify/require"
)

// compileSchemas compiles every embedded schema (formats asserted).
func compileSchemas(t *testing.T) map[string]*jsonschema.Schema {
	t.Helper()
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	out := map[string]*jsonschema.Schema{}
	for _, subject := range SchemaSubjects {
		raw, err := Schema(subject)
		require.NoError(t, err, subject)
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
		require.NoError(t, err, subject)
		url := "mem:///" + subject + ".schema.json"
		require.NoError(t, c.AddResource(url, doc), subject)
		out[subject], err = c.Compile(url)
		require.NoError(t, err, subject)
	}
	return out
}

func schemaAccepts(t *testing.T, s *jsonschema.Schema, body []byte) error {
	t.Helper()
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(body))
	if err != nil {
		return err
	}
	return s.Validate(inst)
}

// requestDecoders are the worker's decoders of the request subjects, by
// subject.
func requestDecoders() map[string]func([]byte) error {
	return map[string]func([]byte) error{
		"orders.cancel":     func(b []byte) error { _, err := DecodeCancel(b); return err },
		"orders.cancel-all": func(b []byte) error { _, err := DecodeCancelAll(b); return err },
	}
}

// Publishers in other languages validate against the schemas before they
// publish: on every example the schema and the worker's decoder agree, and
// both agree with the example's name (valid-… or invalid-…).
func TestSchemasAgreeWithTheDecoders(t *testing.T) {
	t.Parallel()
	schemas := compileSchemas(t)
	decoders := requestDecoders()
	for subject, decode := range map[string]func([]byte) error{
		// Results and confirmations are read tolerantly; what a valid
		// example must do is decode to the Go type and encode back to
		// the same JSON (the field names are the Go encoder's), on the
		// subject its status belongs to.
		"orders.cancel.ack":       roundTrip(DecodeResult, func(r Result) ([]byte, error) { return subjectOf(r, true) }),
		"orders.cancel.rejected":  roundTrip(DecodeResult, func(r Result) ([]byte, error) { return subjectOf(r, false) }),
		"orders.cancel.confirmed": roundTrip(DecodeConfirmation, Confirmation.Marshal),
	} {
		decoders[subject] = decode
	}
	for _, subject := range SchemaSubjects {
		files, err := filepath.Glob(filepath.Join("testdata", "examples", subject, "*.json"))
		require.NoError(t, err)
		require.NotEmpty(t, files, subject)
		var valid, invalid int
		for _, f := range files {
			body, err := os.ReadFile(f)
			require.NoError(t, err)
			name := filepath.Base(f)
			want := strings.HasPrefix(name, "valid-")
			require.True(t, want || strings.HasPrefix(name, "invalid-"), name)
			if want {
				valid++
			} else {
				invalid++
			}
			schemaErr := schemaAccepts(t, schemas[subject], body)
			require.Equal(t, want, schemaErr == nil, "%s/%s: schema says %v", subject, name, schemaErr)
			if subject == "orders.cancel.confirmed" && !want {
				continue // the tolerant decoder reads a confirmation with a field missing
			}
			decErr := decoders[subject](body)
			require.Equal(t, want, decErr == nil, "%s/%s: decoder says %v", subject, name, decErr)
			if decErr != nil && strings.HasPrefix(subject, "orders.cancel") && (subject == "orders.cancel" || subject == "orders.cancel-all") {
				require.ErrorIs(t, decErr, ErrInvalid)
			}
		}
		require.Positive(t, valid, subject)
		if subject == "orders.cancel" || subject == "orders.cancel-all" {
			require.Greater(t, invalid, 5, "%s: each rule has an invalid example", subject)
		}
	}
}

func roundTrip[T any](decode func([]byte) (T, error), encode func(T) ([]byte, error)) func([]byte) error {
	return func(body []byte) error {
		v, err := decode(body)
		if err != nil {
			return err
		}
		back, err := encode(v)
		if err != nil {
			return err
		}
		var a, b any
		if err := json.Unmarshal(body, &a); err != nil {
			return err
		}
		if err := json.Unmarshal(back, &b); err != nil {
			return err
		}
		if ja, jb := mustJSON(a), mustJSON(b); ja != jb {
			return errors.New("does not encode back the same:\n" + ja + "\n" + jb)
		}
		return nil
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func subjectOf(r Result, ack bool) ([]byte, error) {
	if r.Acknowledged() != ack {
		return nil, errors.New("status " + string(r.Status) + " is published on the other result subject")
	}
	return r.Marshal()
}

// Everything the worker publishes validates against its subject's schema.
func TestWhatTheWorkerPublishesValidates(t *testing.T) {
	t.Parallel()
	schemas := compileSchemas(t)
	at := time.Date(2026, 11, 24, 1, 2, 3, 456000000, time.UTC)
	cancel := Cancel{Category: "linear", Symbol: "BTCUSDT", OrderID: "o-1", RequestID: "r-1"}
	results := map[Status]Result{}
	for _, st := range []Status{StatusCancelled, StatusNotOpen, StatusRejected, StatusFailed} {
		r := NewResult(cancel, "r-1", 5, at)
		r.Status, r.Attempts, r.SentAt = st, 1, &at
		if st != StatusFailed {
			r.RetCode = new(0)
		} else {
			r.LastError = "HTTP 502"
		}
		results[st] = r
	}
	results[StatusInvalid] = NewInvalidResult([]byte(`{"category":"perp"}`), invalidf("category %q is not one of spot, linear, inverse, option", "perp"), "ORDERS:6", 6, at)
	all := NewCancelAllResult(CancelAll{Category: "linear", SettleCoin: "USDT", RequestID: "kill"}, "kill", 7, at)
	all.Status, all.Attempts, all.Orders = StatusCancelled, 2, []OrderRef{{OrderID: "a", OrderLinkID: "la"}, {OrderID: "b"}}
	all.OrdersComplete = new(false)
	results["cancel-all"] = all
	flat := NewCancelAllResult(CancelAll{Scope: ScopeAccount, RequestID: "flatten"}, "flatten", 8, at)
	flat.Status, flat.Attempts, flat.Rounds, flat.Complete, flat.OrdersComplete = StatusFailed, 9, 5, new(false), new(true)
	flat.Orders = []OrderRef{{OrderID: "a", Category: "linear", SettleCoin: "USDT"}, {OrderID: "b", Category: "spot", Symbol: "BTCUSDT"}}
	flat.Cancelled = map[string]int{"linear": 1, "spot": 1}
	flat.Left, flat.LeftMore, flat.LastError = []OrderRef{{OrderID: "c", Category: "spot", Symbol: "BTCUSDT"}}, true, "at least 1 open orders left after 5 rounds"
	results["flatten"] = flat
	for name, r := range results {
		body, err := r.Marshal()
		require.NoError(t, err)
		subject := "orders.cancel.rejected"
		if r.Acknowledged() {
			subject = "orders.cancel.ack"
		}
		require.NoError(t, schemaAccepts(t, schemas[subject], body), "%s: %s", name, body)
	}
	conf := Confirmation{RequestID: "r-1", RequestSeq: 5, OrderID: "o-1", Category: "linear", Symbol: "BTCUSDT", ResultStatus: StatusCancelled,
		OrderStatus: "Cancelled", Qty: "0.010", CumExecQty: "0.004", LeavesQty: "0", AvgPrice: "64000.5", Final: true, ConfirmedBy: ConfirmedByWebSocket, AckTime: at, ConfirmedAt: at.Add(30 * time.Millisecond), AckToConfirmMs: 30}
	body, err := conf.Marshal()
	require.NoError(t, err)
	require.NoError(t, schemaAccepts(t, schemas["orders.cancel.confirmed"], body))
}

// Around every valid example, each field changed in every way the rules
// care about (removed, null, empty, lower case, white space, too long, of
// another type, each enum value): the schema and the decoder agree on each
// variant, so a publisher that validates is neither refused by the worker
// nor let through to an "invalid" result.
func TestSchemasAgreeWithTheDecodersOnVariants(t *testing.T) {
	t.Parallel()
	schemas := compileSchemas(t)
	decoders := requestDecoders()
	values := []any{nil, "", "X", "x", "ä", "A B", "A\u00a0B", "A\tB", "A\u0085B", 7, -1, 1.5, true, []any{}, map[string]any{},
		strings.Repeat("A", 64), strings.Repeat("A", 65), strings.Repeat("a", 128), strings.Repeat("a", 129), "BTC-27DEC24-100000-C",
		"Stop", "Order", "StopOrder", "OpenOrder", "tpslOrder", "OcoOrder", "BidirectionalTpslOrder", "spot", "linear", "inverse", "option"}
	fields := []string{"category", "symbol", "orderId", "orderLinkId", "orderFilter", "account", "requestId", "replayOf", "replayOfSeq",
		"baseCoin", "settleCoin", "stopOrderType"}
	checked := map[string]int{}
	for subject, decode := range decoders {
		files, err := filepath.Glob(filepath.Join("testdata", "examples", subject, "valid-*.json"))
		require.NoError(t, err)
		for _, f := range files {
			raw, err := os.ReadFile(f)
			require.NoError(t, err)
			var base map[string]any
			require.NoError(t, json.Unmarshal(raw, &base))
			check := func(variant map[string]any, what string) {
				body, err := json.Marshal(variant)
				require.NoError(t, err)
				decErr := decode(body)
				schemaErr := schemaAccepts(t, schemas[subject], body)
				require.Equal(t, decErr == nil, schemaErr == nil, "%s from %s, %s: %s\ndecoder: %v\nschema: %v", subject, filepath.Base(f), what, body, decErr, schemaErr)
				checked[subject]++
			}
			check(base, "as it is")
			check(with(base, "unknownField", "1"), "an unknown field")
			for _, field := range fields {
				check(without(base, field), "without "+field)
				for _, v := range values {
					check(with(base, field, v), fmt.Sprintf("%s = %#v", field, v))
				}
			}
		}
	}
	t.Logf("variants checked: %v", checked)
}

func with(m map[string]any, k string, v any) map[string]any {
	out := maps.Clone(m)
	out[k] = v
	return out
}

func without(m map[string]any, k string) map[string]any {
	out := maps.Clone(m)
	delete(out, k)
	return out
}
