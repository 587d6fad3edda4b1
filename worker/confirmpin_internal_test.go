package worker

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"
)

// A fresh fleet's first burst comes in its first pull, whose first message
// pins this replica on the cancel consumer. The confirmations follow that
// pin: they must be pulled from the moment the replica is active, not only
// once the pull that brought the pin has ended — it ends at its expiry, up to
// a pull's wait later, and every result of the burst waited for it (the
// demo's ack→confirmation p50 went from 30 ms to about 900 ms).
func TestConfirmationsFollowACancelPinThatCameMidPull(t *testing.T) {
	// The cancel consumer's one pull: it stays open (not ended) until the
	// test closes it.
	cons := &openPullConsumer{msgs: make(chan jetstream.Msg, 1)}
	active := prometheus.NewGauge(prometheus.GaugeOpts{Name: "cancel_worker_active"})
	lease := leaseOf(30*time.Second, DefaultPinnedTTL)
	f := newFleet(fleetDeps{cons: cons, name: "cancels", now: time.Now, log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		active: active, release: func() {}}, true, lease, 1)
	f.confirm = newPin(true, "confirms", lease, time.Now)
	f.contact = time.Now() // the first flush, as Run makes before the first pull

	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	// The confirmer waits to be let pull (waitConfirm), as it does at a
	// start while the server pins another replica or already this one,
	// unknown to it yet: it looked, may not, and waits to be woken.
	f.mu.Lock()
	woken := f.followed
	f.mu.Unlock()
	require.False(t, f.mayConfirm())

	accepted := make(chan struct{})
	pulling := make(chan struct{})
	go func() {
		defer close(pulling)
		puller{cons: cons, held: newHeldSet(time.Now), max: 10, log: f.log, pin: f.cancel, now: time.Now,
			accept:  func(context.Context, jetstream.Msg, time.Time) { close(accepted) },
			pulled:  func(start time.Time, err error) { f.pulled(start, "", err) },
			standBy: func() {},
		}.run(ctx)
	}()
	cons.msgs <- pinnedMsg{pin: "pin-1"}
	<-accepted

	// The pull that brought the pin is still open.
	require.Equal(t, 1.0, gaugeValue(t, active), "cancel_worker_active reports the replica active once its first message came, not once that pull ended")
	select {
	case <-woken:
	default:
		require.Fail(t, "the confirmer waiting to pull was not woken while the cancel pull that made this replica active was still open")
	}
	require.NoError(t, f.waitConfirm(ctx), "the confirmer may pull")

	stop()
	close(cons.msgs) // the pull ends
	<-pulling
}

// openPullConsumer is a cancel consumer whose one pull delivers what the test
// sends on msgs and ends when msgs is closed.
type openPullConsumer struct {
	jetstream.Consumer
	msgs chan jetstream.Msg
}

func (c *openPullConsumer) Fetch(int, ...jetstream.FetchOpt) (jetstream.MessageBatch, error) {
	return openBatch{c.msgs}, nil
}

// Info: nothing on the consumer shows another replica at work.
func (c *openPullConsumer) Info(context.Context) (*jetstream.ConsumerInfo, error) {
	return &jetstream.ConsumerInfo{}, nil
}

type openBatch struct{ msgs <-chan jetstream.Msg }

func (b openBatch) Messages() <-chan jetstream.Msg { return b.msgs }
func (b openBatch) Error() error                   { return nil }

// pinnedMsg is a first delivery that carries the server's pin id.
type pinnedMsg struct {
	jetstream.Msg
	pin string
}

func (m pinnedMsg) Headers() nats.Header { return nats.Header{"Nats-Pin-Id": []string{m.pin}} }
func (m pinnedMsg) Metadata() (*jetstream.MsgMetadata, error) {
	return &jetstream.MsgMetadata{NumDelivered: 1}, nil
}

func gaugeValue(t *testing.T, g prometheus.Gauge) float64 {
	t.Helper()
	var m dto.Metric
	require.NoError(t, g.Write(&m))
	return m.GetGauge().GetValue()
}
