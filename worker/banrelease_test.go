package worker_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker"
)

// banFront serves the shared simulated exchange to one worker as if from
// its own IP, so that Bybit can ban that worker and not the others: the
// first cancel through it is held until the test lets it go, and is then
// answered as Bybit's IP ban answers (HTTP 403 "access too frequent"), as
// is every request after it until lift.
type banFront struct {
	url string
	// arrived is closed when the first cancel reaches the front; banNow
	// lets it be answered.
	arrived, banNow chan struct{}
	first           atomic.Bool
	banned          atomic.Bool
	// cancels counts the cancels that reached the front, banned or not.
	cancels atomic.Int32
}

func newBanFront(t *testing.T, ex http.Handler) *banFront {
	t.Helper()
	f := &banFront{arrived: make(chan struct{}), banNow: make(chan struct{})}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cancel := strings.HasPrefix(r.URL.Path, "/v5/order/cancel")
		if cancel {
			f.cancels.Add(1)
			if f.first.CompareAndSwap(false, true) {
				close(f.arrived)
				<-f.banNow
				f.banned.Store(true)
			}
		}
		if f.banned.Load() {
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(http.StatusForbidden)
			_, _ = w.Write([]byte("<html><body>403 Forbidden: access too frequent</body></html>"))
			return
		}
		ex.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(f.ban) // a held cancel must not outlive the test
	f.url = srv.URL
	return f
}

// ban answers the held cancel with the ban, and every request after it.
func (f *banFront) ban() {
	select {
	case <-f.banNow:
	default:
		close(f.banNow)
	}
}

// lift ends the ban: the next request goes through.
func (f *banFront) lift() { f.banned.Store(false) }

// banScenario is two workers on one consumer: banned, which holds every
// request of a burst when Bybit bans its IP, and other, behind another IP,
// started once banned holds them all.
type banScenario struct {
	e             *env
	banned, other *worker.Worker
	front         *banFront
	seqs          []uint64
	otherLogs     *syncBuffer
}

// startBanScenario publishes n cancels, lets the first worker take them all
// (one cancel sent, held at the exchange; the others wait behind it), starts
// the second worker, then bans the first one's IP.
func startBanScenario(t *testing.T, e *env, n int) *banScenario {
	t.Helper()
	s := &banScenario{e: e, front: newBanFront(t, e.ex), otherLogs: &syncBuffer{}}
	e.cfg.Batch = false
	cfg := e.cfg
	cfg.Concurrency = 1 // one cancel at the exchange, the others held
	s.banned = startWorkerVia(t, cfg, e.ns.ClientURL(), s.front.url)
	for range n {
		o := e.ex.AddOrder(bybittest.Order{Category: "linear", Symbol: "BTCUSDT"})
		s.seqs = append(s.seqs, e.publish(cancelBody(o, false, ""), ""))
	}
	require.Eventually(t, func() bool { return s.banned.Stats().Received.Load() == int64(n) }, waitFor, 5*time.Millisecond,
		"the first worker holds every request\n%s", e.logs)
	select {
	case <-s.front.arrived:
	case <-time.After(waitFor):
		t.Fatalf("the first worker sent no cancel\n%s", e.logs)
	}
	other := e.cfg
	other.Logger = newTestLogger(s.otherLogs)
	s.other = startWorkerVia(t, other, e.ns.ClientURL(), e.srv.URL)
	s.front.ban()
	return s
}

// requireAnsweredByTheOther checks what a user of BYBIT_BAN_RELEASE relies
// on: every request held by the banned worker is answered once, cancelled,
// by the worker behind the other IP, while the banned one sends nothing
// more into its ban; each was released once (its second delivery is the
// one answered), no Nak loop.
func (s *banScenario) requireAnsweredByTheOther(t *testing.T) {
	t.Helper()
	got := s.e.waitResults(len(s.seqs))
	for _, seq := range s.seqs {
		r, ok := got[seq]
		require.True(t, ok, "request %d answered", seq)
		require.Equal(t, messages.StatusCancelled, r.Status, "%+v", r)
		require.EqualValues(t, 2, r.Deliveries, "held by the banned worker, released once, answered on the next delivery: %+v", r)
	}
	s.e.settled()
	requireOneCancelledResultEach(t, s.e.ex, storedResultsOf(t, s.e.js, s.e.cfg), len(s.seqs))
	require.EqualValues(t, len(s.seqs), s.other.Stats().Received.Load(), "the other worker received each request once\n%s", s.otherLogs)
	require.EqualValues(t, 1, s.front.cancels.Load(), "the banned worker sent nothing after the 403")
	require.Equal(t, len(s.seqs), s.e.cancelRequests(), "one cancel per request reached the exchange")
}

// With BYBIT_BAN_RELEASE on a consumer without the fleet's priority group
// (every worker pulls at once): a worker whose IP Bybit bans gives back
// every request it holds, the one the ban answered too, and the worker
// behind another IP answers them all, long before the ban's pause ends.
func TestBanReleaseHandsHeldRequestsToAWorkerOnAnotherIP(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	_, err := e.js.CreateConsumer(context.Background(), e.cfg.Stream, jetstream.ConsumerConfig{
		Durable: e.cfg.Consumer, FilterSubjects: []string{e.cfg.CancelSubject, e.cfg.CancelAllSubject},
		AckPolicy: jetstream.AckExplicitPolicy, AckWait: 5 * time.Second, MaxAckPending: 1000,
	})
	require.NoError(t, err)
	e.cfg.BanRelease = true
	e.cfg.BanPause = 10 * time.Minute // as deployed: only the other worker can answer within the test
	s := startBanScenario(t, e, 8)
	s.requireAnsweredByTheOther(t)
}

// With BYBIT_BAN_RELEASE on the worker's pinned consumer: the active
// replica, banned, gives up its pin and what it holds; the standby takes
// over and answers every request once.
func TestBanReleaseHandsThePinToTheStandby(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	e.cfg.BanRelease = true
	e.cfg.BanPause = 10 * time.Minute
	s := startBanScenario(t, e, 8)
	s.requireAnsweredByTheOther(t)
	require.Eventually(t, func() bool { return strings.Contains(s.otherLogs.String(), "this replica is the active one") }, waitFor, 10*time.Millisecond,
		"the standby reports itself active\n%s", s.otherLogs)
}

// Without BYBIT_BAN_RELEASE (the default: replicas behind one IP) the
// banned active replica keeps its pin through a ban longer than the pin's
// TTL: the standby, which would send into the same ban, takes nothing, and
// the banned replica answers every request once the ban is over.
func TestBanWithoutReleaseKeepsThePinAndAnswersAfterTheBan(t *testing.T) {
	t.Parallel()
	e := setup(t, bybittest.Options{})
	e.cfg.PinnedTTL = 3 * time.Second
	e.cfg.BanPause = 2 * time.Second
	const n = 8
	s := startBanScenario(t, e, n)
	// The probe after the first pause is banned again: the ban outlasts
	// the pin's TTL before it is lifted.
	require.Eventually(t, func() bool { return s.front.cancels.Load() >= 2 }, waitFor, 5*time.Millisecond, "%s", e.logs)
	s.front.lift()
	got := e.waitResults(n)
	for _, seq := range s.seqs {
		r := got[seq]
		require.Equal(t, messages.StatusCancelled, r.Status, "%+v", r)
		require.EqualValues(t, 1, r.Deliveries, "kept by the banned replica, not released: %+v", r)
	}
	e.settled()
	requireOneCancelledResultEach(t, e.ex, storedResultsOf(t, e.js, e.cfg), n)
	require.Zero(t, s.other.Stats().Received.Load(), "the standby took nothing during the ban\n%s", s.otherLogs)
	require.Equal(t, n, e.cancelRequests(), "after the ban, one cancel per request went through")
	require.GreaterOrEqual(t, s.front.cancels.Load(), int32(n+2), "the banned cancel and at least one banned probe came first")
}
