package messages

import (
	"embed"
	"io/fs"
)

// schemaFiles are the JSON Schemas (draft 2020-12) of the messages, one per
// subject, named after the default subject: orders.cancel.schema.json,
// orders.cancel-all.schema.json, orders.cancel.ack.schema.json,
// orders.cancel.rejected.schema.json, orders.cancel.confirmed.schema.json.
// A test holds them to the decoders with the examples in testdata/examples.
//
//go:embed schema/*.schema.json
var schemaFiles embed.FS

// SchemaSubjects are the default subjects that have a schema, inputs first.
var SchemaSubjects = []string{"orders.cancel", "orders.cancel-all", "orders.cancel.ack", "orders.cancel.rejected", "orders.cancel.confirmed"}

// Schema returns the JSON Schema of the messages on a default subject.
func Schema(subject string) ([]byte, error) {
	return fs.ReadFile(schemaFiles, "schema/"+subject+".schema.json")
}
