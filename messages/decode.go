// Package messages is the JSON contract of every subject the worker reads or
// writes: the cancel request, its results, strict decoding, validation and the
// requestId rule. It does no I/O and imports nothing of this module.
package messages

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"
)

// ErrInvalid is wrapped by every decoding and validation error: a message that
// fails with it must never be sent to the exchange and is answered "invalid".
var ErrInvalid = errors.New("invalid message")

func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// decodeObject decodes a flat JSON object into the destinations named in
// fields. It is stricter than encoding/json: the body must be valid UTF-8 (the
// standard decoder would silently replace bad bytes), keys must be known and
// appear once (the standard decoder keeps the last of a duplicate), and nothing
// but white space may follow the object. A JSON null leaves the destination at
// its zero value, which every caller treats as absent.
func decodeObject(data []byte, fields map[string]any) error {
	if len(bytes.TrimSpace(data)) == 0 {
		return invalidf("empty body")
	}
	if !utf8.Valid(data) {
		return invalidf("body is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return invalidf("not JSON: %v", err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return invalidf("body must be a JSON object")
	}
	seen := make(map[string]bool, len(fields))
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return invalidf("not JSON: %v", err)
		}
		key, _ := tok.(string)
		dst, known := fields[key]
		if !known {
			return invalidf("unknown field %q", truncate(key, 64))
		}
		if seen[key] {
			return invalidf("duplicate field %q", key)
		}
		seen[key] = true
		if err := dec.Decode(dst); err != nil {
			var typeErr *json.UnmarshalTypeError
			if errors.As(err, &typeErr) {
				return invalidf("field %q: want %s, got JSON %s", key, typeErr.Type, typeErr.Value)
			}
			return invalidf("field %q: %v", key, err)
		}
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return invalidf("not JSON: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return invalidf("trailing data after the JSON object")
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
