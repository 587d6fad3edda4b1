package worker_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// The worker reads one clock, Config.now: no code of the package reads the
// time beside it (time.Now, time.Since or time.Until called), so that a
// clock set there governs ages, windows, heartbeats and the
// durations the worker reports alike. time.Now as a value (the default
// clock) is not a reading.
func TestWorkerReadsOnlyItsClock(t *testing.T) {
	files, err := filepath.Glob("*.go")
	require.NoError(t, err)
	fset := token.NewFileSet()
	var readings []string
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		require.NoError(t, err)
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			if pkg, ok := sel.X.(*ast.Ident); ok && pkg.Name == "time" && (sel.Sel.Name == "Now" || sel.Sel.Name == "Since" || sel.Sel.Name == "Until") {
				readings = append(readings, fset.Position(call.Pos()).String()+": time."+sel.Sel.Name)
			}
			return true
		})
	}
	require.Empty(t, readings, "read the worker's clock (Config.now) instead")
}
