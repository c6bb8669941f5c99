// Command musicgw-go-demo is the Go demo and end-to-end check: a Soundpiece sample and a Loudly
// track, each watched (with a dropped and resumed stream) and downloaded (with an interrupted
// and resumed download), then a request the gateway rejects, with its BadRequest decoded.
//
//	MUSICGW_TARGET=127.0.0.1:50051 MUSICGW_API_KEY=... musicgw-go-demo -out-dir /tmp/musicgw-go
//
// Exits non-zero on any failure.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"musicgw/client"
	pb "musicgw/v1"
)

func printEvent(label string) func(*pb.OperationEvent) {
	return func(e *pb.OperationEvent) {
		if e.Kind == pb.OperationEvent_KIND_HEARTBEAT {
			fmt.Printf("  [%s] heartbeat seq=%d\n", label, e.Sequence)
			return
		}
		fmt.Printf("  [%s] %s seq=%d state=%s\n", label, e.Kind, e.Sequence, e.Operation.GetState())
	}
}

// firstEventThenDrop reads one event, then drops the stream as a broken connection would.
func firstEventThenDrop(ctx context.Context, c *client.Client, name string) (*pb.OperationEvent, error) {
	streamCtx, cancel := context.WithCancel(ctx)
	defer cancel() // cancelling the context is how a grpc-go client drops a stream
	stream, err := c.Stub.WatchOperation(streamCtx, &pb.WatchOperationRequest{Name: name})
	if err != nil {
		return nil, err
	}
	return stream.Recv()
}

// checkIdempotency: the same request_id and request give the same operation; a different
// request with that request_id is ALREADY_EXISTS with reason REQUEST_ID_REUSED.
func checkIdempotency(ctx context.Context, c *client.Client, req *pb.GenerateRequest, op *pb.Operation) error {
	again, err := c.Generate(ctx, req)
	if err != nil {
		return err
	}
	if again.Name != op.Name {
		return fmt.Errorf("retry with the same request_id gave %s, not %s", again.Name, op.Name)
	}
	changed := proto.Clone(req).(*pb.GenerateRequest)
	changed.GetSample().Prompt += " (changed)"
	_, err = c.Generate(ctx, changed)
	if err == nil {
		return errors.New("a reused request_id with a different request was accepted")
	}
	var reasons []string
	for _, d := range client.ErrorDetails(err) {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			reasons = append(reasons, info.Reason)
		}
	}
	if status.Code(err) != codes.AlreadyExists || len(reasons) != 1 || reasons[0] != "REQUEST_ID_REUSED" {
		return err
	}
	fmt.Printf("  retry -> same operation; same request_id, other request -> %s %s\n", status.Code(err), reasons[0])
	return nil
}

func runJob(ctx context.Context, c *client.Client, label string, req *pb.GenerateRequest, outDir string) error {
	op, err := c.Generate(ctx, req)
	if err != nil {
		return err
	}
	fmt.Printf("[%s] Generate request_id=%s -> %s %s\n", label, req.RequestId, op.Name, op.State)
	if req.GetSample() != nil {
		if err := checkIdempotency(ctx, c, req, op); err != nil {
			return err
		}
	}

	first, err := firstEventThenDrop(ctx, c, op.Name)
	if err != nil {
		return err
	}
	printEvent(label)(first)
	fmt.Printf("  [%s] watch dropped after seq=%d; resuming\n", label, first.Sequence)
	if first.Operation.GetDone() {
		op = first.Operation
	} else {
		watchCtx, cancel := context.WithTimeout(ctx, 120*time.Second)
		op, err = c.Watch(watchCtx, op.Name, first.Sequence, printEvent(label))
		cancel()
		if err != nil {
			return err
		}
	}
	if op.State != pb.OperationState_OPERATION_STATE_SUCCEEDED {
		return fmt.Errorf("[%s] ended %s: %s", label, op.State, op.GetError().GetMessage())
	}
	if len(op.Outputs) == 0 {
		return fmt.Errorf("[%s] succeeded without outputs", label)
	}

	asset := op.Outputs[0]
	path := filepath.Join(outDir, label+"-"+strings.ReplaceAll(asset.Name, "/", "_"))
	_ = os.Remove(path)
	if _, err := c.Download(ctx, asset.Name, path, 1); err != nil {
		return err
	}
	partial, err := os.Stat(path)
	if err != nil {
		return err
	}
	fmt.Printf("  [%s] download interrupted after the first chunk at %d bytes; resuming\n", label, partial.Size())
	info, err := c.Download(ctx, asset.Name, path, 0)
	if err != nil {
		return err
	}
	full, err := os.Stat(path)
	if err != nil {
		return err
	}
	sha256 := info.Sha256
	if sha256 == "" {
		// The gateway learns an asset's digest from a download that streams every byte in one
		// pass, which an interrupted one is not. Take one clean pass, then the digest is known.
		if sha256, err = digestFromCleanPass(ctx, c, op.Name, asset.Name, path+".full"); err != nil {
			return err
		}
		if err := client.Verify(path, &pb.AssetInfo{Sha256: sha256}); err != nil {
			return err
		}
	}
	fmt.Printf("  [%s] saved %s: %d bytes, %s, sha256 verified %s\n", label, path, full.Size(), info.ContentType, sha256)
	return nil
}

// digestFromCleanPass downloads the asset in one pass to path and returns its SHA-256 as the
// gateway then reports it (or, if the gateway has not recorded it yet, as computed locally).
func digestFromCleanPass(ctx context.Context, c *client.Client, name, asset, path string) (string, error) {
	_ = os.Remove(path)
	if _, err := c.Download(ctx, asset, path, 0); err != nil {
		return "", err
	}
	latest, err := c.GetOperation(ctx, name)
	if err != nil {
		return "", err
	}
	if sum := latest.Outputs[0].Sha256; sum != "" {
		return sum, nil
	}
	return client.FileSha256(path)
}

func checkInvalidArgument(ctx context.Context, c *client.Client) error {
	_, err := c.Generate(ctx, &pb.GenerateRequest{
		Provider: pb.Provider_PROVIDER_SOUNDPIECE,
		Task:     &pb.GenerateRequest_Sample{Sample: &pb.SampleTask{Prompt: "too long a sample", DurationSeconds: 999}},
	})
	if err == nil {
		return errors.New("sample.duration_seconds = 999 was accepted")
	}
	if status.Code(err) != codes.InvalidArgument {
		return err
	}
	fmt.Printf("[invalid] %s: %s\n", status.Code(err), status.Convert(err).Message())
	var fields []string
	for _, detail := range client.ErrorDetails(err) {
		switch d := detail.(type) {
		case *errdetails.BadRequest:
			for _, v := range d.FieldViolations {
				fmt.Printf("  BadRequest %s: %s\n", v.Field, v.Description)
				fields = append(fields, v.Field)
			}
		case *errdetails.ErrorInfo:
			fmt.Printf("  ErrorInfo reason=%s domain=%s\n", d.Reason, d.Domain)
		}
	}
	for _, f := range fields {
		if f == "sample.duration_seconds" {
			return nil
		}
	}
	return fmt.Errorf("expected a violation of sample.duration_seconds, got %v", fields)
}

// runThroughFlakyNetwork: Generate, Watch and Download through a path that drops connections
// mid-stream; the client retries Generate with the same request_id, reopens the Watch after the
// last sequence and resumes the Download from the file's size, on its own.
func runThroughFlakyNetwork(ctx context.Context, direct, flaky *client.Client, outDir string) error {
	retries := 0
	flaky.OnRetry = func(what string, err error, position int64) {
		retries++
		fmt.Printf("  [flaky] %s lost (%s); resuming after %d\n", what, status.Code(err), position)
	}
	duration := int32(30)
	op, err := flaky.Generate(ctx, &pb.GenerateRequest{
		Provider: pb.Provider_PROVIDER_LOUDLY,
		Task: &pb.GenerateRequest_ParametricMusic{ParametricMusic: &pb.ParametricMusicTask{
			Genre: "House", DurationSeconds: &duration}},
	})
	if err != nil {
		return err
	}
	fmt.Printf("[flaky] Generate -> %s\n", op.Name)
	var last int64
	var order error
	op, err = flaky.Watch(ctx, op.Name, 0, func(e *pb.OperationEvent) {
		if e.Kind != pb.OperationEvent_KIND_HEARTBEAT {
			if e.Sequence <= last && order == nil {
				order = fmt.Errorf("sequence went back from %d to %d", last, e.Sequence)
			}
			last = e.Sequence
		}
		printEvent("flaky")(e)
	})
	if err != nil {
		return err
	}
	if order != nil {
		return order
	}
	if op.State != pb.OperationState_OPERATION_STATE_SUCCEEDED {
		return fmt.Errorf("[flaky] ended %s", op.State)
	}
	path := filepath.Join(outDir, "flaky-download")
	reference := path + ".direct"
	_ = os.Remove(path)
	_ = os.Remove(reference)
	if _, err := flaky.Download(ctx, op.Outputs[0].Name, path, 0); err != nil {
		return err
	}
	if _, err := direct.Download(ctx, op.Outputs[0].Name, reference, 0); err != nil {
		return err
	}
	got, err := client.FileSha256(path)
	if err != nil {
		return err
	}
	want, err := client.FileSha256(reference)
	if err != nil {
		return err
	}
	if got != want {
		return errors.New("the download resumed through drops differs from a direct one")
	}
	if retries == 0 {
		return errors.New("no stream was cut: the resumption went untested")
	}
	stat, err := os.Stat(path)
	if err != nil {
		return err
	}
	fmt.Printf("  [flaky] downloaded %d bytes through %d drops; identical to a direct download\n", stat.Size(), retries)
	return nil
}

func run() int {
	target := flag.String("target", os.Getenv("MUSICGW_TARGET"), "musicgw address (default $MUSICGW_TARGET)")
	outDir := flag.String("out-dir", ".", "where to save the audio")
	useTLS := flag.Bool("tls", false, "use TLS (default: only off loopback)")
	flakyTarget := flag.String("flaky-target", "", "the gateway through a connection-dropping proxy")
	flag.Parse()
	key := os.Getenv("MUSICGW_API_KEY")
	if key == "" {
		fmt.Fprintln(os.Stderr, "set MUSICGW_API_KEY to your musicgw API key")
		return 2
	}
	if *target == "" {
		*target = "127.0.0.1:50051"
	}
	if err := os.MkdirAll(*outDir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c, err := client.Dial(ctx, *target, key, *useTLS || !client.IsLoopback(*target))
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAILED:", err)
		return 1
	}
	defer c.Close()

	sample := &pb.GenerateRequest{
		Provider: pb.Provider_PROVIDER_SOUNDPIECE,
		Task: &pb.GenerateRequest_Sample{Sample: &pb.SampleTask{
			Prompt: "dusty vinyl drum loop, 90 bpm", DurationSeconds: 8, Loopable: true}},
	}
	duration := int32(30)
	track := &pb.GenerateRequest{
		Provider: pb.Provider_PROVIDER_LOUDLY,
		Task: &pb.GenerateRequest_ParametricMusic{ParametricMusic: &pb.ParametricMusicTask{
			Genre: "House", DurationSeconds: &duration, Energy: pb.Energy_ENERGY_HIGH}},
	}
	steps := []func() error{
		func() error { return runJob(ctx, c, "soundpiece", sample, *outDir) },
		func() error { return runJob(ctx, c, "loudly", track, *outDir) },
		func() error { return checkInvalidArgument(ctx, c) },
	}
	if *flakyTarget != "" {
		steps = append(steps, func() error {
			flaky, err := client.Dial(ctx, *flakyTarget, key, false)
			if err != nil {
				return err
			}
			defer flaky.Close()
			return runThroughFlakyNetwork(ctx, c, flaky, *outDir)
		})
	}
	for _, step := range steps {
		if err := step(); err != nil {
			fmt.Fprintln(os.Stderr, "FAILED:", err)
			for _, d := range client.ErrorDetails(err) {
				fmt.Fprintf(os.Stderr, "  %T: %v\n", d, d)
			}
			return 1
		}
	}
	fmt.Println("go client: all checks passed")
	return 0
}

func main() { os.Exit(run()) }
