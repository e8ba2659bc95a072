package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/google/pprof/profile"
)

// cpuProfiler records the server's CPU profile while the tasks run
// (Options.CPUProfile): Go's /debug/pprof/profile endpoint profiles for a
// whole number of seconds and cannot be stopped early, so it fetches
// profiles of profileChunk seconds one after the other and merges them when
// the run ends. A chunk that fails (the server was killed by --kill-at, or
// is restarting) is skipped, and counted in the run's progress lines.
type cpuProfiler struct {
	r      *benchRun
	cancel context.CancelFunc
	done   chan struct{}

	mu     sync.Mutex
	chunks []*profile.Profile
	failed int
}

// profileChunk is the length of one fetched profile, in seconds: the
// recording ends at most this long after the tasks.
const profileChunk = 1

// startCPUProfile starts recording; stop ends it and writes the file.
func (r *benchRun) startCPUProfile(ctx context.Context) *cpuProfiler {
	ctx, cancel := context.WithCancel(ctx)
	p := &cpuProfiler{r: r, cancel: cancel, done: make(chan struct{})}
	go p.loop(ctx)
	return p
}

func (p *cpuProfiler) loop(ctx context.Context) {
	defer close(p.done)
	for ctx.Err() == nil {
		prof, err := p.fetch(ctx)
		p.mu.Lock()
		if err != nil {
			p.failed++
		} else {
			p.chunks = append(p.chunks, prof)
		}
		p.mu.Unlock()
		if err != nil && ctx.Err() == nil {
			// A server that is down answers at once: do not spin.
			if p.r.sleep(ctx, profileChunk*time.Second) != nil {
				return
			}
		}
	}
}

// fetch reads one chunk. It is not cut short by ctx once started, so that
// the last chunk, which covers the end of the tasks, is kept: the server
// answers within profileChunk seconds.
func (p *cpuProfiler) fetch(ctx context.Context) (*profile.Profile, error) {
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), profileChunk*time.Second+30*time.Second)
	defer cancel()
	addr, token := p.r.apiAuth()
	url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, profileChunk)
	req, _ := http.NewRequestWithContext(fctx, "GET", url, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := p.r.metrics.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(body))
	}
	return profile.Parse(bytes.NewReader(body))
}

// stop ends the recording after the chunk in flight and writes the merged
// profile to path.
func (p *cpuProfiler) stop(path string) error {
	p.cancel()
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.chunks) == 0 {
		return fmt.Errorf("no CPU profile of the server could be read (%d attempts failed)", p.failed)
	}
	merged, err := profile.Merge(p.chunks)
	if err != nil {
		return fmt.Errorf("merging the CPU profiles: %w", err)
	}
	var buf bytes.Buffer
	if err := merged.Write(&buf); err != nil {
		return err
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		return err
	}
	if p.failed > 0 {
		p.r.progress("CPU profile: %d chunks of %d s written to %s, %d could not be read (server down)", len(p.chunks), profileChunk, path, p.failed)
	} else {
		p.r.progress("CPU profile: %d chunks of %d s written to %s", len(p.chunks), profileChunk, path)
	}
	return nil
}
