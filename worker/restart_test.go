package worker_test

import (
	"context"
	"fmt"
	"net"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker/embedded"
)

// The broker is shut down mid-burst and restarted on the same store and port:
// the worker reconnects by itself, every request gets exactly one result, and
// every order that was open ends cancelled — a result that could not be
// published while the broker was down is retried, not replaced by a later
// not_open.
func TestBrokerRestartMidBurst(t *testing.T) {
	t.Parallel()
	store := t.TempDir()
	ns, err := embedded.StartNATS(embedded.NATSOptions{StoreDir: store})
	require.NoError(t, err)
	port := ns.Addr().(*net.TCPAddr).Port
	url := ns.ClientURL()
	current := ns
	t.Cleanup(func() { current.Shutdown(); current.WaitForShutdown() })

	ex := bybittest.New(bybittest.Options{AutoCreate: true, Latency: 100 * time.Millisecond})
	e := setup(t, bybittest.Options{}) // for its configuration and logger; its own broker is not used
	srvURL := startExchange(t, ex)

	connect := func() (*nats.Conn, jetstream.JetStream) { return connectForFailover(t, url) }
	_, wjs := connect()
	_, tjs := connect()
	cfg := e.cfg
	_, stop := runWorker(t, cfg, wjs, demoClient(t, srvURL, 0))
	defer func() { require.NoError(t, stop()) }()

	const n = 40
	for i := range n {
		_, err := tjs.Publish(context.Background(), cfg.CancelSubject, []byte(fmt.Sprintf(`{"category":"linear","symbol":"BTCUSDT","orderId":"r-%d"}`, i)))
		require.NoError(t, err)
	}
	results := func() []messages.Result { return storedResultsOf(t, tjs, cfg) }
	require.Eventually(t, func() bool { return len(results()) >= 5 }, waitFor, 10*time.Millisecond)

	current.Shutdown()
	current.WaitForShutdown()
	down := time.Now()
	// While the broker is down the worker keeps cancelling what it holds
	// and cannot publish: wait until the exchange has applied more.
	applied := func() int {
		c := 0
		for _, q := range ex.Requests() {
			if q.RetCode == 0 && q.OrderID != "" {
				c++
			}
		}
		return c
	}
	base := applied()
	require.Eventually(t, func() bool { return applied() > base }, waitFor, 10*time.Millisecond)
	up := time.Now()
	current, err = embedded.StartNATS(embedded.NATSOptions{StoreDir: store, Port: port})
	require.NoError(t, err)

	// Judged on a complete read: a read during a leader change may stop short.
	var got []messages.Result
	require.Eventually(t, func() bool { got = results(); return len(got) >= n }, waitFor, 20*time.Millisecond, "%s", e.logs)
	requireOneCancelledResultEach(t, ex, got, n)

	// The promise itself: a result held while the broker was down is the
	// one stored. Every order the exchange cancelled during the outage has
	// its cancelled result stored, not a not_open from a later attempt.
	during := map[string]bool{}
	for _, q := range ex.Requests() {
		if isCancel(q) && q.RetCode == 0 && q.OrderID != "" && !q.Time.Before(down) && q.Time.Before(up) {
			during[q.OrderID] = true
		}
	}
	require.NotEmpty(t, during)
	for _, r := range got {
		if during[r.OrderID] {
			require.Equal(t, messages.StatusCancelled, r.Status, "the result held during the outage: %+v", r)
		}
	}
}

func startExchange(t *testing.T, ex *bybittest.Exchange) string {
	t.Helper()
	srv := httptest.NewServer(ex)
	t.Cleanup(srv.Close)
	return srv.URL
}
