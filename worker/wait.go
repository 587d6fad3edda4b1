package worker

import (
	"context"
	"time"

	"github.com/cenkalti/backoff/v4"
)

// sleepCtx waits for d, or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	return sleepOrChange(ctx, d, nil, nil)
}

// sleepOrChange waits for d (forever if d is 0), for either channel to close
// (a nil channel never does), or for ctx to end.
func sleepOrChange(ctx context.Context, d time.Duration, changed, alsoChanged <-chan struct{}) error {
	var timer <-chan time.Time
	if d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		timer = t.C
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-timer:
	case <-changed:
	case <-alsoChanged:
	}
	return nil
}

// newRetryBackoff paces the retries of one thing that keeps failing (a
// pull, a publish, a transient exchange error).
func newRetryBackoff() *backoff.ExponentialBackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = 100 * time.Millisecond
	b.MaxInterval = 5 * time.Second
	b.MaxElapsedTime = 0
	return b
}
