package main

import (
	"fmt"
	"io"
	"net"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
)

// The fleet tests run replicas with identical settings but their own API
// keys of one UID, so that the exchange's request log tells them apart.
var fleetKeys = []bybittest.Account{
	{APIKey: "replica-a-key", Secret: "replica-a-secret", UID: "fleet"},
	{APIKey: "replica-b-key", Secret: "replica-b-secret", UID: "fleet"},
}

// replica is one `cancel-worker run` process of a fleet.
type replica struct {
	key  string
	cmd  *exec.Cmd
	logs *syncBuffer
}

// startReplica runs a replica with the stack's settings and one of
// fleetKeys; natsURL, when set, replaces NATS_URL.
func (s *stack) startReplica(i int, natsURL string) *replica {
	s.t.Helper()
	saved := map[string]string{}
	for k, v := range map[string]string{"BYBIT_API_KEY": fleetKeys[i].APIKey, "BYBIT_API_SECRET": fleetKeys[i].Secret, "NATS_URL": natsURL} {
		if v == "" {
			continue
		}
		saved[k] = s.env[k]
		s.env[k] = v
	}
	cmd, logs := s.startBinary()
	for k, v := range saved {
		s.env[k] = v
	}
	return &replica{key: fleetKeys[i].APIKey, cmd: cmd, logs: logs}
}

// activeKey is the key of the replica that sent the first cancel.
func (s *stack) activeKey() string {
	for _, q := range s.ex.Requests() {
		if q.Path == "/v5/order/cancel" || q.Path == "/v5/order/cancel-batch" {
			return q.APIKey
		}
	}
	return ""
}

// requireEachAnsweredOnce checks that every one of n requests has exactly
// one result and every order was cancelled at the exchange.
func (s *stack) requireEachAnsweredOnce(prefix string, n int) {
	s.t.Helper()
	perSeq := map[uint64]int{}
	for _, r := range s.results() {
		if !strings.HasPrefix(r.OrderID, prefix+"-") {
			continue
		}
		perSeq[r.RequestSeq]++
		require.Contains(s.t, []messages.Status{messages.StatusCancelled, messages.StatusNotOpen}, r.Status, "%+v", r)
		if r.Status == messages.StatusNotOpen {
			require.True(s.t, r.Ambiguous, "only a cancel an earlier replica applied can be not open: %+v", r)
		}
	}
	require.Len(s.t, perSeq, n)
	for seq, c := range perSeq {
		require.Equal(s.t, 1, c, "request %d", seq)
	}
	for i := range n {
		o, ok := s.ex.Order("linear", fmt.Sprint(prefix, "-", i))
		require.True(s.t, ok)
		require.Equal(s.t, "Cancelled", o.Status)
	}
}

// requireOneSenderAtATime reads the exchange's request log by arrival: the
// cancels come in runs of one key each (one replica at a time, switching
// want times), and between the last request of one run and the first of
// the next lies at least Bybit's one-second window, so that no window of
// the UID's limit holds requests of two replicas.
func requireOneSenderAtATime(t *testing.T, log []bybittest.Request, switches int) {
	t.Helper()
	var cancels []bybittest.Request
	for _, q := range log {
		if q.Path == "/v5/order/cancel" || q.Path == "/v5/order/cancel-batch" {
			cancels = append(cancels, q)
		}
	}
	slices.SortStableFunc(cancels, func(a, b bybittest.Request) int { return a.Arrived.Compare(b.Arrived) })
	runs := 0
	for i, q := range cancels {
		if i > 0 && q.APIKey == cancels[i-1].APIKey {
			continue
		}
		runs++
		if i > 0 {
			gap := q.Arrived.Sub(cancels[i-1].Arrived)
			require.GreaterOrEqual(t, gap, time.Second, "%s started %v after %s's last request", q.APIKey, gap, cancels[i-1].APIKey)
		}
	}
	require.Equal(t, switches+1, runs, "one replica after the other")
}

// newFleetStack is a stack for replicas of the fleet tests, whose AckWait
// and pin's TTL are both lease.
func newFleetStack(t *testing.T, lease string) *stack {
	s := newStack(t, bybittest.Options{AutoCreate: true, Latency: 20 * time.Millisecond, Accounts: fleetKeys}, nil)
	s.env["BYBIT_BATCH"] = "false"
	s.env["CONFIRM"] = "false"
	s.env["NATS_ACK_WAIT"] = lease
	s.env["NATS_PINNED_TTL"] = lease
	return s
}

// twoReplicasMidBurst starts replicas 0 and 1, publishes n cancels named
// prefix and waits until 8 are answered; it returns the replica that sends
// (the active one) and the other.
func (s *stack) twoReplicasMidBurst(prefix string, n int) (active, other *replica) {
	s.t.Helper()
	replicas := []*replica{s.startReplica(0, ""), s.startReplica(1, "")}
	s.publishCancels(prefix, n)
	require.Eventually(s.t, func() bool { return len(s.results()) >= 8 }, waitFor, 10*time.Millisecond)
	key := s.activeKey()
	for _, r := range replicas {
		if r.key == key {
			active = r
		} else {
			other = r
		}
	}
	return active, other
}

// Two replicas with identical settings: only one works; killed with
// SIGKILL mid-burst, it is replaced after the pin's TTL and every request
// is answered once (what the dead one had sent, ambiguous).
func TestFleetKilledActiveReplicaIsReplaced(t *testing.T) {
	t.Parallel()
	s := newFleetStack(t, "3s")
	const n = 40 // 4 s at the base tier's 10/s
	active, standby := s.twoReplicasMidBurst("kill", n)
	require.NoError(t, active.cmd.Process.Kill())
	_ = active.cmd.Wait()
	require.Less(t, len(s.results()), n, "the kill came mid-burst")
	require.Eventually(t, func() bool { return len(s.results()) >= n }, waitFor, 20*time.Millisecond, "%s", standby.logs)
	s.requireEachAnsweredOnce("kill", n)
	requireOneSenderAtATime(t, s.ex.Requests(), 1)
	require.Contains(t, standby.logs.String(), "this replica is the active one")
}

// SIGTERM hands over at once: AckWait and the pin's TTL are an hour, so the
// burst can only finish through the old replica's release and unpin.
func TestFleetSIGTERMHandsOverAtOnce(t *testing.T) {
	t.Parallel()
	s := newFleetStack(t, "1h")
	const n = 40
	old, taker := s.twoReplicasMidBurst("term", n)
	require.NoError(t, old.cmd.Process.Signal(syscall.SIGTERM))
	require.NoError(t, old.cmd.Wait(), "%s", old.logs)
	require.Less(t, len(s.results()), n, "the SIGTERM came mid-burst")
	require.Contains(t, old.logs.String(), "pin handed over")
	require.Eventually(t, func() bool { return len(s.results()) >= n }, waitFor, 20*time.Millisecond, "%s", taker.logs)
	s.requireEachAnsweredOnce("term", n)
	requireOneSenderAtATime(t, s.ex.Requests(), 1)
}

// The active replica's NATS connection goes silent (a half-open
// connection: nothing is forwarded, nothing is closed). Its lease runs out
// before the server pins the other replica, which answers everything once.
func TestFleetConnectionLossEndsTheLease(t *testing.T) {
	t.Parallel()
	s := newFleetStack(t, "3s")
	proxy := newFreezableProxy(t, strings.TrimPrefix(s.env["NATS_URL"], "nats://"))
	cut := s.startReplica(0, "nats://"+proxy.addr())
	// The first request pins the replica behind the proxy.
	s.publishCancels("first", 1)
	require.Eventually(t, func() bool { return len(s.results()) == 1 }, waitFor, 10*time.Millisecond)
	other := s.startReplica(1, "")
	const n = 40
	s.publishCancels("cut", n)
	require.Eventually(t, func() bool { return len(s.results()) >= 8 }, waitFor, 10*time.Millisecond)
	require.Equal(t, cut.key, s.activeKey())
	proxy.freeze()
	require.Eventually(t, func() bool { return strings.Contains(cut.logs.String(), "no longer active") }, waitFor, 20*time.Millisecond, "%s", cut.logs)
	require.Eventually(t, func() bool { return len(s.results()) >= n+1 }, waitFor, 20*time.Millisecond, "%s", other.logs)
	s.requireEachAnsweredOnce("cut", n)
	requireOneSenderAtATime(t, s.ex.Requests(), 1)
}

// freezableProxy forwards TCP connections until freeze, after which it
// forwards nothing and closes nothing.
type freezableProxy struct {
	ln         net.Listener
	target     string
	frozen     chan struct{}
	freezeOnce sync.Once
}

func newFreezableProxy(t *testing.T, target string) *freezableProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &freezableProxy{ln: ln, target: target, frozen: make(chan struct{})}
	var conns sync.WaitGroup
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			t.Cleanup(func() { c.Close(); up.Close() })
			conns.Add(2)
			go func() { defer conns.Done(); p.pipe(up, c) }()
			go func() { defer conns.Done(); p.pipe(c, up) }()
		}
	}()
	return p
}

func (p *freezableProxy) addr() string { return p.ln.Addr().String() }

func (p *freezableProxy) freeze() { p.freezeOnce.Do(func() { close(p.frozen) }) }

// pipe copies src to dst until freeze; then it holds what it read.
func (p *freezableProxy) pipe(dst io.Writer, src io.Reader) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		select {
		case <-p.frozen:
			return
		default:
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
