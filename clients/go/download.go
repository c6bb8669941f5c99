package musicgw

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	v1 "musicgw.dev/go/musicgwv1"
)

// DownloadOptions adjusts Download; the zero value (or nil) resumes and verifies.
type DownloadOptions struct {
	// Restart discards bytes already in the file instead of resuming after them.
	Restart bool
	// NoVerify skips the SHA-256 check.
	NoVerify bool
	// Attempts bounds the resumptions of a dropped stream (default 8).
	Attempts int
	// OnProgress is called after each chunk with the bytes on disk and the total (0: unknown).
	OnProgress func(done, total int64)
	// OnResume is called before each resumption with the error and the bytes on disk.
	OnResume func(err error, offset int64)
	// StopAfterChunks > 0 stops after that many data chunks, leaving a partial file, and
	// returns (nil, nil): an interruption on purpose.
	StopAfterChunks int
}

// DownloadResult describes a finished download.
type DownloadResult struct {
	Path        string
	Size        int64
	Sha256      string
	ContentType string
	// StartedAt is the offset this call began at (non-zero when it resumed a partial file).
	StartedAt int64
	// Resumptions counts dropped streams that were resumed.
	Resumptions int
	// Verified: the file matched an independent SHA-256.
	Verified bool
	// DigestSource is "gateway" (AssetInfo or the operation's asset) or "restream" (the gateway
	// did not know the digest yet, so the asset was streamed once more and hashed).
	DigestSource string
}

// Download writes an asset ("operations/{id}/assets/{n}") to path. It continues after the
// bytes already in path, resumes a dropped stream the same way, and checks the finished file
// against the SHA-256 the gateway reports; the gateway learns a digest from one uninterrupted
// pass, so when it does not know it yet the asset is streamed once more and hashed, and a
// resumed file is never taken on trust. A mismatch is ErrChecksumMismatch.
func (c *Client) Download(ctx context.Context, asset, path string, opts *DownloadOptions) (*DownloadResult, error) {
	if opts == nil {
		opts = &DownloadOptions{}
	}
	attempts := opts.Attempts
	if attempts <= 0 {
		attempts = 8
	}
	if opts.Restart {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
	}
	started := fileSize(path)
	var info *v1.AssetInfo
	resumptions, chunks := 0, 0
	for {
		stopped, err := c.downloadOnce(ctx, asset, path, opts, &info, &chunks)
		if stopped {
			return nil, nil
		}
		if err == nil {
			break
		}
		if resumptions++; !retryable(err) || resumptions >= attempts {
			return nil, err
		}
		if opts.OnResume != nil {
			opts.OnResume(err, fileSize(path))
		}
		if err := sleep(ctx, backoff(err, resumptions-1)); err != nil {
			return nil, err
		}
	}
	if info == nil {
		return nil, fmt.Errorf("%w: %s: the gateway sent no asset info", ErrChecksumMismatch, asset)
	}
	size := fileSize(path)
	if info.SizeBytes > 0 && size != info.SizeBytes {
		return nil, fmt.Errorf("%w: %s: %d bytes, expected %d", ErrChecksumMismatch, path, size, info.SizeBytes)
	}
	digest, err := FileSha256(path)
	if err != nil {
		return nil, err
	}
	res := &DownloadResult{Path: path, Size: size, Sha256: digest, ContentType: info.ContentType,
		StartedAt: started, Resumptions: resumptions}
	if opts.NoVerify {
		return res, nil
	}
	expected, source := info.Sha256, "gateway"
	if expected == "" {
		if op, err := c.Get(ctx, strings.SplitN(asset, "/assets/", 2)[0]); err == nil {
			for _, a := range op.Outputs {
				if a.Name == asset {
					expected = a.Sha256
				}
			}
		}
	}
	if expected == "" {
		if expected, err = c.restreamSha256(ctx, asset); err != nil {
			return nil, err
		}
		source = "restream"
	}
	if digest != expected {
		return nil, fmt.Errorf("%w: %s: sha256 %s, expected %s (%s)", ErrChecksumMismatch, path, digest, expected, source)
	}
	res.Verified, res.DigestSource = true, source
	return res, nil
}

// downloadOnce streams from the file's end; stopped reports an interruption on purpose.
func (c *Client) downloadOnce(ctx context.Context, asset, path string, opts *DownloadOptions,
	info **v1.AssetInfo, chunks *int) (stopped bool, err error) {
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
	if *info != nil && (*info).SizeBytes > 0 && (*info).SizeBytes <= offset {
		return false, nil // complete
	}
	streamCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.Stub.Download(streamCtx, &v1.DownloadRequest{Asset: asset, Offset: offset})
	if err != nil {
		return false, fromRPC(err)
	}
	position := offset
	for {
		chunk, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return false, nil
		}
		if err != nil {
			return false, fromRPC(err)
		}
		if i := chunk.GetInfo(); i != nil {
			if i.Offset != offset {
				return false, fmt.Errorf("%w: asked for offset %d, got %d", ErrChecksumMismatch, offset, i.Offset)
			}
			if i.Sha256 == "" && *info != nil {
				i.Sha256 = (*info).Sha256
			}
			*info = i
			continue
		}
		if chunk.Offset != position {
			return false, fmt.Errorf("%w: chunk at %d, file at %d", ErrChecksumMismatch, chunk.Offset, position)
		}
		if _, err := file.Write(chunk.GetData()); err != nil {
			return false, err
		}
		position += int64(len(chunk.GetData()))
		if opts.OnProgress != nil {
			opts.OnProgress(position, (*info).GetSizeBytes())
		}
		if *chunks++; opts.StopAfterChunks > 0 && *chunks >= opts.StopAfterChunks {
			return true, nil // the deferred cancel drops the stream
		}
	}
}

func (c *Client) restreamSha256(ctx context.Context, asset string) (string, error) {
	for attempt := 0; ; attempt++ {
		h := sha256.New()
		err := func() error {
			streamCtx, cancel := context.WithCancel(ctx)
			defer cancel()
			stream, err := c.Stub.Download(streamCtx, &v1.DownloadRequest{Asset: asset})
			if err != nil {
				return fromRPC(err)
			}
			for {
				chunk, err := stream.Recv()
				if errors.Is(err, io.EOF) {
					return nil
				}
				if err != nil {
					return fromRPC(err)
				}
				h.Write(chunk.GetData())
			}
		}()
		if err == nil {
			return hex.EncodeToString(h.Sum(nil)), nil
		}
		if !retryable(err) || attempt == 3 {
			return "", err
		}
		if err := sleep(ctx, backoff(err, attempt)); err != nil {
			return "", err
		}
	}
}

func fileSize(path string) int64 {
	if stat, err := os.Stat(path); err == nil {
		return stat.Size()
	}
	return 0
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
