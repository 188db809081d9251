// Command descriptor-bench is the Go load generator of ./dev bench
// (benchmarks/go_bench.py). It prints one JSON object.
//
//	descriptor-bench stat -target HOST:PORT -digest D [-repository R] -c 16 -n 30000
//	    Stat calls through the Go client (client-go/descriptor), -c goroutines
//	    sharing one client (one HTTP/2 connection).
//	descriptor-bench head -url http://HOST:PORT/v2/REPO/blobs/D -c 16 -n 30000
//	    HTTP HEADs, -c goroutines each with its own keep-alive connection and one
//	    request in flight.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/descriptor-service/descriptor-service/client-go/descriptor"
	"github.com/opencontainers/go-digest"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: descriptor-bench stat|head [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "stat":
		err = stat(os.Args[2:])
	case "head":
		err = head(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "descriptor-bench:", err)
		os.Exit(1)
	}
}

// run calls do n times from c goroutines and returns the wall time.
func run(n, c int, do func(worker int) error) (time.Duration, int64) {
	var next, failed atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < c; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				if do(w) != nil {
					failed.Add(1)
				}
			}
		}(w)
	}
	wg.Wait()
	return time.Since(start), failed.Load()
}

func report(v map[string]any) error {
	return json.NewEncoder(os.Stdout).Encode(v)
}

func stat(args []string) error {
	fs := flag.NewFlagSet("stat", flag.ExitOnError)
	target := fs.String("target", "127.0.0.1:5051", "the service")
	dgst := fs.String("digest", "", "the digest to Stat (cached: a hit)")
	repo := fs.String("repository", "", "repository scope (empty: global)")
	c := fs.Int("c", 16, "concurrent calls")
	n := fs.Int("n", 10000, "calls")
	_ = fs.Parse(args)
	d, err := digest.Parse(*dgst)
	if err != nil {
		return err
	}
	client, err := descriptor.New(*target)
	if err != nil {
		return err
	}
	defer client.Close()
	ctx := context.Background()
	statFn := client.Stat
	if *repo != "" {
		statFn = client.Repository(*repo).Stat
	}
	if _, err := statFn(ctx, d); err != nil { // warm up: connect, and fail early
		return err
	}
	var firstErr atomic.Value
	elapsed, failed := run(*n, *c, func(int) error {
		_, err := statFn(ctx, d)
		if err != nil {
			firstErr.CompareAndSwap(nil, err.Error())
		}
		return err
	})
	out := map[string]any{"calls": *n, "warmup_calls": 1, "errors": failed, "seconds": elapsed.Seconds(), "rps": float64(*n) / elapsed.Seconds()}
	if e := firstErr.Load(); e != nil {
		out["first_error"] = e
	}
	return report(out)
}

func head(args []string) error {
	fs := flag.NewFlagSet("head", flag.ExitOnError)
	url := fs.String("url", "", "the blob URL")
	c := fs.Int("c", 16, "concurrent connections")
	n := fs.Int("n", 10000, "requests")
	_ = fs.Parse(args)
	clients := make([]*http.Client, *c)
	for i := range clients {
		// One connection per worker: a transport of its own, keep-alive, no pool sharing.
		clients[i] = &http.Client{Transport: &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
			MaxIdleConnsPerHost: 1,
			MaxConnsPerHost:     1,
			DisableCompression:  true,
		}, Timeout: 30 * time.Second}
	}
	var mu sync.Mutex
	statuses := map[string]int{}
	do := func(w int) error {
		resp, err := clients[w].Head(*url)
		code := "error"
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			code = fmt.Sprint(resp.StatusCode)
		}
		mu.Lock()
		statuses[code]++
		mu.Unlock()
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	}
	for w := range clients { // warm up each connection
		if err := do(w); err != nil {
			return fmt.Errorf("warm-up HEAD: %w", err)
		}
	}
	mu.Lock()
	clear(statuses)
	mu.Unlock()
	elapsed, failed := run(*n, *c, do)
	return report(map[string]any{
		"requests": *n, "warmup_requests": *c, "failed": failed, "statuses": statuses,
		"seconds": elapsed.Seconds(), "rps": float64(*n) / elapsed.Seconds(),
	})
}
