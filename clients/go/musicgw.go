// Package musicgw is the Go SDK of the musicgw music generation gateway: a context-first client
// with automatic request ids, a Watcher that resumes a dropped stream by itself, resumable and
// verified downloads, and typed errors carrying the gateway's rich details.
//
//	c, err := musicgw.Dial(ctx, "127.0.0.1:50051", apiKey)
//	op, err := c.Generate(ctx, &musicgwv1.SampleTask{Prompt: "drum loop", DurationSeconds: 8})
//	w := c.Watch(ctx, op.Name)
//	for w.Next() { fmt.Println(w.Event().Operation.State) }
//	done, err := w.Operation(), w.Err()
//	res, err := c.Download(ctx, done.Outputs[0].Name, "loop.flac", nil)
//
// It builds against the grpc-go 1.33 API that Debian 12 ships, and against newer releases.
package musicgw

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/golang/protobuf/ptypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	v1 "musicgw.dev/go/musicgwv1"
)

// Client is one connection to the gateway, authenticated with one tenant API key. It is safe
// for concurrent use.
type Client struct {
	conn *grpc.ClientConn
	// Stub is the generated client, for calls the SDK does not wrap.
	Stub v1.MusicGatewayClient
	// Timeout bounds each unary call (not Watch, Wait or Download); 30 s by default.
	Timeout time.Duration
}

type options struct {
	tls      *bool
	tlsConf  *tls.Config
	dialOpts []grpc.DialOption
}

// Option configures Dial.
type Option func(*options) error

// WithTLS forces TLS (with cfg, or the system roots when cfg is nil). By default a loopback
// target is plaintext and anything else is TLS.
func WithTLS(cfg *tls.Config) Option {
	return func(o *options) error { t := true; o.tls, o.tlsConf = &t, cfg; return nil }
}

// WithRootCAFile trusts the PEM certificates in path instead of the system roots (implies TLS).
func WithRootCAFile(path string) Option {
	return func(o *options) error {
		pem, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("musicgw: no certificates in %s", path)
		}
		t := true
		o.tls = &t
		if o.tlsConf == nil {
			o.tlsConf = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		o.tlsConf.RootCAs = pool
		return nil
	}
}

// WithPlaintext forces plaintext, e.g. inside a mesh that does TLS; the key is still sent.
func WithPlaintext() Option {
	return func(o *options) error { f := false; o.tls = &f; return nil }
}

// WithDialOptions adds grpc.DialOptions.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) error { o.dialOpts = append(o.dialOpts, opts...); return nil }
}

// apiKey adds `authorization: Bearer <key>` to every call.
type apiKey struct {
	key    string
	secure bool
}

func (a apiKey) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + a.key}, nil
}

// RequireTransportSecurity: the key goes in plaintext only when the caller chose plaintext.
func (a apiKey) RequireTransportSecurity() bool { return a.secure }

func isLoopback(target string) bool {
	host, _, err := net.SplitHostPort(target)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Dial connects to target ("host:port") with the tenant API key.
func Dial(ctx context.Context, target, key string, opts ...Option) (*Client, error) {
	if key == "" {
		return nil, errors.New("musicgw: an API key is required")
	}
	var o options
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	useTLS := !isLoopback(target)
	if o.tls != nil {
		useTLS = *o.tls
	}
	dial := []grpc.DialOption{
		grpc.WithPerRPCCredentials(apiKey{key: key, secure: useTLS}),
		// The server answers pings at most every 10 s (keepalive_min_ping_interval) and sends
		// GOAWAY "too_many_pings" after 2 strikes; pinging every 30 s keeps a long Watch alive
		// through NATs and load balancers, well inside that.
		grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time: 30 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: true,
		}),
	}
	if useTLS {
		cfg := o.tlsConf
		if cfg == nil {
			cfg = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		dial = append(dial, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	} else {
		dial = append(dial, grpc.WithInsecure())
	}
	conn, err := grpc.DialContext(ctx, target, append(dial, o.dialOpts...)...)
	if err != nil {
		return nil, err
	}
	return &Client{conn: conn, Stub: v1.NewMusicGatewayClient(conn), Timeout: 30 * time.Second}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// NewRequestID returns a random (version 4) UUID for GenerateRequest.request_id.
func NewRequestID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // the system's random source is broken
	}
	b[6] = (b[6] & 0x0f) | 0x40
	b[8] = (b[8] & 0x3f) | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

func retryable(err error) bool {
	return errors.Is(err, ErrUnavailable) || errors.Is(err, ErrResourceExhausted)
}

// backoff is RetryInfo's delay when the server gave one, else exponential from 200 ms.
func backoff(err error, attempt int) time.Duration {
	var e *Error
	if errors.As(err, &e) && e.RetryInfo != nil && e.RetryInfo.RetryDelay != nil {
		if d, convErr := ptypes.Duration(e.RetryInfo.RetryDelay); convErr == nil {
			return d
		}
	}
	d := 200 * time.Millisecond << uint(attempt)
	if d > 5*time.Second {
		d = 5 * time.Second
	}
	return d
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// unary runs one call with the client's timeout, repeating it on UNAVAILABLE or
// RESOURCE_EXHAUSTED up to attempts times.
func unary[T any](ctx context.Context, c *Client, attempts int, call func(context.Context) (T, error)) (T, error) {
	var zero T
	for attempt := 0; ; attempt++ {
		callCtx, cancel := context.WithTimeout(ctx, c.Timeout)
		out, err := call(callCtx)
		cancel()
		if err == nil {
			return out, nil
		}
		err = fromRPC(err)
		if !retryable(err) || attempt+1 >= attempts {
			return zero, err
		}
		if err := sleep(ctx, backoff(err, attempt)); err != nil {
			return zero, err
		}
	}
}

// GenerateOption adjusts a Generate call.
type GenerateOption func(*v1.GenerateRequest)

// WithProvider picks the provider (default: routed by the gateway).
func WithProvider(p v1.Provider) GenerateOption {
	return func(r *v1.GenerateRequest) { r.Provider = p }
}

// WithFallback lets the gateway try the other provider when the first refuses the submission.
func WithFallback() GenerateOption { return func(r *v1.GenerateRequest) { r.AllowFallback = true } }

// ValidateOnly checks the request without generating anything.
func ValidateOnly() GenerateOption { return func(r *v1.GenerateRequest) { r.ValidateOnly = true } }

// WithRequestID sets the idempotency key (default: a new UUID).
func WithRequestID(id string) GenerateOption {
	return func(r *v1.GenerateRequest) { r.RequestId = id }
}

// Generate starts a generation of task (any of the task messages: *v1.SampleTask,
// *v1.ParametricMusicTask, ...) and returns its Operation at once. A request id is made when
// none is given; it makes the automatic retries after a dropped connection safe.
func (c *Client) Generate(ctx context.Context, task proto.Message, opts ...GenerateOption) (*v1.Operation, error) {
	req := &v1.GenerateRequest{}
	switch t := task.(type) {
	case *v1.ParametricMusicTask:
		req.Task = &v1.GenerateRequest_ParametricMusic{ParametricMusic: t}
	case *v1.TextToMusicTask:
		req.Task = &v1.GenerateRequest_TextToMusic{TextToMusic: t}
	case *v1.SongTask:
		req.Task = &v1.GenerateRequest_Song{Song: t}
	case *v1.InstrumentalTask:
		req.Task = &v1.GenerateRequest_Instrumental{Instrumental: t}
	case *v1.SampleTask:
		req.Task = &v1.GenerateRequest_Sample{Sample: t}
	case *v1.SoundEffectTask:
		req.Task = &v1.GenerateRequest_SoundEffect{SoundEffect: t}
	case *v1.RemixSongTask:
		req.Task = &v1.GenerateRequest_RemixSong{RemixSong: t}
	case *v1.RemixInstrumentalTask:
		req.Task = &v1.GenerateRequest_RemixInstrumental{RemixInstrumental: t}
	case *v1.SeparateStemsTask:
		req.Task = &v1.GenerateRequest_SeparateStems{SeparateStems: t}
	case *v1.CutDownTask:
		req.Task = &v1.GenerateRequest_CutDown{CutDown: t}
	case *v1.GenerateRequest:
		req = proto.Clone(t).(*v1.GenerateRequest)
	default:
		return nil, fmt.Errorf("musicgw: %T is not a task message", task)
	}
	for _, opt := range opts {
		opt(req)
	}
	if req.RequestId == "" {
		req.RequestId = NewRequestID()
	}
	return unary(ctx, c, 3, func(ctx context.Context) (*v1.Operation, error) {
		return c.Stub.Generate(ctx, req)
	})
}

// EstimatedDoneTime is when the gateway estimates a live operation will be done, from recent
// successful runs of the same provider account and task: an estimate, not a promise. ok is
// false when the operation is done or the gateway has no history for it.
func EstimatedDoneTime(op *v1.Operation) (eta time.Time, ok bool) {
	if op.GetDone() || op.GetEstimatedDoneTime() == nil {
		return time.Time{}, false
	}
	return op.GetEstimatedDoneTime().AsTime(), true
}

// FormatETA renders the estimate for a status line ("eta ~42s"), or "" without one.
func FormatETA(op *v1.Operation, now time.Time) string {
	eta, ok := EstimatedDoneTime(op)
	if !ok {
		return ""
	}
	left := eta.Sub(now).Round(time.Second)
	if left < 0 {
		left = 0
	}
	return fmt.Sprintf("eta ~%s", left)
}

// Get returns an operation's latest snapshot.
func (c *Client) Get(ctx context.Context, name string) (*v1.Operation, error) {
	return unary(ctx, c, 3, func(ctx context.Context) (*v1.Operation, error) {
		return c.Stub.GetOperation(ctx, &v1.GetOperationRequest{Name: name})
	})
}

// List returns the caller's operations matching filter (nil: all), newest first, following
// pages until limit operations (0: no limit).
func (c *Client) List(ctx context.Context, filter *v1.ListOperationsRequest, limit int) ([]*v1.Operation, error) {
	req := &v1.ListOperationsRequest{}
	if filter != nil {
		req = proto.Clone(filter).(*v1.ListOperationsRequest)
	}
	var out []*v1.Operation
	for {
		page, err := unary(ctx, c, 3, func(ctx context.Context) (*v1.ListOperationsResponse, error) {
			return c.Stub.ListOperations(ctx, req)
		})
		if err != nil {
			return out, err
		}
		for _, op := range page.Operations {
			if limit > 0 && len(out) >= limit {
				return out, nil
			}
			out = append(out, op)
		}
		if page.NextPageToken == "" {
			return out, nil
		}
		req.PageToken = page.NextPageToken
	}
}

// Cancel cancels an operation (best effort); ErrFailedPrecondition when it is already done.
func (c *Client) Cancel(ctx context.Context, name, reason string) (*v1.Operation, error) {
	return unary(ctx, c, 3, func(ctx context.Context) (*v1.Operation, error) {
		return c.Stub.CancelOperation(ctx, &v1.CancelOperationRequest{Name: name, Reason: reason})
	})
}

// Wait blocks until the operation is done (or ctx ends) and returns it.
func (c *Client) Wait(ctx context.Context, name string) (*v1.Operation, error) {
	failures := 0
	for {
		req := &v1.WaitOperationRequest{Name: name, Timeout: durationpb.New(60 * time.Second)}
		if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) < 60*time.Second {
			req.Timeout = durationpb.New(time.Until(deadline))
		}
		op, err := c.Stub.WaitOperation(ctx, req)
		if err != nil {
			err = fromRPC(err)
			if failures++; !retryable(err) || failures > 8 {
				return nil, err
			}
			if err := sleep(ctx, backoff(err, failures-1)); err != nil {
				return nil, err
			}
			continue
		}
		failures = 0
		if op.Done {
			return op, nil
		}
		if ctx.Err() != nil {
			return op, ctx.Err()
		}
	}
}

// Quota reports provider quota (provider PROVIDER_UNSPECIFIED: all) and the caller's budgets.
func (c *Client) Quota(ctx context.Context, provider v1.Provider) (*v1.QuotaReport, error) {
	return unary(ctx, c, 3, func(ctx context.Context) (*v1.QuotaReport, error) {
		return c.Stub.GetQuota(ctx, &v1.GetQuotaRequest{Provider: provider})
	})
}

// Providers lists the configured providers with their tasks, parameters and health.
func (c *Client) Providers(ctx context.Context) (*v1.ListProvidersResponse, error) {
	return unary(ctx, c, 3, func(ctx context.Context) (*v1.ListProvidersResponse, error) {
		return c.Stub.ListProviders(ctx, &v1.ListProvidersRequest{})
	})
}
