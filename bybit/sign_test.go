package bybit

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// The known-answer vector of bybit-v5-notes.md (computed with Python's hmac).
func TestSignKnownAnswer(t *testing.T) {
	t.Parallel()
	got := Sign("YYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYY", 1672217376681, "XXXXXXXXXXXXXXXXXX", 5000,
		[]byte(`{"category":"linear","symbol":"BTCPERP","orderId":"c6f055d9-7f21-4079-913d-e6523a9cfffa"}`))
	require.Equal(t, "2af240308df6de45e931c7c13a3bc6aeee59c7ece8fc33e473d2c364a9037c56", got)
}

func TestSecretNeverFormats(t *testing.T) {
	t.Parallel()
	const value = "s3cr3t-value"
	s := Secret(value)
	holder := struct {
		Key    string
		Secret Secret
	}{"k", s}
	var logs strings.Builder
	slog.New(slog.NewTextHandler(&logs, nil)).Info("x", "secret", s, "holder", holder)
	slog.New(slog.NewJSONHandler(&logs, nil)).Info("x", "secret", s, "holder", holder)
	b, err := json.Marshal(holder)
	require.NoError(t, err)
	for _, out := range []string{
		fmt.Sprint(s), fmt.Sprintf("%v %+v %#v %s %q %x", s, holder, holder, s, s, s), string(b), logs.String(),
	} {
		require.NotContains(t, out, value)
	}
	require.Equal(t, value, s.Reveal())
}
