package worker

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// Bybit's inverse symbols: perpetuals BTCUSD, futures BTCUSDH26 (month
// code and year); the base coin is what comes before USD.
func TestInverseBaseCoin(t *testing.T) {
	t.Parallel()
	for symbol, coin := range map[string]string{"BTCUSD": "BTC", "ETHUSD": "ETH", "BTCUSDH26": "BTC", "XRPUSDZ25": "XRP", "MANAUSD": "MANA", "ODD": "ODD"} {
		require.Equal(t, coin, inverseBaseCoin(symbol), symbol)
	}
}
