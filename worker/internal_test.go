package worker

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit"
)

// Watchers of one order share its channel; each release is counted, so the
// last one to stop frees it, whether or not the order changed.
func TestOrderBookWatchersAreReleased(t *testing.T) {
	b := newOrderBook(4)
	_, seen, ch1, release1 := b.watch("a", "linear", "o-1", "")
	require.False(t, seen)
	_, _, ch2, release2 := b.watch("a", "linear", "o-1", "")
	require.Equal(t, ch1, ch2)
	release1()
	require.Equal(t, 1, b.watching(), "the other watcher still waits")
	b.put("a", bybit.Order{Category: "linear", OrderID: "o-1", OrderLinkID: "l-1", OrderStatus: "Cancelled", UpdatedTime: 2})
	select {
	case <-ch2:
	default:
		t.Fatal("the update wakes the remaining watcher")
	}
	release2()
	require.Zero(t, b.watching())

	// Found by orderLinkId when the result has only that; an older update
	// arriving late does not replace a newer one.
	b.put("a", bybit.Order{Category: "linear", OrderID: "o-1", OrderLinkID: "l-1", OrderStatus: "New", UpdatedTime: 1})
	o, seen, _, release := b.watch("a", "linear", "", "l-1")
	release()
	require.True(t, seen)
	require.Equal(t, "Cancelled", o.OrderStatus)
	require.Zero(t, b.watching(), "a watcher that saw what it needed leaves nothing behind")

	// Bounded: the oldest entries go first (o-1 and l-1 take two of four).
	for _, id := range []string{"o-2", "o-3", "o-4"} {
		b.put("a", bybit.Order{Category: "linear", OrderID: id, OrderStatus: "Cancelled"})
	}
	_, seen, _, release = b.watch("a", "linear", "o-1", "")
	release()
	require.False(t, seen)
	_, seen, _, release = b.watch("a", "linear", "o-4", "")
	release()
	require.True(t, seen)
}

// watching counts the orders watched.
func (b *orderBook) watching() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.waiters)
}

// A budget that frees up between the dispatcher finding it full and asking
// how long to wait has already signalled its change: waitBudget must return
// at once instead of waiting for a change that will not come (a lane stalled
// this way under load, with requests queued and budget free).
func TestWaitBudgetReturnsWhenRoomFreedInBetween(t *testing.T) {
	single := newPacer(Rate{N: 1, Per: time.Hour}, time.Now)
	got := single.reserve(1)
	require.Len(t, got, 1)
	require.Nil(t, single.reserve(1), "full")
	single.unreserve(got) // the change happens here, before anyone waits
	l := &lane{single: single}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, (&Worker{}).waitBudget(ctx, l), "waited for a change that had already happened")
}
