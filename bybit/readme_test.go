package bybit

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

var updateREADME = flag.Bool("update-readme", false, "rewrite the README's retCode table from RetCodes")

const (
	readmeTableBegin = "<!-- retcodes: generated from bybit.RetCodes (bybit/errors.go); `go test ./bybit -run TestREADMERetCodeTable -update-readme` rewrites it -->"
	readmeTableEnd   = "<!-- /retcodes -->"
)

// what the worker does with an answer of each class.
var classAction = map[Class]string{
	ClassNotOpen:       "`not_open`",
	ClassPermanent:     "`rejected`",
	ClassTransient:     "back off, retry",
	ClassRateLimited:   "wait for the budget's reset (or back off), retry",
	ClassIPRateLimited: "every request of the process waits (the `BYBIT_IP_LIMIT` pacer is blocked; with it `off`, this request), retry",
	ClassClockSkew:     "resync the clock offset, retry at once",
}

func renderRetCodeTable() string {
	var b strings.Builder
	b.WriteString(readmeTableBegin + "\n")
	b.WriteString("| retCode | Bybit's message | class | what the worker does |\n|---|---|---|---|\n")
	for _, rc := range RetCodes {
		act := classAction[rc.Class]
		if rc.MayApply {
			act += "; `ambiguous`: the cancel may have applied"
		}
		if rc.Unavailable {
			act += " for a single cancel; a `cancel-batch` refused with it as a whole: its orders are sent as single cancels, and that lane sends no more batches; at start-up, the key check: a warning"
		}
		fmt.Fprintf(&b, "| %d | %s | `%s` | %s |\n", rc.Code, strings.ReplaceAll(rc.Msg, "|", `\|`), rc.Class, act)
	}
	b.WriteString("| any other | | `permanent` | `rejected` |\n")
	b.WriteString(readmeTableEnd)
	return b.String()
}

// The README's retCode table is the client's: generated from RetCodes and
// checked here, so the two cannot drift apart.
func TestREADMERetCodeTable(t *testing.T) {
	for _, rc := range RetCodes {
		require.NotEmpty(t, rc.Msg, "retCode %d needs Bybit's message", rc.Code)
		require.Contains(t, classAction, rc.Class, "retCode %d", rc.Code)
	}
	const path = "../README.md"
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	readme := string(raw)
	i, j := strings.Index(readme, readmeTableBegin), strings.Index(readme, readmeTableEnd)
	require.True(t, i >= 0 && j > i, "the README has no generated retCode table (%q … %q)", readmeTableBegin, readmeTableEnd)
	want := renderRetCodeTable()
	got := readme[i : j+len(readmeTableEnd)]
	if *updateREADME && got != want {
		require.NoError(t, os.WriteFile(path, []byte(readme[:i]+want+readme[j+len(readmeTableEnd):]), 0o644))
		return
	}
	require.Equal(t, want, got, "the README's retCode table differs from RetCodes: run go test ./bybit -run TestREADMERetCodeTable -update-readme")
}
