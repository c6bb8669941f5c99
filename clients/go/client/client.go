// Package client is a small musicgw client: API key auth, idempotent Generate, resumable Watch
// and Download, and the rich error details the gateway attaches to failures.
//
// It is written against the grpc-go 1.33 API that Debian 12 ships (grpc.WithInsecure,
// status.Details).
package client

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/golang/protobuf/ptypes"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	pb "musicgw/v1"
)

// Client is one connection to the gateway, authenticated with one tenant API key.
type Client struct {
	conn *grpc.ClientConn
	Stub pb.MusicGatewayClient
	// OnRetry, when set, is told before each automatic retry: what ("generate", "watch",
	// "download"), the error, and where it resumes (last sequence, or bytes on disk).
	OnRetry func(what string, err error, position int64)
}

func (c *Client) noteRetry(what string, err error, position int64) {
	if c.OnRetry != nil {
		c.OnRetry(what, err, position)
	}
}

// apiKey adds `authorization: Bearer <key>` to every call.
type apiKey struct {
	key    string
	secure bool
}

func (a apiKey) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + a.key}, nil
}

// RequireTransportSecurity: the key is only sent in plaintext when the caller chose plaintext
// (the loopback sandbox, or a mesh that does TLS for us).
func (a apiKey) RequireTransportSecurity() bool { return a.secure }

// IsLoopback reports whether target ("host:port") is on this machine.
func IsLoopback(target string) bool {
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

// Dial connects to target. With useTLS false the connection is plaintext.
func Dial(ctx context.Context, target, key string, useTLS bool) (*Client, error) {
	opts := []grpc.DialOption{
		grpc.WithPerRPCCredentials(apiKey{key: key, secure: useTLS}),
		// The server answers pings at most every 10 s (keepalive_min_ping_interval) and sends
		// GOAWAY "too_many_pings" after 2 strikes; pinging every 30 s keeps a long Watch alive
		// through NATs and load balancers, well inside that.
		grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time: 30 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: true,
		}),
	}
	if useTLS {
		opts = append(opts, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{})))
	} else {
		opts = append(opts, grpc.WithInsecure())
	}
	conn, err := grpc.DialContext(ctx, target, opts...)
	if err != nil {
		return nil, err
	}
	return &Client{conn: conn, Stub: pb.NewMusicGatewayClient(conn)}, nil
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
	code := status.Code(err)
	return code == codes.Unavailable || code == codes.ResourceExhausted
}

// RetryDelay is RetryInfo's delay when the server gave one, else exponential backoff.
func RetryDelay(err error, attempt int) time.Duration {
	for _, d := range ErrorDetails(err) {
		if info, ok := d.(*errdetails.RetryInfo); ok && info.RetryDelay != nil {
			// Debian's genproto still uses the APIv1 Duration type, hence ptypes.
			if delay, err := ptypes.Duration(info.RetryDelay); err == nil {
				return delay
			}
		}
	}
	delay := 200 * time.Millisecond << uint(attempt)
	if delay > 5*time.Second {
		delay = 5 * time.Second
	}
	return delay
}

// ErrorDetails decodes the google.rpc.Status in the grpc-status-details-bin trailer: a list of
// *errdetails.ErrorInfo, *errdetails.RetryInfo, *errdetails.QuotaFailure, *errdetails.BadRequest.
func ErrorDetails(err error) []interface{} {
	s, ok := status.FromError(err)
	if !ok {
		return nil
	}
	return s.Details()
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

// GetOperation returns an operation's latest snapshot.
func (c *Client) GetOperation(ctx context.Context, name string) (*pb.Operation, error) {
	callCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return c.Stub.GetOperation(callCtx, &pb.GetOperationRequest{Name: name})
}

// Generate starts a generation. The request_id makes retries safe: the gateway returns the same
// operation and never charges twice.
func (c *Client) Generate(ctx context.Context, req *pb.GenerateRequest) (*pb.Operation, error) {
	if req.RequestId == "" {
		req.RequestId = NewRequestID()
	}
	for attempt := 0; ; attempt++ {
		callCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
		op, err := c.Stub.Generate(callCtx, req)
		cancel()
		if err == nil || !retryable(err) || attempt == 2 {
			return op, err
		}
		c.noteRetry("generate", err, 0)
		if err := sleep(ctx, RetryDelay(err, attempt)); err != nil {
			return nil, err
		}
	}
}

// Watch follows an operation until it is done and returns its last snapshot. A dropped stream is
// reopened with after_sequence = the last sequence seen, so no change is missed or repeated.
// ctx bounds the whole watch.
func (c *Client) Watch(ctx context.Context, name string, afterSequence int64,
	onEvent func(*pb.OperationEvent)) (*pb.Operation, error) {
	last := afterSequence
	failures := 0
	for {
		op, err := c.watchOnce(ctx, name, &last, &failures, onEvent)
		if op != nil {
			return op, nil
		}
		if err != nil && !retryable(err) {
			return nil, err
		}
		if failures > 5 {
			if err == nil {
				err = fmt.Errorf("watch of %s keeps ending before the operation is done", name)
			}
			return nil, err
		}
		// Ended early (a proxy, or a draining server) or dropped: resume after `last`.
		c.noteRetry("watch", err, last)
		if err := sleep(ctx, RetryDelay(err, failures)); err != nil {
			return nil, err
		}
	}
}

func (c *Client) watchOnce(ctx context.Context, name string, last *int64, failures *int,
	onEvent func(*pb.OperationEvent)) (*pb.Operation, error) {
	streamCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.Stub.WatchOperation(streamCtx,
		&pb.WatchOperationRequest{Name: name, AfterSequence: *last})
	if err != nil {
		*failures++
		return nil, err
	}
	for {
		event, err := stream.Recv()
		if err == io.EOF {
			*failures++
			return nil, nil
		}
		if err != nil {
			*failures++
			return nil, err
		}
		*failures = 0
		if onEvent != nil {
			onEvent(event)
		}
		if event.Kind == pb.OperationEvent_KIND_HEARTBEAT {
			continue
		}
		*last = event.Sequence
		if event.Operation.GetDone() {
			return event.Operation, nil
		}
	}
}

// Download writes an asset to path, resuming from the bytes already there, and returns the last
// AssetInfo. With stopAfterChunks > 0 it cancels the stream after that many data chunks (to show
// an interruption) and returns nil, nil.
func (c *Client) Download(ctx context.Context, asset, path string, stopAfterChunks int) (*pb.AssetInfo, error) {
	var info *pb.AssetInfo
	for attempt := 0; ; attempt++ {
		done, err := c.downloadOnce(ctx, asset, path, stopAfterChunks, &info)
		if done || err == nil {
			if stopAfterChunks > 0 {
				return nil, err
			}
			break
		}
		if !retryable(err) || attempt == 4 {
			return nil, err
		}
		if stat, statErr := os.Stat(path); statErr == nil {
			c.noteRetry("download", err, stat.Size())
		}
		if err := sleep(ctx, RetryDelay(err, attempt)); err != nil {
			return nil, err
		}
	}
	return info, Verify(path, info)
}

// downloadOnce reports done when it stopped on purpose.
func (c *Client) downloadOnce(ctx context.Context, asset, path string, stopAfterChunks int,
	info **pb.AssetInfo) (bool, error) {
	file, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return false, err
	}
	defer file.Close()
	stat, err := file.Stat()
	if err != nil {
		return false, err
	}
	offset := stat.Size()
	if *info != nil && (*info).SizeBytes > 0 && (*info).SizeBytes == offset {
		return false, nil // complete
	}
	streamCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.Stub.Download(streamCtx, &pb.DownloadRequest{Asset: asset, Offset: offset})
	if err != nil {
		return false, err
	}
	position, chunks := offset, 0
	for {
		chunk, err := stream.Recv()
		if err == io.EOF {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		if i := chunk.GetInfo(); i != nil {
			if i.Offset != offset {
				return false, fmt.Errorf("asked for offset %d, got %d", offset, i.Offset)
			}
			*info = i
			continue
		}
		if chunk.Offset != position {
			return false, fmt.Errorf("chunk at %d, file at %d", chunk.Offset, position)
		}
		if _, err := file.Write(chunk.GetData()); err != nil {
			return false, err
		}
		position += int64(len(chunk.GetData()))
		if chunks++; stopAfterChunks > 0 && chunks >= stopAfterChunks {
			return true, nil // the deferred cancel drops the stream
		}
	}
}

// Verify checks a finished download against its AssetInfo: size when known, SHA-256 when known.
func Verify(path string, info *pb.AssetInfo) error {
	stat, err := os.Stat(path)
	if err != nil {
		return err
	}
	if stat.Size() == 0 {
		return fmt.Errorf("%s is empty", path)
	}
	if info == nil {
		return nil
	}
	if info.SizeBytes > 0 && stat.Size() != info.SizeBytes {
		return fmt.Errorf("%s: %d bytes, expected %d", path, stat.Size(), info.SizeBytes)
	}
	if info.Sha256 != "" {
		got, err := FileSha256(path)
		if err != nil {
			return err
		}
		if got != info.Sha256 {
			return fmt.Errorf("%s: sha256 %s, expected %s", path, got, info.Sha256)
		}
	}
	return nil
}

// FileSha256 is the lower-case hex SHA-256 of a file.
func FileSha256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
