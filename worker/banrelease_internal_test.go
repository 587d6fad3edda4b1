package worker

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// With BYBIT_BAN_RELEASE a lane never waits out a ban's pause at the gate:
// what reaches it is given back at once, also when the pause begins while
// it waits behind another lane's probe (banned again). Without it, the lane
// waits for the probe's outcome as before.
func TestALaneWithBanReleaseIsNotHeldAtTheGateDuringAPause(t *testing.T) {
	t.Parallel()
	var now atomic.Int64
	now.Store(time.Unix(1_700_000_000, 0).UnixNano())
	g := newBanGate(func() time.Time { return time.Unix(0, now.Load()) })
	g.ban(g.now().Add(time.Minute))
	_, err := g.wait(context.Background(), true)
	require.ErrorIs(t, err, errBanRelease, "during the pause")

	// The pause is over: one probe goes out; another lane waits behind it.
	now.Add(int64(2 * time.Minute))
	probe, err := g.wait(context.Background(), true)
	require.NoError(t, err)
	require.True(t, probe)
	released, held := make(chan error, 1), make(chan error, 1)
	go func() { _, err := g.wait(context.Background(), true); released <- err }()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _, err := g.wait(ctx, false); held <- err }()
	g.report(true, time.Minute) // the probe is banned again: a new pause
	select {
	case err := <-released:
		require.ErrorIs(t, err, errBanRelease)
	case <-time.After(time.Minute):
		t.Fatal("the lane with BanRelease waited out the new pause")
	}
	select {
	case err := <-held:
		t.Fatalf("without BanRelease the lane waits out the pause, got %v", err)
	default:
	}
	cancel()
	require.ErrorIs(t, <-held, context.Canceled)
}
