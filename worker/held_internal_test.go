package worker

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Every heartbeat round covers the held messages in one order, the stream's:
// the server then hears each message about an interval after its previous
// heartbeat however long it takes to work through a round (in a random
// order, a message heard first in one round and last in the next waits an
// interval plus a whole round, which on a loaded server passed AckWait).
func TestHeartbeatRoundsGoInStreamOrder(t *testing.T) {
	h := newHeldSet(time.Now)
	seqs := make([]uint64, 500)
	for i := range seqs {
		seqs[i] = uint64(i + 1)
	}
	rand.Shuffle(len(seqs), func(i, j int) { seqs[i], seqs[j] = seqs[j], seqs[i] })
	for _, s := range seqs {
		_, added := h.add(&heldMsg{seq: s})
		require.True(t, added)
	}
	for range 3 {
		round := h.snapshot()
		require.Len(t, round, len(seqs))
		require.True(t, slices.IsSortedFunc(round, func(a, b *heldMsg) int { return int(a.seq) - int(b.seq) }),
			"a round heartbeats in stream order")
	}
}
