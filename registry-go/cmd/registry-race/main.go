// Command registry-race drives the "push racing a delete" registry scenario
// (tests/interop/test_registry_scenarios.py) against a distribution registry over its HTTP API
// and prints one JSON object.
//
//	registry-race -url http://HOST:PORT -root STORAGE -rounds 2000 -workers 8
//
// Each round pushes a fresh random blob (POST, then monolithic PUT ?digest=), then
// sends -pushes re-pushes and -deletes DELETEs of it at once. When every one has been
// answered it reads the registry's filesystem storage (-root): if the repository's
// link is gone, the registry must not advertise the blob (HEAD 404, GET never 5xx) and
// a later push of that content made as a client makes it (HEAD; upload unless the
// registry says it has the blob) must leave it readable; if the link is there, HEAD
// must answer 200. -workers rounds run at a time, each worker in its own repository.
// Each racing request waits a random time up to -jitter before it is sent, so that
// the rounds meet the registry at different points of each other's work.
//
// It is a Go program rather than the test's Python because 2,000 rounds are 26,000
// requests: Python's HTTP client spent more CPU per round than the registry itself,
// and spawning crane for each of them takes longer still.
package main

import (
	"bytes"
	crand "crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

type result struct {
	Rounds       int            `json:"rounds"`
	LinkGone     int            `json:"link_gone"`
	Advertised   []string       `json:"advertised"`
	Get5xx       []string       `json:"get_5xx"`
	RepushFailed []string       `json:"repush_failed"`
	Hidden       []string       `json:"hidden"`
	Statuses     map[string]int `json:"statuses"`
	Errors       []string       `json:"errors"`
	Seconds      float64        `json:"seconds"`
}

type race struct {
	base, root      string
	pushes, deletes int
	jitter          time.Duration
	client          *http.Client
	mu              sync.Mutex
	res             result
	next, rounds    int64
}

func main() {
	base := flag.String("url", "", "the registry's base URL (http://HOST:PORT)")
	root := flag.String("root", "", "the registry's filesystem storage root (rootdirectory)")
	rounds := flag.Int("rounds", 2000, "rounds in all")
	workers := flag.Int("workers", 8, "rounds at a time")
	pushes := flag.Int("pushes", 3, "re-pushes racing in each round")
	deletes := flag.Int("deletes", 3, "DELETEs racing in each round")
	jitter := flag.Duration("jitter", 2*time.Millisecond, "each racing request waits a random time up to this before it is sent")
	flag.Parse()
	if *base == "" || *root == "" || *rounds < 1 || *workers < 1 {
		fmt.Fprintln(os.Stderr, "usage: registry-race -url http://HOST:PORT -root DIR [-rounds N] [-workers N]")
		os.Exit(2)
	}
	conns := *workers * (*pushes + *deletes + 1)
	r := &race{
		base:    strings.TrimRight(*base, "/"),
		root:    *root,
		pushes:  *pushes,
		deletes: *deletes,
		jitter:  *jitter,
		rounds:  int64(*rounds),
		next:    -1,
		client: &http.Client{
			Timeout:   60 * time.Second,
			Transport: &http.Transport{MaxIdleConns: conns, MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns},
		},
		res: result{Statuses: map[string]int{}},
	}
	start := time.Now()
	var wg sync.WaitGroup
	for w := range *workers {
		wg.Go(func() { r.worker(w) })
	}
	wg.Wait()
	r.res.Seconds = time.Since(start).Seconds()
	for _, list := range [][]string{r.res.Advertised, r.res.Get5xx, r.res.RepushFailed, r.res.Hidden, r.res.Errors} {
		sort.Strings(list)
	}
	out := json.NewEncoder(os.Stdout)
	out.SetIndent("", " ")
	if err := out.Encode(r.res); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func (r *race) note(list *[]string, item string) {
	r.mu.Lock()
	*list = append(*list, item)
	r.mu.Unlock()
}

func (r *race) worker(w int) {
	repo := fmt.Sprintf("race/w%d", w)
	for {
		n := atomic.AddInt64(&r.next, 1)
		if n >= r.rounds {
			return
		}
		if err := r.round(repo, n); err != nil {
			r.note(&r.res.Errors, fmt.Sprintf("round %d: %v", n, err))
		}
	}
}

func (r *race) round(repo string, n int64) error {
	content := make([]byte, 32, 64)
	if _, err := crand.Read(content); err != nil {
		return err
	}
	content = fmt.Appendf(content, "round %d", n)
	sum := sha256.Sum256(content)
	hexDigest := hex.EncodeToString(sum[:])
	digest := "sha256:" + hexDigest
	blob := fmt.Sprintf("%s/v2/%s/blobs/%s", r.base, repo, digest)
	if status, err := r.push(repo, content, digest); err != nil || status != http.StatusCreated {
		return fmt.Errorf("the first push of %s answered %d: %v", digest, status, err)
	}
	statuses := make([]string, r.pushes+r.deletes)
	var wg sync.WaitGroup
	for i := range r.pushes + r.deletes {
		wg.Go(func() {
			if r.jitter > 0 {
				time.Sleep(rand.N(r.jitter))
			}
			var status int
			var err error
			if i < r.pushes {
				status, err = r.push(repo, content, digest)
			} else {
				status, _, err = r.do(http.MethodDelete, blob, nil)
			}
			kind := map[bool]string{true: "push", false: "delete"}[i < r.pushes]
			if err != nil {
				statuses[i] = kind + " error"
			} else {
				statuses[i] = fmt.Sprintf("%s %d", kind, status)
			}
		})
	}
	wg.Wait()
	_, statErr := os.Stat(filepath.Join(r.root, "docker/registry/v2/repositories", repo, "_layers/sha256", hexDigest, "link"))
	linkGone := os.IsNotExist(statErr)
	head, _, err := r.do(http.MethodHead, blob, nil)
	if err != nil {
		return err
	}
	get, _, err := r.do(http.MethodGet, blob, nil)
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.res.Rounds++
	for _, s := range statuses {
		r.res.Statuses[s]++
	}
	if linkGone {
		r.res.LinkGone++
	}
	r.mu.Unlock()
	where := map[bool]string{true: "gone", false: "there"}[linkGone]
	if get >= 500 {
		r.note(&r.res.Get5xx, fmt.Sprintf("%s (link %s, HEAD %d, GET %d)", digest, where, head, get))
	}
	if !linkGone {
		if head != http.StatusOK {
			r.note(&r.res.Hidden, fmt.Sprintf("%s (HEAD %d)", digest, head))
		}
		return nil
	}
	if head == http.StatusOK {
		r.note(&r.res.Advertised, digest)
	} else if _, err := r.push(repo, content, digest); err != nil {
		return err
	}
	again, body, err := r.do(http.MethodGet, blob, nil)
	if err != nil {
		return err
	}
	if again != http.StatusOK || !bytes.Equal(body, content) {
		r.note(&r.res.RepushFailed, fmt.Sprintf("%s (HEAD %d, then GET %d)", digest, head, again))
	}
	return nil
}

// push uploads content monolithically: POST, then PUT ?digest=. It returns the PUT's
// status (the POST's when that was not 202).
func (r *race) push(repo string, content []byte, digest string) (int, error) {
	status, resp, err := r.do(http.MethodPost, fmt.Sprintf("%s/v2/%s/blobs/uploads/", r.base, repo), nil)
	if err != nil || status != http.StatusAccepted {
		return status, err
	}
	loc, err := url.Parse(string(resp))
	if err != nil {
		return 0, err
	}
	if !loc.IsAbs() {
		baseURL, _ := url.Parse(r.base)
		loc = baseURL.ResolveReference(loc)
	}
	q := loc.Query()
	q.Set("digest", digest)
	loc.RawQuery = q.Encode()
	status, _, err = r.do(http.MethodPut, loc.String(), content)
	return status, err
}

// do sends one request and returns its status and body (for a POST, the Location).
func (r *race) do(method, target string, body []byte) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, target, rd)
	if err != nil {
		return 0, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/octet-stream")
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, err
	}
	if method == http.MethodPost {
		data = []byte(resp.Header.Get("Location"))
	}
	return resp.StatusCode, data, nil
}
