package worker_test

import (
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker"
)

// dcpSetup is an env whose default account arms the dead-man switch with
// window; one simulated second lasts second. Events of the simulator's
// countdowns arrive on the channel.
func dcpSetup(t *testing.T, window, second time.Duration) (*env, *dcpEvents) {
	events := &dcpEvents{}
	e := setup(t, bybittest.Options{DCPSecond: second, OnDCP: events.add})
	e.withConfirm(10 * time.Second)
	e.cfg.DCPWindow = window
	return e, events
}

// restingEverywhere puts one resting order in each category.
func restingEverywhere(ex *bybittest.Exchange) []bybittest.Order {
	return []bybittest.Order{
		ex.AddOrder(bybittest.Order{Category: "spot", Symbol: "BTCUSDT", Kind: "tpslOrder"}),
		ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"}),
		ex.AddOrder(bybittest.Order{Category: "inverse", Symbol: "ETHUSD"}),
		ex.AddOrder(bybittest.Order{Category: "option", Symbol: "BTC-27MAR26-100000-C"}),
	}
}

// dcpEvents collects the simulator's DCP events.
type dcpEvents struct {
	mu  sync.Mutex
	evs []bybittest.DCPEvent
}

func (d *dcpEvents) add(ev bybittest.DCPEvent) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.evs = append(d.evs, ev)
}

// waitDCP waits for an event of kind for product.
func waitDCP(t *testing.T, d *dcpEvents, kind, product string) bybittest.DCPEvent {
	t.Helper()
	var got bybittest.DCPEvent
	require.Eventually(t, func() bool {
		d.mu.Lock()
		defer d.mu.Unlock()
		for _, ev := range d.evs {
			if ev.Kind == kind && ev.Product == product {
				got = ev
				return true
			}
		}
		return false
	}, waitFor, 5*time.Millisecond, "no DCP %s event for %s", kind, product)
	return got
}

func (e *env) requireArmedReplicas(n int) {
	e.t.Helper()
	require.Eventually(e.t, func() bool {
		for _, p := range []string{"DERIVATIVES", "SPOT", "OPTIONS"} {
			if e.ex.DCPSubscribers("demo", p) != n {
				return false
			}
		}
		return true
	}, waitFor, 5*time.Millisecond, "%d replicas subscribed to every dcp topic\n%s", n, e.logs)
}

// Both replicas gone: once the window passes, Bybit (the simulator)
// cancels every order of the account in every category.
func TestDCPArmedFiresWhenEveryReplicaIsGone(t *testing.T) {
	t.Parallel()
	e, events := dcpSetup(t, 3*time.Second, 10*time.Millisecond)
	orders := restingEverywhere(e.ex)
	reg := prometheus.NewRegistry()
	e.cfg.Registerer = reg
	a := e.start()
	e.cfg.Registerer = nil
	b := e.start()
	e.requireArmedReplicas(2)
	require.Equal(t, 1.0, gauge(t, reg, "cancel_worker_dcp_armed", "default"))
	require.Equal(t, 3.0, gauge(t, reg, "cancel_worker_dcp_window_seconds", "default", "SPOT"))
	for _, p := range []string{"DERIVATIVES", "SPOT", "OPTIONS"} {
		require.Equal(t, 3, e.ex.DCPWindow("demo", p), "the window is set for %s", p)
	}
	ok, why := a.w.Ready()
	require.True(t, ok)
	require.Contains(t, why, "dead-man switch (Bybit DCP): account default: armed, window 3s")
	require.Contains(t, e.logs.String(), "dead-man switch armed")

	a.stop()
	b.stop()
	require.Eventually(t, func() bool { return gauge(t, reg, "cancel_worker_dcp_armed", "default") == 0 }, waitFor, 5*time.Millisecond, "a stopped replica does not hold the switch")
	fired := map[string]int{}
	for _, p := range []string{"DERIVATIVES", "SPOT", "OPTIONS"} {
		fired[p] = waitDCP(t, events, "fired", p).Cancelled
	}
	require.Equal(t, map[string]int{"DERIVATIVES": 2, "SPOT": 1, "OPTIONS": 1}, fired)
	for _, o := range orders {
		st, _ := e.ex.Order(o.Category, o.OrderID)
		require.Equal(t, "CancelByDCP", st.CancelType, "%s", o.Category)
	}
}

// One replica stopped, the other alive: no countdown starts, nothing is
// cancelled.
func TestDCPWithOneReplicaAliveCancelsNothing(t *testing.T) {
	t.Parallel()
	e, _ := dcpSetup(t, 3*time.Second, 10*time.Millisecond)
	orders := restingEverywhere(e.ex)
	a, _ := e.start(), e.start()
	e.requireArmedReplicas(2)
	a.stop()
	// The simulator starts a countdown as the last subscribed connection
	// goes; with one left there is none to wait out.
	e.requireOneArmedNothingCancelled(orders)
}

// Both replicas gone, one restarted inside the window: the countdown stops
// and nothing is cancelled.
func TestDCPReplicaRestartedInsideTheWindowCancelsNothing(t *testing.T) {
	t.Parallel()
	// 300 simulated seconds of a real second each: the restart is inside.
	e, events := dcpSetup(t, 300*time.Second, time.Second)
	orders := restingEverywhere(e.ex)
	a, b := e.start(), e.start()
	e.requireArmedReplicas(2)
	a.stop()
	b.stop()
	for _, p := range []string{"DERIVATIVES", "SPOT", "OPTIONS"} {
		waitDCP(t, events, "countdown", p)
	}
	e.start()
	for _, p := range []string{"DERIVATIVES", "SPOT", "OPTIONS"} {
		waitDCP(t, events, "stopped", p)
	}
	e.requireOneArmedNothingCancelled(orders)
}

// requireOneArmedNothingCancelled requires one replica to hold the switch, no
// countdown to run, and every one of orders to be open still.
func (e *env) requireOneArmedNothingCancelled(orders []bybittest.Order) {
	e.t.Helper()
	e.requireArmedReplicas(1)
	require.Zero(e.t, e.ex.DCPCountdowns())
	for _, o := range orders {
		st, _ := e.ex.Order(o.Category, o.OrderID)
		require.True(e.t, st.Status == "New" || st.Status == "Untriggered", "%s %s", o.Category, st.Status)
	}
}

func TestDCPWindowIsCheckedAtConfiguration(t *testing.T) {
	t.Parallel()
	e, _ := dcpSetup(t, 2*time.Second, time.Second)
	_, err := worker.New(e.cfg, e.js, e.client())
	require.ErrorContains(t, err, "DCPWindow must be whole seconds from 3s to 300s")
	e.cfg.DCPWindow, e.cfg.Confirm = 30*time.Second, false
	_, err = worker.New(e.cfg, e.js, e.client())
	require.ErrorContains(t, err, "DCPWindow needs Confirm=true")
}

// Bybit refusing the window, or a read-back that does not show it for
// every product: the worker runs (the cancels matter more), and says the
// switch is not armed, and why.
func TestDCPRefusedOrNotReadBackIsReported(t *testing.T) {
	t.Parallel()
	e, _ := dcpSetup(t, 30*time.Second, time.Second)
	var unavailable atomic.Int32
	e.handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v5/order/disconnected-cancel-all" {
			if unavailable.Add(1) == 1 {
				// Network trouble first: waited out, not a start-up error.
				w.WriteHeader(http.StatusBadGateway)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"retCode":10001,"retMsg":"dcp not enabled","result":{},"retExtInfo":{},"time":1}`))
			return
		}
		e.ex.ServeHTTP(w, r)
	})
	refused := e.start()
	require.Eventually(t, func() bool { ok, _ := refused.w.Ready(); return ok }, waitFor, 5*time.Millisecond, "the cancels run without the switch")
	_, why := refused.w.Ready()
	require.Contains(t, why, "account default: not armed: account default: setting Bybit's Disconnect Cancel All window (30s) for DERIVATIVES")
	require.Contains(t, why, "dcp not enabled")
	require.EqualValues(t, 2, unavailable.Load(), "the 502 was retried")
	refused.stop()

	// Bybit switched DCP on for spot only: the others are not shown.
	e.handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v5/account/query-dcp-info" {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"retCode":0,"retMsg":"success","result":{"dcpInfos":[{"product":"SPOT","dcpStatus":"ON","timeWindow":"30"}]},"retExtInfo":{},"time":1}`))
			return
		}
		e.ex.ServeHTTP(w, r)
	})
	r := e.start()
	require.Eventually(t, func() bool { ok, _ := r.w.Ready(); return ok }, waitFor, 5*time.Millisecond)
	_, why = r.w.Ready()
	require.Contains(t, why, "account default: window set, not shown by query-dcp-info for DERIVATIVES (not listed), OPTIONS (not listed)")
	require.Contains(t, e.logs.String(), "dead-man switch not armed")
}

// A replica alive and able to reach Bybit holds the
// dead-man switch. Bybit's private stream dropping the connection a few
// times in a row (a flaky path, a Bybit restart) must not fire it: the
// reconnect wait grows exponentially to 30 s and is reset only after a
// minute up, so after a handful of drops the replica stays away for longer
// than the window, and Bybit cancels every order of the account although
// the cancel path never died.
func TestAFlappingPrivateStreamDoesNotFireTheDeadManSwitch(t *testing.T) {
	t.Parallel()
	e, events := dcpSetup(t, 3*time.Second, time.Second) // Bybit's minimum window, in real seconds
	orders := restingEverywhere(e.ex)
	e.start()
	e.requireArmedReplicas(1)
	// Nine drops: the old backoff's ninth wait (6.4 s ± 50 %) is sure to
	// outlast the 3 s window.
	for range 9 {
		e.ex.DropPrivateConnections()
		e.requireArmedReplicas(1) // the replica is back and subscribed
	}
	events.mu.Lock()
	evs := append([]bybittest.DCPEvent(nil), events.evs...)
	events.mu.Unlock()
	for _, ev := range evs {
		require.NotEqual(t, "fired", ev.Kind, "Bybit's dead-man switch fired for %s while the replica lived: %+v", ev.Product, evs)
	}
	for _, o := range orders {
		st, _ := e.ex.Order(o.Category, o.OrderID)
		require.NotEqual(t, "CancelByDCP", st.CancelType, "%s", o.Category)
	}
}
