package worker

import (
	"context"
	"log/slog"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// publisher stores messages in the worker's stream.
type publisher struct {
	js     jetstream.JetStream
	stream string
	log    *slog.Logger
}

// publish stores a message in the stream with its Nats-Msg-Id, waiting for
// the PubAck and retrying until ctx ends.
func (p publisher) publish(ctx context.Context, subject string, data []byte, msgID string) error {
	_, err := p.publishAck(ctx, subject, data, msgID)
	return err
}

// publishAck is publish returning the PubAck: Duplicate when a message with
// the same Nats-Msg-Id was stored before, whose sequence it then names.
func (p publisher) publishAck(ctx context.Context, subject string, data []byte, msgID string) (*jetstream.PubAck, error) {
	retry := newRetryBackoff()
	for {
		ack, err := p.js.PublishMsg(ctx, &nats.Msg{Subject: subject, Data: data},
			jetstream.WithMsgID(msgID), jetstream.WithExpectStream(p.stream))
		if err == nil || ctx.Err() != nil {
			return ack, err
		}
		p.log.Warn("publish failed; retrying", "subject", subject, "msgId", msgID, "error", err)
		_ = sleepCtx(ctx, retry.NextBackOff())
	}
}
