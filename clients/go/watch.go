package musicgw

import (
	"context"
	"errors"
	"fmt"
	"io"

	v1 "musicgw.dev/go/musicgwv1"
)

// Watcher follows an operation's events until it is done; see Client.Watch.
type Watcher struct {
	c    *Client
	ctx  context.Context
	name string
	// OnReconnect, when set, is called before each automatic reconnection with the error and
	// the last sequence seen.
	OnReconnect func(err error, lastSequence int64)
	// Heartbeats makes Next return heartbeat events too.
	Heartbeats bool

	last     int64
	failures int
	stream   v1.MusicGateway_WatchOperationClient
	cancel   context.CancelFunc
	event    *v1.OperationEvent
	op       *v1.Operation
	err      error
	finished bool
}

// Watch follows an operation: first a snapshot, then each change, until it is done. A dropped
// stream is reopened with after_sequence = the last sequence seen, so nothing is missed or
// repeated. Iterate with Next; ctx bounds the whole watch.
//
//	w := c.Watch(ctx, op.Name)
//	defer w.Close()
//	for w.Next() { ... w.Event() ... }
//	if err := w.Err(); err != nil { ... }
func (c *Client) Watch(ctx context.Context, name string) *Watcher {
	return &Watcher{c: c, ctx: ctx, name: name}
}

// WatchFrom is Watch resuming after a sequence the caller already saw.
func (c *Client) WatchFrom(ctx context.Context, name string, afterSequence int64) *Watcher {
	return &Watcher{c: c, ctx: ctx, name: name, last: afterSequence}
}

// Next advances to the next event; false at the end (done, or an error: see Err).
func (w *Watcher) Next() bool {
	for !w.finished {
		if w.stream == nil {
			streamCtx, cancel := context.WithCancel(w.ctx)
			stream, err := w.c.Stub.WatchOperation(streamCtx,
				&v1.WatchOperationRequest{Name: w.name, AfterSequence: w.last})
			if err != nil {
				cancel()
				if !w.retry(fromRPC(err)) {
					return false
				}
				continue
			}
			w.stream, w.cancel = stream, cancel
		}
		event, err := w.stream.Recv()
		if err != nil {
			w.closeStream()
			if errors.Is(err, io.EOF) {
				// The stream ends OK only after the done event; earlier means a proxy or a
				// draining server closed it.
				err = &Error{Code: ErrUnavailable.Code, Message: "the watch stream ended early"}
			}
			if !w.retry(fromRPC(err)) {
				return false
			}
			continue
		}
		w.failures = 0
		if event.Kind == v1.OperationEvent_KIND_HEARTBEAT {
			if w.Heartbeats {
				w.event = event
				return true
			}
			continue
		}
		w.last, w.event, w.op = event.Sequence, event, event.Operation
		if event.Operation.GetDone() {
			w.finished = true
			w.closeStream()
		}
		return true
	}
	return false
}

func (w *Watcher) retry(err error) bool {
	w.failures++
	if !retryable(err) || w.failures > 8 {
		if w.failures > 8 {
			err = fmt.Errorf("musicgw: watch of %s: %w", w.name, err)
		}
		w.err, w.finished = err, true
		return false
	}
	if w.OnReconnect != nil {
		w.OnReconnect(err, w.last)
	}
	if err := sleep(w.ctx, backoff(err, w.failures-1)); err != nil {
		w.err, w.finished = err, true
		return false
	}
	return true
}

func (w *Watcher) closeStream() {
	if w.cancel != nil {
		w.cancel()
	}
	w.stream, w.cancel = nil, nil
}

// Event is the current event.
func (w *Watcher) Event() *v1.OperationEvent { return w.event }

// Operation is the latest snapshot seen (done once Next returned false without an error).
func (w *Watcher) Operation() *v1.Operation { return w.op }

// Err is the error that ended the watch, nil when the operation is done.
func (w *Watcher) Err() error { return w.err }

// Close stops the watch early.
func (w *Watcher) Close() {
	w.finished = true
	w.closeStream()
}
