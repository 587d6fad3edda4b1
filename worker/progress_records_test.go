package worker_test

// Cancel-all progress records: runs that overlap, and a server that refuses
// the records.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker/embedded"
)

// Two runs of one cancel-all at once: the request was redelivered to
// another replica (its holder's heartbeats were lost past AckWait, issue 13
// defect 2) while the first still runs. Run b records what its call
// cancelled; the first run's result, stored first, must not then claim a
// complete list without it.
func TestCancelAllResultFoldsProgressOfARunThatOverlapsIt(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	orders := e.addOrders(700, "linear", "BTCUSDT")
	other := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
	var seq atomic.Uint64
	var calls atomic.Int32
	e.handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v5/order/cancel-all" && calls.Add(1) == 1 {
			// Run b (delivery 2, another replica) cancels `other` and
			// records it before this run's first call lands.
			e.ex.SetOrderStatus("linear", other.OrderID, "Cancelled")
			rec, _ := json.Marshal(messages.CancelAllProgress{RequestSeq: seq.Load(), Run: "run-b", Delivery: 2, Call: 1,
				Orders: []messages.OrderRef{{OrderID: other.OrderID}}})
			if _, err := e.js.Publish(context.Background(), fmt.Sprintf("%s.%d", e.cfg.CancelAllProgressSubject, seq.Load()), rec); err != nil {
				t.Error(err)
			}
		}
		e.ex.ServeHTTP(w, r)
	})
	seq.Store(e.publishAll(`{"category":"linear","symbol":"BTCUSDT"}`))
	e.start()
	r := e.waitResults(1)[seq.Load()]
	require.Equal(t, messages.StatusCancelled, r.Status)
	listed := false
	for _, o := range r.Orders {
		listed = listed || o.OrderID == other.OrderID
	}
	require.True(t, listed || !*r.OrdersComplete,
		"the result lists %d orders and says ordersComplete true, but run b's record of %s (cancelled meanwhile) is in the stream", len(r.Orders), other.OrderID)
	_ = orders
}

// The worker's NATS user may not publish the
// progress subject (permissions from before it existed; the managed stream
// captures it anyway). A 1203-order linear cancel-all (3 calls) still lists
// every order. The log shows publish→result with the subject allowed and
// refused: records are published without waiting for their acks, and the first refusal turns them off.
//
//	go test -race -count=1 -v -run TestCancelAllWithProgressRefusedListsEveryOrder ./worker/
func TestCancelAllWithProgressRefusedListsEveryOrder(t *testing.T) {
	t.Parallel()
	for _, refused := range []bool{false, true} {
		ns, err := embedded.StartNATS(embedded.NATSOptions{StoreDir: t.TempDir(), Configure: func(o *server.Options) {
			p := &server.Permissions{Publish: &server.SubjectPermission{Allow: []string{">"}}}
			if refused {
				p.Publish.Deny = []string{"orders.cancel-all.progress.>"}
			}
			o.Users = []*server.User{{Username: "w", Password: "w", Permissions: p}}
		}})
		require.NoError(t, err)
		nc, err := nats.Connect(ns.ClientURL(), nats.UserInfo("w", "w"))
		require.NoError(t, err)
		js, err := jetstream.New(nc)
		require.NoError(t, err)
		e := setup(t, bybittest.Options{})
		for range 1203 {
			e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
		}
		w, err := worker.New(e.cfg, js, e.client())
		require.NoError(t, err)
		require.NoError(t, w.Setup(context.Background()))
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- w.Run(ctx) }()
		start := time.Now()
		_, err = js.Publish(context.Background(), e.cfg.CancelAllSubject, []byte(`{"category":"linear","symbol":"BTCUSDT"}`))
		require.NoError(t, err)
		var r messages.Result
		require.Eventually(t, func() bool {
			rs := storedResultsOf(t, js, e.cfg)
			if len(rs) == 1 {
				r = rs[0]
				return true
			}
			return false
		}, waitFor, 5*time.Millisecond)
		t.Logf("progress refused=%v: publish→result %v, %d calls, %d orders, ordersComplete %v", refused, time.Since(start).Round(time.Millisecond), r.Attempts, len(r.Orders), *r.OrdersComplete)
		require.Equal(t, messages.StatusCancelled, r.Status)
		require.Len(t, r.Orders, 1203)
		require.True(t, *r.OrdersComplete)
		cancel()
		require.NoError(t, <-done)
		nc.Close()
		ns.Shutdown()
		ns.WaitForShutdown()
	}
}
