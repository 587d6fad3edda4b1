package messages_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
)

func TestLenientEchoReadsWhatItCanOfAnyBody(t *testing.T) {
	require.Equal(t, messages.Echo{RequestID: "r", Category: "linear", OrderLinkID: "l"},
		messages.LenientEcho([]byte(`{"requestId":"r","category":"linear","symbol":7,"orderLinkId":"l","extra":true}`)))
	require.Equal(t, messages.Echo{}, messages.LenientEcho([]byte(`not json`)))
	require.Equal(t, messages.Echo{}, messages.LenientEcho([]byte(`["requestId"]`)))
	require.Equal(t, messages.Echo{Symbol: "BTCUSDT"}, messages.LenientEcho([]byte(`{"requestId":"`+strings.Repeat("x", messages.MaxIDLen+1)+`","symbol":"BTCUSDT"}`)))
}
