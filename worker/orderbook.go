package worker

import (
	"sync"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit"
)

// orderBook keeps the latest update of recent orders per account, by
// orderId and by orderLinkId, bounded (oldest forgotten first), and wakes
// whoever watches an order.
type orderBook struct {
	mu      sync.Mutex
	orders  map[string]bybit.Order
	ring    []string
	next    int
	waiters map[string]*waiter
}

// waiter is a channel closed at an order's next update, and how many watch it.
type waiter struct {
	ch chan struct{}
	n  int
}

func newOrderBook(n int) *orderBook {
	return &orderBook{orders: make(map[string]bybit.Order, n), ring: make([]string, n), waiters: map[string]*waiter{}}
}

func bookKeys(account, category, orderID, orderLinkID string) []string {
	var keys []string
	if orderID != "" {
		keys = append(keys, account+"\x00"+category+"\x00id\x00"+orderID)
	}
	if orderLinkID != "" {
		keys = append(keys, account+"\x00"+category+"\x00link\x00"+orderLinkID)
	}
	return keys
}

func (b *orderBook) put(account string, o bybit.Order) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, k := range bookKeys(account, o.Category, o.OrderID, o.OrderLinkID) {
		if prev, ok := b.orders[k]; ok && prev.UpdatedTime > o.UpdatedTime {
			continue // an older update arriving late
		} else if !ok {
			if old := b.ring[b.next]; old != "" {
				delete(b.orders, old)
			}
			b.ring[b.next] = k
			b.next = (b.next + 1) % len(b.ring)
		}
		b.orders[k] = o
		if wt, ok := b.waiters[k]; ok {
			close(wt.ch)
			delete(b.waiters, k)
		}
	}
}

// watch returns the latest update of an order (by orderId when known, else
// by orderLinkId), a channel closed at its next update, and the release the
// watcher calls when it stops watching.
func (b *orderBook) watch(account, category, orderID, orderLinkID string) (bybit.Order, bool, <-chan struct{}, func()) {
	b.mu.Lock()
	defer b.mu.Unlock()
	keys := bookKeys(account, category, orderID, orderLinkID)
	k := keys[0]
	o, seen := b.orders[k]
	for _, alt := range keys[1:] {
		if !seen {
			k = alt
			o, seen = b.orders[alt]
		}
	}
	wt, ok := b.waiters[k]
	if !ok {
		wt = &waiter{ch: make(chan struct{})}
		b.waiters[k] = wt
	}
	wt.n++
	return o, seen, wt.ch, func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		if wt.n--; wt.n == 0 && b.waiters[k] == wt {
			delete(b.waiters, k)
		}
	}
}
