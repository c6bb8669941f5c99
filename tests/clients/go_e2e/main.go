// End-to-end test of the musicgw Go module against the sandbox: Generate with an automatic
// request id and an idempotent retry, typed errors with their details, Wait, a download
// interrupted on purpose and resumed, then Watch and Download through a proxy that cuts
// connections (both resume by themselves), verified by SHA-256. Exits 1 on the first failure.
//
//	MUSICGW_TARGET=... MUSICGW_API_KEY=... musicgw-go-e2e -flaky-target HOST:PORT -out-dir DIR
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"musicgw.dev/go"
	v1 "musicgw.dev/go/musicgwv1"
)

func check(ok bool, format string, args ...interface{}) {
	if !ok {
		fmt.Fprintf(os.Stderr, "FAILED: "+format+"\n", args...)
		os.Exit(1)
	}
	fmt.Printf("ok: "+format+"\n", args...)
}

func must(err error, what string) {
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAILED: %s: %v\n", what, err)
		os.Exit(1)
	}
}

func main() {
	flaky := flag.String("flaky-target", "", "the gateway through a connection-cutting proxy")
	outDir := flag.String("out-dir", ".", "where downloads go")
	tlsTarget := flag.String("tls-target", "", "the gateway behind TLS")
	caCert := flag.String("ca-cert", "", "the certificate the TLS endpoint uses")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Second)
	defer cancel()
	must(os.MkdirAll(*outDir, 0o755), "out dir")
	key := os.Getenv("MUSICGW_API_KEY")

	c, err := musicgw.Dial(ctx, os.Getenv("MUSICGW_TARGET"), key)
	must(err, "dial")
	defer c.Close()

	sample := &v1.SampleTask{Prompt: "dusty vinyl drum loop", DurationSeconds: 6, Loopable: true}
	op, err := c.Generate(ctx, sample, musicgw.WithProvider(v1.Provider_PROVIDER_SOUNDPIECE))
	must(err, "generate")
	check(op.Request.GetRequestId() != "", "generate -> %s with request_id %s", op.Name, op.Request.GetRequestId())
	again, err := c.Generate(ctx, sample, musicgw.WithProvider(v1.Provider_PROVIDER_SOUNDPIECE),
		musicgw.WithRequestID(op.Request.RequestId))
	must(err, "generate again")
	check(again.Name == op.Name, "the same request_id gives the same operation")

	_, err = c.Generate(ctx, &v1.SampleTask{Prompt: "x", DurationSeconds: 6},
		musicgw.WithProvider(v1.Provider_PROVIDER_SOUNDPIECE), musicgw.WithRequestID(op.Request.RequestId))
	var e *musicgw.Error
	check(errors.Is(err, musicgw.ErrAlreadyExists) && errors.As(err, &e) && e.Reason() == "REQUEST_ID_REUSED",
		"ErrAlreadyExists with ErrorInfo reason %q", e.Reason())
	_, err = c.Generate(ctx, &v1.SampleTask{Prompt: "too long", DurationSeconds: 999})
	check(errors.Is(err, musicgw.ErrInvalidArgument) && errors.As(err, &e) &&
		e.FieldViolations()["sample.duration_seconds"] != "" && e.ErrorInfo != nil,
		"ErrInvalidArgument with BadRequest %v", e.FieldViolations())
	_, err = c.Get(ctx, "operations/00000000000000000000000000")
	check(errors.Is(err, musicgw.ErrNotFound), "ErrNotFound: %v", err)

	done, err := c.Wait(ctx, op.Name)
	must(err, "wait")
	check(done.State == v1.OperationState_OPERATION_STATE_SUCCEEDED && len(done.Outputs) > 0, "wait -> %s", done.State)
	// With one success of this account and task in the ledger, a new operation has an estimate.
	next, err := c.Generate(ctx, sample, musicgw.WithProvider(v1.Provider_PROVIDER_SOUNDPIECE))
	must(err, "generate with history")
	eta := musicgw.FormatETA(next, time.Now())
	check(eta != "" || next.Done, "a live operation with history shows an estimate: %q", eta)
	path := filepath.Join(*outDir, "sample.flac")
	os.Remove(path)
	res, err := c.Download(ctx, done.Outputs[0].Name, path, &musicgw.DownloadOptions{StopAfterChunks: 1})
	must(err, "interrupted download")
	stat, _ := os.Stat(path)
	check(res == nil && stat != nil && stat.Size() > 0, "download interrupted on purpose at %d bytes", stat.Size())
	res, err = c.Download(ctx, done.Outputs[0].Name, path, nil)
	must(err, "resumed download")
	check(res.StartedAt > 0 && res.Verified, "download resumed at %d, %d bytes, sha256 verified (%s)",
		res.StartedAt, res.Size, res.DigestSource)

	fc, err := musicgw.Dial(ctx, *flaky, key, musicgw.WithPlaintext())
	must(err, "dial the proxy")
	defer fc.Close()
	track, err := fc.Generate(ctx, &v1.ParametricMusicTask{Genre: "House", DurationSeconds: proto32(30)},
		musicgw.WithProvider(v1.Provider_PROVIDER_LOUDLY))
	must(err, "generate through the proxy")
	w := fc.Watch(ctx, track.Name)
	reconnects := 0
	w.OnReconnect = func(err error, last int64) {
		reconnects++
		fmt.Printf("  watch reconnects after sequence %d (%v)\n", last, err)
	}
	var last int64
	for w.Next() {
		ev := w.Event()
		check(ev.Sequence > last, "event sequence %d after %d, %s", ev.Sequence, last, ev.Operation.State)
		last = ev.Sequence
	}
	must(w.Err(), "watch")
	final := w.Operation()
	check(final.Done && final.State == v1.OperationState_OPERATION_STATE_SUCCEEDED, "watch followed it to SUCCEEDED")
	check(reconnects > 0, "watch reconnected by itself %d time(s)", reconnects)
	path = filepath.Join(*outDir, "track.mp3")
	os.Remove(path)
	res, err = fc.Download(ctx, final.Outputs[0].Name, path, nil)
	must(err, "download through the proxy")
	check(res.Verified && res.Size > 0, "download through the proxy: %d bytes, %d resumption(s), sha256 verified (%s)",
		res.Size, res.Resumptions, res.DigestSource)
	// TLS with a trusted root; refused without it.
	sc, err := musicgw.Dial(ctx, *tlsTarget, key, musicgw.WithRootCAFile(*caCert))
	must(err, "dial over TLS")
	defer sc.Close()
	providers, err := sc.Providers(ctx)
	must(err, "providers over TLS")
	check(len(providers.Providers) == 2, "over TLS with the sandbox certificate trusted")
	uc, err := musicgw.Dial(ctx, *tlsTarget, key, musicgw.WithTLS(nil))
	must(err, "dial over TLS without the root")
	defer uc.Close()
	uc.Timeout = 5 * time.Second
	_, err = uc.Providers(ctx)
	check(errors.Is(err, musicgw.ErrUnavailable), "an untrusted certificate is refused: %v", err)
	fmt.Println("go sdk: all checks passed")
}

func proto32(v int32) *int32 { return &v }
